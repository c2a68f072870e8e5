//! The original's slim API (`/api/slim/*`), which auditing pipelines call: queue a generation,
//! an analysis or a chat reply for a model group, then poll `status/{id}`. A request names a
//! `model_group` and optionally a `model_id` in it; without one, the group's first model the
//! caller may use serves it.

use axum::extract::{Path, State};
use axum::Json;
use lensd_core::config::Group;
use serde::Deserialize;
use serde_json::{json, Value};

use super::jobs::Kind;
use super::messages::{
    AnalyzeMessage, AnalyzeOptions, GenerateMessage, GenerateOptions, OptimizeConfig, TextInput,
    Turn,
};
use super::rest::{job_ctx, record, Answer, Detail};
use super::ws::{self as session, Conn};
use crate::api::{Body, Who};
use crate::error::ApiError;
use crate::state::Shared;
use crate::views;

fn one() -> f32 {
    1.0
}
fn one_usize() -> usize {
    1
}
fn hundred() -> usize {
    100
}
fn eight() -> usize {
    8
}
fn yes() -> bool {
    true
}
fn max_tokens() -> usize {
    1024
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationRequest {
    pub messages: Vec<Turn>,
    #[serde(default = "one")]
    pub temperature: f32,
    #[serde(default = "one_usize")]
    pub n_continuations: usize,
    #[serde(default = "hundred")]
    pub n_tokens: usize,
    pub model_group: String,
    #[serde(default)]
    pub model_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalysisRequest {
    pub messages: Vec<Turn>,
    #[serde(default = "yes")]
    pub calculate_token_salience: bool,
    #[serde(default = "eight")]
    pub best_of_k: usize,
    pub model_group: String,
    #[serde(default)]
    pub model_id: Option<String>,
    #[serde(default)]
    pub last_n_messages: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendMessageRequest {
    pub messages: Vec<Turn>,
    #[serde(default = "one")]
    pub temperature: f32,
    #[serde(default = "max_tokens")]
    pub max_tokens: usize,
    pub model_group: String,
    #[serde(default)]
    pub model_id: Option<String>,
}

fn bound<T: PartialOrd + std::fmt::Display + Copy>(
    name: &str,
    v: T,
    lo: T,
    hi: T,
) -> Result<T, ApiError> {
    if v >= lo && v <= hi {
        Ok(v)
    } else {
        Err(ApiError::BadRequest(format!(
            "`{name}` must be from {lo} to {hi}, got {v}"
        )))
    }
}

/// The turns, checked as the original checked them.
fn turns(messages: &[Turn]) -> Result<TextInput, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::BadRequest("Messages list cannot be empty".into()));
    }
    if let Some((i, t)) = messages
        .iter()
        .enumerate()
        .find(|(_, t)| !["system", "user", "assistant"].contains(&t.role.as_str()))
    {
        return Err(ApiError::BadRequest(format!(
            "`messages[{i}].role` must be one of: system, user, assistant; got `{}`",
            t.role
        )));
    }
    Ok(TextInput::Turns(messages.to_vec()))
}

/// The model serving a request for `group`: `model_id` when it is in the group, else the
/// group's first model the caller may use.
fn model_in(
    state: &Shared,
    who: &Who,
    group: &str,
    model: Option<&str>,
) -> Result<String, ApiError> {
    let snap = state.snapshot();
    let g = visible_group(&snap.config.groups, who, group)?;
    match model {
        Some(m) => {
            let found = g
                .models
                .iter()
                .any(|e| e.id == m && views::may_use(who.caller.role, g, e));
            if found {
                Ok(m.to_string())
            } else {
                Err(ApiError::UnknownModel(format!("{m}` in group `{group}")))
            }
        }
        None => g
            .models
            .iter()
            .find(|e| views::may_use(who.caller.role, g, e))
            .map(|e| e.id.clone())
            .ok_or_else(|| ApiError::NotFound(format!("Model group '{group}' not found"))),
    }
}

