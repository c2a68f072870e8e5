//! The queue's state: waiting requests, those running (one per device at most), limits,
//! positions, measurements, and the results that later requests may depend on. Synchronous
//! methods; the actor owns it. Which device takes which request is in `placement.rs`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use lensd_core::registry::{BaseKey, Registry};
use lensd_core::residency::DeviceId;
use lensd_core::work::{ClientId, JobLens, RequestEvent, RequestId, Text, Work};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::cancel::Cancel;
use super::policy::{self, View, Waiting};
use super::{QueueConfig, SubmitError};
use crate::residency::Layout;

/// What the worker receives: everything needed to run one request.
pub struct Task {
    pub id: RequestId,
    pub client: ClientId,
    pub models: Vec<String>,
    pub base: BaseKey,
    pub lenses: Vec<JobLens>,
    pub work: Work,
    /// For an analysis of a generation: the generation's prompt and reply.
    pub generated: Option<String>,
    pub events: UnboundedSender<RequestEvent>,
    pub cancel: Arc<Cancel>,
    /// Monotonic milliseconds after which the request is abandoned.
    pub deadline_ms: Option<u64>,
    /// Milliseconds of compute the request may use once it runs.
    pub compute_limit_ms: Option<u64>,
    /// The base was ready on the worker's device when the request was handed to it.
    pub resident: bool,
}

pub(super) struct Queued {
    pub task: Task,
    pub enqueued_ms: u64,
    /// A generation this request analyses, not yet finished.
    pub after: Option<RequestId>,
    position: Option<usize>,
}

pub(super) struct Running {
    pub id: RequestId,
    pub client: ClientId,
    pub cancel: Arc<Cancel>,
    pub deadline_ms: Option<u64>,
    pub device: DeviceId,
    pub base: BaseKey,
}

/// How a finished request ended, for requests that depend on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    /// A generation's prompt and reply.
    Generated(String),
    /// Anything else that completed.
    Done,
    Failed,
}

/// Results kept for dependent requests.
const KEPT_RESULTS: usize = 1024;

pub struct State {
    pub(super) config: QueueConfig,
    pub(super) registry: Registry,
    pub(super) queued: Vec<Queued>,
    pub(super) running: Vec<Running>,
    next_id: RequestId,
    /// Finished requests by id with their client, newest last.
    finished: HashMap<RequestId, (ClientId, Finished)>,
    finished_order: VecDeque<RequestId>,
    /// Generate requests queued or running, by id: who asked.
    generations: HashMap<RequestId, ClientId>,
    /// Where things are on each device, as the residency manager last said.
    pub(super) layout: Layout,
    /// Devices whose workers stopped because the device was lost.
    pub(super) lost: BTreeSet<DeviceId>,
    pub(super) switch_cost_ms: u64,
    pub(super) last_start: BTreeMap<ClientId, u64>,
    /// Measured mean compute time of a request, by base.
    pub(super) service_ms: BTreeMap<BaseKey, u64>,
    /// Measured bytes loaded per millisecond; the configured rate until a load is measured.
    pub(super) load_bytes_per_ms: Option<u64>,
}

pub(super) fn send(tx: &UnboundedSender<RequestEvent>, ev: RequestEvent) {
    // A client that stopped listening is cancelled separately; nothing to do here.
    let _ = tx.send(ev);
}

pub(super) fn error(tx: &UnboundedSender<RequestEvent>, error_type: &str, message: String) {
    send(
        tx,
        RequestEvent::Error {
            error_type: error_type.into(),
            message,
        },
    );
}

impl State {
    pub fn new(config: QueueConfig, registry: Registry) -> Self {
        State {
            switch_cost_ms: config.initial_switch_cost.as_millis() as u64,
            load_bytes_per_ms: None,
            config,
            registry,
            queued: Vec::new(),
            running: Vec::new(),
            next_id: 0,
            finished: HashMap::new(),
            finished_order: VecDeque::new(),
            generations: HashMap::new(),
            layout: Layout::default(),
            lost: BTreeSet::new(),
            last_start: BTreeMap::new(),
            service_ms: BTreeMap::new(),
        }
    }

