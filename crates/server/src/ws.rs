//! `/ws`: one session per connection. Messages are parsed into the protocol's types; a
//! malformed or unknown one gets an `error` frame and the session goes on. Each connection is
//! its own client for fairness, and closing it cancels its work.
//!
//! A session's output waits in a bounded queue. While the queue is full the session reads no
//! more of its client's messages (each answer waits for room), and a client that reads nothing
//! for `limits.ws_output_timeout` has its session closed, with a close frame saying why.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use lensd_core::residency::Tier;
use lensd_core::work::{ClientId, RequestEvent, Text};
use lensd_sched::residency::PreloadEvent;
use tokio::sync::mpsc;

use crate::api::v1::switch_to;
use crate::api::v2::group_views;
use crate::api::Who;
use crate::auth::Role;
use crate::error::ApiError;
use crate::original::{self, Dialect};
use crate::protocol::{
    ClientMessage, EventFrame, LimitsView, QueueEntry, ServerMessage, PROTOCOL_VERSION,
};
use crate::state::{Phase, Shared};
use crate::tracker::{self, Status, Tracked};
use crate::views;

/// Bytes read from a WebSocket at a time.
const READ_BUFFER_BYTES: usize = 8 * 1024;

/// Frames waiting for a slow client before the session stops reading its messages.
pub const OUTPUT_FRAMES: usize = 64;

/// The WebSocket library refuses messages this many times lensd's own limit (dropping the
/// connection); up to there, lensd answers a too-large message with `payload_too_large` and
/// the session goes on.
const TRANSPORT_LIMIT_FACTOR: usize = 4;

/// Holds one place in the WebSocket connection count, given back when dropped: when the
/// session ends, and also when the upgrade never completes (the client went away first).
struct Place(Shared);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Frames for the client, in order.
pub(crate) enum Out {
    Message(ServerMessage),
    Event(EventFrame),
    /// A message of the original's dialect.
    Json(serde_json::Value),
}

/// `/ws?dialect=…`: the protocol the connection speaks; detected from its first message when
/// not given.
#[derive(Debug, serde::Deserialize)]
pub struct DialectQuery {
    pub dialect: Option<String>,
    /// An API key, for clients that cannot set the `Authorization` header of the upgrade (the
    /// original's page); lensd's own clients send `auth` instead.
    pub api_key: Option<String>,
}

pub async fn upgrade(
    State(state): State<Shared>,
    who: Who,
    Query(query): Query<DialectQuery>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let dialect = Dialect::named(query.dialect.as_deref()).map_err(ApiError::BadRequest)?;
    let who = match query.api_key {
        Some(key) if who.caller.label.is_empty() => {
            let addr = who.addr;
            let caller = state
                .auth
                .check(addr.map(|a| a.ip()), || state.keys.holder(&key))?;
            Who::new(caller, addr)
        }
        _ => who,
    };
    let open = state.connections.fetch_add(1, Ordering::SeqCst);
    let place = Place(state.clone());
    if open >= state.limits.max_connections {
        return Err(ApiError::RateLimited(format!(
            "the server has {} WebSocket connections open, the most it allows; try again later",
            state.limits.max_connections
        )));
    }
    let transport = state
        .limits
        .max_message_bytes
        .saturating_mul(TRANSPORT_LIMIT_FACTOR);
    Ok(ws
        .max_message_size(transport)
        .max_frame_size(transport)
        // Client messages are small: an 8 KiB read buffer (larger messages still arrive whole)
        // instead of the default 128 KiB keeps an idle connection at about 21 KiB of server
        // memory rather than 140 KiB (`lensd bench-ws`).
        .read_buffer_size(READ_BUFFER_BYTES)
        .on_upgrade(move |socket| async move {
            session(state, socket, who, dialect).await;
            drop(place);
        }))
}

struct Session {
    state: Shared,
    who: Who,
    session: String,
    out: mpsc::Sender<Out>,
    requests: HashMap<String, Arc<Tracked>>,
    dialect: Dialect,
    original: original::ws::Conn,
}

