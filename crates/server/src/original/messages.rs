//! The client messages of the original site's WebSocket, as its page and backend shaped them,
//! and how each becomes lensd work. Every field the original read is accepted; fields it never
//! knew are refused, naming them. What each option does here is in `docs/protocol.md`
//! ("The original's dialect").

use lensd_core::work::{
    AnalyzeWork, ChatMessage, ExplainSettings, GenerateWork, Prompt, Sampling, Text, Work,
};
use serde::Deserialize;

use crate::error::ApiError;

/// Positions explained together with their candidates: at most this many rows
/// (`batch_size × best_of_k`) decode at once, whatever `batch_size` asks.
pub const MAX_BATCH_ROWS: usize = 4096;

/// The original's `auto_batch_size_max` when a model names none.
pub const AUTO_BATCH_SIZE_MAX: usize = 512;

/// Continuations one generate message may ask for, as the original's page allowed.
pub const MAX_COMPLETIONS: usize = 20;

/// A text as the original sent it: a string (which may hold a JSON conversation), or the
/// slim API's list of turns.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum TextInput {
    Text(String),
    Turns(Vec<Turn>),
}

/// One turn; `thinking` is gpt-oss's analysis channel, which the original accepted on
/// assistant turns.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Turn {
    pub role: String,
    pub content: String,
    #[serde(default)]
    pub thinking: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizeConfig {
    pub best_of_k: Option<usize>,
    pub temperature: Option<f32>,
    /// The original's positions per batch; `batch_size` when that is absent.
    pub n_groups_per_rollout: Option<usize>,
    pub rollout_batch_size: Option<usize>,
    /// Accepted; lensd always batches.
    pub use_batched: Option<bool>,
    /// Accepted; lensd draws `best_of_k` candidates once per position.
    pub num_samples: Option<usize>,
    pub num_samples_per_iteration: Option<usize>,
    pub salience_pct_threshold: Option<f32>,
}

/// `analyze`'s options, the page's and the backend's names both.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalyzeOptions {
    pub batch_size: Option<usize>,
    pub auto_batch_size_max: Option<usize>,
    pub best_of_k: Option<usize>,
    pub temperature: Option<f32>,
    pub seed: Option<u64>,
    pub calculate_salience: Option<bool>,
    pub calculate_token_salience: Option<bool>,
    pub use_tuned_lens: Option<bool>,
    pub tuned_lens: Option<bool>,
    pub logit_lens_analysis: Option<bool>,
    /// Accepted; lensd always scores the explanations (best-of-k needs the scores).
    pub no_eval: Option<bool>,
    pub no_kl: Option<bool>,
    /// Accepted; the original's hard-token search has no counterpart here.
    pub do_hard_tokens: Option<bool>,
    pub return_structured: Option<bool>,
    /// Accepted; residency decides where weights live.
    pub move_devices: Option<bool>,
    pub use_chat_format: Option<bool>,
    pub is_chat: Option<bool>,
    pub last_n_messages: Option<usize>,
    pub optimize_explanations_config: Option<OptimizeConfig>,
    pub num_samples: Option<usize>,
    /// The original's explanation rewriting; refused unless empty.
    pub add_tokens: Option<Vec<String>>,
    pub replace_left: Option<String>,
    pub replace_right: Option<String>,
    /// Accepted; each request reads the model it names.
    pub use_prior_generated_text: Option<bool>,
    pub model_id: Option<String>,
    /// Accepted; lensd computes on one device, and residency places the weights.
    pub exclusive_gpu: Option<String>,
}

/// `generate`'s options.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateOptions {
    pub num_tokens: Option<usize>,
    pub max_new_tokens: Option<usize>,
    pub num_completions: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<u64>,
    pub is_chat: Option<bool>,
    pub use_chat_format: Option<bool>,
    /// Accepted; completions are always the full text, as the original's page asked.
    pub return_full_text: Option<bool>,
    pub model_id: Option<String>,
    /// Accepted; lensd computes on one device, and residency places the weights.
    pub exclusive_gpu: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalyzeMessage {
    pub text: TextInput,
    #[serde(default)]
    pub options: Option<AnalyzeOptions>,
    #[serde(default)]
    pub model_id: Option<String>,
    #[serde(default)]
    pub client_request_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateMessage {
    pub text: TextInput,
    #[serde(default)]
    pub options: Option<GenerateOptions>,
    #[serde(default)]
    pub model_id: Option<String>,
    #[serde(default)]
    pub client_request_id: Option<String>,
}

/// `generate_and_analyze`'s second half: the text is the generation's first completion.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainedAnalysis {
    /// The page sends the prompt again; the completion replaces it.
    #[serde(default)]
    pub text: Option<TextInput>,
    #[serde(default)]
    pub options: Option<AnalyzeOptions>,
    #[serde(default)]
    pub model_id: Option<String>,
    #[serde(default)]
    pub use_generated_completion: Option<bool>,
}

