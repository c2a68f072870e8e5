//! What every handler shares: the actors, the configuration snapshot, keys, limits, tracked
//! requests, storage, and shutdown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use lensd_core::engine::BoxFuture;
use lensd_core::registry::RegistryDiff;
use lensd_sched::queue::Scheduler;
use lensd_sched::residency::{MemoryReport, Residency};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;

use crate::auth::Keys;
use crate::limits::{Limits, Rate};
use crate::reqlog::RequestLog;
use crate::store::Store;
use crate::tracker::Requests;
use crate::views::{Snapshot, DEFAULT_LOAD_BYTES_PER_MS};

/// Operations the server asks of the process that runs it.
pub trait Control: Send + Sync + 'static {
    /// Reads the configuration again and applies it; returns the new snapshot and what changed.
    fn reload(&self) -> BoxFuture<Result<(Snapshot, RegistryDiff), String>>;
}

pub struct AppState {
    pub scheduler: Scheduler,
    pub residency: Residency,
    pub snapshot: RwLock<Arc<Snapshot>>,
    pub control: Option<Arc<dyn Control>>,
    pub keys: Keys,
    /// Failed authentications per client address.
    pub auth: crate::auth::AuthThrottle,
    pub limits: Limits,
    pub rate: Rate,
    /// Compute each client used over the last minute (`limits.roles`).
    pub compute: crate::roles::ComputeLedger,
    pub requests: Requests,
    pub store: Option<Arc<Store>>,
    pub log: Option<Arc<RequestLog>>,
    /// Each client's current model (v1 switch, `switch_model`), by client label.
    pub defaults: Mutex<HashMap<String, String>>,
    pub metrics: Option<PrometheusHandle>,
    /// Measured speed of bringing bases in, for switch estimates.
    pub load_bytes_per_ms: AtomicU64,
    /// WebSocket sessions open (`limits.max_connections`).
    pub connections: AtomicUsize,
    /// HTTP connections open, with their caps (`limits.max_http_connections`).
    pub http: Arc<crate::conn::Connections>,
    pub next_connection: AtomicU64,
    /// Set once shutdown begins: no new work is accepted.
    pub closing: AtomicBool,
    /// Tells WebSocket sessions how shutdown goes.
    pub shutdown: watch::Sender<Phase>,
    pub allowed_origins: Vec<String>,
    /// Where to read the web page from instead of the built-in copy.
    pub web_dir: Option<std::path::PathBuf>,
    /// Messages for every connected client (residency changes).
    pub broadcast: tokio::sync::broadcast::Sender<crate::protocol::ServerMessage>,
    /// Requests made over the original's REST routes, polled by id.
    pub original_jobs: Arc<crate::original::jobs::Jobs>,
}

pub type Shared = Arc<AppState>;

/// Where the server is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Serving,
    /// No new work; running work may finish within the grace period.
    Draining,
    /// Everything has ended; connections close.
    Closing,
}

/// What the server needs to start; the rest has defaults.
pub struct Parts {
    pub scheduler: Scheduler,
    pub residency: Residency,
    pub snapshot: Snapshot,
    pub control: Option<Arc<dyn Control>>,
    pub keys: Keys,
    pub limits: Limits,
    pub store: Option<Arc<Store>>,
    pub log: Option<Arc<RequestLog>>,
    pub allowed_origins: Vec<String>,
    pub web_dir: Option<std::path::PathBuf>,
}

impl AppState {
    pub fn new(p: Parts) -> Shared {
        let (shutdown, _) = watch::channel(Phase::Serving);
        let broadcast = tokio::sync::broadcast::channel(64).0;
        forward_placement(p.residency.changes(), broadcast.clone());
        let http = crate::conn::Connections::new(
            p.limits.max_http_connections,
            p.limits.max_http_connections_per_address,
        );
        Arc::new(AppState {
            scheduler: p.scheduler,
            residency: p.residency,
            snapshot: RwLock::new(Arc::new(p.snapshot)),
            control: p.control,
            rate: Rate::new(&p.limits),
            compute: crate::roles::ComputeLedger::default(),
            auth: crate::auth::AuthThrottle::new(p.limits.auth_failures_per_minute),
            keys: p.keys,
            limits: p.limits,
            requests: Requests::default(),
            store: p.store,
            log: p.log,
            defaults: Mutex::new(HashMap::new()),
            metrics: crate::metrics::handle(),
            load_bytes_per_ms: AtomicU64::new(DEFAULT_LOAD_BYTES_PER_MS),
            connections: AtomicUsize::new(0),
            http,
            next_connection: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            shutdown,
            allowed_origins: p.allowed_origins,
            web_dir: p.web_dir,
            broadcast,
            original_jobs: Default::default(),
        })
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_snapshot(&self, s: Snapshot) {
        *self.snapshot.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(s);
    }

    pub async fn report(&self) -> Option<MemoryReport> {
        self.residency.report().await.ok()
    }

    pub fn default_model(&self, client: &str) -> Option<String> {
        self.defaults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(client)
            .cloned()
    }

    pub fn set_default_model(&self, client: &str, model: &str) {
        self.defaults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(client.to_string(), model.to_string());
    }

    pub fn bytes_per_ms(&self) -> u64 {
        self.load_bytes_per_ms.load(Ordering::Relaxed)
    }

    /// Tells every connected client that the models or where they live have changed.
    pub fn residency_changed(&self, reason: &str) {
        let _ = self
            .broadcast
            .send(crate::protocol::ServerMessage::ResidencyChanged {
                reason: reason.to_string(),
            });
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }
}

/// Tells every connected client when where models live changes, whoever caused it: a load for
/// anyone's request, a preload, an unload, an eviction, a keep-alive expiry.
fn forward_placement(
    mut changes: tokio::sync::broadcast::Receiver<lensd_sched::residency::PlacementChanged>,
    clients: tokio::sync::broadcast::Sender<crate::protocol::ServerMessage>,
) {
    use tokio::sync::broadcast::error::RecvError;
    tokio::spawn(async move {
        loop {
            let reason = match changes.recv().await {
                Ok(c) if c.in_flight > 0 => "loading",
                Ok(_) => "settled",
                // The next notice tells the state after the ones skipped.
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => break,
            };
            // No client connected is fine.
            let _ = clients.send(crate::protocol::ServerMessage::ResidencyChanged {
                reason: reason.to_string(),
            });
        }
    });
}
