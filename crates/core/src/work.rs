//! What users ask for (analyze, generate), what the compute engine is handed once a request
//! is resolved against the registry, and the events a request produces.

use serde::{Deserialize, Serialize};

use crate::analysis::{Analysis, RowsChunk, TokenInfo};
use crate::layers::LayerSpec;
use crate::registry::{BaseKey, LensKey};

pub type RequestId = u64;

/// Who asked: a connection or an API key. Fairness and limits are per client.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClientId(pub String);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    pub max_tokens: usize,
    /// 0 picks the most likely token every step.
    pub temperature: f32,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            max_tokens: 128,
            temperature: 0.0,
            top_k: None,
            top_p: None,
            seed: 0,
        }
    }
}

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
    /// An assistant turn's thinking before its reply (gpt-oss's `analysis` channel). Chat
    /// templates receive it as `thinking`; those that have no place for it leave it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinking: Option<String>,
}

impl ChatMessage {
    pub const ROLES: [&'static str; 3] = ["system", "user", "assistant"];

    pub fn new(role: &str, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
            thinking: None,
        }
    }

    /// The same turn with `thinking` before its content.
    pub fn with_thinking(mut self, thinking: Option<String>) -> Self {
        self.thinking = thinking;
        self
    }
}

/// Text as it is handed to a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "form", rename_all = "snake_case")]
pub enum Prompt {
    /// Tokenized as written: special-token markup in it stays text.
    Plain { text: String },
    /// Already rendered with the chat template, special tokens included (a generation's
    /// prompt and reply).
    Rendered { text: String },
    /// Turns rendered with the model's chat template. An analysis opens the assistant's turn
    /// after them unless the last turn is the assistant's; a generation always does.
    Chat { messages: Vec<ChatMessage> },
    /// Turns rendered with the chat template whose last turn, the assistant's, is the start of
    /// the reply: a generation continues it instead of opening a new turn (an assistant
    /// prefill). An analysis reads it as [`Prompt::Chat`] does.
    Prefill { messages: Vec<ChatMessage> },
}

impl Prompt {
    pub fn plain(text: impl Into<String>) -> Self {
        Prompt::Plain { text: text.into() }
    }

    /// One user message.
    pub fn user(text: impl Into<String>) -> Self {
        Prompt::Chat {
            messages: vec![ChatMessage::new("user", text)],
        }
    }

    /// Characters of text, for limits and logs.
    pub fn chars(&self) -> usize {
        match self {
            Prompt::Plain { text } | Prompt::Rendered { text } => text.chars().count(),
            Prompt::Chat { messages } | Prompt::Prefill { messages } => {
                messages.iter().map(|m| m.content.chars().count()).sum()
            }
        }
    }
}

/// The text an analysis reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Text {
    /// Given by the client.
    Given(Prompt),
    /// The prompt and reply of an earlier generate request of the same client, once it has
    /// really finished.
    Generated { request: RequestId },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalyzeWork {
    /// One or more models of one base: one forward pass, every lens on the same states.
    pub models: Vec<String>,
    pub text: Text,
    pub layers: LayerSpec,
    pub top_k: usize,
    #[serde(default)]
    pub explain: ExplainSettings,
}

/// How talkative lenses explain (docs/talkative.md); other lenses ignore it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExplainSettings {
    /// Candidates per position; the lowest reconstruction error wins (1–64).
    pub best_of_k: usize,
    /// 0 is greedy.
    pub temperature: f32,
    pub seed: u64,
    pub salience: bool,
    pub kl: bool,
    /// Positions decoded together in one batch (each with its `best_of_k` candidates); none:
    /// the engine's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_positions: Option<usize>,
    /// Also name the logit lens's most likely tokens at the lens's layer beside each
    /// explanation.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub logit_lens_top: bool,
    /// Explain only the tokens of the last this many turns of a conversation (all of them
    /// when it has fewer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_messages: Option<usize>,
}