/// Writes the session's frames to the client in order. A frame the client does not take within
/// `stall` ends the session: the queue is let go (so the session notices), and a close frame
/// says why, if the client is still there to read it.
async fn write(
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    mut frames: mpsc::Receiver<Out>,
    stall: Duration,
    session: String,
) {
    while let Some(frame) = frames.recv().await {
        let text = match &frame {
            Out::Message(m) => serde_json::to_string(m),
            Out::Event(e) => serde_json::to_string(e),
            Out::Json(v) => serde_json::to_string(v),
        };
        let Ok(text) = text else { continue };
        match tokio::time::timeout(stall, sink.send(Message::Text(text.into()))).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => break,
            Err(_) => {
                drop(frames);
                let why = format!(
                    "the client read none of its messages for {} s while {OUTPUT_FRAMES} more \
                     waited",
                    stall.as_secs_f64()
                );
                tracing::info!(%session, %why, "closing a session that does not read");
                metrics::counter!(crate::metrics::WS_STALLED).increment(1);
                let close = Message::Close(Some(axum::extract::ws::CloseFrame {
                    // 1008: policy violation.
                    code: 1008,
                    reason: why.into(),
                }));
                let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(close)).await;
                return;
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
}

async fn session(state: Shared, socket: WebSocket, who: Who, dialect: Dialect) {
    let n = state.next_connection.fetch_add(1, Ordering::SeqCst) + 1;
    let session_id = format!("ws-{n}");
    let (sink, mut stream) = socket.split();
    let (out, out_rx) = mpsc::channel::<Out>(OUTPUT_FRAMES);
    let writer = tokio::spawn(write(
        sink,
        out_rx,
        state.limits.ws_output_timeout,
        session_id.clone(),
    ));
    let mut s = Session {
        who: Who {
            client: session_id.clone(),
            ..who
        },
        session: session_id.clone(),
        state: state.clone(),
        out,
        requests: HashMap::new(),
        dialect,
        original: Default::default(),
    };
    if dialect == Dialect::Original {
        let greeting = original::listing::greeting(&state, &s.who, &session_id);
        s.send_json(greeting).await;
    } else {
        s.send(ServerMessage::ConnectionEstablished {
            session: session_id.clone(),
            role: s.who.caller.role,
            protocol_version: PROTOCOL_VERSION,
            limits: limits_view(&state),
            current_model: None,
        })
        .await;
    }
    let mut shutdown = state.shutdown.subscribe();
    let mut told = false;
    let mut broadcast = state.broadcast.subscribe();
    let transport = state
        .limits
        .max_message_bytes
        .saturating_mul(TRANSPORT_LIMIT_FACTOR);
    let stalled = s.out.clone();
    let mut queue_ticks = tokio::time::interval(original::QUEUE_UPDATE_EVERY);
    loop {
        tokio::select! {
            // The writer gave up on a client that does not read.
            _ = stalled.closed() => break,
            // The original's page shows the server's queue from a periodic update.
            _ = queue_ticks.tick(), if s.dialect == Dialect::Original => {
                let conn = &s.original;
                let update = original::listing::queue_update(&s.state, &s.who.owner, |id| conn.alias(id));
                s.send_json(update).await;
            }
            msg = broadcast.recv() => {
                // A client that fell behind just misses a notice; the next one tells the same.
                if let Ok(m) = msg {
                    if s.dialect == Dialect::Original {
                        // The original told every page its groups again when residency changed.
                        if matches!(m, ServerMessage::ResidencyChanged { .. }) {
                            let current = s.state.default_model(&s.who.client).or_else(|| {
                                original::ws::server_default(&s.state.snapshot(), s.who.caller.role)
                            });
                            let list = original::listing::groups_list(&s.state, &s.who, current.as_deref()).await;
                            s.send_json(list).await;
                        }
                    } else {
                        s.send(m).await;
                    }
                }
            }
            frame = stream.next() => match frame {
                Some(Ok(Message::Text(text))) => s.handle(text.as_str()).await,
                Some(Ok(Message::Binary(_))) => s.error(ApiError::BadRequest("binary frames are not part of the protocol; send JSON text".into()), None).await,
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(_)) => {}
                // Broken frames, and messages past even the transport's limit, end the
                // connection; the client hears why first where it can.
                Some(Err(e)) => {
                    tracing::debug!(session = %s.session, %e, "websocket closed");
                    if e.to_string().contains("too long") {
                        s.error(ApiError::TooLarge(format!(
                            "the message is larger than {transport} bytes (the limit is {} bytes); \
                             the connection is closed",
                            state.limits.max_message_bytes
                        )), None).await;
                    }
                    break;
                }
            },
            changed = shutdown.changed() => {
                let phase = *shutdown.borrow();
                // Both phases may pass before this session looks: tell the client once either way.
                if phase != Phase::Serving && !told {
                    told = true;
                    s.send(ServerMessage::ServerShutdown { grace_seconds: state.limits.shutdown_grace.as_secs() }).await;
                }
                if changed.is_err() || phase == Phase::Closing {
                    break;
                }
            }
        }
    }
    // The client went away: its queued and running work is cancelled.
    let cancelled = state
        .scheduler
        .cancel_client(&ClientId(session_id.clone()))
        .await;
    if cancelled > 0 {
        tracing::info!(session = %session_id, cancelled, "client disconnected; its work was cancelled");
    }
    drop(s);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
}

