//! Requests the server has accepted: their public ids, events so far, subscribers (WebSocket
//! sessions and server-sent-event streams), and what happens when they end: metrics, the
//! request log, and the results database.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lensd_core::work::{ClientId, RequestEvent, RequestId, Text, Work};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::time::Instant;
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult};
use crate::metrics as m;
use crate::reqlog::LogRecord;
use crate::state::Shared;
use crate::store::StoredResult;
use crate::views;

/// Finished requests kept in memory with their events, for status queries and late
/// subscribers, at most this many and this many bytes of events (as JSON); older ones are read
/// from the database. The newest is always kept.
const KEPT_FINISHED: usize = 1000;
const KEPT_FINISHED_BYTES: u64 = 64 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Status {
    Queued { position: usize },
    Running { done: u64, total: u64 },
    Completed,
    Error { error_type: String, message: String },
    Cancelled { partial: bool },
}

struct Inner {
    status: Status,
    /// Every event so far, so that a late subscriber sees the whole request.
    events: Vec<RequestEvent>,
    subscribers: Vec<UnboundedSender<RequestEvent>>,
    started: Option<Instant>,
    loading_since: Option<Instant>,
    loading_bytes: u64,
}

pub struct Tracked {
    pub id: String,
    pub internal: RequestId,
    /// The scheduler's client: a connection or a key.
    pub client: String,
    /// Who submitted it, for access checks.
    pub owner: String,
    pub kind: &'static str,
    pub models: Vec<String>,
    pub input: serde_json::Value,
    pub text_chars: usize,
    submitted: Instant,
    created_at: i64,
    inner: Mutex<Inner>,
    /// Ended, logged and stored.
    settled: std::sync::atomic::AtomicBool,
}

impl Tracked {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn status(&self) -> Status {
        self.lock().status.clone()
    }

    /// Every event so far and a receiver of those that follow, with no gap between them.
    pub fn subscribe(&self) -> (Vec<RequestEvent>, UnboundedReceiver<RequestEvent>) {
        let (tx, rx) = unbounded_channel();
        let mut inner = self.lock();
        let past = inner.events.clone();
        if !past.last().is_some_and(|e| e.is_terminal()) {
            inner.subscribers.push(tx);
        }
        (past, rx)
    }

    /// The terminal event, once there is one.
    pub fn outcome(&self) -> Option<RequestEvent> {
        self.lock()
            .events
            .last()
            .filter(|e| e.is_terminal())
            .cloned()
    }
}

#[derive(Default)]
pub struct Requests {
    map: Mutex<HashMap<String, Arc<Tracked>>>,
    finished: Mutex<Finished>,
    /// Requests accepted, and ended by outcome, since the server started.
    pub counts: Counts,
    /// Sum of the compute time of completed requests, in milliseconds.
    pub completed_compute_ms: std::sync::atomic::AtomicU64,
}

/// Requests accepted and ended since the server started, by outcome.
#[derive(Default)]
pub struct Counts {
    pub accepted: std::sync::atomic::AtomicU64,
    pub completed: std::sync::atomic::AtomicU64,
    pub failed: std::sync::atomic::AtomicU64,
    pub cancelled: std::sync::atomic::AtomicU64,
}

/// Finished requests still in the map, oldest first, with the bytes of their events.
#[derive(Default)]
struct Finished {
    order: VecDeque<(String, u64)>,
    bytes: u64,
}

/// Counts what is written to it and keeps nothing.
struct ByteCount(u64);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The size of events as JSON, without building the text.
fn json_bytes(events: &[RequestEvent]) -> u64 {
    let mut n = ByteCount(0);
    for ev in events {
        let _ = serde_json::to_writer(&mut n, ev);
    }
    n.0
}

