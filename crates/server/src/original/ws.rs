//! A WebSocket session speaking the original's dialect: its messages become lensd work for this
//! connection (no switch here changes what anyone else reads), and each request's events are
//! told in the original's messages: `queued`, `processing`, `progress`, then `completed`,
//! `generation_complete`, `error`, `generation_error`, `request_cancelled` or `interrupted`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use lensd_core::config::{Group, ModelEntry};
use lensd_core::work::{JobOutput, RequestEvent, Text, Work};
use lensd_core::LensKind;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::listing::{self, DEVICE};
use super::messages::{
    analyze_work, AnalyzeMessage, AnalyzeOptions, ClientMessage, GenerateMessage, GeneratePlan,
};
use super::rows::{self, RowsOf};
use crate::api::Who;
use crate::auth::Role;
use crate::error::ApiError;
use crate::state::Shared;
use crate::tracker::{self, Status, Tracked};
use crate::views::{self, Snapshot};
use crate::ws::Out;

/// What a session needs to answer in the original's dialect.
#[derive(Clone)]
pub struct Ctx {
    pub state: Shared,
    pub who: Who,
    pub(crate) out: mpsc::Sender<Out>,
}

impl Ctx {
    pub(super) async fn send(&self, v: Value) {
        let _ = self.out.send(Out::Json(v)).await;
    }

    /// An `error` frame, with the ids that let the page find the request it concerns.
    pub async fn error(&self, e: &ApiError, ids: Ids<'_>) {
        let body = e.body();
        let message = views::scrub(&self.state.snapshot(), &body.message);
        let mut v = json!({"type": "error", "error": message, "error_type": body.error_type});
        ids.put(&mut v);
        self.send(v).await;
    }
}

/// The ids an error names, where known.
#[derive(Default, Clone, Copy)]
pub struct Ids<'a> {
    pub request_id: Option<&'a str>,
    pub client_request_id: Option<&'a str>,
    pub context: Option<&'a str>,
}

impl Ids<'_> {
    fn put(&self, v: &mut Value) {
        if let Some(id) = self.request_id {
            v["request_id"] = json!(id);
        }
        if let Some(id) = self.client_request_id {
            v["client_request_id"] = json!(id);
        }
        if let Some(c) = self.context {
            v["context"] = json!(c);
        }
    }
}

/// How a request was stopped at its client's wish, which decides the message that says so.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Stop {
    Cancel,
    Interrupt,
}

/// One request of the original's: an analysis, or a generation of several completions, each
/// a lensd request run one after the other under the first one's id.
pub struct Live {
    id: String,
    context: &'static str,
    client_request_id: Option<String>,
    current: Mutex<Arc<Tracked>>,
    stop: Mutex<Option<Stop>>,
    done: std::sync::atomic::AtomicBool,
}

impl Live {
    fn new(
        t: &Arc<Tracked>,
        context: &'static str,
        client_request_id: Option<String>,
    ) -> Arc<Live> {
        Arc::new(Live {
            id: t.id.clone(),
            context,
            client_request_id,
            current: Mutex::new(t.clone()),
            stop: Mutex::new(None),
            done: Default::default(),
        })
    }

    pub(super) fn current(&self) -> Arc<Tracked> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn stopped(&self) -> Option<Stop> {
        *self.stop.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ids(&self) -> Ids<'_> {
        Ids {
            request_id: Some(&self.id),
            client_request_id: self.client_request_id.as_deref(),
            context: Some(self.context),
        }
    }
}

impl Live {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Its forwarder has told its end.
    pub(super) fn finished(&self) -> bool {
        self.done.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Marks how the client stopped it, which decides the message that tells the end.
    pub(super) fn mark_stopped(&self, how: Stop) {
        *self.stop.lock().unwrap_or_else(|e| e.into_inner()) = Some(how);
    }
}

/// Finished requests a session remembers (for `status` and a late cancel's answer) before it
/// forgets them.
const KEPT_FINISHED: usize = 256;

impl Conn {
    fn add(&mut self, live: Arc<Live>) {
        if self.requests.values().filter(|l| l.finished()).count() >= KEPT_FINISHED {
            self.requests.retain(|_, l| !l.finished());
        }
        self.requests.insert(live.id.clone(), live);
    }

    /// One of this session's requests, by the id its client knows.
    pub(super) fn get(&self, id: &str) -> Option<&Arc<Live>> {
        self.requests.get(id)
    }

