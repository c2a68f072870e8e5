//! Checks of a parsed config against the files it names, through a [`Probe`].

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::value::{at, index};
use super::{Config, Group, ModelEntry, Report, Settings};
use crate::bytes::ByteSize;
use crate::dtype::{ComputeDtype, LensKind};

/// What a base's header says, read without loading its weights.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BaseFacts {
    /// Identity of the weights by content (a hash of the files) and compute dtype: two groups
    /// naming the same file, or copies of it, get the same id.
    pub content_id: String,
    pub n_layers: usize,
    pub d_model: usize,
    /// Bytes the base occupies once loaded in its compute dtype.
    pub resident_bytes: u64,
}

/// What a lens's files say, read without loading its tensors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LensFacts {
    /// A hash of the lens files; identical files share one id (and one loaded copy).
    pub content_id: String,
    pub d_model: Option<usize>,
    /// Layer count of the base the lens was made for (tuned lenses).
    pub n_layers: Option<usize>,
    /// The layer the lens reads (talkative lenses).
    pub layer: Option<usize>,
    /// Bytes the lens occupies once loaded.
    pub bytes: u64,
}

/// Reads headers of bases and lenses. The engine implements it on real files; tests use fakes.
pub trait Probe {
    fn base(&self, path: &Path, dtype: ComputeDtype) -> Result<BaseFacts, String>;
    /// The facts of a lens; `donor` is a talkative lens's LoRA adapter, part of the lens.
    fn lens(&self, kind: LensKind, path: &Path, donor: Option<&Path>) -> Result<LensFacts, String>;
}

/// Byte budgets of the device and host tiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Budgets {
    pub device: u64,
    pub host: u64,
}

impl Budgets {
    /// The configured budgets, each falling back to [`default_budgets`].
    pub fn resolve(settings: &Settings, machine_memory: u64) -> Budgets {
        let d = default_budgets(machine_memory);
        Budgets {
            device: settings.device_budget.map_or(d.device, |b| b.0),
            host: settings.host_budget.map_or(d.host, |b| b.0),
        }
    }
}

/// Defaults for a CPU machine with `machine_memory` bytes of RAM, where both tiers share that
/// memory: half for weights in use, a quarter for idle weights kept warm.
pub fn default_budgets(machine_memory: u64) -> Budgets {
    Budgets {
        device: machine_memory / 2,
        host: machine_memory / 4,
    }
}

/// Facts gathered by [`check`], keyed by group id (bases) and model id (lenses).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Resolved {
    pub bases: BTreeMap<String, BaseFacts>,
    pub lenses: BTreeMap<String, LensFacts>,
}

/// Checks every base and lens the config names, and the budgets against them. Each distinct
/// (base path, compute dtype) and each distinct (lens kind, path) is probed once; logit lenses
/// have no files and are never probed.
pub fn check(config: &Config, probe: &dyn Probe, budgets: Budgets) -> (Report, Resolved) {
    let mut report = Report::default();
    let mut resolved = Resolved::default();
    let mut bases: HashMap<(PathBuf, ComputeDtype), Result<BaseFacts, String>> = HashMap::new();
    let mut lenses: HashMap<(LensKind, PathBuf, Option<PathBuf>), Result<LensFacts, String>> =
        HashMap::new();
    for (gi, g) in config.groups.iter().enumerate() {
        let gpath = index("model_groups", gi);
        let base = bases
            .entry((g.base_path.clone(), g.compute_dtype))
            .or_insert_with(|| probe.base(&g.base_path, g.compute_dtype));
        let base = match base {
            Ok(b) => {
                resolved.bases.insert(g.id.clone(), b.clone());
                Some(b.clone())
            }
            Err(e) => {
                report.error(
                    at(&gpath, "base_model_path"),
                    format!("cannot read the base: {e}"),
                );
                None
            }
        };
        for (mi, m) in g.models.iter().enumerate() {
            let mpath = index(&at(&gpath, "models"), mi);
            if let (Some(b), Some(layer)) = (&base, m.layer) {
                if layer > b.n_layers {
                    report.error(
                        at(&mpath, "layer"),
                        format!(
                            "layer {layer} does not exist: the base has {n} blocks, so its \
                             layers run from 0 (the embeddings) to {n} (the last block's output)",
                            n = b.n_layers
                        ),
                    );
                }
            }
            let Some(lens_path) = m.lens_path.as_ref().filter(|_| m.lens != LensKind::Logit) else {
                continue;
            };
            let facts = lenses
                .entry((m.lens, lens_path.clone(), m.donor.clone()))
                .or_insert_with(|| probe.lens(m.lens, lens_path, m.donor.as_deref()));
            match facts {
                Ok(f) => {
                    if let Some(b) = &base {
                        lens_fits(&mut report, &mpath, m, f, b, &g.base_path);
                    }
                    resolved.lenses.insert(m.id.clone(), f.clone());
                }
                Err(e) => report.error(
                    at(&mpath, "lens_checkpoint_path"),
                    format!("cannot read the {} lens: {e}", m.lens.as_str()),
                ),
            }
        }
    }
    check_budgets(&mut report, config, &resolved, budgets);
    (report, resolved)
}