/// One message at a time is parsed and handled, so the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    Analyze(AnalyzeMessage),
    Generate(GenerateMessage),
    GenerateAndAnalyze {
        generation: GenerateMessage,
        analysis: ChainedAnalysis,
        #[serde(default)]
        client_request_id: Option<String>,
    },
    ListModelGroups {
        #[serde(default)]
        refresh: Option<bool>,
    },
    ListModels {
        #[serde(default)]
        refresh: Option<bool>,
    },
    SwitchModel {
        model_id: String,
    },
    SwitchModelGrouped {
        model_id: String,
        #[serde(default)]
        group_id: Option<String>,
    },
    LoadModel {
        model_id: String,
        #[serde(default)]
        device_id: Option<serde_json::Value>,
    },
    LoadGroup {
        group_id: String,
        #[serde(default)]
        device_id: Option<serde_json::Value>,
    },
    PreloadGroup {
        group_id: String,
    },
    UnloadGroup {
        group_id: String,
    },
    ClearDevice {
        #[serde(default)]
        device_id: Option<serde_json::Value>,
    },
    GetModelInfo {
        #[serde(default)]
        model_id: Option<String>,
    },
    CancelRequest {
        request_id: String,
    },
    Interrupt {
        #[serde(default)]
        request_id: Option<String>,
        #[serde(default)]
        context: Option<String>,
    },
    Status {
        #[serde(default)]
        request_id: Option<String>,
    },
    Ping {},
}

/// Turns from a text the original would have read as a chat: a JSON list of turns, or else the
/// text as one user turn.
fn chat_turns(text: &TextInput) -> Result<Vec<ChatMessage>, ApiError> {
    let turns: Vec<Turn> = match text {
        TextInput::Turns(t) => t.clone(),
        TextInput::Text(s) => {
            let t = s.trim_start();
            if t.starts_with('[') {
                serde_json::from_str(s).map_err(|e| {
                    ApiError::BadRequest(format!(
                        "`text` starts like a JSON conversation but is not one ({e}); send a \
                         list of {{\"role\", \"content\"}} turns, or turn the chat format off"
                    ))
                })?
            } else {
                return Ok(vec![ChatMessage::new("user", s.clone())]);
            }
        }
    };
    if turns.is_empty() {
        return Err(ApiError::BadRequest(
            "the conversation in `text` has no turns".into(),
        ));
    }
    turns
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            if !ChatMessage::ROLES.contains(&t.role.as_str()) {
                return Err(ApiError::BadRequest(format!(
                    "turn {i} of `text` has role `{}`; use one of {}",
                    t.role,
                    ChatMessage::ROLES.join(", ")
                )));
            }
            if t.thinking.is_some() && t.role != "assistant" {
                return Err(ApiError::BadRequest(format!(
                    "turn {i} of `text` is a `{}` turn with `thinking`; only assistant turns \
                     think",
                    t.role
                )));
            }
            Ok(ChatMessage::new(&t.role, t.content).with_thinking(t.thinking))
        })
        .collect()
}

/// The prompt for a text: a conversation when the chat format is asked for (continuing the
/// assistant's last turn when the conversation ends with one), else the text tokenized as the
/// original's tokenizer did, special-token markup included.
pub fn prompt(text: &TextInput, chat: bool) -> Result<Prompt, ApiError> {
    if !chat {
        return match text {
            TextInput::Text(s) if s.trim().is_empty() => Err(ApiError::BadRequest(
                "`text` is empty; send the text to read".into(),
            )),
            TextInput::Text(s) => Ok(Prompt::Rendered { text: s.clone() }),
            TextInput::Turns(_) => chat_prompt(text),
        };
    }
    chat_prompt(text)
}

fn chat_prompt(text: &TextInput) -> Result<Prompt, ApiError> {
    let messages = chat_turns(text)?;
    if messages.last().is_some_and(|m| m.role == "assistant") {
        Ok(Prompt::Prefill { messages })
    } else {
        Ok(Prompt::Chat { messages })
    }
}

fn range<T: PartialOrd + std::fmt::Display + Copy>(
    name: &str,
    value: T,
    low: T,
    high: T,
) -> Result<T, ApiError> {
    if value >= low && value <= high {
        Ok(value)
    } else {
        Err(ApiError::BadRequest(format!(
            "`{name}` must be from {low} to {high}, got {value}"
        )))
    }
}

/// What an analyze message's options ask of lensd.
#[derive(Debug, Clone, PartialEq)]
pub struct AnalyzePlan {
    pub explain: ExplainSettings,
    pub tuned_lens_top: bool,
    pub structured: bool,
    pub chat: bool,
}