    /// The id this session's client knows for the lensd request `id`: a generation's later
    /// completions run under ids of their own.
    pub fn alias(&self, id: &str) -> Option<String> {
        self.requests
            .values()
            .find(|l| l.current().id == id)
            .map(|l| l.id.clone())
    }
}

/// A session's requests in the original's dialect, by id.
#[derive(Default)]
pub struct Conn {
    requests: HashMap<String, Arc<Live>>,
}

/// Parses and answers one message.
pub async fn handle(ctx: &Ctx, conn: &mut Conn, msg: ClientMessage) {
    let failed = match msg {
        ClientMessage::Analyze(a) => {
            let ids = Ids {
                client_request_id: a.client_request_id.as_deref(),
                context: Some("analysis"),
                ..Ids::default()
            };
            match analyze(ctx, conn, &a, None).await {
                Ok(_) => None,
                Err(e) => {
                    ctx.error(&e, ids).await;
                    None
                }
            }
        }
        ClientMessage::Generate(g) => {
            if let Err(e) = generate(ctx, conn, &g, None, true).await {
                let message = views::scrub(&ctx.state.snapshot(), &e.body().message);
                let mut v = json!({"type": "generation_error", "error": message,
                    "error_type": e.error_type()});
                Ids {
                    client_request_id: g.client_request_id.as_deref(),
                    context: Some("generation"),
                    ..Ids::default()
                }
                .put(&mut v);
                ctx.send(v).await;
            }
            None
        }
        ClientMessage::GenerateAndAnalyze {
            generation,
            analysis,
            client_request_id,
        } => {
            let r = generate_and_analyze(ctx, conn, generation, analysis, &client_request_id).await;
            r.err().map(|e| (e, "analysis", client_request_id))
        }
        other => {
            // Errors about one request name it, so that the page finds the request they concern.
            let about = match &other {
                ClientMessage::CancelRequest { request_id } => Some(request_id.clone()),
                ClientMessage::Interrupt { request_id, .. } => request_id.clone(),
                _ => None,
            };
            super::control::control(ctx, conn, other)
                .await
                .err()
                .map(|e| (e, "", about))
        }
    };
    if let Some((e, context, id)) = failed {
        // An analysis names its client's id; a cancel or interrupt the request it concerns.
        let ids = if context.is_empty() {
            Ids {
                request_id: id.as_deref(),
                ..Ids::default()
            }
        } else {
            Ids {
                context: Some(context),
                client_request_id: id.as_deref(),
                ..Ids::default()
            }
        };
        ctx.error(&e, ids).await;
    }
}

/// The model a request reads: the one it names, else the session's current one, else the
/// configuration's default group's first model the caller may use.
pub(super) fn model_for(ctx: &Ctx, asked: Option<String>) -> Result<String, ApiError> {
    if let Some(m) = asked.filter(|m| !m.is_empty()) {
        return Ok(m);
    }
    if let Some(m) = ctx.state.default_model(&ctx.who.client) {
        return Ok(m);
    }
    server_default(&ctx.state.snapshot(), ctx.who.caller.role).ok_or_else(|| {
        ApiError::BadRequest("no model is configured that this caller may use".into())
    })
}

/// The first model the role may use in the default group, else in any group.
pub fn server_default(snap: &Snapshot, role: Role) -> Option<String> {
    let first = |g: &Group| {
        g.models
            .iter()
            .find(|m| views::may_use(role, g, m))
            .map(|m| m.id.clone())
    };
    let default = snap.config.settings.default_group.as_deref();
    snap.config
        .groups
        .iter()
        .filter(|g| Some(g.id.as_str()) == default)
        .find_map(first)
        .or_else(|| snap.config.groups.iter().find_map(first))
}

/// The model and its group, if the caller may use it.
pub(super) fn known<'a>(
    snap: &'a Snapshot,
    who: &Who,
    id: &str,
) -> Result<(&'a Group, &'a ModelEntry), ApiError> {
    views::find(snap, who.caller.role, id).ok_or_else(|| ApiError::UnknownModel(id.to_string()))
}

/// What the rows of a finished analysis need to know.
#[derive(Clone)]
struct Shape {
    lens_kind: &'static str,
    structured: bool,
    kl: bool,
    /// Index of the group's tuned model among the request's models.
    tuned: Option<usize>,
    metadata: Value,
}

