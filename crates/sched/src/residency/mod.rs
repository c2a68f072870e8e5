//! Residency: where each base and lens lives (device, host or disk), within byte budgets.
//!
//! One actor owns the state; [`Residency`] is its clonable handle. Work asks for a model with
//! [`Residency::acquire`] and receives a [`Lease`] once the model's base and lens are on the
//! device; while any lease lives they are never moved or evicted. Everything else is evicted
//! least recently used first when room is needed, demoted to the host tier when it fits there.

mod actor;
mod state;
mod types;

use std::sync::Arc;
use std::time::Duration;

use lensd_core::config::Budgets;
use lensd_core::engine::{Engine, MemoryProbe};
use lensd_core::registry::Registry;
use lensd_core::residency::Tier;
use tokio::sync::{broadcast, mpsc, oneshot};

pub use types::{
    EntryReport, EntryState, Lease, MemoryReport, PlacementChanged, PreloadEvent, ResidencyError,
    TierUsage, UnloadReport,
};

use actor::{Actor, Command};
use state::State;

/// Commands waiting for the actor; senders wait when it is full.
const COMMAND_QUEUE: usize = 256;
/// Placement changes kept for slow listeners; one that falls further behind skips ahead.
const CHANGES_KEPT: usize = 64;

#[derive(Clone)]
pub struct Residency {
    tx: mpsc::Sender<Command>,
    changes: broadcast::Sender<PlacementChanged>,
}

pub struct Options {
    /// How often device entries are checked against their keep-alive.
    pub sweep: Duration,
    /// Reads the process's resident memory for the report.
    pub memory: Option<Arc<dyn MemoryProbe>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            sweep: Duration::from_secs(5),
            memory: None,
        }
    }
}

impl Residency {
    /// Starts the actor on the current tokio runtime.
    pub fn start(
        registry: Registry,
        budgets: Budgets,
        engine: Arc<dyn Engine>,
        options: Options,
    ) -> Residency {
        let (tx, commands) = mpsc::channel(COMMAND_QUEUE);
        let (changes, _) = broadcast::channel(CHANGES_KEPT);
        let (internal_tx, internal_rx) = mpsc::unbounded_channel();
        let state = State::new(
            registry,
            budgets,
            engine.shared_memory(),
            internal_tx.clone(),
        );
        let actor = Actor {
            state,
            engine,
            memory: options.memory,
            commands,
            internal_rx,
            internal_tx,
            start: tokio::time::Instant::now(),
            sweep: options.sweep,
            changes: changes.clone(),
        };
        tokio::spawn(actor.run());
        Residency { tx, changes }
    }

    /// Every later change of where resources live, whoever caused it.
    pub fn changes(&self) -> broadcast::Receiver<PlacementChanged> {
        self.changes.subscribe()
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, ResidencyError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| ResidencyError::Stopped)?;
        rx.await.map_err(|_| ResidencyError::Stopped)
    }

    /// Waits until `model`'s base and lens are on the device and leases them.
    pub async fn acquire(&self, model: &str) -> Result<Lease, ResidencyError> {
        self.acquire_all(&[model.to_string()], None).await
    }

    /// Waits until the base and lenses of every model in `models` (which share one base) are
    /// on the device and leases them together. Loads it waits for are reported on `progress`.
    pub async fn acquire_all(
        &self,
        models: &[String],
        progress: Option<mpsc::UnboundedSender<PreloadEvent>>,
    ) -> Result<Lease, ResidencyError> {
        let models = models.to_vec();
        self.ask(|reply| Command::Acquire {
            models,
            progress,
            reply,
        })
        .await?
    }

    /// Starts bringing every resource of `group` to `tier` (device or host). Events report each
    /// resource's progress and end with `Done` or `Failed`.
    pub async fn preload(
        &self,
        group: &str,
        tier: Tier,
    ) -> Result<mpsc::UnboundedReceiver<PreloadEvent>, ResidencyError> {
        let (events, rx) = mpsc::unbounded_channel();
        let group = group.to_string();
        self.ask(|reply| Command::Preload {
            group,
            tier,
            events,
            reply,
        })
        .await??;
        Ok(rx)
    }

    /// Demotes the group's idle resources to the host tier, or frees them (`Tier::Disk`).
    pub async fn unload(&self, group: &str, to: Tier) -> Result<UnloadReport, ResidencyError> {
        let group = group.to_string();
        self.ask(|reply| Command::Unload { group, to, reply })
            .await?
    }

    /// Applies a new configuration; unchanged resources keep their place.
    pub async fn reload(&self, registry: Registry, budgets: Budgets) -> Result<(), ResidencyError> {
        self.ask(|reply| Command::Reload {
            registry,
            budgets,
            reply,
        })
        .await?
    }

    pub async fn report(&self) -> Result<MemoryReport, ResidencyError> {
        self.ask(|reply| Command::Report { reply }).await
    }
}
