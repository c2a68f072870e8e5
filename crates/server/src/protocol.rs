//! Every message of the WebSocket protocol and the request bodies of the REST API, as tagged
//! types in one place. `docs/protocol.md` shows an example of each; a test parses them all.

use lensd_core::layers::LayerSpec;
use lensd_core::work::{
    AnalyzeWork, ChatMessage, ExplainSettings, GenerateWork, Prompt, RequestEvent, Sampling, Text,
    Work,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Role;
use crate::error::ApiError;
use crate::views::{GroupView, ModelView};

/// Version of this protocol, sent in `connection_established`.
pub const PROTOCOL_VERSION: u32 = 1;

fn all_layers() -> String {
    "all".into()
}
fn five() -> usize {
    5
}
fn sixty_four() -> usize {
    64
}
fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnalyzeOptions {
    /// Layers to read: `all`, `5`, `0,10,20`, `20-30` or `0-30:5`.
    #[serde(default = "all_layers")]
    pub layers: String,
    /// Tokens kept per cell (1–100).
    #[serde(default = "five")]
    pub top_k: usize,
    /// Talkative lenses: candidate explanations per position; the one that reconstructs the
    /// activation best is kept (1–64).
    #[serde(default = "eight")]
    pub best_of_k: usize,
    /// Talkative lenses: sampling temperature of the explanations (0 is greedy; up to 5).
    #[serde(default = "one")]
    pub temperature: f32,
    /// Talkative lenses: seed of the sampling.
    #[serde(default = "forty_two")]
    pub seed: u64,
    /// Talkative lenses: per-token salience of each explanation.
    #[serde(default = "yes")]
    pub salience: bool,
    /// Talkative lenses: KL of the next-token distribution with the reconstruction patched in.
    #[serde(default = "yes")]
    pub kl: bool,
}

fn eight() -> usize {
    8
}
fn one() -> f32 {
    1.0
}
fn forty_two() -> u64 {
    42
}

impl Default for AnalyzeOptions {
    fn default() -> Self {
        AnalyzeOptions {
            layers: all_layers(),
            top_k: five(),
            best_of_k: eight(),
            temperature: one(),
            seed: forty_two(),
            salience: true,
            kl: true,
        }
    }
}

/// Read a text through one or more lenses of one base.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnalyzeRequest {
    /// Models to read with (one base); empty: the client's current model.
    #[serde(default)]
    pub models: Vec<String>,
    /// One model, as the original protocol named it; joins `models`.
    #[serde(default)]
    pub model_id: Option<String>,
    /// The text to read (or `messages`).
    #[serde(default)]
    pub text: Option<String>,
    /// Render the text as one user message with the model's chat template.
    #[serde(default)]
    pub chat: bool,
    /// A conversation to read instead of `text`, rendered with the model's chat template.
    #[serde(default)]
    pub messages: Option<Vec<Turn>>,
    #[serde(default)]
    pub options: AnalyzeOptions,
    /// Give up if not finished within this many milliseconds.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// Echoed in `accepted`, so that a client can match replies to its messages.
    #[serde(default)]
    pub client_tag: Option<String>,
}