/// Whether a lens's header agrees with the base of its group.
fn lens_fits(
    report: &mut Report,
    mpath: &str,
    m: &ModelEntry,
    lens: &LensFacts,
    base: &BaseFacts,
    base_path: &Path,
) {
    let mut differences = Vec::new();
    if let Some(d) = lens.d_model.filter(|d| *d != base.d_model) {
        differences.push(format!(
            "its width (d_model) is {d} but the base's is {}",
            base.d_model
        ));
    }
    if m.lens == LensKind::Tuned {
        if let Some(n) = lens.n_layers.filter(|n| *n != base.n_layers) {
            differences.push(format!(
                "it has translators for {n} layers but the base has {} layers",
                base.n_layers
            ));
        }
    }
    if m.lens == LensKind::Talkative {
        // A talkative lens names the block whose output it reads, like the original's layer.
        if let Some(l) = lens.layer.filter(|l| *l >= base.n_layers) {
            differences.push(format!(
                "it reads the output of block {l} but the base's blocks end at {}",
                base.n_layers - 1
            ));
        }
    } else if let Some(l) = lens.layer.filter(|l| *l > base.n_layers) {
        differences.push(format!(
            "it reads layer {l} but the base's layers end at {}",
            base.n_layers
        ));
    }
    if !differences.is_empty() {
        report.error(
            at(mpath, "lens_checkpoint_path"),
            format!(
                "this {} lens was made for another base than {}: {}",
                m.lens.as_str(),
                base_path.display(),
                differences.join("; ")
            ),
        );
    }
    if let (Some(l), Some(given)) = (lens.layer, m.layer) {
        if l != given {
            report.warning(
                at(mpath, "layer"),
                format!("the lens reads layer {l}, not {given}: the lens's own layer is used"),
            );
        }
    }
}

/// What one group needs on the device: its base, and the largest of its lenses.
struct Need<'a> {
    group: &'a Group,
    base: &'a BaseFacts,
    /// (model id, bytes) of the group's largest lens.
    lens: Option<(&'a str, u64)>,
}

impl Need<'_> {
    fn base_name(&self) -> String {
        format!(
            "{} ({} once loaded with compute dtype {}, group {})",
            self.group.base_path.display(),
            ByteSize(self.base.resident_bytes),
            self.group.compute_dtype.as_str(),
            self.group.id
        )
    }

    fn total(&self) -> u64 {
        self.base.resident_bytes + self.lens.map_or(0, |(_, bytes)| bytes)
    }
}

/// The budgets against the largest base, and the largest base plus a lens of its group.
fn check_budgets(report: &mut Report, config: &Config, resolved: &Resolved, budgets: Budgets) {
    let needs: Vec<Need> = config
        .groups
        .iter()
        .filter_map(|group| {
            let lens = group
                .models
                .iter()
                .filter_map(|m| Some((m.id.as_str(), resolved.lenses.get(&m.id)?.bytes)))
                .max_by_key(|(_, bytes)| *bytes);
            Some(Need {
                group,
                base: resolved.bases.get(&group.id)?,
                lens,
            })
        })
        .collect();
    let Some(biggest) = needs.iter().max_by_key(|n| n.base.resident_bytes) else {
        return;
    };
    let device = describe_budget(
        budgets.device,
        config.settings.device_budget.is_some(),
        "device_budget",
    );
    if budgets.device < biggest.base.resident_bytes {
        report.error(
            "settings.device_budget",
            format!(
                "the device budget of {device} cannot hold the base {}; raise the budget or use \
                 a smaller compute dtype",
                biggest.base_name()
            ),
        );
    } else if let Some(need) = needs.iter().max_by_key(|n| n.total()) {
        if let (Some((lens_id, lens_bytes)), true) = (need.lens, budgets.device < need.total()) {
            report.error(
                "settings.device_budget",
                format!(
                    "the device budget of {device} cannot hold the base {} together with the \
                     lens of model {lens_id} ({}): {} in all",
                    need.base_name(),
                    ByteSize(lens_bytes),
                    ByteSize(need.total())
                ),
            );
        }
    }
    if budgets.host < biggest.base.resident_bytes {
        let host = describe_budget(
            budgets.host,
            config.settings.host_budget.is_some(),
            "host_budget",
        );
        report.warning(
            "settings.host_budget",
            format!(
                "the host budget of {host} is smaller than the base {}: it cannot be kept warm \
                 in host memory and is read from disk again whenever it is loaded",
                biggest.base_name()
            ),
        );
    }
}

fn describe_budget(bytes: u64, configured: bool, key: &str) -> String {
    if configured {
        ByteSize(bytes).to_string()
    } else {
        format!(
            "{} (not set: this machine's default; set settings.{key} to change it)",
            ByteSize(bytes)
        )
    }
}