fn visible_group<'a>(groups: &'a [Group], who: &Who, id: &str) -> Result<&'a Group, ApiError> {
    groups
        .iter()
        .find(|g| {
            g.id == id
                && g.models
                    .iter()
                    .any(|m| views::may_use(who.caller.role, g, m))
        })
        .ok_or_else(|| ApiError::NotFound(format!("Model group '{id}' not found")))
}

fn queued(id: &str, place: (usize, usize), what: &str) -> Json<Value> {
    Json(
        json!({"request_id": id, "status": "queued", "queue_position": place.0,
        "message": format!("{what} request queued at position {}", place.0)}),
    )
}

/// `POST /api/slim/generate`.
pub async fn generate(
    State(state): State<Shared>,
    who: Who,
    Body(b): Body<GenerationRequest>,
) -> Answer {
    let n = bound("n_continuations", b.n_continuations, 1, 10)?;
    let tokens = bound("n_tokens", b.n_tokens, 1, 512)?;
    let temperature = bound("temperature", b.temperature, 0.1, 2.0)?;
    let text = turns(&b.messages)?;
    let model = model_in(&state, &who, &b.model_group, b.model_id.as_deref())?;
    let job = job_ctx(&state, &who, Kind::Generation);
    let g = GenerateMessage {
        text,
        options: Some(GenerateOptions {
            num_tokens: Some(tokens),
            num_completions: Some(n),
            temperature: Some(temperature),
            top_p: Some(1.0),
            is_chat: Some(true),
            use_chat_format: Some(true),
            ..Default::default()
        }),
        model_id: Some(model),
        client_request_id: None,
    };
    let live = session::generate(&job.ctx, &mut Conn::default(), &g, None, true).await?;
    let id = live.id().to_string();
    let place = job.keep(&id);
    Ok(queued(&id, place, "Generation"))
}

/// `POST /api/slim/analyze`.
pub async fn analyze(
    State(state): State<Shared>,
    who: Who,
    Body(b): Body<AnalysisRequest>,
) -> Answer {
    let k = bound("best_of_k", b.best_of_k, 1, 32)?;
    let text = turns(&b.messages)?;
    let model = model_in(&state, &who, &b.model_group, b.model_id.as_deref())?;
    let job = job_ctx(&state, &who, Kind::Analysis);
    let a = AnalyzeMessage {
        text,
        options: Some(AnalyzeOptions {
            calculate_token_salience: Some(b.calculate_token_salience),
            optimize_explanations_config: Some(OptimizeConfig {
                best_of_k: Some(k),
                ..Default::default()
            }),
            temperature: Some(1.0),
            seed: Some(42),
            no_kl: Some(true),
            use_chat_format: Some(true),
            is_chat: Some(true),
            last_n_messages: b.last_n_messages,
            ..Default::default()
        }),
        model_id: Some(model),
        client_request_id: None,
    };
    let id = session::analyze(&job.ctx, &mut Conn::default(), &a, None).await?;
    let place = job.keep(&id);
    Ok(queued(&id, place, "Analysis"))
}

/// `POST /api/slim/send_message`: the assistant's next turn (continuing the last one when the
/// conversation ends with an assistant turn), without the prompt.
pub async fn send_message(
    State(state): State<Shared>,
    who: Who,
    Body(b): Body<SendMessageRequest>,
) -> Answer {
    let temperature = bound("temperature", b.temperature, 0.1, 2.0)?;
    bound("max_tokens", b.max_tokens, 1, 4096)?;
    if b.messages.iter().filter(|t| t.role == "system").count() > 1 {
        return Err(ApiError::BadRequest(
            "Multiple system prompts detected in chat messages.".into(),
        )
        .into());
    }
    // The reply ends at the model's end of turn; `max_tokens` only caps it, so the server's
    // own cap on new tokens applies beyond.
    let max = b.max_tokens.min(state.limits.max_new_tokens);
    let text = turns(&b.messages)?;
    let model = model_in(&state, &who, &b.model_group, b.model_id.as_deref())?;
    let job = job_ctx(&state, &who, Kind::Message);
    let g = GenerateMessage {
        text,
        options: Some(GenerateOptions {
            num_tokens: Some(max),
            num_completions: Some(1),
            temperature: Some(temperature),
            top_p: Some(1.0),
            is_chat: Some(true),
            ..Default::default()
        }),
        model_id: Some(model),
        client_request_id: None,
    };
    let live = session::generate(&job.ctx, &mut Conn::default(), &g, None, false).await?;
    let id = live.id().to_string();
    let place = job.keep(&id);
    Ok(queued(&id, place, "Message"))
}