impl Session {
    /// Queues `m` for the client, waiting while its queue is full (the writer ends the session
    /// if that lasts).
    async fn send(&self, m: ServerMessage) {
        let _ = self.out.send(Out::Message(m)).await;
    }

    async fn send_json(&self, v: serde_json::Value) {
        let _ = self.out.send(Out::Json(v)).await;
    }

    /// A message in the original's dialect.
    async fn handle_original(&mut self, text: &str) {
        let ctx = original::ws::Ctx {
            state: self.state.clone(),
            who: self.who.clone(),
            out: self.out.clone(),
        };
        match serde_json::from_str::<original::messages::ClientMessage>(text) {
            Ok(msg) => original::ws::handle(&ctx, &mut self.original, msg).await,
            Err(e) => {
                let kind = serde_json::from_str::<serde_json::Value>(text)
                    .ok()
                    .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(String::from));
                let what = match kind {
                    Some(t) => format!("message `{t}`: {e}"),
                    None => format!("the frame is not a message of the original's dialect: {e}"),
                };
                ctx.error(&ApiError::BadRequest(what), Default::default())
                    .await;
            }
        }
    }

    async fn error(&self, e: ApiError, request_id: Option<String>) {
        let body = e.body();
        let message = views::scrub(&self.state.snapshot(), &body.message);
        self.send(ServerMessage::Error {
            error_type: body.error_type,
            message,
            request_id,
        })
        .await;
    }

    async fn handle(&mut self, text: &str) {
        let limit = self.state.limits.max_message_bytes;
        if text.len() > limit {
            let e = ApiError::TooLarge(format!(
                "the message has {} bytes; the limit is {limit}",
                text.len()
            ));
            self.error(e, None).await;
            return;
        }
        if self.dialect == Dialect::Original {
            return self.handle_original(text).await;
        }
        let msg: ClientMessage = match serde_json::from_str(text) {
            Ok(m) => {
                self.dialect = Dialect::Lensd;
                m
            }
            // A first message that only the original's dialect reads makes the connection
            // the original's.
            Err(_)
                if self.dialect == Dialect::Undecided
                    && serde_json::from_str::<original::messages::ClientMessage>(text).is_ok() =>
            {
                self.dialect = Dialect::Original;
                return self.handle_original(text).await;
            }
            Err(e) => {
                let kind = serde_json::from_str::<serde_json::Value>(text)
                    .ok()
                    .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(String::from));
                let what = match kind {
                    Some(t) => format!("message `{t}`: {e}"),
                    None => format!("the frame is not a protocol message: {e}"),
                };
                self.error(ApiError::BadRequest(what), None).await;
                return;
            }
        };
        if let Err(e) = self.dispatch(msg).await {
            self.error(e, None).await;
        }
    }

    async fn dispatch(&mut self, msg: ClientMessage) -> Result<(), ApiError> {
        let state = self.state.clone();
        match msg {
            ClientMessage::Auth { key } => {
                let addr = self.who.addr;
                let caller = state
                    .auth
                    .check(addr.map(|a| a.ip()), || state.keys.holder(&key))?;
                self.who = Who {
                    client: self.session.clone(),
                    ..Who::new(caller, addr)
                };
                self.send(ServerMessage::ConnectionEstablished {
                    session: self.session.clone(),
                    role: self.who.caller.role,
                    protocol_version: PROTOCOL_VERSION,
                    limits: limits_view(&state),
                    current_model: state.default_model(&self.who.client),
                })
                .await;
            }
            ClientMessage::ListModelGroups {} => {
                let current = state.default_model(&self.who.client);
                let groups = group_views(&state, &self.who, current.as_deref()).await;
                self.send(ServerMessage::ModelGroupsList {
                    groups,
                    current_model: current,
                })
                .await;
            }
            ClientMessage::SwitchModel { model_id } => self.switch(&model_id, false).await?,
            ClientMessage::SwitchModelGrouped {
                model_id,
                group_id,
                preload,
            } => {
                if let Some(g) = group_id {
                    // A model the caller may not see is unknown, whatever group is named.
                    let snap = state.snapshot();
                    let (group, _) = views::find(&snap, self.who.caller.role, &model_id)
                        .ok_or_else(|| ApiError::UnknownModel(model_id.clone()))?;
                    if group.id != g {
                        return Err(ApiError::BadRequest(format!(
                            "model `{model_id}` is not in group `{g}`"
                        )));
                    }
                }
                self.switch(&model_id, preload).await?;
            }
            ClientMessage::PreloadGroup { group_id, tier } => {
                self.who.caller.require(Role::Admin, "preloading a group")?;
                let t = match tier.as_deref() {
                    None | Some("device") => Tier::Device,
                    Some("host") => Tier::Host,
                    Some(other) => {
                        return Err(ApiError::BadRequest(format!(
                            "unknown tier `{other}`: use device or host"
                        )))
                    }
                };
                self.preload(group_id, t).await?;
            }
            ClientMessage::UnloadGroup { group_id, to } => {
                self.who.caller.require(Role::Admin, "unloading a group")?;
                let t = match to.as_deref() {
                    None | Some("host") => Tier::Host,
                    Some("disk") => Tier::Disk,
                    Some(other) => {
                        return Err(ApiError::BadRequest(format!(
                            "unknown tier `{other}`: use host or disk"
                        )))
                    }
                };
                let r = state
                    .residency
                    .unload(&group_id, t)
                    .await
                    .map_err(|e| ApiError::BadRequest(e.to_string()))?;
                self.send(ServerMessage::GroupSwitchStatus {
                    group_id,
                    status: "unloaded".into(),
                    resource: None,
                    bytes_done: None,
                    bytes_total: None,
                    message: Some(format!("{} moved, {} kept", r.moved.len(), r.kept.len())),
                })
                .await;
            }
            ClientMessage::GetModelInfo { model_id } => {
                let snap = state.snapshot();
                let (g, m) = views::find(&snap, self.who.caller.role, &model_id)
                    .ok_or_else(|| ApiError::UnknownModel(model_id.clone()))?;
                let report = state.report().await;
                self.send(ServerMessage::ModelInfo {
                    model: views::model_view(
                        &snap,
                        report.as_ref(),
                        g,
                        m,
                        state.load_bytes_per_ms.load(Ordering::Relaxed),
                    ),
                })
                .await;
            }
            ClientMessage::Analyze(req) => {
                let work = req.work(req.given()?)?;
                self.submit(work, req.deadline_ms, req.client_tag.clone())
                    .await?;
            }
            ClientMessage::Generate(req) => {
                let work = req.work()?;
                self.submit(work, req.deadline_ms, req.client_tag.clone())
                    .await?;
            }
            ClientMessage::GenerateAndAnalyze {
                generate,
                models,
                options,
            } => {
                let work = generate.work()?;
                let gen = self
                    .submit(work, generate.deadline_ms, generate.client_tag.clone())
                    .await?;
                let request = tracker::chained(&state, &self.who, &gen)?;
                let analyze = crate::protocol::AnalyzeRequest {
                    models: if models.is_empty() {
                        generate.model_id.clone().into_iter().collect()
                    } else {
                        models
                    },
                    model_id: None,
                    text: None,
                    chat: false,
                    messages: None,
                    options,
                    deadline_ms: None,
                    client_tag: generate.client_tag.clone(),
                };
                let work = analyze.work(Text::Generated { request })?;
                self.submit(work, None, generate.client_tag).await?;
            }
            ClientMessage::CancelRequest { request_id } => {
                let t = self.requests.get(&request_id).ok_or_else(|| {
                    ApiError::NotFound(format!("no request `{request_id}` on this connection"))
                })?;
                if !state.scheduler.cancel(t.internal).await {
                    return Err(ApiError::BadRequest(format!(
                        "request `{request_id}` has already ended"
                    )));
                }
            }
            ClientMessage::Interrupt {} => {
                for t in self.requests.values() {
                    state.scheduler.cancel(t.internal).await;
                }
            }
            ClientMessage::Status {} => self.queue_update().await,
        }
        Ok(())
    }

    async fn switch(&mut self, model: &str, preload: bool) -> Result<(), ApiError> {
        let r = switch_to(&self.state, &self.who, model, preload).await?;
        self.send(ServerMessage::ModelSwitched {
            model_id: r.model_id,
            group_id: r.group_id,
            fast_switch: r.fast_switch,
            preloading: r.preloading,
        })
        .await;
        Ok(())
    }

    async fn preload(&self, group_id: String, tier: Tier) -> Result<(), ApiError> {
        let mut events = self
            .state
            .residency
            .preload(&group_id, tier)
            .await
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let out = self.out.clone();
        let snap = self.state.snapshot();
        let status = move |status: &str,
                           resource: Option<String>,
                           done: Option<u64>,
                           total: Option<u64>,
                           message: Option<String>| {
            let frame = Out::Message(ServerMessage::GroupSwitchStatus {
                group_id: group_id.clone(),
                status: status.into(),
                resource,
                bytes_done: done,
                bytes_total: total,
                message,
            });
            let out = out.clone();
            async move {
                let _ = out.send(frame).await;
            }
        };
        status("preloading", None, None, None, None).await;
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                match ev {
                    PreloadEvent::Loading {
                        resource,
                        bytes_done,
                        bytes_total,
                    } => {
                        status(
                            "loading",
                            Some(kind(&resource)),
                            Some(bytes_done),
                            Some(bytes_total),
                            None,
                        )
                        .await
                    }
                    PreloadEvent::Ready { .. } => {}
                    PreloadEvent::Done { .. } => {
                        status("preloaded", None, None, None, None).await;
                        break;
                    }
                    PreloadEvent::Failed { error, .. } => {
                        status(
                            "failed",
                            None,
                            None,
                            None,
                            Some(views::scrub(&snap, &error)),
                        )
                        .await;
                        break;
                    }
                }
            }
        });
        Ok(())
    }

    /// Queues work for this connection and forwards its events. Returns its public id.
    async fn submit(
        &mut self,
        work: lensd_core::work::Work,
        deadline_ms: Option<u64>,
        tag: Option<String>,
    ) -> Result<String, ApiError> {
        let t = tracker::submit(
            &self.state,
            &self.who,
            work,
            deadline_ms.map(Duration::from_millis),
        )
        .await?;
        self.send(ServerMessage::Accepted {
            request_id: t.id.clone(),
            kind: t.kind.into(),
            client_tag: tag,
        })
        .await;
        self.requests.insert(t.id.clone(), t.clone());
        let (past, mut rx) = t.subscribe();
        let out = self.out.clone();
        let id = t.id.clone();
        tokio::spawn(async move {
            let frame = |ev: RequestEvent| {
                Out::Event(EventFrame {
                    request_id: id.clone(),
                    event: ev,
                })
            };
            for ev in past {
                if out.send(frame(ev)).await.is_err() {
                    return;
                }
            }
            while let Some(ev) = rx.recv().await {
                if out.send(frame(ev)).await.is_err() {
                    break;
                }
            }
        });
        Ok(t.id.clone())
    }

    /// This connection's unfinished requests with their places.
    async fn queue_update(&self) {
        let requests = self
            .requests
            .values()
            .filter_map(|t| match t.status() {
                Status::Queued { position } => Some(QueueEntry {
                    request_id: t.id.clone(),
                    kind: t.kind.into(),
                    position: Some(position),
                    state: "queued".into(),
                }),
                Status::Running { .. } => Some(QueueEntry {
                    request_id: t.id.clone(),
                    kind: t.kind.into(),
                    position: None,
                    state: "running".into(),
                }),
                _ => None,
            })
            .collect();
        self.send(ServerMessage::QueueUpdate { requests }).await;
    }
}

/// The limits a client is told in `connection_established`.
fn limits_view(state: &Shared) -> LimitsView {
    let l = &state.limits;
    LimitsView {
        max_text_chars: l.max_text_chars,
        max_lenses: l.max_lenses,
        max_new_tokens: l.max_new_tokens,
        max_message_bytes: l.max_message_bytes,
        requests_per_minute: l.requests_per_minute,
    }
}

fn kind(resource: &lensd_core::registry::ResourceKey) -> String {
    match resource {
        lensd_core::registry::ResourceKey::Base(_) => "base".into(),
        lensd_core::registry::ResourceKey::Lens(_) => "lens".into(),
    }
}