/// An analysis request: its work and the shape of its rows.
pub(crate) fn analysis(
    snap: &Snapshot,
    who: &Who,
    model: &str,
    options: &AnalyzeOptions,
    text: Text,
) -> Result<(Work, ShapeOf), ApiError> {
    let (g, m) = known(snap, who, model)?;
    let plan = options.plan(m.auto_batch_size_max.map(|n| n as usize))?;
    let n_layers = snap
        .registry
        .models
        .get(model)
        .and_then(|r| snap.registry.bases.get(&r.base))
        .map_or(0, |b| b.n_layers);
    // A talkative lens reads the output of block `layer`: lensd's layer `layer + 1`.
    let layer = match m.lens {
        LensKind::Talkative => m.layer.map(|l| l + 1),
        _ => Some(m.layer.unwrap_or(n_layers)),
    };
    let mut models = vec![model.to_string()];
    let tuned = if plan.tuned_lens_top && m.lens != LensKind::Tuned {
        g.models
            .iter()
            .find(|t| t.lens == LensKind::Tuned && views::may_use(who.caller.role, g, t))
            .filter(|_| layer.is_some())
            .map(|t| {
                models.push(t.id.clone());
                1
            })
    } else {
        None
    };
    let used = json!({
        "best_of_k": plan.explain.best_of_k,
        "batch_size": plan.explain.batch_positions,
        "temperature": plan.explain.temperature,
        "seed": plan.explain.seed,
        "calculate_salience": plan.explain.salience,
        "no_kl": !plan.explain.kl,
        "logit_lens_analysis": plan.explain.logit_lens_top,
        "use_tuned_lens": tuned.is_some(),
        "last_n_messages": plan.explain.last_messages,
        "use_chat_format": plan.chat,
    });
    let mut metadata = json!({
        "model_id": m.id,
        "encoder_decoder_model": m.name,
        "shared_base_model": listing::base_model(g),
        "donor_model": m.donor.as_ref().and_then(|d| d.file_name()).map_or_else(
            || "Same as base model".to_string(),
            |n| n.to_string_lossy().into_owned()),
        "layer": m.layer,
        "lens": m.lens.as_str(),
        "best_of_k": plan.explain.best_of_k,
        "batch_size": plan.explain.batch_positions,
        "temperature": plan.explain.temperature,
        "device": DEVICE,
        "options": used,
    });
    if who.caller.role == Role::Admin {
        if let Some(name) = m.lens_path.as_ref().and_then(|p| p.file_name()) {
            metadata["checkpoint_path"] = json!(name.to_string_lossy());
        }
    }
    let shape = Shape {
        lens_kind: m.lens.as_str(),
        structured: plan.structured,
        kl: plan.explain.kl,
        tuned,
        metadata,
    };
    let work = analyze_work(models, text, &plan, layer.unwrap_or(n_layers));
    Ok((work, ShapeOf(shape)))
}

/// The shape of an analysis's rows, opaque outside this module.
pub struct ShapeOf(Shape);

/// Queues an analysis and forwards its events; returns its request id.
pub(crate) async fn analyze(
    ctx: &Ctx,
    conn: &mut Conn,
    a: &AnalyzeMessage,
    text: Option<Text>,
) -> Result<String, ApiError> {
    let model = model_for(ctx, a.model())?;
    let options = a.options.clone().unwrap_or_default();
    let chat = options.use_chat_format.unwrap_or(false);
    let text = match text {
        Some(t) => t,
        None => Text::Given(super::messages::prompt(&a.text, chat)?),
    };
    let (work, ShapeOf(shape)) = analysis(&ctx.state.snapshot(), &ctx.who, &model, &options, text)?;
    let t = tracker::submit(&ctx.state, &ctx.who, work, None).await?;
    let live = Live::new(&t, "analysis", a.client_request_id.clone());
    conn.add(live.clone());
    let id = live.id.clone();
    tokio::spawn(forward_analysis(ctx.clone(), live, shape));
    Ok(id)
}

/// Places in the queue as the original counted them: 1 is next; the queue's length.
fn queued_frame(ctx: &Ctx, live: &Live, position: usize) -> Value {
    let size = ctx
        .state
        .requests
        .active()
        .iter()
        .filter(|t| matches!(t.status(), Status::Queued { .. }))
        .count()
        .max(position + 1);
    let mut v = json!({"type": "queued", "queue_position": position + 1, "queue_size": size});
    live.ids().put(&mut v);
    v
}

/// The frames that every request tells alike; true when `ev` was one of them.
async fn tell_common(ctx: &Ctx, live: &Live, ev: &RequestEvent) -> bool {
    match ev {
        RequestEvent::Queued { position } | RequestEvent::Position { position } => {
            ctx.send(queued_frame(ctx, live, *position)).await;
        }
        RequestEvent::Loading {
            resource,
            bytes_done,
            bytes_total,
        } => {
            let pct = (*bytes_done * 100).checked_div(*bytes_total).unwrap_or(0);
            ctx.send(json!({"type": "status", "request_id": live.id,
                "message": format!("Loading the {resource} for {}: {pct}%", live.context)}))
                .await;
        }
        RequestEvent::Started => {
            let message = if live.context == "analysis" {
                "Analyzing..."
            } else {
                "Generating..."
            };
            let mut v = json!({"type": "processing", "message": message, "device": DEVICE});
            live.ids().put(&mut v);
            ctx.send(v).await;
        }
        _ => return false,
    }
    true
}