impl Requests {
    pub fn get(&self, id: &str) -> Option<Arc<Tracked>> {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    fn insert(&self, t: Arc<Tracked>) {
        self.counts.accepted.fetch_add(1, Ordering::Relaxed);
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(t.id.clone(), t);
    }

    /// Keeps a finished request whose events take `bytes`, and forgets the oldest ones beyond
    /// the count and the bytes kept.
    fn finished(&self, id: &str, bytes: u64) {
        self.finished_within(id, bytes, KEPT_FINISHED, KEPT_FINISHED_BYTES);
    }

    fn finished_within(&self, id: &str, bytes: u64, count: usize, most_bytes: u64) {
        let mut f = self.finished.lock().unwrap_or_else(|e| e.into_inner());
        f.order.push_back((id.to_string(), bytes));
        f.bytes += bytes;
        while f.order.len() > count || f.bytes > most_bytes && f.order.len() > 1 {
            if let Some((old, n)) = f.order.pop_front() {
                f.bytes -= n;
                self.map
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&old);
            }
        }
        metrics::gauge!(m::FINISHED_KEPT_BYTES).set(f.bytes as f64);
    }

    /// Requests not yet ended, logged and stored.
    pub fn active(&self) -> Vec<Arc<Tracked>> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.values()
            .filter(|t| !t.settled.load(Ordering::SeqCst))
            .cloned()
            .collect()
    }
}

