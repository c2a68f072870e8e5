//! Residency: where each base and lens lives (on which devices, on the host, or on disk),
//! within byte budgets: one per device, and one for the host tier they share.
//!
//! One actor owns the state; [`Residency`] is its clonable handle. Work asks for a model on a
//! device with [`Residency::acquire_on`] and receives a [`Lease`] once the model's base and
//! lens are there; while any lease lives those copies are never moved or evicted. A resource
//! may have a copy on several devices. Everything else is evicted least recently used first
//! when room is needed, demoted to the host tier when it fits there and no other copy remains.

mod actor;
mod state;
mod types;

use std::sync::Arc;
use std::time::Duration;

use lensd_core::config::{Budgets, Placement};
use lensd_core::engine::{Engine, MemoryProbe};
use lensd_core::registry::Registry;
use lensd_core::residency::{DeviceId, Tier};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

pub use types::{
    CopyLayout, DeviceLayout, DeviceUsage, EntryReport, EntryState, Layout, Lease, MemoryReport,
    PlacementChanged, PreloadEvent, ResidencyError, TierUsage, UnloadReport,
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
    layout: watch::Receiver<Layout>,
}

pub struct Options {
    /// How often device entries are checked against their keep-alive.
    pub sweep: Duration,
    /// Reads the process's resident memory for the report.
    pub memory: Option<Arc<dyn MemoryProbe>>,
    /// Each device's budget where it differs from `Budgets::device`, and the groups pinned to
    /// devices. Pins naming a device the engine lacks are ignored (check them first with
    /// `Placement::resolve`).
    pub placement: Placement,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            sweep: Duration::from_secs(5),
            memory: None,
            placement: Placement::default(),
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
            options.placement,
            engine.shared_memory(),
            engine.devices(),
            internal_tx.clone(),
        );
        let (layout_tx, layout) = watch::channel(state.layout());
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
            layout: layout_tx,
        };
        tokio::spawn(actor.run());
        Residency {
            tx,
            changes,
            layout,
        }
    }

    /// Where things are on each device now, and after every change.
    pub fn layout(&self) -> watch::Receiver<Layout> {
        self.layout.clone()
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

    /// Waits until `model`'s base and lens are on a device (one that holds them, else the one
    /// placement picks) and leases them.
    pub async fn acquire(&self, model: &str) -> Result<Lease, ResidencyError> {
        self.acquire_all(&[model.to_string()], None).await
    }

    /// Waits until the base and lenses of every model in `models` (which share one base) are
    /// on a device (one that holds them, else the one placement picks) and leases them
    /// together. Loads it waits for are reported on `progress`.
    pub async fn acquire_all(
        &self,
        models: &[String],
        progress: Option<mpsc::UnboundedSender<PreloadEvent>>,
    ) -> Result<Lease, ResidencyError> {
        self.acquire_where(models, None, progress).await
    }

    /// As [`Residency::acquire_all`], on `device`.
    pub async fn acquire_on(
        &self,
        models: &[String],
        device: DeviceId,
        progress: Option<mpsc::UnboundedSender<PreloadEvent>>,
    ) -> Result<Lease, ResidencyError> {
        self.acquire_where(models, Some(device), progress).await
    }

    async fn acquire_where(
        &self,
        models: &[String],
        device: Option<DeviceId>,
        progress: Option<mpsc::UnboundedSender<PreloadEvent>>,
    ) -> Result<Lease, ResidencyError> {
        let models = models.to_vec();
        self.ask(|reply| Command::Acquire {
            models,
            device,
            progress,
            reply,
        })
        .await?
    }

    /// `device` was lost: its copies leave the books, requests waiting for it fail, and nothing
    /// is placed on it again.
    pub async fn device_failed(&self, device: DeviceId, why: String) {
        let _ = self.tx.send(Command::DeviceFailed { device, why }).await;
    }

    /// Starts bringing every resource of `group` to the host, or to a device (one that holds
    /// its base, else one with room; its pins respected). Events report each resource's
    /// progress and end with `Done` or `Failed`.
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

    /// Applies a new configuration; unchanged resources keep their place, and so do the
    /// device budgets and pins.
    pub async fn reload(&self, registry: Registry, budgets: Budgets) -> Result<(), ResidencyError> {
        self.reload_where(registry, budgets, None).await
    }

    /// As [`Residency::reload`], with new device budgets and pins; a pin naming a device the
    /// engine lacks is refused and changes nothing.
    pub async fn reload_placed(
        &self,
        registry: Registry,
        budgets: Budgets,
        placement: Placement,
    ) -> Result<(), ResidencyError> {
        self.reload_where(registry, budgets, Some(placement)).await
    }

    async fn reload_where(
        &self,
        registry: Registry,
        budgets: Budgets,
        placement: Option<Placement>,
    ) -> Result<(), ResidencyError> {
        self.ask(|reply| Command::Reload {
            registry,
            budgets,
            placement,
            reply,
        })
        .await?
    }

    pub async fn report(&self) -> Result<MemoryReport, ResidencyError> {
        self.ask(|reply| Command::Report { reply }).await
    }
}
