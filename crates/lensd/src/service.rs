//! The model-groups service: a checked configuration, the residency manager over the CPU
//! engine, background preloads at start-up, and reloads that keep what did not change.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use lensd_core::config::{self, Budgets, Config, Placement, Preload, Report, Resolved, Settings};
use lensd_core::engine::DeviceInfo;
use lensd_core::registry::{Registry, RegistryDiff};
use lensd_core::residency::Tier;
use lensd_engine::probe::{machine_memory, FileProbe};
use lensd_sched::queue::{QueueConfig, Scheduler};
use lensd_sched::residency::{Options, PreloadEvent, Residency};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, Mutex};

use crate::runtime::{LocalEngine, ProcMemory};

/// A config that parsed, with the facts its files gave.
pub struct Checked {
    pub config: Config,
    pub resolved: Resolved,
    pub budgets: Budgets,
    /// Each device's budget and the groups pinned to devices.
    pub placement: Placement,
}

/// Parses `path` and, when its groups are sound, checks the files they name and the devices
/// its groups are pinned to. Relative paths in the file are resolved against its folder. The
/// report lists every problem found (an error in the settings does not hide those of the
/// files); the config is returned, fit to serve, only when it has no errors.
pub fn read_config(
    path: &Path,
    probe: &FileProbe,
    devices: &[DeviceInfo],
) -> Result<(Option<Checked>, Report)> {
    let text = lensd_core::files::read_to_string(path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    let (config, mut report) = config::parse_for_checking(&text);
    let Some(mut config) = config else {
        return Ok((None, report));
    };
    let sound = !report.has_errors();
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    config.resolve_paths(dir.unwrap_or(Path::new(".")));
    let budgets = budgets(&config.settings)?;
    let (checked, resolved) = config::check(&config, probe, budgets);
    report.extend(checked);
    let placement = Placement::resolve(&config, devices).unwrap_or_else(|e| {
        report.extend(e);
        Placement::default()
    });
    let checked = Checked {
        config,
        resolved,
        budgets,
        placement,
    };
    Ok((sound.then_some(checked), report))
}

/// The configured budgets, falling back to shares of this machine's memory.
pub fn budgets(settings: &Settings) -> Result<Budgets> {
    let memory = if settings.device_budget.is_some() && settings.host_budget.is_some() {
        0
    } else {
        machine_memory().context(
            "cannot read this machine's memory size for the default budgets: set \
             settings.device_budget and settings.host_budget",
        )?
    };
    Ok(Budgets::resolve(settings, memory))
}

/// Each start-up preload's group and outcome.
pub type PreloadOutcomes = tokio::task::JoinHandle<Vec<(String, std::result::Result<(), String>)>>;

pub struct Service {
    pub residency: Residency,
    pub scheduler: Scheduler,
    pub engine: LocalEngine,
    path: PathBuf,
    probe: FileProbe,
    registry: Mutex<Registry>,
    config: std::sync::Mutex<Config>,
    /// The start-up preloads, each group with its outcome; nothing waits on it but tests.
    pub preloads: std::sync::Mutex<Option<PreloadOutcomes>>,
}

impl Service {
    /// Reads and checks the config, starts the residency manager, and starts the configured
    /// preloads in the background: the default group to the device, `preload_groups` to the
    /// host. Returns at once; nothing waits for the preloads.
    pub async fn start(path: &Path) -> Result<Service> {
        Self::start_with(path, QueueConfig::default()).await
    }

    /// [`Service::start`] with a chosen queue configuration.
    pub async fn start_with(path: &Path, queue: QueueConfig) -> Result<Service> {
        Self::start_on(path, queue, LocalEngine::new()).await
    }

    /// [`Service::start_with`] computing with `engine` (its devices).
    pub async fn start_on(path: &Path, queue: QueueConfig, engine: LocalEngine) -> Result<Service> {
        let devices = engine.device_list();
        let probe = FileProbe::new().on_gpus(devices.iter().any(|d| d.name != "cpu"));
        let checked = checked(path, &probe, &devices)?;
        let registry = Registry::build(&checked.config, &checked.resolved);
        let options = Options {
            memory: Some(Arc::new(ProcMemory)),
            placement: checked.placement.clone(),
            ..Options::default()
        };
        let residency = Residency::start(
            registry.clone(),
            checked.budgets,
            Arc::new(engine.clone()),
            options,
        );
        let scheduler = Scheduler::start(
            queue,
            registry.clone(),
            residency.clone(),
            Arc::new(engine.clone()),
        );
        let service = Service {
            residency,
            scheduler,
            engine,
            path: path.to_path_buf(),
            probe,
            registry: Mutex::new(registry),
            config: std::sync::Mutex::new(checked.config.clone()),
            preloads: std::sync::Mutex::new(None),
        };
        let handle = service.start_preloads(&checked.config.settings);
        *service.preloads.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(service)
    }

    fn start_preloads(&self, settings: &Settings) -> PreloadOutcomes {
        let registry = self
            .registry
            .try_lock()
            .expect("no one else holds it during start-up");
        let mut plan: Vec<(String, Tier)> = match &settings.preload_groups {
            Preload::None => Vec::new(),
            Preload::All => registry
                .groups
                .keys()
                .cloned()
                .map(|g| (g, Tier::Host))
                .collect(),
            Preload::Groups(g) => g.iter().cloned().map(|g| (g, Tier::Host)).collect(),
        };
        if let Some(g) = &settings.default_group {
            plan.push((g.clone(), Tier::Device));
        }
        drop(registry);
        let residency = self.residency.clone();
        tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for (group, tier) in plan {
                let outcome = preload(&residency, &group, tier).await;
                match &outcome {
                    Ok(()) => tracing::info!(group, tier = tier.as_str(), "preloaded"),
                    Err(error) => tracing::warn!(group, %error, "preload failed"),
                }
                outcomes.push((group, outcome));
            }
            outcomes
        })
    }

    /// Reads the config file again and applies what changed. A config with errors changes
    /// nothing and the error lists them.
    pub async fn reload(&self) -> Result<RegistryDiff> {
        let checked = checked(&self.path, &self.probe, &self.engine.device_list())?;
        let next = Registry::build(&checked.config, &checked.resolved);
        let mut current = self.registry.lock().await;
        let diff = current.diff(&next);
        self.residency
            .reload_placed(next.clone(), checked.budgets, checked.placement)
            .await?;
        self.scheduler.set_registry(next.clone()).await;
        *current = next;
        *self.config.lock().unwrap_or_else(|e| e.into_inner()) = checked.config;
        Ok(diff)
    }

    /// The configuration in force.
    pub fn config(&self) -> Config {
        self.config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub async fn registry(&self) -> Registry {
        self.registry.lock().await.clone()
    }

    /// Reloads the config on every SIGHUP for as long as the service lives; each outcome is
    /// logged and sent on the returned channel.
    pub fn reload_on_sighup(
        self: &Arc<Self>,
    ) -> Result<mpsc::UnboundedReceiver<std::result::Result<RegistryDiff, String>>> {
        let mut hangups = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
        let (tx, rx) = mpsc::unbounded_channel();
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                let Some(service) = me.upgrade() else { break };
                let outcome = service.reload().await.map_err(|e| format!("{e:#}"));
                match &outcome {
                    Ok(diff) => tracing::info!(?diff, "configuration reloaded"),
                    Err(error) => tracing::error!(%error, "configuration not reloaded"),
                }
                if tx.send(outcome).is_err() {
                    tracing::debug!("nobody listens to reload outcomes");
                }
            }
        });
        Ok(rx)
    }
}

/// Preloads `group` to `tier` and waits for the outcome.
pub async fn preload(
    residency: &Residency,
    group: &str,
    tier: Tier,
) -> std::result::Result<(), String> {
    let mut events = residency
        .preload(group, tier)
        .await
        .map_err(|e| e.to_string())?;
    while let Some(ev) = events.recv().await {
        match ev {
            PreloadEvent::Done { .. } => return Ok(()),
            PreloadEvent::Failed { error, .. } => return Err(error),
            _ => {}
        }
    }
    Err("the residency manager stopped".into())
}

fn checked(path: &Path, probe: &FileProbe, devices: &[DeviceInfo]) -> Result<Checked> {
    let (checked, report) = read_config(path, probe, devices)?;
    for w in report
        .issues
        .iter()
        .filter(|i| i.severity == config::Severity::Warning)
    {
        tracing::warn!(path = %w.path, "{}", w.message);
    }
    match checked {
        Some(c) if !report.has_errors() => Ok(c),
        _ => bail!("{} has errors:\n{}", path.display(), report),
    }
}