/// Continue a prompt, streaming tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateRequest {
    #[serde(default)]
    pub model_id: Option<String>,
    /// The prompt (or `messages`).
    #[serde(default)]
    pub prompt: Option<String>,
    /// Render the prompt as one user message with the chat template (default true).
    #[serde(default = "yes")]
    pub chat: bool,
    /// A conversation to continue instead of `prompt`: the reply is the assistant's next turn.
    #[serde(default)]
    pub messages: Option<Vec<Turn>>,
    #[serde(default = "sixty_four")]
    pub max_tokens: usize,
    #[serde(default)]
    pub temperature: f32,
    #[serde(default)]
    pub top_k: Option<usize>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    #[serde(default)]
    pub client_tag: Option<String>,
}

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Turn {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

/// The prompt from a text field with its `chat` flag, or from `messages`; exactly one.
fn prompt(
    field: &str,
    text: &Option<String>,
    chat: bool,
    messages: &Option<Vec<Turn>>,
) -> Result<Prompt, ApiError> {
    match (text, messages) {
        (Some(_), Some(_)) => Err(ApiError::BadRequest(format!(
            "give `{field}` or `messages`, not both"
        ))),
        (None, None) => Err(ApiError::BadRequest(format!(
            "missing `{field}` (or `messages`)"
        ))),
        (Some(t), None) if chat => Ok(Prompt::user(t.clone())),
        (Some(t), None) => Ok(Prompt::plain(t.clone())),
        (None, Some(turns)) => {
            if turns.is_empty() {
                return Err(ApiError::BadRequest(
                    "`messages` needs at least one message".into(),
                ));
            }
            let mut messages = Vec::with_capacity(turns.len());
            for (i, t) in turns.iter().enumerate() {
                if !ChatMessage::ROLES.contains(&t.role.as_str()) {
                    return Err(ApiError::BadRequest(format!(
                        "`messages[{i}].role` must be one of {}, got `{}`",
                        ChatMessage::ROLES.join(", "),
                        t.role
                    )));
                }
                messages.push(ChatMessage::new(&t.role, t.content.clone()));
            }
            Ok(Prompt::Chat { messages })
        }
    }
}

fn layers(spec: &str) -> Result<LayerSpec, ApiError> {
    spec.parse()
        .map_err(|e: String| ApiError::BadRequest(format!("`options.layers`: {e}")))
}

impl AnalyzeRequest {
    pub fn models(&self) -> Vec<String> {
        let mut m = self.models.clone();
        if let Some(id) = &self.model_id {
            if !m.contains(id) {
                m.push(id.clone());
            }
        }
        m
    }

    pub fn work(&self, text: Text) -> Result<Work, ApiError> {
        let o = &self.options;
        if !(1..=64).contains(&o.best_of_k) {
            return Err(ApiError::BadRequest(format!(
                "`options.best_of_k` must be from 1 to 64, got {}",
                o.best_of_k
            )));
        }
        if !(o.temperature.is_finite() && (0.0..=5.0).contains(&o.temperature)) {
            return Err(ApiError::BadRequest(format!(
                "`options.temperature` must be from 0 to 5, got {}",
                o.temperature
            )));
        }
        Ok(Work::Analyze(AnalyzeWork {
            models: self.models(),
            text,
            layers: layers(&o.layers)?,
            top_k: o.top_k,
            explain: ExplainSettings {
                best_of_k: o.best_of_k,
                temperature: o.temperature,
                seed: o.seed,
                salience: o.salience,
                kl: o.kl,
                ..ExplainSettings::default()
            },
        }))
    }

    pub fn given(&self) -> Result<Text, ApiError> {
        Ok(Text::Given(prompt(
            "text",
            &self.text,
            self.chat,
            &self.messages,
        )?))
    }
}

impl GenerateRequest {
    pub fn work(&self) -> Result<Work, ApiError> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(ApiError::BadRequest(format!(
                "`temperature` must be a finite number >= 0, got {}",
                self.temperature
            )));
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(ApiError::BadRequest(format!(
                    "`top_p` must be in (0, 1], got {p}"
                )));
            }
        }
        if self.max_tokens == 0 || self.top_k == Some(0) {
            return Err(ApiError::BadRequest(
                "`max_tokens` and `top_k` must be at least 1".into(),
            ));
        }
        Ok(Work::Generate(GenerateWork {
            model: self.model_id.clone().unwrap_or_default(),
            prompt: prompt("prompt", &self.prompt, self.chat, &self.messages)?,
            sampling: Sampling {
                max_tokens: self.max_tokens,
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                seed: self.seed,
            },
        }))
    }
}