    /// Where things are on each device now.
    pub fn set_layout(&mut self, layout: Layout) {
        self.layout = layout;
    }

    /// Checks a request against the registry and the limits and queues it.
    pub fn submit(
        &mut self,
        client: ClientId,
        work: Work,
        deadline_ms: Option<u64>,
        now: u64,
    ) -> Result<(RequestId, UnboundedReceiver<RequestEvent>), SubmitError> {
        let models = work.models();
        if models.is_empty() {
            return Err(SubmitError::Invalid("name at least one model".into()));
        }
        let mut lenses = Vec::with_capacity(models.len());
        let mut base: Option<BaseKey> = None;
        for m in &models {
            let r = self
                .registry
                .models
                .get(m)
                .ok_or_else(|| SubmitError::UnknownModel(m.clone()))?;
            match &base {
                Some(b) if *b != r.base => {
                    return Err(SubmitError::Invalid(format!(
                        "models {} and {m} use different bases; one request reads one base",
                        models[0]
                    )))
                }
                _ => base = Some(r.base.clone()),
            }
            lenses.push(JobLens {
                model: m.clone(),
                lens: r.lens.clone(),
                donor: r.donor.clone(),
            });
        }
        let after = match &work {
            Work::Analyze(a) => match &a.text {
                Text::Generated { request } => Some(self.dependency(&client, *request)?),
                Text::Given { .. } => None,
            },
            Work::Generate(_) => None,
        };
        if self.queued.len() >= self.config.capacity {
            return Err(SubmitError::QueueFull {
                limit: self.config.capacity,
            });
        }
        let mine = self
            .queued
            .iter()
            .filter(|q| q.task.client == client)
            .count();
        if mine >= self.config.per_client {
            return Err(SubmitError::ClientLimit {
                limit: self.config.per_client,
            });
        }
        self.next_id += 1;
        let id = self.next_id;
        if matches!(work, Work::Generate(_)) {
            self.generations.insert(id, client.clone());
        }
        let (tx, rx) = unbounded_channel();
        // The generation may have finished already.
        let (after, generated) =
            match after.map(|g| (g, self.finished.get(&g).map(|(_, f)| f.clone()))) {
                Some((_, Some(Finished::Generated(text)))) => (None, Some(text)),
                Some((g, None)) => (Some(g), None),
                Some((g, Some(_))) => {
                    return Err(SubmitError::Invalid(format!(
                        "request {g} did not produce a generation"
                    )));
                }
                None => (None, None),
            };
        self.queued.push(Queued {
            task: Task {
                id,
                client,
                models,
                base: base.expect("at least one model"),
                lenses,
                work,
                generated,
                events: tx,
                cancel: Arc::new(Cancel::default()),
                deadline_ms,
                compute_limit_ms: None,
                resident: false,
            },
            enqueued_ms: now,
            after,
            position: None,
        });
        self.update_positions(now);
        Ok((id, rx))
    }

    /// The generation `request` that `client` may analyse: it must be the client's own.
    fn dependency(&self, client: &ClientId, request: RequestId) -> Result<RequestId, SubmitError> {
        let owner = self
            .generations
            .get(&request)
            .or_else(|| self.finished.get(&request).map(|(c, _)| c))
            .ok_or_else(|| {
                SubmitError::Invalid(format!("request {request} is not a known generation"))
            })?;
        if owner != client {
            return Err(SubmitError::Invalid(format!(
                "request {request} belongs to another client"
            )));
        }
        Ok(request)
    }

