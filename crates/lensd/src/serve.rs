//! `lensd serve`: the model-groups service behind the HTTP and WebSocket server, with the
//! results database, the request log, keys and limits, until SIGINT or SIGTERM.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use lensd::runtime::LocalEngine;
use lensd::service::Service;
use lensd_core::engine::BoxFuture;
use lensd_core::registry::RegistryDiff;
use lensd_sched::queue::QueueConfig;
use lensd_server::auth::Keys;
use lensd_server::limits::Limits;
use lensd_server::reqlog::RequestLog;
use lensd_server::store::Store;
use lensd_server::views::Snapshot;
use lensd_server::{AppState, Control, Parts};

pub struct ServeOptions {
    pub config: Option<PathBuf>,
    /// Where to compute: the CPU, or GPUs.
    pub devices: Vec<lensd_engine::DeviceSpec>,
    pub addr: String,
    pub data: PathBuf,
    pub keys: Option<PathBuf>,
    pub allow_origins: Vec<String>,
    /// The web page's folder, read at each request, instead of the built-in copy.
    pub web_dir: Option<PathBuf>,
    pub limits: Limits,
    pub retention_days: u64,
    pub users_may_preload: bool,
    pub max_tokens: usize,
    pub unembed: lensd_engine::lens::analyze::Unembed,
    pub http: HttpArgs,
}

/// `lensd serve`'s limits on HTTP connections, on failed authentication and on each role's
/// work (docs/server.md, Limits).
#[derive(clap::Args, Debug, Clone)]
pub struct HttpArgs {
    /// HTTP connections open at once, WebSockets included [default: 1024, or twice
    /// --max-connections if that is more]. Kept under the process's descriptor limit.
    #[arg(long)]
    pub max_http_connections: Option<usize>,
    /// HTTP connections open at once from one client address [default: 256, or
    /// --max-connections if that is more].
    #[arg(long)]
    pub max_connections_per_address: Option<usize>,
    /// Seconds a client has to send a request's headers, from connecting or from the first
    /// byte of its next request on a kept-alive connection.
    #[arg(long, default_value_t = 10.0)]
    pub header_timeout: f64,
    /// Seconds a kept-alive HTTP connection may wait for its next request.
    #[arg(long, default_value_t = 60.0)]
    pub idle_timeout: f64,
    /// Seconds a WebSocket client may read nothing while its session's output is full (64
    /// frames waiting) before the session is closed, with code 1008 saying why.
    #[arg(long, default_value_t = 30.0)]
    pub ws_output_timeout: f64,
    /// Failed authentications per client address per minute; past it, keys from that
    /// address are refused (429) unchecked.
    #[arg(long, default_value_t = 10)]
    pub auth_failures_per_minute: u32,
    /// A JSON file of limits per role (compute per request and per minute, default deadline,
    /// size of analyses) replacing the defaults it names; see docs/server.md.
    #[arg(long)]
    pub role_limits: Option<PathBuf>,
}

/// Descriptors kept for everything but connections: the listener, the runtime's, the
/// database's and the logs', weight files being opened, and connections being refused.
const DESCRIPTOR_RESERVE: u64 = 64;

/// Raises the soft descriptor limit to the hard one, and returns the soft limit in force.
fn raise_descriptor_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    Some(lim.rlim_cur)
}

