//! A loaded base: the model, its tokenizer and its chat template, opened from a GGUF file or
//! a Hugging Face folder.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Device;

use lensd_core::work::Prompt;

use crate::chat::harmony::{self, RenderOptions};
use crate::chat::{ChatTemplate, Message};
use crate::config::{Family, ModelConfig};
use crate::error::{EngineError, Result};
use crate::model::Model;
use crate::tokenizer::Tokenizer;
use crate::weights::gguf::{self, GgufFile};
use crate::weights::safetensors::HfCheckpoint;
use crate::weights::{ComputeDtype, LoadOptions, WeightBytes};

pub struct Base {
    pub model: Model,
    /// Shared by the base's copies on several devices.
    pub tokenizer: Arc<Tokenizer>,
    pub chat: Option<Arc<ChatTemplate>>,
    pub source: PathBuf,
    pub options: LoadOptions,
}

impl Base {
    /// Opens `path`: a `.gguf` file, or a folder with `config.json`, safetensors weights and
    /// `tokenizer.json`.
    pub fn load(path: &Path, options: LoadOptions) -> Result<Self> {
        Self::load_with_progress(path, options, &mut |_, _| {})
    }

    /// [`Base::load`], calling `progress(bytes done, bytes total)` as weight files are read
    /// (once per file of a folder).
    pub fn load_with_progress(
        path: &Path,
        options: LoadOptions,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Self> {
        Self::load_onto(path, options, &Device::Cpu, progress)
    }

    /// [`Base::load_with_progress`] with the weights placed in `device`'s memory as they are
    /// read.
    pub fn load_onto(
        path: &Path,
        options: LoadOptions,
        device: &Device,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Self> {
        // A Hugging Face hub id (`owner/name[@revision]`) reads its snapshot in the local cache.
        let path = &crate::hub::locate(path)?;
        let meta = std::fs::metadata(path).map_err(|e| EngineError::io(path, e))?;
        if meta.is_dir() {
            Self::load_hf(path, options, device, progress)
        } else if gguf::is_gguf(path) {
            Self::load_gguf(path, options, device, progress)
        } else {
            Err(EngineError::format(
                path,
                "neither a GGUF file nor a folder with config.json and safetensors weights",
            ))
        }
    }

    fn load_gguf(
        path: &Path,
        options: LoadOptions,
        device: &Device,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Self> {
        // The tokenizer and chat template are built from the header while the weights are
        // read.
        let (g, made) = GgufFile::read_with(path, progress, gguf_tokenizer)?;
        let (tokenizer, chat) = made?;
        // Both keep the file's quantized blocks on the CPU (`f32` multiplies them in f32).
        if matches!(options.compute, ComputeDtype::Stored | ComputeDtype::F32) && device.is_cpu() {
            g.settle_for_compute();
        }
        let cfg = g.config()?;
        let w = g.load_weights(&cfg, options.compute, device)?;
        check_vocab(path, &cfg, &tokenizer)?;
        Ok(Base {
            model: Model::new(cfg, w),
            tokenizer: Arc::new(tokenizer),
            chat: chat.map(Arc::new),
            source: path.to_path_buf(),
            options,
        })
    }

    fn load_hf(
        dir: &Path,
        options: LoadOptions,
        device: &Device,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Self> {
        let ck = HfCheckpoint::read(dir, progress)?;
        let cfg = ck.config()?;
        let (bos, eos) = ck.token_ids();
        let tok_cfg = read_tokenizer_config(dir)?;
        let add_bos = tok_cfg
            .as_ref()
            .and_then(|c| c.get("add_bos_token"))
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let mut tokenizer =
            Tokenizer::from_json_file(&dir.join("tokenizer.json"), bos, eos, add_bos)?;
        if cfg.family == Family::GptOss {
            harmony_stops(&mut tokenizer);
        }
        let src = tok_cfg
            .as_ref()
            .and_then(|c| c.get("chat_template"))
            .and_then(|v| v.as_str());
        let chat = chat_template(src, &tokenizer)?;
        let w = ck.load_weights(&cfg, options.compute, device)?;
        check_vocab(dir, &cfg, &tokenizer)?;
        Ok(Base {
            model: Model::new(cfg, w),
            tokenizer: Arc::new(tokenizer),
            chat: chat.map(Arc::new),
            source: dir.to_path_buf(),
            options,
        })
    }

    /// The same base with its weights in `device`'s memory (see [`ModelWeights::to_device`]);
    /// the tokenizer and chat template are shared, not copied.
    pub fn to_device(&self, device: &Device) -> Result<Base> {
        let w = self
            .model
            .w
            .to_device(device, self.model.cfg.tied_embeddings)?;
        Ok(Base {
            model: Model::new(self.model.cfg.clone(), w),
            tokenizer: self.tokenizer.clone(),
            chat: self.chat.clone(),
            source: self.source.clone(),
            options: self.options,
        })
    }

    pub fn device(&self) -> &Device {
        self.model.device()
    }

    pub fn config(&self) -> &ModelConfig {
        &self.model.cfg
    }

    pub fn bytes(&self) -> WeightBytes {
        self.model.w.bytes
    }

    /// Renders one user message with the model's chat template, ready for the reply.
    pub fn chat_prompt(&self, user: &str) -> Result<String> {
        Ok(self.render(&Prompt::user(user), true)?.0)
    }

    /// Whether the base speaks gpt-oss's Harmony format ([`harmony`]), which lensd renders
    /// itself rather than through a template.
    pub fn speaks_harmony(&self) -> bool {
        self.config().family == Family::GptOss
    }

    /// The text to tokenize for `prompt`, and whether special tokens written in it are
    /// recognised. Chat turns open the assistant's turn after them when `reply` is set or the
    /// last turn is not the assistant's.
    ///
    /// In Harmony, a reply follows the format's rule for earlier thinking (dropped before a
    /// final reply); a conversation read for itself (`reply` unset) keeps every turn's
    /// `thinking`, so that an analysis includes the thinking its turns carry and excludes
    /// what they leave out.
    pub fn render(&self, prompt: &Prompt, reply: bool) -> Result<(String, bool)> {
        match prompt {
            Prompt::Plain { text } => Ok((text.clone(), false)),
            Prompt::Rendered { text } => Ok((text.clone(), true)),
            Prompt::Chat { messages } => {
                let open = reply || messages.last().is_some_and(|m| m.role != "assistant");
                if self.speaks_harmony() {
                    non_empty(messages)?;
                    let options = RenderOptions {
                        generation_prompt: open,
                        keep_analysis: !reply,
                        ..RenderOptions::default()
                    };
                    return Ok((harmony::render_chat(messages, &options)?, true));
                }
                let chat = self.template(messages)?;
                Ok((chat.render(messages, open)?, true))
            }
            Prompt::Prefill { messages } if self.speaks_harmony() => {
                Ok((harmony_prefill(messages)?, true))
            }
            Prompt::Prefill { messages } => {
                let chat = self.template(messages)?;
                Ok((continue_final(chat, messages)?, true))
            }
        }
    }

    /// A Harmony generation's reply and thinking, from `prompt` (as [`Base::render`] gave it)
    /// and the text generated after it: the `final` channel (after an assistant prefill, only
    /// what follows the prefill) and the `analysis` channel. `None` for other bases, and for
    /// generated text that is not well-formed Harmony (a reply cut inside a message header).
    pub fn split_reply(&self, prompt: &str, generated: &str) -> Option<(String, Option<String>)> {
        if !self.speaks_harmony() {
            return None;
        }
        // A prompt that ends inside the assistant's message (a prefill) has written its header.
        let open = prompt
            .rfind(harmony::GENERATION_PROMPT)
            .map(|at| &prompt[at + harmony::GENERATION_PROMPT.len()..])
            .unwrap_or("");
        let header = match open.rfind("<|message|>") {
            Some(at) => &open[..at + "<|message|>".len()],
            None => open,
        };
        match harmony::parse_completion(&format!("{header}{generated}")) {
            // The prefill's own words (after the header) are the prompt's, not the reply's.
            Ok(c) => Some((c.reply().unwrap_or_default(), c.thinking())),
            Err(_) => None,
        }
    }

    fn template(&self, messages: &[Message]) -> Result<&ChatTemplate> {
        let chat = self.chat.as_ref().ok_or_else(|| {
            EngineError::Input(format!("{} has no chat template", self.source.display()))
        })?;
        non_empty(messages)?;
        Ok(chat)
    }

    /// The first token position of the last `n` turns of `prompt`'s conversation, rendered
    /// and tokenized as `ids` (0 for plain text, or when the conversation has no more than
    /// `n` turns). Templates render a conversation's first turns as a prefix of the whole;
    /// where one does not, the tokens the two renderings share decide.
    pub fn last_turns_start(&self, prompt: &Prompt, ids: &[u32], n: usize) -> Result<usize> {
        let messages = match prompt {
            Prompt::Chat { messages } | Prompt::Prefill { messages } => messages,
            Prompt::Plain { .. } | Prompt::Rendered { .. } => return Ok(0),
        };
        if n >= messages.len() {
            return Ok(0);
        }
        let before = &messages[..messages.len() - n];
        let head = if self.speaks_harmony() {
            let options = RenderOptions {
                generation_prompt: false,
                keep_analysis: true,
                ..RenderOptions::default()
            };
            harmony::render_chat(before, &options)?
        } else {
            self.template(messages)?.render(before, false)?
        };
        let head = self.tokenizer.encode_prompt(&head, true)?;
        Ok(head.iter().zip(ids).take_while(|(a, b)| a == b).count())
    }
}

fn non_empty(messages: &[Message]) -> Result<()> {
    if messages.is_empty() {
        return Err(EngineError::Input(
            "a chat needs at least one message".into(),
        ));
    }
    Ok(())
}

/// gpt-oss's generations end at `<|return|>` (the reply is done) and `<|call|>` (a tool call),
/// never at `<|end|>`, which closes the thinking before the reply.
fn harmony_stops(tokenizer: &mut Tokenizer) {
    if let Some(end) = tokenizer.token_to_id("<|end|>") {
        tokenizer.stop_ids.retain(|&id| id != end);
    }
    for marker in harmony::STOP_MARKERS {
        if let Some(id) = tokenizer.token_to_id(marker) {
            if !tokenizer.stop_ids.contains(&id) {
                tokenizer.stop_ids.push(id);
            }
        }
    }
}

/// A Harmony conversation ending with the assistant's turn, rendered to be continued: the
/// turns before it, the assistant's header, its thinking as an `analysis` message when it has
/// some, then its `final` message left open after its content (empty content opens the turn
/// for the model to choose).
fn harmony_prefill(messages: &[Message]) -> Result<String> {
    let (last, before) = messages
        .split_last()
        .ok_or_else(|| EngineError::Input("a chat needs at least one message".into()))?;
    if last.role != "assistant" {
        return Err(EngineError::Input(format!(
            "an assistant prefill needs the conversation to end with an assistant turn, not \
             `{}`",
            last.role
        )));
    }
    let options = RenderOptions {
        generation_prompt: true,
        ..RenderOptions::default()
    };
    let mut text = harmony::render_chat(before, &options)?;
    for part in last.thinking.iter().chain([&last.content]) {
        if let Some(special) = harmony::find_special(part) {
            return Err(EngineError::Input(format!(
                "the assistant prefill holds {special}, one of gpt-oss's special tokens"
            )));
        }
    }
    if let Some(thinking) = &last.thinking {
        text.push_str(&format!(
            "<|channel|>analysis<|message|>{thinking}<|end|>{}",
            harmony::GENERATION_PROMPT
        ));
    }
    if !last.content.is_empty() || last.thinking.is_some() {
        text.push_str("<|channel|>final<|message|>");
        text.push_str(&last.content);
    }
    Ok(text)
}

/// `messages` rendered so that the text ends inside the last turn, the assistant's, right
/// after its content: the template renders the whole conversation, and what it writes after
/// that content (its end-of-turn markup) is cut. An empty last turn opens the reply.
fn continue_final(chat: &ChatTemplate, messages: &[Message]) -> Result<String> {
    let (last, before) = messages.split_last().expect("checked non-empty");
    if last.role != "assistant" {
        return Err(EngineError::Input(format!(
            "an assistant prefill needs the conversation to end with an assistant turn, not \
             `{}`",
            last.role
        )));
    }
    if last.content.is_empty() {
        return chat.render(before, true);
    }
    let text = chat.render(messages, false)?;
    let end = text
        .rfind(last.content.as_str())
        .map(|at| at + last.content.len())
        .ok_or_else(|| {
            EngineError::Input(
                "the chat template changes the assistant's last turn, so it cannot be \
                 continued; send it without the prefill"
                    .into(),
            )
        })?;
    Ok(text[..end].to_string())
}

/// The chat template from `src`, given the tokenizer's BOS and EOS texts.
/// A GGUF file's tokenizer and chat template, from its header.
fn gguf_tokenizer(g: &GgufFile) -> Result<(Tokenizer, Option<ChatTemplate>)> {
    let mut tokenizer = Tokenizer::from_gguf(g)?;
    if g.config()?.family == Family::GptOss {
        harmony_stops(&mut tokenizer);
    }
    // A file without a template gets its family's well-known format, as llama.cpp does.
    let src = g
        .get_str("tokenizer.chat_template")
        .ok()
        .or_else(|| crate::chat::fallback_template(g.architecture().ok()?));
    let chat = chat_template(src, &tokenizer)?;
    Ok((tokenizer, chat))
}

fn chat_template(src: Option<&str>, tokenizer: &Tokenizer) -> Result<Option<ChatTemplate>> {
    let text = |id: Option<u32>| id.map(|i| tokenizer.token_text(i)).unwrap_or_default();
    src.map(|s| ChatTemplate::new(s, text(tokenizer.bos_id), text(tokenizer.eos_id)))
        .transpose()
}

fn read_tokenizer_config(dir: &Path) -> Result<Option<serde_json::Value>> {
    let p = dir.join("tokenizer_config.json");
    if !p.exists() {
        return Ok(None);
    }
    let text = lensd_core::files::read_to_string(&p).map_err(|e| EngineError::io(&p, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| EngineError::format(&p, format!("invalid JSON: {e}")))
}

fn check_vocab(path: &Path, cfg: &ModelConfig, tok: &Tokenizer) -> Result<()> {
    if tok.vocab_size() > cfg.vocab_size {
        return Err(EngineError::format(
            path,
            format!(
                "the tokenizer has {} tokens but the model's vocabulary has {} rows",
                tok.vocab_size(),
                cfg.vocab_size
            ),
        ));
    }
    Ok(())
}

/// One explained position of a talkative lens, with its texts.
#[derive(Debug, Clone, PartialEq)]
pub struct Explained {
    pub row: crate::lens::talkative::ExplainedRow,
    pub token_text: String,
    /// Each explanation token decoded alone (special tokens included), then `[token]` when
    /// the lens adds the current token.
    pub structured: Vec<String>,
    /// The explanation's tokens decoded together, then `[token]` when the lens adds the
    /// current token (as the original analyzer writes it).
    pub explanation: String,
}

impl Base {
    /// The id that replaces an explanation token for salience: the first token of `" "`,
    /// else (a tokenizer that gives `" "` no token) end-of-sequence, as the original does.
    pub fn space_id(&self) -> Result<u32> {
        let ids = self.tokenizer.encode(" ", false)?;
        match (ids.first(), self.tokenizer.eos_id) {
            (Some(&first), _) => Ok(first),
            (None, Some(eos)) => Ok(eos),
            _ => Err(EngineError::Input(
                "the tokenizer has neither a token for a space nor an end-of-sequence token".into(),
            )),
        }
    }

    /// Names the tokens of explained rows.
    pub fn describe(
        &self,
        lens: &crate::lens::talkative::TalkativeLens,
        rows: Vec<crate::lens::talkative::ExplainedRow>,
    ) -> Vec<Explained> {
        rows.into_iter()
            .map(|row| {
                let token_text = self.tokenizer.token_text(row.token);
                let mut structured: Vec<String> = row
                    .explanation_ids
                    .iter()
                    .map(|&t| self.tokenizer.token_text(t))
                    .collect();
                let mut explanation = self
                    .tokenizer
                    .decode(&row.explanation_ids)
                    .unwrap_or_else(|_| structured.concat());
                if lens.manifest.add_current_token {
                    structured.push(format!("[{token_text}]"));
                    explanation.push_str(&format!("[{token_text}]"));
                }
                Explained {
                    explanation,
                    row,
                    token_text,
                    structured,
                }
            })
            .collect()
    }
}

impl From<Explained> for lensd_core::analysis::Explanation {
    fn from(e: Explained) -> Self {
        lensd_core::analysis::Explanation {
            position: e.row.position,
            token: e.token_text,
            explanation: e.explanation,
            explanation_structured: e.structured,
            explanation_ids: e.row.explanation_ids,
            mse: e.row.mse,
            relative_rmse: e.row.relative_rmse,
            token_salience: e.row.token_salience,
            kl_divergence: e.row.kl_divergence,
            logit_lens_top: None,
        }
    }
}