    /// The policy's view; `on_device` holds the bases ready on any working device.
    pub(super) fn view(&self, now: u64) -> View {
        View {
            now_ms: now,
            on_device: self
                .layout
                .devices
                .iter()
                .filter(|d| !d.failed && !self.lost.contains(&d.id))
                .flat_map(|d| d.copies.iter().filter(|c| c.ready))
                .filter_map(|c| match &c.resource {
                    lensd_core::registry::ResourceKey::Base(b) => Some(b.clone()),
                    lensd_core::registry::ResourceKey::Lens(_) => None,
                })
                .collect(),
            switch_cost_ms: self.switch_cost_ms,
            aging_ms: self.config.aging.as_millis() as u64,
            last_start: self.last_start.clone(),
        }
    }

    pub(super) fn waiting(&self) -> Vec<Waiting> {
        self.queued
            .iter()
            .map(|q| Waiting {
                client: q.task.client.clone(),
                base: q.task.base.clone(),
                enqueued_ms: q.enqueued_ms,
                eligible: q.after.is_none(),
            })
            .collect()
    }

    /// Tells every waiting request its place when it changed: `queued` the first time, then
    /// `position`. Requests that cannot run yet come after all that can, in arrival order.
    pub fn update_positions(&mut self, now: u64) {
        let waiting = self.waiting();
        let mut order = policy::order(self.config.policy, &waiting, &self.view(now));
        let mut ordered = vec![false; waiting.len()];
        order.iter().for_each(|&i| ordered[i] = true);
        order.extend((0..waiting.len()).filter(|&i| !ordered[i]));
        for (pos, &i) in order.iter().enumerate() {
            let q = &mut self.queued[i];
            if q.position == Some(pos) {
                continue;
            }
            let ev = match q.position {
                None => RequestEvent::Queued { position: pos },
                Some(_) => RequestEvent::Position { position: pos },
            };
            q.position = Some(pos);
            send(&q.task.events, ev);
        }
    }

    /// Records how the running request ended and releases its dependents.
    pub fn finished(
        &mut self,
        id: RequestId,
        outcome: Finished,
        switch_cost_ms: Option<u64>,
        now: u64,
    ) {
        self.running.retain(|r| r.id != id);
        if let Some(ms) = switch_cost_ms {
            // A moving average, so that one slow load does not dominate.
            self.switch_cost_ms = (self.switch_cost_ms * 3 + ms) / 4;
        }
        let client = self.generations.remove(&id);
        if let Some(client) = client {
            self.remember(id, client, outcome.clone());
        }
        let mut i = 0;
        while i < self.queued.len() {
            if self.queued[i].after != Some(id) {
                i += 1;
                continue;
            }
            match &outcome {
                Finished::Generated(text) => {
                    self.queued[i].after = None;
                    self.queued[i].task.generated = Some(text.clone());
                    i += 1;
                }
                _ => {
                    let q = self.queued.remove(i);
                    error(
                        &q.task.events,
                        "dependency_failed",
                        format!("the generation {id} it analyses did not finish"),
                    );
                }
            }
        }
        self.update_positions(now);
    }

    fn remember(&mut self, id: RequestId, client: ClientId, outcome: Finished) {
        self.finished.insert(id, (client, outcome));
        self.finished_order.push_back(id);
        while self.finished_order.len() > KEPT_RESULTS {
            if let Some(old) = self.finished_order.pop_front() {
                self.finished.remove(&old);
            }
        }
    }

    /// Cancels a request: at once when queued, at the next sub-batch when running.
    pub fn cancel(&mut self, id: RequestId, reason: &str, now: u64) -> bool {
        if let Some(i) = self.queued.iter().position(|q| q.task.id == id) {
            let q = self.queued.remove(i);
            self.drop_queued(q, reason);
            self.update_positions(now);
            return true;
        }
        match self.running.iter().find(|r| r.id == id) {
            Some(r) => {
                r.cancel.cancel(reason);
                true
            }
            None => false,
        }
    }