/// The message for a request that ended cancelled.
async fn tell_cancelled(ctx: &Ctx, live: &Live, reason: &str) {
    let mut v = match live.stopped() {
        Some(Stop::Cancel) => json!({"type": "request_cancelled",
            "message": "Request cancelled successfully"}),
        Some(Stop::Interrupt) => json!({"type": "interrupted"}),
        None if live.context == "generation" => {
            json!({"type": "generation_error", "error": format!("cancelled: {reason}")})
        }
        None => json!({"type": "error", "error": format!("cancelled: {reason}"),
            "error_type": "cancelled"}),
    };
    live.ids().put(&mut v);
    ctx.send(v).await;
}

async fn forward_analysis(ctx: Ctx, live: Arc<Live>, shape: Shape) {
    let t = live.current();
    let (past, mut rx) = t.subscribe();
    let (mut queued_at, mut started_at) = (Instant::now(), None);
    let mut events = past.into_iter();
    loop {
        let ev = match events.next() {
            Some(ev) => ev,
            None => match rx.recv().await {
                Some(ev) => ev,
                None => break,
            },
        };
        if let RequestEvent::Queued { .. } = ev {
            queued_at = Instant::now();
        }
        if let RequestEvent::Started = ev {
            started_at = Some(Instant::now());
        }
        if tell_common(&ctx, &live, &ev).await {
            continue;
        }
        match ev {
            RequestEvent::Progress {
                done,
                total,
                eta_ms,
            } => {
                let pct = (done as f64 * 100.0 / total.max(1) as f64).round();
                let mut v = json!({"type": "progress", "current": done, "total": total,
                    "progress": pct, "message": "Analyzing tokens",
                    "eta_seconds": eta_ms.map(|ms| ms as f64 / 1000.0), "device": DEVICE});
                live.ids().put(&mut v);
                ctx.send(v).await;
            }
            RequestEvent::Completed { output } => {
                let JobOutput::Analysis { analyses } = output else {
                    break;
                };
                let Some(lens) = analyses.first() else { break };
                let data = rows::data(
                    &RowsOf {
                        lens,
                        tuned: shape.tuned.and_then(|i| analyses.get(i)),
                        structured: shape.structured,
                        kl: shape.kl,
                    },
                    shape.lens_kind,
                );
                let mut metadata = shape.metadata.clone();
                let now = Instant::now();
                let started = started_at.unwrap_or(now);
                metadata["timings"] = json!({
                    "queued_seconds": started.duration_since(queued_at).as_secs_f64(),
                    "processing_seconds": now.duration_since(started).as_secs_f64(),
                });
                metadata["timestamp"] = json!(time::OffsetDateTime::now_utc()
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default());
                let mut v = json!({"type": "completed", "device": DEVICE,
                    "result": {"data": data, "metadata": metadata}});
                live.ids().put(&mut v);
                ctx.send(v).await;
                break;
            }
            RequestEvent::Error {
                error_type,
                message,
            } => {
                let mut v = json!({"type": "error", "error": message, "error_type": error_type});
                live.ids().put(&mut v);
                ctx.send(v).await;
                break;
            }
            RequestEvent::Cancelled { reason, .. } => {
                tell_cancelled(&ctx, &live, &reason).await;
                break;
            }
            _ => {}
        }
    }
    live.done.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Queues a generation's first completion and runs the rest after it; `full_text` completions
/// hold the prompt too, as the original's page shows them.
pub(crate) async fn generate(
    ctx: &Ctx,
    conn: &mut Conn,
    g: &GenerateMessage,
    client_request_id: Option<String>,
    full_text: bool,
) -> Result<Arc<Live>, ApiError> {
    let model = model_for(ctx, g.model())?;
    known(&ctx.state.snapshot(), &ctx.who, &model)?;
    let mut plan = g.plan(model, rand::random::<u32>() as u64)?;
    plan.full_text = full_text;
    let t = tracker::submit(
        &ctx.state,
        &ctx.who,
        Work::Generate(plan.work.clone()),
        None,
    )
    .await?;
    let live = Live::new(
        &t,
        "generation",
        client_request_id.or(g.client_request_id.clone()),
    );
    conn.add(live.clone());
    tokio::spawn(forward_generation(ctx.clone(), live.clone(), plan));
    Ok(live)
}

/// Runs a generation's completions one after the other, each its own lensd request (so that
/// others' work interleaves), and tells the original's messages for them as one request.
async fn forward_generation(ctx: Ctx, live: Arc<Live>, plan: GeneratePlan) {
    let mut completions = Vec::with_capacity(plan.completions);
    // gpt-oss's thinking, per completion, beside the replies.
    let mut thinking: Vec<Option<String>> = Vec::with_capacity(plan.completions);
    let mut generated = 0usize;
    'runs: for i in 0..plan.completions {
        if i > 0 {
            if let Some(stop) = live.stopped() {
                let _ = stop;
                tell_cancelled(&ctx, &live, "").await;
                break 'runs;
            }
            let mut work = plan.work.clone();
            work.sampling.seed = work.sampling.seed.wrapping_add(i as u64);
            match tracker::submit(&ctx.state, &ctx.who, Work::Generate(work), None).await {
                Ok(t) => *live.current.lock().unwrap_or_else(|e| e.into_inner()) = t,
                Err(e) => {
                    let mut v = json!({"type": "generation_error", "error": e.body().message,
                        "error_type": e.error_type()});
                    live.ids().put(&mut v);
                    ctx.send(v).await;
                    break 'runs;
                }
            }
        }
        let t = live.current();
        let (past, mut rx) = t.subscribe();
        let mut events = past.into_iter();
        loop {
            let ev = match events.next() {
                Some(ev) => ev,
                None => match rx.recv().await {
                    Some(ev) => ev,
                    None => break 'runs,
                },
            };
            // Each completion waits its turn: the page hears where it stands.
            if tell_common(&ctx, &live, &ev).await {
                continue;
            }
            match ev {
                RequestEvent::Completed {
                    output:
                        JobOutput::Generation {
                            prompt,
                            text,
                            ids,
                            reply,
                            thinking: thought,
                            ..
                        },
                } => {
                    generated += ids.len();
                    // The full text is what the model read and wrote, channels and all; the
                    // reply alone leaves gpt-oss's thinking to `thinking`.
                    completions.push(match (plan.full_text, reply) {
                        (true, _) => format!("{prompt}{text}"),
                        (false, Some(reply)) => reply,
                        (false, None) => text,
                    });
                    thinking.push(thought);
                    break;
                }
                RequestEvent::Error {
                    message,
                    error_type,
                } => {
                    let mut v = json!({"type": "generation_error", "error": message,
                        "error_type": error_type});
                    live.ids().put(&mut v);
                    ctx.send(v).await;
                    break 'runs;
                }
                RequestEvent::Cancelled { reason, .. } => {
                    tell_cancelled(&ctx, &live, &reason).await;
                    break 'runs;
                }
                _ => {}
            }
        }
        if completions.len() == plan.completions {
            let w = &plan.work;
            let mut v = json!({"type": "generation_complete", "device": DEVICE, "result": {
            "completions": completions,
            "thinking": thinking,
            "metadata": {
                "model_id": w.model,
                "num_completions": plan.completions,
                "max_new_tokens": w.sampling.max_tokens,
                "temperature": w.sampling.temperature,
                "top_p": w.sampling.top_p.unwrap_or(1.0),
                "seed": w.sampling.seed,
                "tokens_generated": generated,
                "device": DEVICE,
            }}});
            live.ids().put(&mut v);
            ctx.send(v).await;
        }
    }
    live.done.store(true, std::sync::atomic::Ordering::SeqCst);
}

async fn generate_and_analyze(
    ctx: &Ctx,
    conn: &mut Conn,
    generation: GenerateMessage,
    analysis_msg: super::messages::ChainedAnalysis,
    client_request_id: &Option<String>,
) -> Result<(), ApiError> {
    let gen_id = client_request_id.as_ref().map(|c| format!("{c}_gen"));
    let live = generate(ctx, conn, &generation, gen_id, true).await?;
    let request = tracker::chained(&ctx.state, &ctx.who, &live.id)?;
    let model = analysis_msg
        .model_id
        .clone()
        .or_else(|| generation.model())
        .or_else(|| Some(live.current().models.first()?.clone()));
    let a = AnalyzeMessage {
        text: super::messages::TextInput::Text(String::new()),
        options: analysis_msg.options.clone(),
        model_id: model,
        client_request_id: client_request_id.clone(),
    };
    analyze(ctx, conn, &a, Some(Text::Generated { request }))
        .await
        .map(|_| ())
}