impl HttpArgs {
    /// Sets the HTTP limits in `limits`, whose `max_connections` (WebSockets) is already set,
    /// keeping the connection cap under the descriptor limit `descriptors`.
    fn apply(&self, limits: &mut Limits, descriptors: Option<u64>) -> Result<()> {
        let seconds = |name: &str, s: f64| {
            Duration::try_from_secs_f64(s)
                .ok()
                .filter(|d| !d.is_zero())
                .with_context(|| format!("--{name} must be a positive number of seconds, got {s}"))
        };
        limits.http_header_timeout = seconds("header-timeout", self.header_timeout)?;
        limits.http_idle_timeout = seconds("idle-timeout", self.idle_timeout)?;
        limits.ws_output_timeout = seconds("ws-output-timeout", self.ws_output_timeout)?;
        limits.auth_failures_per_minute = self.auth_failures_per_minute;
        if let Some(path) = &self.role_limits {
            limits.roles = lensd_server::roles::RoleTable::from_file(path)
                .map_err(|e| anyhow::anyhow!("--role-limits: {e}"))?;
        }
        let ws = limits.max_connections;
        let mut total = self.max_http_connections.unwrap_or(1024.max(2 * ws));
        let per_address = self.max_connections_per_address.unwrap_or(256.max(ws));
        if let Some(fds) = descriptors {
            let room = fds.saturating_sub(DESCRIPTOR_RESERVE).max(1) as usize;
            if total > room {
                tracing::warn!(
                    asked = total,
                    kept = room,
                    descriptors = fds,
                    "the descriptor limit allows fewer HTTP connections than asked; raise it \
                     (ulimit -n) to allow more"
                );
                total = room;
            }
        }
        if total == 0 || per_address == 0 {
            anyhow::bail!(
                "--max-http-connections and --max-connections-per-address must be at least 1"
            );
        }
        limits.max_http_connections = total;
        limits.max_http_connections_per_address = per_address.min(total);
        Ok(())
    }
}

/// The demo lens that `scripts/demo.sh` fits.
const DEMO_LENS: &str = "models/lenses/smollm2-135m-tuned";
/// The untrained talkative lens that `scripts/demo.sh` writes (`lensd init-talkative`).
const DEMO_TALKATIVE: &str = "models/lenses/smollm2-135m-talkative-untrained";
/// The trained talkative lens of the demo model, committed (lenses/README.md).
const DEMO_TALKATIVE_TRAINED: &str = "lenses/smollm2-135m-talkative-l15";

/// The second family of the demo: Gemma-3-270M (`scripts/fetch-gemma3.sh`), its fitted tuned
/// lens and an untrained talkative lens, which `scripts/demo.sh` prepares.
const GEMMA_MODEL: &str = "models/gemma-3-270m-q4_k_m.gguf";
const GEMMA_LENS: &str = "models/lenses/gemma3-270m-tuned";
const GEMMA_TALKATIVE: &str = "models/lenses/gemma3-270m-talkative-untrained";

/// `dir` made absolute, when it holds `file`.
fn present(dir: &str, file: &str) -> Option<PathBuf> {
    std::fs::canonicalize(dir)
        .ok()
        .filter(|p| p.join(file).is_file())
}

/// The Gemma-3-270M group of the embedded default, when its model file is present.
fn gemma_group() -> Option<serde_json::Value> {
    let model = std::fs::canonicalize(GEMMA_MODEL).ok()?;
    let mut models = vec![
        serde_json::json!({"id": "gemma3-logit", "name": "Logit lens", "lens": "logit",
        "description": "Gemma's own final norm and unembedding applied at every layer"}),
    ];
    if let Some(p) = present(GEMMA_LENS, "params.safetensors") {
        models.push(serde_json::json!({"id": "gemma3-tuned", "name": "Tuned lens", "lens": "tuned",
            "lens_checkpoint_path": p,
            "description": "Affine translators fitted in closed form on Python's documentation and licence texts"}));
    }
    if let Some(p) = present(GEMMA_TALKATIVE, "talkative.json") {
        models.push(serde_json::json!({"id": "gemma3-talkative-untrained",
            "name": "Talkative lens (untrained)", "lens": "talkative", "lens_checkpoint_path": p,
            "layer": 9,
            "description": "Never trained: it runs the talkative path on Gemma; its words mean nothing"}));
    }
    Some(
        serde_json::json!({"group_id": "gemma3-270m", "group_name": "Gemma 3 270M",
        "base_model_path": model,
        "description": "Gemma-3-270M (Q4_K_M GGUF), the family of the original site's default group, computing in f32",
        "models": models}),
    )
}

