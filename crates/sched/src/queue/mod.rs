//! The request queue and its device workers, one per device: every request names its own
//! models, waits its turn under the scheduling policy (see [`policy`]) and the placement rules
//! (see `placement.rs`), and streams its events until exactly one terminal event. Nobody's
//! request changes what another client gets.

mod cancel;
mod placement;
pub mod policy;
mod state;
mod worker;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use lensd_core::engine::Engine;
use lensd_core::registry::{Registry, ResourceKey};
use lensd_core::residency::{DeviceId, Tier};
use lensd_core::work::{ClientId, RequestEvent, RequestId, Work};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

pub use policy::PolicyKind;
pub use state::Finished;

use crate::residency::{Layout, Residency};
use state::{State, Task};

#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Requests waiting at most; beyond it submissions fail with `queue_full`.
    pub capacity: usize,
    /// Requests one client may have waiting.
    pub per_client: usize,
    /// Waiting longer than this puts a request first, whatever its base.
    pub aging: Duration,
    pub policy: PolicyKind,
    /// Assumed cost of switching bases until one has been measured.
    pub initial_switch_cost: Duration,
    /// Assumed bytes loaded per millisecond until a load has been measured; the replication
    /// rule estimates a copy's time from it.
    pub initial_load_bytes_per_ms: u64,
    /// How often deadlines and aging are checked.
    pub tick: Duration,
    /// Whether any client may preload a group when switching models (else only admins).
    pub users_may_preload: bool,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            capacity: 256,
            per_client: 16,
            aging: Duration::from_secs(30),
            policy: PolicyKind::GroupAware,
            initial_switch_cost: Duration::from_secs(1),
            // 1 GiB/s.
            initial_load_bytes_per_ms: 1 << 20,
            tick: Duration::from_millis(250),
            users_may_preload: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("the queue is full ({limit} requests waiting); try again later")]
    QueueFull { limit: usize },
    #[error("this client already has {limit} requests waiting, the most allowed; wait for one to finish")]
    ClientLimit { limit: usize },
    #[error("unknown model `{0}`")]
    UnknownModel(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the scheduler has stopped")]
    Stopped,
}

impl SubmitError {
    /// The stable name clients see.
    pub fn error_type(&self) -> &'static str {
        match self {
            SubmitError::QueueFull { .. } => "queue_full",
            SubmitError::ClientLimit { .. } => "client_limit",
            SubmitError::UnknownModel(_) => "unknown_model",
            SubmitError::Invalid(_) => "invalid_request",
            SubmitError::Stopped => "unavailable",
        }
    }
}

/// What a model switch did: the client's default changed, nothing else was disturbed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Switched {
    pub model: String,
    pub group: String,
    /// The model's base is already on the device: its next request starts at once.
    pub fast_switch: bool,
    /// Whether a preload of the group was started.
    pub preloading: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueStatus {
    pub queued: usize,
    pub running: bool,
    /// Requests running now, at most one per device.
    pub running_jobs: usize,
}

/// How a request's time went, as its worker measured it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Timing {
    /// Time to bring its base in, when it was not on the device.
    pub switch_cost_ms: Option<u64>,
    /// Time its computation took once leased.
    pub service_ms: Option<u64>,
    /// Bytes read from disk for it, and the time that took.
    pub loaded: Option<(u64, u64)>,
}

pub(crate) enum Command {
    Submit {
        client: ClientId,
        work: Work,
        deadline: Option<Duration>,
        compute: Option<Duration>,
        reply: oneshot::Sender<
            Result<(RequestId, mpsc::UnboundedReceiver<RequestEvent>), SubmitError>,
        >,
    },
    Cancel {
        id: RequestId,
        reason: String,
        reply: oneshot::Sender<bool>,
    },
    CancelClient {
        client: ClientId,
        reply: oneshot::Sender<usize>,
    },
    Next {
        device: DeviceId,
        reply: oneshot::Sender<Task>,
    },
    Finished {
        id: RequestId,
        outcome: Finished,
        timing: Timing,
    },
    /// A device's worker stopped because its device was lost.
    DeviceLost {
        device: DeviceId,
    },
    SetRegistry {
        registry: Registry,
    },
    Switch {
        client: ClientId,
        model: String,
        preload: bool,
        admin: bool,
        reply: oneshot::Sender<Result<Switched, SubmitError>>,
    },
    Status {
        reply: oneshot::Sender<QueueStatus>,
    },
}