fn public_id() -> String {
    let n: u64 = rand::rng().random();
    format!("r-{n:016x}")
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Checks a request against the caller's rights and the limits, queues it, and starts
/// tracking it. `who.client` is the scheduler's client (a connection or a key), `who.owner`
/// who may read it later.
pub async fn submit(
    state: &Shared,
    who: &crate::api::Who,
    mut work: Work,
    deadline: Option<Duration>,
) -> ApiResult<Arc<Tracked>> {
    if state.is_closing() {
        return Err(ApiError::Unavailable(
            "the server is shutting down and accepts no new work".into(),
        ));
    }
    let (caller, client) = (&who.caller, who.client.as_str());
    state.rate.check(client)?;
    let snap = state.snapshot();
    // A request without a model uses the client's current one.
    let default = state.default_model(client);
    let (kind, text_chars) = match &mut work {
        Work::Analyze(a) => {
            if a.models.is_empty() {
                a.models.extend(default);
            }
            state.limits.check_lenses(a.models.len())?;
            if a.top_k == 0 || a.top_k > 100 {
                return Err(ApiError::BadRequest(format!(
                    "`options.top_k` must be between 1 and 100, got {}",
                    a.top_k
                )));
            }
            let chars = match &mut a.text {
                Text::Given(p) => {
                    let n = p.chars();
                    state.limits.check_text("text", n)?;
                    n
                }
                // Already mapped from the client's public id by `chained`.
                Text::Generated { .. } => 0,
            };
            ("analysis", chars)
        }
        Work::Generate(g) => {
            if g.model.is_empty() {
                g.model = default.unwrap_or_default();
            }
            let n = g.prompt.chars();
            state.limits.check_text("prompt", n)?;
            state.limits.check_new_tokens(g.sampling.max_tokens)?;
            ("generation", n)
        }
    };
    let models = work.models();
    if models.is_empty() || models.iter().any(|m| m.is_empty()) {
        return Err(ApiError::BadRequest(
            "name a model (`models` or `model_id`), or switch to one first".into(),
        ));
    }
    for model in &models {
        if views::find(&snap, caller.role, model).is_none() {
            return Err(ApiError::UnknownModel(model.clone()));
        }
    }
    let role = state.limits.roles.of(caller.role);
    role.check_size(caller.role, &work, &snap.registry)?;
    let others_waiting = state.requests.active().iter().any(|t| t.owner != who.owner);
    state
        .compute
        .check(&who.owner, caller.role, role, others_waiting)?;
    let deadline = deadline.or(role.default_deadline());
    let input = serde_json::to_value(&work).unwrap_or_default();
    let (internal, rx) = state
        .scheduler
        .submit_limited(
            &ClientId(client.to_string()),
            work,
            deadline,
            role.compute(),
        )
        .await
        .map_err(ApiError::from)?;
    let t = Arc::new(Tracked {
        id: public_id(),
        internal,
        client: client.to_string(),
        owner: who.owner.clone(),
        kind,
        models,
        input,
        text_chars,
        submitted: Instant::now(),
        created_at: unix_now(),
        inner: Mutex::new(Inner {
            status: Status::Queued { position: 0 },
            events: Vec::new(),
            subscribers: Vec::new(),
            started: None,
            loading_since: None,
            loading_bytes: 0,
        }),
        settled: std::sync::atomic::AtomicBool::new(false),
    });
    state.requests.insert(t.clone());
    tokio::spawn(pump(state.clone(), t.clone(), rx));
    Ok(t)
}

/// The scheduler's id of a generation the caller made, named by its public id.
pub fn chained(state: &Shared, who: &crate::api::Who, generation: &str) -> ApiResult<RequestId> {
    let t = state
        .requests
        .get(generation)
        .ok_or_else(|| ApiError::NotFound(format!("request {generation} is not known")))?;
    if t.kind != "generation" || t.owner != who.owner {
        return Err(ApiError::BadRequest(format!(
            "request {generation} is not a generation of yours"
        )));
    }
    Ok(t.internal)
}

/// Forwards a request's events to its subscribers and records how it went.
async fn pump(state: Shared, t: Arc<Tracked>, mut rx: UnboundedReceiver<RequestEvent>) {
    while let Some(ev) = rx.recv().await {
        // The one place where engine messages are cleaned of file paths before anyone sees them.
        let ev = match ev {
            RequestEvent::Error {
                error_type,
                message,
            } => RequestEvent::Error {
                error_type,
                message: views::scrub(&state.snapshot(), &message),
            },
            other => other,
        };
        let terminal = ev.is_terminal();
        if terminal {
            // Stored before anyone hears of the end, so that a client that follows the
            // terminal event to the stored result or its share page finds it.
            observe(&state, &t, &mut t.lock(), &ev);
            persist(&state, &t, &ev).await;
        }
        {
            let mut inner = t.lock();
            if !terminal {
                observe(&state, &t, &mut inner, &ev);
            }
            inner.events.push(ev.clone());
            inner.subscribers.retain(|s| s.send(ev.clone()).is_ok());
            if terminal {
                inner.subscribers.clear();
            }
        }
        if terminal {
            t.settled.store(true, Ordering::SeqCst);
            let bytes = json_bytes(&t.lock().events);
            state.requests.finished(&t.id, bytes);
            break;
        }
    }
}

/// Status and metrics from one event.
fn observe(state: &Shared, t: &Tracked, inner: &mut Inner, ev: &RequestEvent) {
    match ev {
        RequestEvent::Queued { position } | RequestEvent::Position { position } => {
            inner.status = Status::Queued {
                position: *position,
            };
        }
        RequestEvent::Started => {
            inner.started = Some(Instant::now());
            inner.status = Status::Running { done: 0, total: 0 };
            metrics::histogram!(m::WAIT_SECONDS).record(t.submitted.elapsed().as_secs_f64());
        }
        RequestEvent::Loading {
            resource,
            bytes_done,
            bytes_total,
        } => {
            if resource.starts_with("base") {
                if *bytes_done == 0 {
                    metrics::counter!(m::BASE_LOADS).increment(1);
                    inner.loading_since = Some(Instant::now());
                }
                inner.loading_bytes = *bytes_total;
            }
        }
        RequestEvent::Tokens { .. } | RequestEvent::Rows { .. } | RequestEvent::Token { .. } => {
            if let Some(since) = inner.loading_since.take() {
                let secs = since.elapsed().as_secs_f64();
                metrics::histogram!(m::SWITCH_SECONDS).record(secs);
                let ms = (secs * 1e3).max(1.0) as u64;
                if inner.loading_bytes > 0 {
                    // A moving average of how fast bases come in, for switch estimates.
                    let old = state.load_bytes_per_ms.load(Ordering::Relaxed);
                    let new = inner.loading_bytes / ms;
                    state
                        .load_bytes_per_ms
                        .store((old * 3 + new) / 4, Ordering::Relaxed);
                }
            }
        }
        RequestEvent::Progress { done, total, .. } => {
            inner.status = Status::Running {
                done: *done,
                total: *total,
            }
        }
        RequestEvent::Completed { .. } => inner.status = Status::Completed,
        RequestEvent::Error {
            error_type,
            message,
        } => {
            inner.status = Status::Error {
                error_type: error_type.clone(),
                message: message.clone(),
            }
        }
        RequestEvent::Cancelled { partial, .. } => {
            inner.status = Status::Cancelled { partial: *partial }
        }
    }
}

/// A request's options for the log: everything but the text itself.
fn options_of(input: &serde_json::Value) -> serde_json::Value {
    let mut v = input.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("text");
        o.remove("prompt");
    }
    v
}