/// Messages a client sends on `/ws`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// Authenticate with an API key (instead of the `Authorization` header).
    Auth {
        key: String,
    },
    ListModelGroups {},
    /// Set this connection's current model.
    SwitchModel {
        model_id: String,
    },
    /// Set the current model, naming its group as the original did; `preload` also brings
    /// the group to the device (admins, or everyone when allowed).
    SwitchModelGrouped {
        model_id: String,
        #[serde(default)]
        group_id: Option<String>,
        #[serde(default)]
        preload: bool,
    },
    /// Admin: bring a group to `device` (default) or `host`.
    PreloadGroup {
        group_id: String,
        #[serde(default)]
        tier: Option<String>,
    },
    /// Admin: demote a group to `host` (default) or free it (`disk`).
    UnloadGroup {
        group_id: String,
        #[serde(default)]
        to: Option<String>,
    },
    GetModelInfo {
        model_id: String,
    },
    Analyze(AnalyzeRequest),
    Generate(GenerateRequest),
    /// Generate, then analyse the prompt and reply once the generation has really finished.
    GenerateAndAnalyze {
        generate: GenerateRequest,
        #[serde(default)]
        models: Vec<String>,
        #[serde(default)]
        options: AnalyzeOptions,
    },
    CancelRequest {
        request_id: String,
    },
    /// Cancel all of this connection's work. (Field-less messages are empty structs so that
    /// unknown fields are refused like everywhere else.)
    Interrupt {},
    /// Ask for a `queue_update`.
    Status {},
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LimitsView {
    pub max_text_chars: usize,
    pub max_lenses: usize,
    pub max_new_tokens: usize,
    pub max_message_bytes: usize,
    pub requests_per_minute: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct QueueEntry {
    pub request_id: String,
    pub kind: String,
    /// Place in the queue (0 = next); absent once running.
    pub position: Option<usize>,
    /// `queued` or `running`.
    pub state: String,
}

/// Messages the server sends on `/ws` (besides request events, see [`EventFrame`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ServerMessage {
    ConnectionEstablished {
        session: String,
        role: Role,
        protocol_version: u32,
        limits: LimitsView,
        current_model: Option<String>,
    },
    ModelGroupsList {
        groups: Vec<GroupView>,
        current_model: Option<String>,
    },
    ModelInfo {
        model: ModelView,
    },
    ModelSwitched {
        model_id: String,
        group_id: String,
        fast_switch: bool,
        preloading: bool,
    },
    /// Residency of a group changed: `preloading`, `loading` (with bytes), `preloaded`,
    /// `unloaded` or `failed`.
    GroupSwitchStatus {
        group_id: String,
        status: String,
        #[serde(default)]
        resource: Option<String>,
        #[serde(default)]
        bytes_done: Option<u64>,
        #[serde(default)]
        bytes_total: Option<u64>,
        #[serde(default)]
        message: Option<String>,
    },
    /// This connection's requests and their true places.
    QueueUpdate {
        requests: Vec<QueueEntry>,
    },
    /// A request was queued under this id.
    Accepted {
        request_id: String,
        kind: String,
        #[serde(default)]
        client_tag: Option<String>,
    },
    Error {
        error_type: String,
        message: String,
        #[serde(default)]
        request_id: Option<String>,
    },
    ServerShutdown {
        grace_seconds: u64,
    },
    /// Where models live changed (a load, a preload, an unload), whoever caused it: ask for
    /// `list_model_groups` again to see it.
    ResidencyChanged {
        reason: String,
    },
}

/// One event of one request: `{"type": "rows", "request_id": "r-…", …}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventFrame {
    pub request_id: String,
    #[serde(flatten)]
    pub event: RequestEvent,
}

impl From<&ApiError> for ServerMessage {
    fn from(e: &ApiError) -> Self {
        let body = e.body();
        ServerMessage::Error {
            error_type: body.error_type,
            message: body.message,
            request_id: None,
        }
    }
}
