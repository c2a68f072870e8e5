//! The task that owns the residency [`State`]: it takes commands from handles, runs engine
//! jobs (loads and transfers) concurrently, feeds their results back into the state, and
//! publishes the layout of the devices after every change.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use lensd_core::config::{Budgets, Placement};
use lensd_core::engine::{BoxFuture, Engine, EngineFailure, MemoryProbe};
use lensd_core::registry::{Registry, ResourceKey};
use lensd_core::residency::{DeviceId, Place, Tier};
use lensd_core::work::panic_text;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;

use super::state::{Effect, State};
use super::types::{
    Layout, Lease, MemoryReport, PlacementChanged, PreloadEvent, ResidencyError, UnloadReport,
};

pub(crate) enum Command {
    Acquire {
        models: Vec<String>,
        device: Option<DeviceId>,
        progress: Option<mpsc::UnboundedSender<PreloadEvent>>,
        reply: oneshot::Sender<Result<Lease, ResidencyError>>,
    },
    Preload {
        group: String,
        tier: Tier,
        events: mpsc::UnboundedSender<PreloadEvent>,
        reply: oneshot::Sender<Result<(), ResidencyError>>,
    },
    Unload {
        group: String,
        to: Tier,
        reply: oneshot::Sender<Result<UnloadReport, ResidencyError>>,
    },
    Reload {
        registry: Registry,
        budgets: Budgets,
        placement: Option<Placement>,
        reply: oneshot::Sender<Result<(), ResidencyError>>,
    },
    Report {
        reply: oneshot::Sender<MemoryReport>,
    },
    DeviceFailed {
        device: DeviceId,
        why: String,
    },
}

/// Messages from leases and engine jobs back to the actor.
#[derive(Debug)]
pub(crate) enum Internal {
    Released(Vec<(ResourceKey, Place)>),
    JobDone {
        job: u64,
        result: Result<(), String>,
        /// Devices the job concerned that the engine says are lost.
        lost: Vec<(DeviceId, String)>,
    },
    Progress {
        job: u64,
        done: u64,
        total: u64,
    },
}

pub(crate) struct Actor {
    pub state: State,
    pub engine: Arc<dyn Engine>,
    pub memory: Option<Arc<dyn MemoryProbe>>,
    pub commands: mpsc::Receiver<Command>,
    pub internal_rx: mpsc::UnboundedReceiver<Internal>,
    pub internal_tx: mpsc::UnboundedSender<Internal>,
    pub start: Instant,
    /// How often idle entries are checked against their keep-alive.
    pub sweep: Duration,
    pub changes: broadcast::Sender<PlacementChanged>,
    pub layout: watch::Sender<Layout>,
}