#[derive(Clone)]
pub struct Scheduler {
    tx: mpsc::Sender<Command>,
}

struct Actor {
    state: State,
    commands: mpsc::Receiver<Command>,
    /// Workers waiting for work, by device.
    idle: BTreeMap<DeviceId, oneshot::Sender<Task>>,
    layout: tokio::sync::watch::Receiver<Layout>,
    defaults: HashMap<ClientId, String>,
    residency: Residency,
    config: QueueConfig,
    start: Instant,
}

impl Actor {
    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    async fn run(mut self) {
        let mut tick = tokio::time::interval(self.config.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut layout_open = true;
        loop {
            tokio::select! {
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.command(cmd),
                    None => break,
                },
                _ = tick.tick() => {
                    let now = self.now();
                    self.state.expire(now);
                }
                changed = self.layout.changed(), if layout_open => {
                    layout_open = changed.is_ok();
                }
            }
            self.dispatch();
        }
    }

    /// Hands waiting requests to idle workers, as the policy and placement pick them.
    fn dispatch(&mut self) {
        self.state
            .set_layout(self.layout.borrow_and_update().clone());
        self.state.fail_stranded();
        let now = self.now();
        loop {
            let idle: Vec<DeviceId> = self.idle.keys().copied().collect();
            let Some((device, task)) = self.state.next(&idle, now) else {
                return;
            };
            let reply = self.idle.remove(&device).expect("an idle worker");
            if let Err(task) = reply.send(task) {
                // The worker is gone; nobody will run this request.
                let _ = task.events.send(RequestEvent::Error {
                    error_type: "unavailable".into(),
                    message: "the compute worker stopped".into(),
                });
                self.state.finished(task.id, Finished::Failed, None, now);
            }
        }
    }

    fn command(&mut self, cmd: Command) {
        let now = self.now();
        match cmd {
            Command::Submit {
                client,
                mut work,
                deadline,
                compute,
                reply,
            } => {
                if work.models().is_empty() {
                    if let Some(m) = self.defaults.get(&client) {
                        match &mut work {
                            Work::Analyze(a) => a.models = vec![m.clone()],
                            Work::Generate(g) => g.model = m.clone(),
                        }
                    }
                }
                // A deadline too far to count in milliseconds is no deadline in practice; it
                // must never wrap round to the past.
                let deadline_ms = deadline
                    .map(|d| now.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)));
                let submitted = self.state.submit(client, work, deadline_ms, now);
                if let (Ok((id, _)), Some(c)) = (&submitted, compute) {
                    self.state
                        .limit_compute(*id, u64::try_from(c.as_millis()).unwrap_or(u64::MAX));
                }
                let _ = reply.send(submitted);
            }
            Command::Cancel { id, reason, reply } => {
                let _ = reply.send(self.state.cancel(id, &reason, now));
            }
            Command::CancelClient { client, reply } => {
                self.defaults.remove(&client);
                let _ = reply.send(self.state.cancel_client(&client, now));
            }
            Command::Next { device, reply } => {
                self.idle.insert(device, reply);
            }
            Command::Finished {
                id,
                outcome,
                timing,
            } => {
                if let Some(base) = self.state.running_base(id) {
                    self.state.measured(&base, timing.service_ms, timing.loaded);
                }
                self.state.finished(id, outcome, timing.switch_cost_ms, now)
            }
            Command::DeviceLost { device } => {
                self.idle.remove(&device);
                self.state.device_lost(device);
            }
            Command::SetRegistry { registry } => {
                self.defaults.retain(|_, m| registry.models.contains_key(m));
                self.state.set_registry(registry, now);
            }
            Command::Switch {
                client,
                model,
                preload,
                admin,
                reply,
            } => {
                let Some(m) = self.state.registry().models.get(&model) else {
                    let _ = reply.send(Err(SubmitError::UnknownModel(model)));
                    return;
                };
                let base = ResourceKey::Base(m.base.clone());
                let layout = self.layout.borrow();
                let fast_switch = layout.devices.iter().any(|d| {
                    !d.failed && self.idle.contains_key(&d.id) && layout.ready(d.id, &base)
                });
                drop(layout);
                let group = m.group.clone();
                let preloading = preload && (admin || self.config.users_may_preload);
                if preloading {
                    let residency = self.residency.clone();
                    let g = group.clone();
                    // In the background: a switch never waits for weights or blocks others.
                    tokio::spawn(async move {
                        if let Ok(mut events) = residency.preload(&g, Tier::Device).await {
                            while events.recv().await.is_some() {}
                        }
                    });
                }
                self.defaults.insert(client, model.clone());
                let _ = reply.send(Ok(Switched {
                    model,
                    group,
                    fast_switch,
                    preloading,
                }));
            }
            Command::Status { reply } => {
                let _ = reply.send(QueueStatus {
                    queued: self.state.queued_len(),
                    running: self.state.is_running(),
                    running_jobs: self.state.running_count(),
                });
            }
        }
    }
}