    fn drop_queued(&mut self, q: Queued, reason: &str) {
        send(
            &q.task.events,
            RequestEvent::Cancelled {
                partial: false,
                reason: reason.into(),
            },
        );
        if self.generations.remove(&q.task.id).is_some() {
            self.remember(q.task.id, q.task.client.clone(), Finished::Failed);
            self.fail_dependents(q.task.id);
        }
    }

    /// Ends the waiting request at `i` with an error, failing what depends on it.
    pub(super) fn fail_queued(&mut self, i: usize, error_type: &str, message: String) {
        let q = self.queued.remove(i);
        error(&q.task.events, error_type, message);
        if self.generations.remove(&q.task.id).is_some() {
            self.remember(q.task.id, q.task.client.clone(), Finished::Failed);
            self.fail_dependents(q.task.id);
        }
    }

    fn fail_dependents(&mut self, id: RequestId) {
        let mut i = 0;
        while i < self.queued.len() {
            if self.queued[i].after == Some(id) {
                let q = self.queued.remove(i);
                error(
                    &q.task.events,
                    "dependency_failed",
                    format!("the generation {id} it analyses was cancelled"),
                );
            } else {
                i += 1;
            }
        }
    }

    /// Cancels everything a client has queued or running (it disconnected).
    pub fn cancel_client(&mut self, client: &ClientId, now: u64) -> usize {
        let ids: Vec<RequestId> = self
            .queued
            .iter()
            .filter(|q| &q.task.client == client)
            .map(|q| q.task.id)
            .collect();
        let mut n = 0;
        for id in ids {
            n += self.cancel(id, "the client disconnected", now) as usize;
        }
        for r in self.running.iter().filter(|r| &r.client == client) {
            r.cancel.cancel("the client disconnected");
            n += 1;
        }
        n
    }

    /// Limits the compute time of queued request `id` to `ms` once it runs.
    pub fn limit_compute(&mut self, id: RequestId, ms: u64) {
        if let Some(q) = self.queued.iter_mut().find(|q| q.task.id == id) {
            q.task.compute_limit_ms = Some(ms);
        }
    }

    /// Abandons queued requests past their deadline and stops a running one past its own.
    pub fn expire(&mut self, now: u64) {
        let mut i = 0;
        while i < self.queued.len() {
            if self.queued[i].task.deadline_ms.is_some_and(|d| now >= d) {
                let q = self.queued.remove(i);
                error(
                    &q.task.events,
                    "deadline_exceeded",
                    "the request's deadline passed while it waited".into(),
                );
                if self.generations.remove(&q.task.id).is_some() {
                    self.remember(q.task.id, q.task.client.clone(), Finished::Failed);
                    self.fail_dependents(q.task.id);
                }
            } else {
                i += 1;
            }
        }
        for r in &self.running {
            if r.deadline_ms.is_some_and(|d| now >= d) {
                r.cancel.cancel("deadline");
            }
        }
        // Aging moves positions as time passes.
        self.update_positions(now);
    }

    /// Replaces the registry; waiting requests for models that are gone end with an error.
    pub fn set_registry(&mut self, registry: Registry, now: u64) {
        self.registry = registry;
        let mut i = 0;
        while i < self.queued.len() {
            let gone = self.queued[i]
                .task
                .models
                .iter()
                .find(|m| !self.registry.models.contains_key(*m))
                .cloned();
            match gone {
                Some(m) => {
                    let q = self.queued.remove(i);
                    error(
                        &q.task.events,
                        "model_removed",
                        format!("model {m} is no longer configured"),
                    );
                }
                None => i += 1,
            }
        }
        self.update_positions(now);
    }

    pub fn queued_len(&self) -> usize {
        self.queued.len()
    }

    pub fn is_running(&self) -> bool {
        !self.running.is_empty()
    }

    /// Requests running now, one per busy device.
    pub fn running_count(&self) -> usize {
        self.running.len()
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

#[cfg(test)]
#[path = "state_props.rs"]
mod props;