/// The embedded default: the demo model with the logit lens, the fitted demo tuned lens, the
/// trained talkative lens and an untrained one, in two groups that name the same base (one copy of it, and of the
/// lens, is loaded); and Gemma-3-270M's group when `scripts/demo.sh` has fetched it.
fn default_config(data: &Path) -> Result<PathBuf> {
    let model = std::fs::canonicalize(crate::DEMO_MODEL).with_context(|| {
        format!(
            "the demo model {} is missing: run scripts/fetch-demo-model.sh, or pass --config",
            crate::DEMO_MODEL
        )
    })?;
    let lens = present(DEMO_LENS, "params.safetensors");
    let tuned = |id: &str, name: &str| {
        lens.as_ref().map(|p| serde_json::json!({"id": id, "name": name, "lens": "tuned", "lens_checkpoint_path": p,
            "description": "Affine translators fitted in closed form on Python's documentation and licence texts"}))
    };
    if lens.is_none() {
        tracing::warn!("the demo tuned lens is missing ({DEMO_LENS}); serving the logit lens only. Run scripts/demo.sh to fit it");
    }
    let mut main = vec![
        serde_json::json!({"id": "smollm2-logit", "name": "Logit lens", "lens": "logit",
        "description": "The model's own final norm and unembedding applied at every layer"}),
    ];
    main.extend(tuned("smollm2-tuned", "Tuned lens"));
    let talkative = [
        (
            DEMO_TALKATIVE_TRAINED,
            serde_json::json!({"id": "smollm2-talkative", "name": "Talkative lens",
            "description": "Trained with the original's code on the docstrings of Python's standard library: it explains block 15's activation in eight tokens and reconstructs it from them (docs/talkative.md, \"The demo's trained lens\")"}),
            "run lensd from the repository's root",
        ),
        (
            DEMO_TALKATIVE,
            serde_json::json!({"id": "smollm2-talkative-untrained", "name": "Talkative lens (untrained)",
            "description": "Never trained: identity projections and prompts from token embeddings. It runs the whole talkative path (explanations, reconstruction, salience, KL); its words mean nothing"}),
            "run scripts/demo.sh to write it",
        ),
    ];
    for (dir, mut entry, remedy) in talkative {
        match present(dir, "talkative.json") {
            Some(p) => {
                entry["lens"] = "talkative".into();
                entry["layer"] = 15.into();
                entry["lens_checkpoint_path"] = serde_json::json!(p);
                main.push(entry);
            }
            None => tracing::warn!("the demo talkative lens {dir} is missing; {remedy}"),
        }
    }
    let mut compare = vec![
        serde_json::json!({"id": "smollm2-compare-logit", "name": "Logit lens (compare)", "lens": "logit"}),
    ];
    compare.extend(tuned("smollm2-compare-tuned", "Tuned lens (compare)"));
    let mut groups = vec![
        serde_json::json!({"group_id": "smollm2-135m", "group_name": "SmolLM2 135M Instruct", "base_model_path": model,
         "description": "The demo model, SmolLM2-135M-Instruct (Q4_1 GGUF), computing in f32", "models": main}),
        serde_json::json!({"group_id": "smollm2-135m-compare", "group_name": "SmolLM2 135M Instruct (second group)", "base_model_path": model,
         "description": "The same base file as the first group: lensd loads it once", "models": compare}),
    ];
    groups.extend(gemma_group());
    let doc = serde_json::json!({
        "model_groups": groups,
        "settings": {"default_group": "smollm2-135m"}
    });
    std::fs::create_dir_all(data).with_context(|| format!("cannot create {}", data.display()))?;
    let path = data.join("model_groups.default.json");
    std::fs::write(&path, serde_json::to_string_pretty(&doc)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// Reloads for the server's admin endpoint. Errors name the configuration file by role, not
/// by path: no response may contain a server path.
struct ServiceControl {
    service: Arc<Service>,
    path: PathBuf,
}

impl Control for ServiceControl {
    fn reload(&self) -> BoxFuture<Result<(Snapshot, RegistryDiff), String>> {
        let service = self.service.clone();
        let path = self.path.display().to_string();
        Box::pin(async move {
            let diff = service
                .reload()
                .await
                .map_err(|e| format!("{e:#}").replace(&path, "the configuration file"))?;
            Ok((
                Snapshot {
                    config: service.config(),
                    registry: service.registry().await,
                },
                diff,
            ))
        })
    }
}

/// How often freed heap pages are given back to the system.
const HEAP_TRIM_EVERY: Duration = Duration::from_secs(30);

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
    }
    tracing::info!("shutdown requested");
}