impl Scheduler {
    /// Starts the queue actor and one compute worker for each of `engine`'s devices.
    pub fn start(
        config: QueueConfig,
        registry: Registry,
        residency: Residency,
        engine: Arc<dyn Engine>,
    ) -> Scheduler {
        let (tx, commands) = mpsc::channel(1024);
        let start = Instant::now();
        let layout = residency.layout();
        let mut state = State::new(config.clone(), registry);
        state.set_layout(layout.borrow().clone());
        let actor = Actor {
            state,
            commands,
            idle: BTreeMap::new(),
            layout,
            defaults: HashMap::new(),
            residency: residency.clone(),
            config,
            start,
        };
        tokio::spawn(actor.run());
        for device in engine.devices() {
            let worker = worker::Worker {
                device: device.id,
                commands: tx.clone(),
                residency: residency.clone(),
                engine: engine.clone(),
                start,
            };
            tokio::spawn(worker.run());
        }
        Scheduler { tx }
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.ok()?;
        rx.await.ok()
    }

    /// Queues `work` for `client`; its events arrive on the returned receiver, beginning with
    /// `queued`. With no model named, the client's default (see [`Scheduler::switch_model`]).
    pub async fn submit(
        &self,
        client: &ClientId,
        work: Work,
        deadline: Option<Duration>,
    ) -> Result<(RequestId, mpsc::UnboundedReceiver<RequestEvent>), SubmitError> {
        self.submit_limited(client, work, deadline, None).await
    }

    /// As [`Scheduler::submit`], and once running the request may compute for at most
    /// `compute`; past it, it ends with a `compute_limit` error (its rows so far partial).
    pub async fn submit_limited(
        &self,
        client: &ClientId,
        work: Work,
        deadline: Option<Duration>,
        compute: Option<Duration>,
    ) -> Result<(RequestId, mpsc::UnboundedReceiver<RequestEvent>), SubmitError> {
        let client = client.clone();
        self.ask(|reply| Command::Submit {
            client,
            work,
            deadline,
            compute,
            reply,
        })
        .await
        .unwrap_or(Err(SubmitError::Stopped))
    }

    /// Cancels a request at its client's wish; false when it is unknown or already over.
    pub async fn cancel(&self, id: RequestId) -> bool {
        self.cancel_because(id, "cancelled by the client").await
    }

    /// Cancels a request, telling its client `reason`; false when it is unknown or already
    /// over.
    pub async fn cancel_because(&self, id: RequestId, reason: &str) -> bool {
        let reason = reason.to_string();
        self.ask(|reply| Command::Cancel { id, reason, reply })
            .await
            .unwrap_or(false)
    }

    /// Cancels all of a client's work (it disconnected); returns how many requests.
    pub async fn cancel_client(&self, client: &ClientId) -> usize {
        let client = client.clone();
        self.ask(|reply| Command::CancelClient { client, reply })
            .await
            .unwrap_or(0)
    }

    /// Sets the client's default model and, when allowed, starts preloading its group.
    pub async fn switch_model(
        &self,
        client: &ClientId,
        model: &str,
        preload: bool,
        admin: bool,
    ) -> Result<Switched, SubmitError> {
        let (client, model) = (client.clone(), model.to_string());
        self.ask(|reply| Command::Switch {
            client,
            model,
            preload,
            admin,
            reply,
        })
        .await
        .unwrap_or(Err(SubmitError::Stopped))
    }

    pub async fn set_registry(&self, registry: Registry) {
        let _ = self.tx.send(Command::SetRegistry { registry }).await;
    }

    pub async fn status(&self) -> Option<QueueStatus> {
        self.ask(|reply| Command::Status { reply }).await
    }
}