impl AnalyzeOptions {
    /// The settings these options ask for, with `auto_max` the model's `auto_batch_size_max`.
    pub fn plan(&self, auto_max: Option<usize>) -> Result<AnalyzePlan, ApiError> {
        let o = self
            .optimize_explanations_config
            .clone()
            .unwrap_or_default();
        let best_of_k = range(
            "options.optimize_explanations_config.best_of_k",
            o.best_of_k.or(self.best_of_k).unwrap_or(8),
            1,
            64,
        )?;
        let temperature = range(
            "options.temperature",
            o.temperature.or(self.temperature).unwrap_or(1.0),
            0.0,
            5.0,
        )?;
        if self
            .add_tokens
            .as_ref()
            .is_some_and(|t| t.iter().any(|s| !s.is_empty()))
            || self.replace_left.as_deref().is_some_and(|s| !s.is_empty())
            || self.replace_right.as_deref().is_some_and(|s| !s.is_empty())
        {
            return Err(ApiError::BadRequest(
                "`options.add_tokens`, `replace_left` and `replace_right` rewrite explanations in \
                 ways lensd does not; leave them out"
                    .into(),
            ));
        }
        // The original divides its automatic batch by best-of-k: a batch holds that many
        // candidates per position.
        let asked = self
            .batch_size
            .or(o.n_groups_per_rollout)
            .or(o.rollout_batch_size);
        let batch = match asked {
            Some(b) => range("options.batch_size", b, 1, MAX_BATCH_ROWS)?,
            None => {
                let max = self
                    .auto_batch_size_max
                    .or(auto_max)
                    .unwrap_or(AUTO_BATCH_SIZE_MAX);
                (max / best_of_k).max(1)
            }
        };
        let batch = batch.min(MAX_BATCH_ROWS / best_of_k).max(1);
        if let Some(n) = self.last_n_messages {
            range("options.last_n_messages", n, 1, usize::MAX)?;
        }
        Ok(AnalyzePlan {
            explain: ExplainSettings {
                best_of_k,
                temperature,
                seed: self.seed.unwrap_or(42),
                salience: self
                    .calculate_token_salience
                    .or(self.calculate_salience)
                    .unwrap_or(true),
                kl: !self.no_kl.unwrap_or(false),
                batch_positions: Some(batch),
                logit_lens_top: self.logit_lens_analysis.unwrap_or(false),
                last_messages: self.last_n_messages,
            },
            tuned_lens_top: self.use_tuned_lens.or(self.tuned_lens).unwrap_or(false),
            structured: self.return_structured.unwrap_or(true),
            chat: self.use_chat_format.unwrap_or(false),
        })
    }
}

/// What a generate message asks for: `completions` runs of `work`, seeds counting up.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratePlan {
    pub work: GenerateWork,
    pub completions: usize,
    /// Completions hold the prompt too (the page's `return_full_text`); else the reply only.
    pub full_text: bool,
}

impl GenerateMessage {
    pub fn model(&self) -> Option<String> {
        self.model_id
            .clone()
            .or_else(|| self.options.as_ref().and_then(|o| o.model_id.clone()))
    }

    pub fn plan(&self, model: String, seed: u64) -> Result<GeneratePlan, ApiError> {
        let o = self.options.clone().unwrap_or_default();
        let completions = range(
            "options.num_completions",
            o.num_completions.unwrap_or(3),
            1,
            MAX_COMPLETIONS,
        )?;
        let max_tokens = range(
            "options.num_tokens",
            o.num_tokens.or(o.max_new_tokens).unwrap_or(50),
            1,
            usize::MAX,
        )?;
        let temperature = range(
            "options.temperature",
            o.temperature.unwrap_or(0.8),
            0.0,
            5.0,
        )?;
        let top_p = match o.top_p.or(Some(0.95)) {
            Some(p) if !(p > 0.0 && p <= 1.0) => {
                return Err(ApiError::BadRequest(format!(
                    "`options.top_p` must be in (0, 1], got {p}"
                )))
            }
            Some(p) if p < 1.0 => Some(p),
            _ => None,
        };
        let chat = o.is_chat.unwrap_or(false) || o.use_chat_format.unwrap_or(false);
        Ok(GeneratePlan {
            work: GenerateWork {
                model,
                prompt: prompt(&self.text, chat)?,
                sampling: Sampling {
                    max_tokens,
                    temperature,
                    top_k: None,
                    top_p,
                    seed: o.seed.unwrap_or(seed),
                },
            },
            completions,
            full_text: true,
        })
    }
}

impl AnalyzeMessage {
    pub fn model(&self) -> Option<String> {
        self.model_id
            .clone()
            .or_else(|| self.options.as_ref().and_then(|o| o.model_id.clone()))
    }
}