/// Metrics, the request log and the store, for a request's terminal event.
async fn persist(state: &Shared, t: &Arc<Tracked>, ev: &RequestEvent) {
    let (wait_ms, compute_ms) = {
        let inner = t.lock();
        let wait = inner
            .started
            .map(|s| s.duration_since(t.submitted).as_millis() as u64);
        let compute = inner.started.map(|s| s.elapsed().as_millis() as u64);
        (wait, compute)
    };
    if let Some(ms) = compute_ms {
        state.compute.record(&t.owner, ms);
        metrics::histogram!(m::COMPUTE_SECONDS).record(ms as f64 / 1e3);
    }
    let outcome = match ev {
        RequestEvent::Completed { .. } => "completed".to_string(),
        RequestEvent::Error { error_type, .. } => format!("error:{error_type}"),
        RequestEvent::Cancelled { .. } => "cancelled".to_string(),
        _ => "unknown".to_string(),
    };
    metrics::counter!(m::REQUESTS, "kind" => t.kind, "outcome" => outcome.split(':').next().unwrap_or("").to_string()).increment(1);
    let counts = &state.requests.counts;
    match ev {
        RequestEvent::Completed { .. } => {
            counts.completed.fetch_add(1, Ordering::Relaxed);
            state
                .requests
                .completed_compute_ms
                .fetch_add(compute_ms.unwrap_or(0), Ordering::Relaxed);
        }
        RequestEvent::Error { .. } => {
            counts.failed.fetch_add(1, Ordering::Relaxed);
        }
        _ => {
            counts.cancelled.fetch_add(1, Ordering::Relaxed);
        }
    }
    if let Some(log) = &state.log {
        let rec = LogRecord {
            ts: time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            request: t.id.clone(),
            client: t.client.clone(),
            kind: t.kind.to_string(),
            models: t.models.clone(),
            text_chars: t.text_chars,
            tokens: None,
            options: options_of(&t.input),
            outcome: outcome.clone(),
            wait_ms,
            compute_ms,
        };
        if let Err(e) = log.write(&rec) {
            tracing::warn!(%e, "request log not written");
        }
    }
    if let Some(store) = state.store.clone() {
        let rec = stored_result(t, ev, (wait_ms, compute_ms));
        let saved = tokio::task::spawn_blocking(move || store.save(&rec)).await;
        // The client still hears the end; only the stored copy (and its share link) is lost.
        let error = match saved {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(e) = error {
            metrics::counter!(m::RESULTS_UNSAVED).increment(1);
            tracing::error!(%e, request = %t.id, "result not stored");
        }
    }
}

/// What the results database keeps of `t`, which ended with `ev` after the stage durations
/// `(wait_ms, compute_ms)`.
fn stored_result(
    t: &Tracked,
    ev: &RequestEvent,
    (wait_ms, compute_ms): (Option<u64>, Option<u64>),
) -> StoredResult {
    let (outcome, output, error, partial) = match ev {
        RequestEvent::Completed { output } => ("completed", as_json(output), None, false),
        RequestEvent::Error { message, .. } => ("error", None, Some(message.clone()), false),
        RequestEvent::Cancelled { partial, reason } => {
            ("cancelled", None, Some(reason.clone()), *partial)
        }
        _ => ("unknown", None, None, false),
    };
    StoredResult {
        id: t.id.clone(),
        kind: t.kind.to_string(),
        models: t.models.clone(),
        client: t.owner.clone(),
        created_at: t.created_at,
        input: t.input.clone(),
        outcome: outcome.to_string(),
        output,
        error,
        partial,
        timings: serde_json::json!({ "wait_ms": wait_ms, "compute_ms": compute_ms }),
    }
}

/// The status of a request read back from the results database (after a restart, or once its
/// events were let go), as [`Status`] reports a request still in memory.
pub fn stored_status(r: &StoredResult) -> Status {
    match r.outcome.as_str() {
        "completed" => Status::Completed,
        "cancelled" => Status::Cancelled { partial: r.partial },
        _ => Status::Error {
            error_type: "error".into(),
            message: r.error.clone().unwrap_or_default(),
        },
    }
}

/// A value as JSON the way events write it. Going through the text keeps each f32 in its
/// shortest digits (`0.1`, not the widened `0.10000000149011612` of `serde_json::to_value`),
/// so that a stored or fetched result reads exactly like the streamed one.
pub fn as_json<T: serde::Serialize>(value: &T) -> Option<serde_json::Value> {
    serde_json::from_str(&serde_json::to_string(value).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracked(id: &str) -> Arc<Tracked> {
        Arc::new(Tracked {
            id: id.into(),
            internal: 0,
            client: String::new(),
            owner: String::new(),
            kind: "analysis",
            models: Vec::new(),
            input: serde_json::Value::Null,
            text_chars: 0,
            submitted: Instant::now(),
            created_at: 0,
            inner: Mutex::new(Inner {
                status: Status::Completed,
                events: Vec::new(),
                subscribers: Vec::new(),
                started: None,
                loading_since: None,
                loading_bytes: 0,
            }),
            settled: std::sync::atomic::AtomicBool::new(true),
        })
    }

    fn kept(r: &Requests) -> Vec<String> {
        let f = r.finished.lock().unwrap();
        let ids: Vec<String> = f.order.iter().map(|(id, _)| id.clone()).collect();
        for id in &ids {
            assert!(r.get(id).is_some(), "{id} is counted but not in the map");
        }
        ids
    }

    #[test]
    fn finished_requests_are_kept_within_a_count_and_bytes() {
        let r = Requests::default();
        for (i, bytes) in [10, 10, 10, 10].into_iter().enumerate() {
            let id = format!("r-{i}");
            r.insert(tracked(&id));
            r.finished_within(&id, bytes, 3, 100);
        }
        assert_eq!(kept(&r), ["r-1", "r-2", "r-3"]);
        assert!(r.get("r-0").is_none());
        // Within a count of 5, the bytes decide: 30 + 75 is over 100, 20 + 75 is not.
        r.insert(tracked("big"));
        r.finished_within("big", 75, 5, 100);
        assert_eq!(kept(&r), ["r-2", "r-3", "big"]);
        assert_eq!(r.finished.lock().unwrap().bytes, 95);
        // One larger than the bound alone is still kept, as the newest.
        r.insert(tracked("huge"));
        r.finished_within("huge", 500, 3, 100);
        assert_eq!(kept(&r), ["huge"]);
        // An unfinished request is never dropped for the finished ones.
        r.insert(tracked("running"));
        r.insert(tracked("next"));
        r.finished_within("next", 1, 3, 100);
        assert!(r.get("running").is_some());
        assert_eq!(kept(&r), ["next"]);
    }

    #[test]
    fn a_cancellation_reads_back_partial_or_not_with_its_reason_after_a_restart() {
        // issue 17 item 10: a stored cancellation with `partial: true` read back `partial:
        // false` once the server restarted.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.sqlite3");
        let cases = [
            ("r-partial", true, "cancelled by the client"),
            ("r-whole", false, "the client disconnected"),
            ("r-shutdown", true, "the server is shutting down"),
        ];
        {
            let store = crate::store::Store::open(&path).unwrap();
            for (id, partial, reason) in cases {
                let ev = RequestEvent::Cancelled {
                    partial,
                    reason: reason.into(),
                };
                let rec = stored_result(&tracked(id), &ev, (Some(3), Some(40)));
                store.save(&rec).unwrap();
            }
        }
        // A restart: nothing but the file is left.
        let store = crate::store::Store::open(&path).unwrap();
        for (id, partial, reason) in cases {
            let r = store.get(id).unwrap().unwrap();
            assert_eq!(r.outcome, "cancelled");
            assert_eq!(stored_status(&r), Status::Cancelled { partial }, "{id}");
            let message = r.error.unwrap_or_default();
            assert!(message.starts_with(reason), "{id}: {message}");
        }
    }

    #[test]
    fn event_bytes_are_their_json_length() {
        let events = vec![
            RequestEvent::Queued { position: 3 },
            RequestEvent::Token {
                id: 7,
                text: "héllo \"quoted\"".into(),
            },
            RequestEvent::Cancelled {
                partial: true,
                reason: "by the client".into(),
            },
        ];
        let text: usize = events
            .iter()
            .map(|e| serde_json::to_string(e).unwrap().len())
            .sum();
        assert_eq!(json_bytes(&events), text as u64);
    }
}