impl Default for ExplainSettings {
    fn default() -> Self {
        ExplainSettings {
            best_of_k: 8,
            temperature: 1.0,
            seed: 42,
            salience: true,
            kl: true,
            batch_positions: None,
            logit_lens_top: false,
            last_messages: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateWork {
    pub model: String,
    pub prompt: Prompt,
    pub sampling: Sampling,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Work {
    Analyze(AnalyzeWork),
    Generate(GenerateWork),
}

impl Work {
    /// The models the work needs leased.
    pub fn models(&self) -> Vec<String> {
        match self {
            Work::Analyze(a) => a.models.clone(),
            Work::Generate(g) => vec![g.model.clone()],
        }
    }
}

/// One lens of a job: the model that names it and its weights (`None` for the logit lens).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobLens {
    pub model: String,
    pub lens: Option<LensKey>,
    /// The model's full donor, leased with the job: a talkative lens reads its activations
    /// there instead of in the job's base.
    #[serde(default)]
    pub donor: Option<BaseKey>,
}

/// Work resolved for the engine: the text is final and every model is a base and a lens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Job {
    Analyze {
        base: BaseKey,
        lenses: Vec<JobLens>,
        text: Prompt,
        layers: LayerSpec,
        top_k: usize,
        #[serde(default)]
        explain: ExplainSettings,
    },
    Generate {
        base: BaseKey,
        /// The model's lens: a talkative lens's donor adapter applies to the generation.
        #[serde(default)]
        lens: Option<LensKey>,
        /// The model's full donor, leased with the job: it generates instead of the base.
        #[serde(default)]
        donor: Option<BaseKey>,
        prompt: Prompt,
        sampling: Sampling,
    },
}

/// How long the rest of a job will take, as its engine sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Remaining {
    /// Every unit costs about the same: the rate so far tells.
    #[default]
    AtRate,
    /// Measured by the engine, in milliseconds.
    Ms(u64),
    /// Not known yet: the units still to come cost what nothing done so far did.
    Unknown,
}

/// What a job reports while it runs. Returning `Break` from the callback stops it at the next
/// sub-batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ComputeEvent {
    /// The analysed text's tokens, before any rows.
    Tokens(Vec<TokenInfo>),
    /// One sub-batch of cells or explanations; `done` of `total` units are finished.
    Rows {
        chunk: RowsChunk,
        done: u64,
        total: u64,
        #[serde(default)]
        remaining: Remaining,
    },
    /// One generated token; `done` of at most `total`.
    Token {
        id: u32,
        text: String,
        done: u64,
        total: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobOutput {
    Analysis {
        analyses: Vec<Analysis>,
    },
    Generation {
        prompt: String,
        ids: Vec<u32>,
        /// Everything generated, special tokens written out.
        text: String,
        stop: String,
        /// For a base whose replies have channels (gpt-oss's Harmony): the reply alone (the
        /// `final` channel) and the thinking before it (`analysis`), when the text has them.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        thinking: Option<String>,
    },
}

/// Why a job did not produce its output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobFailure {
    #[error("cancelled")]
    Cancelled,
    /// The input is larger than a configured limit, which the message names.
    #[error("{0}")]
    Limit(String),
    /// The request cannot be served as asked (too long for the model, bad option).
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Engine(String),
    /// The engine panicked while it ran the job; the message says where. The request fails,
    /// and the worker goes on with the next one.
    #[error("{0}")]
    Internal(String),
}

impl JobFailure {
    /// The failure of a job during which the engine panicked with `payload`.
    pub fn from_panic(payload: &(dyn std::any::Any + Send)) -> Self {
        JobFailure::Internal(format!(
            "the engine failed unexpectedly while computing this request ({}); other requests \
             go on",
            panic_text(payload)
        ))
    }
}

/// The text of a caught panic's payload (what `panic!` was given), for error messages.
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// Events of one request, in order: `queued`, any `position` changes, `loading` while its
/// weights come in, then `progress` with `rows` or `token`, and exactly one of `completed`,
/// `error` or `cancelled`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RequestEvent {
    Queued {
        position: usize,
    },
    Position {
        position: usize,
    },
    Loading {
        resource: String,
        bytes_done: u64,
        bytes_total: u64,
    },
    Started,
    Tokens {
        tokens: Vec<TokenInfo>,
    },
    Progress {
        done: u64,
        total: u64,
        eta_ms: Option<u64>,
    },
    Rows {
        chunk: RowsChunk,
    },
    Token {
        id: u32,
        text: String,
    },
    Completed {
        output: JobOutput,
    },
    Error {
        error_type: String,
        message: String,
    },
    /// `partial`: some rows or tokens had already been sent.
    Cancelled {
        partial: bool,
        reason: String,
    },
}

impl RequestEvent {
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            RequestEvent::Completed { .. }
                | RequestEvent::Error { .. }
                | RequestEvent::Cancelled { .. }
        )
    }
}