/// Analysis work for `models` (the lens first, then any tuned model for its top tokens) at
/// `layer`.
pub fn analyze_work(models: Vec<String>, text: Text, plan: &AnalyzePlan, layer: usize) -> Work {
    Work::Analyze(AnalyzeWork {
        models,
        text,
        layers: lensd_core::layers::LayerSpec::List(vec![lensd_core::layers::LayerRange {
            start: layer,
            end: layer,
            step: 1,
        }]),
        top_k: 5,
        explain: plan.explain.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: serde_json::Value) -> Result<ClientMessage, serde_json::Error> {
        serde_json::from_value(v)
    }

    #[test]
    fn the_pages_analyze_message_parses_and_plans() {
        let m = parse(json!({
            "type": "analyze", "text": "The cat sat", "client_request_id": "client_1_x",
            "model_id": "m", "options": {"batch_size": 16, "temperature": 1.0,
            "optimize_explanations_config": {"best_of_k": 16, "n_groups_per_rollout": 16,
              "use_batched": true, "temperature": 1.0, "rollout_batch_size": 16, "num_samples": 3},
            "calculate_salience": true, "use_tuned_lens": false, "logit_lens_analysis": true,
            "no_eval": false, "no_kl": true, "do_hard_tokens": false, "seed": 7,
            "is_chat": true, "use_chat_format": true}}))
        .unwrap();
        let ClientMessage::Analyze(a) = m else {
            panic!("not analyze")
        };
        let plan = a.options.unwrap().plan(None).unwrap();
        assert_eq!(plan.explain.best_of_k, 16);
        assert_eq!(plan.explain.batch_positions, Some(16));
        assert_eq!(plan.explain.seed, 7);
        assert!(!plan.explain.kl);
        assert!(plan.explain.salience);
        assert!(plan.explain.logit_lens_top);
        assert!(plan.chat);
    }

    #[test]
    fn automatic_batches_divide_the_maximum_by_best_of_k() {
        let o = AnalyzeOptions {
            optimize_explanations_config: Some(OptimizeConfig {
                best_of_k: Some(8),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(o.plan(Some(256)).unwrap().explain.batch_positions, Some(32));
        assert_eq!(o.plan(None).unwrap().explain.batch_positions, Some(64));
        // An asked batch is bounded by the rows lensd decodes at once.
        let big = AnalyzeOptions {
            batch_size: Some(4096),
            ..o
        };
        assert_eq!(
            big.plan(None).unwrap().explain.batch_positions,
            Some(MAX_BATCH_ROWS / 8)
        );
    }

    #[test]
    fn unknown_fields_are_named() {
        let e = parse(json!({"type": "analyze", "text": "x", "options": {"bogus": 1}}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
        let e = parse(json!({"type": "list_model_groups", "refresh": true, "x": 1}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`x`"), "{e}");
    }

    #[test]
    fn chat_text_is_a_json_conversation_or_one_user_turn() {
        let t = TextInput::Text(
            r#"[{"role":"user","content":"Hi"},{"role":"assistant","content":"Hel"}]"#.into(),
        );
        assert_eq!(
            prompt(&t, true).unwrap(),
            Prompt::Prefill {
                messages: vec![
                    ChatMessage::new("user", "Hi"),
                    ChatMessage::new("assistant", "Hel")
                ]
            }
        );
        assert_eq!(
            prompt(&TextInput::Text("Hi".into()), true).unwrap(),
            Prompt::user("Hi")
        );
        assert_eq!(
            prompt(&TextInput::Text("<start>Hi".into()), false).unwrap(),
            Prompt::Rendered {
                text: "<start>Hi".into()
            }
        );
        let e = prompt(&TextInput::Text("[not json".into()), true).unwrap_err();
        assert!(e.body().message.contains("JSON conversation"), "{e:?}");
        let e = prompt(
            &TextInput::Text(r#"[{"role":"robot","content":"x"}]"#.into()),
            true,
        )
        .unwrap_err();
        assert!(e.body().message.contains("robot"), "{e:?}");
    }

    #[test]
    fn generation_bounds_are_checked() {
        let g = |o: serde_json::Value| -> GenerateMessage {
            serde_json::from_value(json!({"text": "Once", "options": o})).unwrap()
        };
        let p = g(
            json!({"num_tokens": 100, "num_completions": 5, "temperature": 1.0,
                         "is_chat": false, "return_full_text": true}),
        )
        .plan("m".into(), 9)
        .unwrap();
        assert_eq!(p.completions, 5);
        assert_eq!(p.work.sampling.max_tokens, 100);
        assert_eq!(p.work.sampling.seed, 9);
        let e = g(json!({"num_completions": 21}))
            .plan("m".into(), 0)
            .unwrap_err();
        assert!(e.body().message.contains("num_completions"), "{e:?}");
    }
}