pub async fn run(mut o: ServeOptions) -> Result<()> {
    lensd::runtime::map_large_blocks();
    o.http.apply(&mut o.limits, raise_descriptor_limit())?;
    let config = match &o.config {
        Some(c) => c.clone(),
        None => default_config(&o.data)?,
    };
    let queue = QueueConfig {
        users_may_preload: o.users_may_preload,
        ..QueueConfig::default()
    };
    let engine = LocalEngine::on(&o.devices)?;
    for d in engine.device_list() {
        tracing::info!(device = %d.name, total_bytes = ?d.total_bytes, "computing on");
    }
    let service = Arc::new(Service::start_on(&config, queue, engine).await?);
    service.engine.set_max_input_tokens(o.max_tokens);
    let unembed = service.engine.set_unembed(o.unembed);
    if unembed != o.unembed {
        tracing::warn!(
            asked = o.unembed.name(),
            "this CPU lacks AVX-512 BF16: analyses unembed in f32"
        );
    }
    tracing::info!(unembed = unembed.name(), "analyses' unembedding");
    let keys = match &o.keys {
        Some(k) => Keys::from_file(k).map_err(anyhow::Error::msg)?,
        None => Keys::default(),
    };
    std::fs::create_dir_all(&o.data)
        .with_context(|| format!("cannot create {}", o.data.display()))?;
    let store = Arc::new(Store::open(&o.data.join("results.sqlite3"))?);
    let retention = Duration::from_secs(o.retention_days * 86_400);
    {
        // Results older than the retention period are removed now and every hour.
        let store = store.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(3600));
            loop {
                every.tick().await;
                let cutoff = unix_now() - retention.as_secs() as i64;
                let s = store.clone();
                match tokio::task::spawn_blocking(move || s.purge_older_than(cutoff)).await {
                    Ok(Ok(n)) if n > 0 => tracing::info!(removed = n, "old results removed"),
                    Ok(Err(e)) => tracing::warn!(%e, "old results not removed"),
                    _ => {}
                }
            }
        });
    }
    // Freed heap pages go back to the system every 30 s: under a steady load the allocator
    // otherwise keeps the pages of every block freed between its arenas' live ones.
    tokio::spawn(async {
        let mut every = tokio::time::interval(HEAP_TRIM_EVERY);
        loop {
            every.tick().await;
            let t = std::time::Instant::now();
            let _ = tokio::task::spawn_blocking(lensd::runtime::trim_heap).await;
            tracing::debug!(ms = t.elapsed().as_secs_f64() * 1e3, "heap trimmed");
        }
    });
    let log = Arc::new(
        RequestLog::open(&o.data.join("logs"))
            .with_context(|| format!("cannot open the request log in {}", o.data.display()))?,
    );
    let snapshot = Snapshot {
        config: service.config(),
        registry: service.registry().await,
    };
    let state = AppState::new(Parts {
        scheduler: service.scheduler.clone(),
        residency: service.residency.clone(),
        snapshot,
        control: Some(Arc::new(ServiceControl {
            service: service.clone(),
            path: config.clone(),
        })),
        keys,
        limits: o.limits,
        store: Some(store),
        log: Some(log),
        allowed_origins: o.allow_origins,
        web_dir: o.web_dir,
    });
    {
        // SIGHUP reloads the configuration like the admin endpoint does.
        let mut reloads = service.reload_on_sighup()?;
        let (state, service) = (state.clone(), service.clone());
        tokio::spawn(async move {
            while let Some(outcome) = reloads.recv().await {
                if outcome.is_ok() {
                    state.set_snapshot(Snapshot {
                        config: service.config(),
                        registry: service.registry().await,
                    });
                    state.residency_changed("reloaded");
                }
            }
        });
    }
    let listener = tokio::net::TcpListener::bind(&o.addr)
        .await
        .with_context(|| format!("cannot listen on {}", o.addr))?;
    let addr = listener.local_addr()?;
    // The first line on standard output says where to connect (tests read it).
    println!("lensd listening on http://{addr}");
    tracing::info!(%addr, config = %config.display(), "serving");
    lensd_server::serve(state, listener, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}