impl Actor {
    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    pub async fn run(mut self) {
        let mut sweep = tokio::time::interval(self.sweep);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut placement = self.state.placement();
        loop {
            // Biased toward internal messages: a lease dropped just before a command is sent
            // must be seen as released by that command.
            let (effects, reply) = tokio::select! {
                biased;
                Some(msg) = self.internal_rx.recv() => (self.internal(msg), None),
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.command(cmd),
                    None => break,
                },
                _ = sweep.tick() => {
                    let now = self.now();
                    (self.state.expire(now), None)
                }
            };
            // Memory is freed before the command is answered, so that an answered unload or
            // reload has really given its memory back.
            self.apply(effects);
            if let Some(reply) = reply {
                reply();
            }
            self.layout.send_if_modified(|old| {
                let new = self.state.layout();
                let changed = *old != new;
                *old = new;
                changed
            });
            let now_placed = self.state.placement();
            if now_placed != placement {
                let in_flight = now_placed.iter().filter(|(_, _, busy)| *busy).count();
                // Nobody listening is fine.
                let _ = self.changes.send(PlacementChanged { in_flight });
                placement = now_placed;
            }
            let broken = self.state.violations();
            if !broken.is_empty() {
                tracing::error!(?broken, "residency bookkeeping rule broken");
            }
        }
    }

    fn command(&mut self, cmd: Command) -> (Vec<Effect>, Option<Reply>) {
        let now = self.now();
        match cmd {
            Command::Acquire {
                models,
                device,
                progress,
                reply,
            } => (
                self.state.acquire(models, device, progress, reply, now),
                None,
            ),
            Command::Preload {
                group,
                tier,
                events,
                reply,
            } => answer(
                reply,
                self.state
                    .preload(group, tier, events, now)
                    .map(|fx| ((), fx)),
            ),
            Command::Unload { group, to, reply } => {
                answer(reply, self.state.unload(&group, to, now))
            }
            Command::Reload {
                registry,
                budgets,
                placement,
                reply,
            } => answer(
                reply,
                self.state
                    .reload(registry, budgets, placement, now)
                    .map(|fx| ((), fx)),
            ),
            Command::Report { reply } => {
                let rss = self.memory.as_ref().and_then(|m| m.resident_bytes());
                let driver: BTreeMap<_, _> = self
                    .engine
                    .devices()
                    .iter()
                    .filter_map(|d| self.engine.driver_memory(d.id).map(|m| (d.id, m)))
                    .collect();
                let mut report = self.state.report(now, rss, &driver);
                report.process_heap = self.memory.as_ref().and_then(|m| m.heap());
                report.process_mapped_weight_bytes =
                    self.memory.as_ref().and_then(|m| m.mapped_weight_bytes());
                let _ = reply.send(report);
                (Vec::new(), None)
            }
            Command::DeviceFailed { device, why } => {
                (self.state.device_failed(device, why, now), None)
            }
        }
    }

    fn internal(&mut self, msg: Internal) -> Vec<Effect> {
        let now = self.now();
        match msg {
            Internal::Released(keys) => self.state.released(keys, now),
            Internal::JobDone { job, result, lost } => {
                let mut effects = self.state.job_done(job, result, now);
                for (device, why) in lost {
                    effects.extend(self.state.device_failed(device, why, now));
                }
                effects
            }
            Internal::Progress { job, done, total } => {
                self.state.progress(job, done, total);
                Vec::new()
            }
        }
    }

    /// Starts engine jobs and frees memory as the state asked.
    fn apply(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Release { key, place } => {
                    tracing::debug!(resource = %key, %place, "freeing");
                    self.engine.release(&key, place);
                }
                Effect::Load {
                    job,
                    key,
                    source,
                    place,
                } => {
                    tracing::debug!(resource = %key, %place, "loading");
                    let progress_tx = self.internal_tx.clone();
                    let progress = Box::new(move |done, total| {
                        let _ = progress_tx.send(Internal::Progress { job, done, total });
                    });
                    let fut = self.engine.load(key, source, place, progress);
                    self.spawn(job, fut, "load", [place]);
                }
                Effect::Transfer { job, key, from, to } => {
                    tracing::debug!(resource = %key, %from, %to, "copying");
                    let fut = self.engine.transfer(key, from, to);
                    self.spawn(job, fut, "move", [from, to]);
                }
            }
        }
    }

    /// Runs an engine job on a task of its own and reports its end, with the devices it
    /// concerned that the engine says are lost when it failed.
    fn spawn<const N: usize>(
        &self,
        job: u64,
        fut: BoxFuture<Result<(), EngineFailure>>,
        what: &'static str,
        places: [Place; N],
    ) {
        let tx = self.internal_tx.clone();
        let engine = self.engine.clone();
        tokio::spawn(async move {
            let result = engine_result(fut, what).await;
            let lost = if result.is_err() {
                places
                    .iter()
                    .filter_map(|p| p.device())
                    .filter_map(|d| engine.device_lost(d).map(|why| (d, why)))
                    .collect()
            } else {
                Vec::new()
            };
            let _ = tx.send(Internal::JobDone { job, result, lost });
        });
    }
}

/// Awaits an engine load or move on a task of its own, so that a panic inside the engine
/// becomes that job's failure (and the entry can be tried again) rather than a job that
/// never ends.
async fn engine_result(
    fut: BoxFuture<Result<(), EngineFailure>>,
    what: &str,
) -> Result<(), String> {
    match tokio::spawn(fut).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(e) => Err(match e.try_into_panic() {
            Ok(payload) => format!(
                "the {what} failed unexpectedly inside the engine ({})",
                panic_text(payload.as_ref())
            ),
            Err(e) => format!("the {what} was stopped: {e}"),
        }),
    }
}

/// An answer to send once the command's effects have been carried out.
type Reply = Box<dyn FnOnce() + Send>;

/// Splits a command's outcome into its effects (none when it failed) and its answer.
fn answer<T: Send + 'static>(
    reply: oneshot::Sender<Result<T, ResidencyError>>,
    outcome: Result<(T, Vec<Effect>), ResidencyError>,
) -> (Vec<Effect>, Option<Reply>) {
    match outcome {
        Ok((value, effects)) => (
            effects,
            Some(Box::new(move || {
                let _ = reply.send(Ok(value));
            })),
        ),
        Err(e) => (
            Vec::new(),
            Some(Box::new(move || {
                let _ = reply.send(Err(e));
            })),
        ),
    }
}