/// `GET /api/slim/status/{id}`.
pub async fn status(State(state): State<Shared>, who: Who, Path(id): Path<String>) -> Answer {
    let r = record(&state, &who, &id)?;
    let completed = r.status == "completed";
    let failed = r.status == "failed";
    Ok(Json(json!({
        "request_id": id,
        "status": r.status,
        "result": if completed { r.result.clone() } else { None },
        "error": if failed { r.error.clone() } else { None },
        "processing_time": r.processing_time(),
    })))
}

/// `GET /api/slim/models`: the groups the caller may use.
pub async fn models(State(state): State<Shared>, who: Who) -> Json<Value> {
    let current = state.default_model(&who.client);
    let list = super::listing::groups_list(&state, &who, current.as_deref()).await;
    let groups: Vec<Value> = list["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| {
            let models = g["models"].as_array().cloned().unwrap_or_default();
            json!({"id": g["group_id"], "name": g["group_name"], "description": g["description"],
                "is_loaded": models.iter().any(|m| m["is_loaded"] == true),
                "default_layer": models.first().map(|m| m["id"].clone())})
        })
        .collect();
    Json(json!({"model_groups": groups, "current_model_id": current}))
}

/// `GET /api/slim/models/{identifier}/layers`: a group's models (its "layers"), named by the
/// group's id or one of its models'.
pub async fn layers(State(state): State<Shared>, who: Who, Path(id): Path<String>) -> Answer {
    let current = state.default_model(&who.client);
    let list = super::listing::groups_list(&state, &who, current.as_deref()).await;
    let group = list["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|g| {
            g["group_id"] == id.as_str()
                || g["models"]
                    .as_array()
                    .is_some_and(|ms| ms.iter().any(|m| m["id"] == id.as_str()))
        })
        .ok_or_else(|| {
            Detail(ApiError::NotFound(format!(
                "Model or group not found: {id}"
            )))
        })?;
    let models = group["models"].as_array().cloned().unwrap_or_default();
    let layers: Vec<Value> = models
        .iter()
        .map(|m| {
            json!({"id": m["id"], "name": m["name"], "layer": m["layer"],
            "description": m["description"], "is_current": m["is_current"]})
        })
        .collect();
    Ok(Json(
        json!({"group_id": group["group_id"], "group_name": group["group_name"],
        "is_loaded": models.iter().any(|m| m["is_loaded"] == true), "layers": layers,
        "default_layer": models.first().map(|m| m["id"].clone())}),
    ))
}

/// `GET /api/slim/`: what the slim API offers.
pub async fn index() -> Json<Value> {
    let route = |path: &str, method: &str, what: &str| json!({"path": path, "method": method, "description": what});
    Json(json!({
        "name": "lensd slim API",
        "version": env!("CARGO_PKG_VERSION"),
        "description": "The original site's slim API: queue work for a model group, then poll its status.",
        "endpoints": {
            "generate": route("/api/slim/generate", "POST", "Continuations of a conversation"),
            "analyze": route("/api/slim/analyze", "POST", "Explanations of a conversation's tokens"),
            "send_message": route("/api/slim/send_message", "POST", "The assistant's reply to a conversation"),
            "status": route("/api/slim/status/{request_id}", "GET", "A request's state and result"),
            "models": route("/api/slim/models", "GET", "The model groups"),
            "layers": route("/api/slim/models/{identifier}/layers", "GET", "A group's models"),
        }
    }))
}
