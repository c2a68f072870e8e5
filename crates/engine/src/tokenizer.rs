//! Tokenizers, as the model's files describe them: byte-level BPE (a GGUF `gpt2` vocabulary
//! with the pre-tokenizer the file names, or a Hugging Face `tokenizer.json`) and
//! SentencePiece-style pieces with scores (a GGUF `llama` vocabulary, as Gemma's files carry).
//! Special tokens written in a text are recognised only when the caller asks; BOS is added
//! exactly when the file asks for it, and a file that asks for a BOS it does not name is refused.

mod bpe;
mod spm;

use std::path::Path;

use aho_corasick::{AhoCorasick, MatchKind};
use candle_core::quantized::gguf_file::Value;
use tokenizers::{AddedToken, Tokenizer as HfTokenizer};

use crate::error::{EngineError, Result};
use crate::weights::gguf::GgufFile;

use spm::{Piece, Spm, TokenKind};

/// Texts of tokens that end generation (llama.cpp's list). In a GGUF file such a token is
/// always a control token, whatever type the file gives it, as llama.cpp makes it one: Gemma's
/// `</s>`, an HTML tag there (user-defined), is thus cut out of a text only when special tokens
/// are recognised, and ends generation.
const END_OF_GENERATION_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|eom_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "</s>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<\u{ff5c}end\u{2581}of\u{2581}sentence\u{ff5c}>",
    "[e~[",
];

enum Model {
    /// A Hugging Face `tokenizer.json`, run by the `tokenizers` crate: one copy recognises
    /// special tokens written in the text, the other treats them as ordinary characters (their
    /// options, such as stripping spaces beside them, are the crate's to apply).
    Bpe {
        special: Box<HfTokenizer>,
        plain: Box<HfTokenizer>,
        special_ids: Vec<u32>,
    },
    /// A GGUF file's byte-level BPE, run by the `tokenizers` crate with its control tokens
    /// treated as text. Where they are to be recognised, the text is first cut at them (the
    /// longest at the leftmost place, as the crate cuts), so one copy serves both ways.
    GgufBpe {
        tk: Box<HfTokenizer>,
        /// Finds the control tokens' texts, with each pattern's id; `None` when the file has
        /// none.
        cut: Option<(AhoCorasick, Vec<u32>)>,
        special_ids: Vec<u32>,
    },
    Spm(Box<Spm>),
}

pub struct Tokenizer {
    model: Model,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    /// Whether prompts start with BOS ([`Tokenizer::encode_prompt`]).
    pub add_bos: bool,
    /// Ids that end generation: the end-of-sequence token and end-of-turn markers.
    pub stop_ids: Vec<u32>,
}

fn tok_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Tokenizer(e.to_string())
}

fn array<'a>(g: &'a GgufFile, key: &str) -> Result<Option<&'a [Value]>> {
    match g.get(key) {
        Some(Value::Array(items)) => Ok(Some(items)),
        Some(_) => Err(EngineError::format(
            g.path(),
            format!("`{key}` is not an array"),
        )),
        None => Ok(None),
    }
}

fn string_array<'a>(g: &'a GgufFile, key: &str) -> Result<Vec<&'a str>> {
    let items = array(g, key)?
        .ok_or_else(|| EngineError::format(g.path(), format!("`{key}` is missing")))?;
    items
        .iter()
        .map(|v| match v {
            Value::String(s) => Ok(s.as_str()),
            _ => Err(EngineError::format(
                g.path(),
                format!("`{key}` holds a non-string"),
            )),
        })
        .collect()
}

/// A numeric array of at least `n` entries, or `None` when the key is absent.
fn number_array(g: &GgufFile, key: &str, n: usize) -> Result<Option<Vec<f64>>> {
    let Some(items) = array(g, key)? else {
        return Ok(None);
    };
    if items.len() < n {
        return Err(EngineError::format(
            g.path(),
            format!("`{key}` has {} entries for {n} tokens", items.len()),
        ));
    }
    items
        .iter()
        .map(|v| {
            number(v)
                .ok_or_else(|| EngineError::format(g.path(), format!("`{key}` holds a non-number")))
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

fn number(v: &Value) -> Option<f64> {
    Some(match v {
        Value::U8(x) => *x as f64,
        Value::I8(x) => *x as f64,
        Value::U16(x) => *x as f64,
        Value::I16(x) => *x as f64,
        Value::U32(x) => *x as f64,
        Value::I32(x) => *x as f64,
        Value::U64(x) => *x as f64,
        Value::I64(x) => *x as f64,
        Value::F32(x) => *x as f64,
        Value::F64(x) => *x,
        _ => return None,
    })
}

impl Tokenizer {
    /// Builds the tokenizer stored in a GGUF file's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let path = g.path();
        let kind = g.get_str("tokenizer.ggml.model")?;
        let tokens = string_array(g, "tokenizer.ggml.tokens")?;
        let n = tokens.len();
        let mut kinds: Vec<TokenKind> = match number_array(g, "tokenizer.ggml.token_type", n)? {
            Some(t) => t.iter().map(|&t| TokenKind::from_gguf(t as i32)).collect(),
            None => vec![TokenKind::Normal; n],
        };
        let mut stops = Vec::new();
        for (i, t) in tokens.iter().enumerate() {
            if END_OF_GENERATION_TEXTS.contains(t) {
                kinds[i] = TokenKind::Control;
                stops.push(i as u32);
            }
        }
        let id = |key: &str| -> Result<Option<u32>> {
            let Some(v) = g.get(key) else { return Ok(None) };
            match number(v) {
                Some(x) if x >= 0.0 && (x as usize) < n && x.fract() == 0.0 => Ok(Some(x as u32)),
                Some(x) => Err(EngineError::format(
                    path,
                    format!("`{key}` is {x}, outside the vocabulary of {n} tokens"),
                )),
                None => Err(EngineError::format(
                    path,
                    format!("`{key}` is not an integer"),
                )),
            }
        };
        let (model, default_add_bos) = match kind {
            "gpt2" => {
                let (tk, default_add_bos) = bpe::from_gguf(g, &tokens)?;
                (Self::bpe_with_added(tk, &tokens, &kinds)?, default_add_bos)
            }
            "llama" => {
                let scores = number_array(g, "tokenizer.ggml.scores", n)?;
                let pieces = tokens
                    .iter()
                    .enumerate()
                    .map(|(i, t)| Piece {
                        text: t.to_string(),
                        score: scores.as_ref().map_or(0.0, |s| s[i] as f32),
                        kind: kinds[i],
                    })
                    .collect();
                let prefix = match g.get("tokenizer.ggml.add_space_prefix") {
                    None => true,
                    Some(Value::Bool(b)) => *b,
                    Some(_) => {
                        return Err(EngineError::format(
                            path,
                            "`tokenizer.ggml.add_space_prefix` is not a boolean",
                        ))
                    }
                };
                let unknown = id("tokenizer.ggml.unknown_token_id")?;
                // llama.cpp adds BOS to SentencePiece vocabularies unless the file says no.
                (
                    Model::Spm(Box::new(Spm::new(pieces, unknown, prefix))),
                    true,
                )
            }
            other => {
                return Err(EngineError::unsupported(
                    path,
                    format!(
                        "tokenizer model `{other}` (supported: gpt2 byte-level BPE, llama \
                         SentencePiece)"
                    ),
                ))
            }
        };
        let bos_id = id("tokenizer.ggml.bos_token_id")?;
        let add_bos = match g.get("tokenizer.ggml.add_bos_token") {
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(EngineError::format(
                    path,
                    "`tokenizer.ggml.add_bos_token` is not a boolean",
                ))
            }
            None => default_add_bos,
        };
        if add_bos && bos_id.is_none() {
            let why = if g.get("tokenizer.ggml.add_bos_token").is_some() {
                "`tokenizer.ggml.add_bos_token` is true".to_string()
            } else {
                format!(
                    "`tokenizer.ggml.add_bos_token` is absent, and llama.cpp adds BOS by default \
                     to a `{kind}` vocabulary"
                )
            };
            return Err(EngineError::format(
                path,
                format!(
                    "{why}, but `tokenizer.ggml.bos_token_id` is missing: the file asks for a \
                     BOS token it does not name; add the id or set add_bos_token to false"
                ),
            ));
        }
        for key in [
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.eot_token_id",
            "tokenizer.ggml.eom_token_id",
        ] {
            stops.extend(id(key)?);
        }
        let eos_id = id("tokenizer.ggml.eos_token_id")?;
        Ok(Self::assemble(model, bos_id, eos_id, stops, add_bos))
    }

    /// Wraps a BPE model with the file's special tokens: control and unknown tokens are
    /// recognised only on request, user-defined ones always (as llama.cpp does).
    fn bpe_with_added(mut tk: HfTokenizer, tokens: &[&str], kinds: &[TokenKind]) -> Result<Model> {
        let mut special = Vec::new();
        let mut user = Vec::new();
        let mut special_ids = Vec::new();
        let mut texts = Vec::new();
        for (i, (&text, &kind)) in tokens.iter().zip(kinds).enumerate() {
            if kind.is_special() {
                special.push(AddedToken::from(text.to_string(), true));
                special_ids.push(i as u32);
                texts.push(text);
            } else if kind == TokenKind::UserDefined {
                user.push(AddedToken::from(text.to_string(), false).normalized(false));
            }
        }
        tk.add_special_tokens(special).map_err(tok_err)?;
        tk.add_tokens(user).map_err(tok_err)?;
        tk.set_encode_special_tokens(true);
        // An empty text never matches in the crate either.
        let (texts, ids): (Vec<&str>, Vec<u32>) = texts
            .into_iter()
            .zip(special_ids.iter().copied())
            .filter(|(t, _)| !t.is_empty())
            .unzip();
        let cut = match texts.is_empty() {
            true => None,
            false => Some((
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(&texts)
                    .map_err(tok_err)?,
                ids,
            )),
        };
        Ok(Model::GgufBpe {
            tk: Box::new(tk),
            cut,
            special_ids,
        })
    }

    /// Loads a Hugging Face `tokenizer.json`. `bos_id` and `eos_ids` come from the model's
    /// `config.json`; `add_bos` is the caller's reading of `tokenizer_config.json`. When the
    /// `tokenizer_config.json` beside `path` does not set `add_bos_token`, the tokenizer's
    /// post-processor decides: a template that starts with a special token adds it as BOS.
    pub fn from_json_file(
        path: &Path,
        bos_id: Option<u32>,
        eos_ids: Vec<u32>,
        add_bos: bool,
    ) -> Result<Self> {
        let tk = HfTokenizer::from_file(path)
            .map_err(|e| EngineError::format(path, format!("invalid tokenizer.json: {e}")))?;
        let n = tk.get_vocab_size(true);
        let cfg_path = path.with_file_name("tokenizer_config.json");
        let cfg = read_json(&cfg_path)?;
        let cfg_flag = cfg
            .as_ref()
            .and_then(|c| c.get("add_bos_token"))
            .and_then(|v| v.as_bool());
        let post_bos = post_processor_bos(&tk);
        let add_bos = cfg_flag.unwrap_or(add_bos || post_bos.is_some());
        let cfg_bos = cfg
            .as_ref()
            .and_then(|c| c.get("bos_token"))
            .and_then(|v| v.as_str().or_else(|| v.get("content")?.as_str()))
            .and_then(|t| tk.token_to_id(t));
        // What the post-processor adds is what Hugging Face adds; otherwise config.json's id.
        let bos_id = post_bos.or(bos_id).or(cfg_bos);
        if add_bos && bos_id.is_none() {
            let (file, why) = match cfg_flag {
                Some(_) => (&cfg_path, "`add_bos_token` is true"),
                None => (&path.to_path_buf(), "the caller asked for BOS"),
            };
            return Err(EngineError::format(
                file,
                format!(
                    "{why}, but no BOS token is named (neither `bos_token_id` in config.json nor \
                     `bos_token` in tokenizer_config.json is a token of the vocabulary)"
                ),
            ));
        }
        if let Some(b) = bos_id.filter(|&b| b as usize >= n) {
            return Err(EngineError::format(
                &path.with_file_name("config.json"),
                format!("`bos_token_id` is {b}, outside the vocabulary of {n} tokens"),
            ));
        }
        let special_ids: Vec<u32> = tk
            .get_added_tokens_decoder()
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| *id)
            .collect();
        let mut plain = tk.clone();
        plain.set_encode_special_tokens(true);
        let model = Model::Bpe {
            special: Box::new(tk),
            plain: Box::new(plain),
            special_ids,
        };
        let eos_id = eos_ids.first().copied();
        Ok(Self::assemble(model, bos_id, eos_id, eos_ids, add_bos))
    }

    fn assemble(
        model: Model,
        bos_id: Option<u32>,
        eos_id: Option<u32>,
        mut stop_ids: Vec<u32>,
        add_bos: bool,
    ) -> Self {
        let mut tk = Tokenizer {
            model,
            bos_id,
            eos_id,
            add_bos,
            stop_ids: vec![],
        };
        // Special tokens that end a turn end generation too (GGUF files list them already).
        for text in END_OF_GENERATION_TEXTS {
            if let Some(id) = tk.token_to_id(text) {
                if tk.is_special(id) {
                    stop_ids.push(id);
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        stop_ids.retain(|id| seen.insert(*id));
        tk.stop_ids = stop_ids;
        tk
    }

    /// Whether `id` is a control token: one written in text only when special tokens are
    /// recognised.
    pub fn is_special(&self, id: u32) -> bool {
        match &self.model {
            Model::Bpe { special_ids, .. } | Model::GgufBpe { special_ids, .. } => {
                special_ids.contains(&id)
            }
            Model::Spm(s) => s.piece(id).is_some_and(|p| p.kind.is_special()),
        }
    }

    /// Token ids of `text`; with `special`, special-token text such as `<|im_start|>` becomes
    /// its id, otherwise it is split like any other text. Never adds BOS; see [`Self::encode_prompt`].
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        match &self.model {
            Model::Bpe {
                special: s, plain, ..
            } => {
                let tk = if special { s } else { plain };
                Ok(tk.encode(text, false).map_err(tok_err)?.get_ids().to_vec())
            }
            Model::GgufBpe { tk, cut, .. } => {
                let plain = |part: &str| -> Result<Vec<u32>> {
                    Ok(tk.encode(part, false).map_err(tok_err)?.get_ids().to_vec())
                };
                let Some((cut, ids)) = cut.as_ref().filter(|_| special) else {
                    return plain(text);
                };
                let (mut out, mut at) = (Vec::new(), 0);
                for m in cut.find_iter(text) {
                    if m.start() > at {
                        out.extend(plain(&text[at..m.start()])?);
                    }
                    out.push(ids[m.pattern().as_usize()]);
                    at = m.end();
                }
                if at < text.len() || out.is_empty() {
                    out.extend(plain(&text[at..])?);
                }
                Ok(out)
            }
            Model::Spm(s) => s.encode(text, special).map_err(tok_err),
        }
    }

    /// Ids of a prompt as the model expects it: BOS first when the model asks for one. A text
    /// that already starts with BOS (a chat template that writes `{{ bos_token }}`) does not
    /// get a second one.
    pub fn encode_prompt(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        let mut ids = self.encode(text, special)?;
        if let (true, Some(bos)) = (self.add_bos, self.bos_id) {
            if ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
        Ok(ids)
    }

    /// The text of `ids`, special tokens written out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match &self.model {
            Model::Bpe { special: tk, .. } | Model::GgufBpe { tk, .. } => {
                tk.decode(ids, false).map_err(tok_err)
            }
            Model::Spm(s) => Ok(s.decode(ids)),
        }
    }

    /// The readable text of one token (bytes that are not valid UTF-8 alone show as `�`).
    pub fn token_text(&self, id: u32) -> String {
        match &self.model {
            Model::Bpe { special: tk, .. } | Model::GgufBpe { tk, .. } => {
                tk.decode(&[id], false).unwrap_or_default()
            }
            Model::Spm(s) => {
                let mut bytes = Vec::new();
                s.piece_bytes(id, &mut bytes);
                String::from_utf8_lossy(&bytes).into_owned()
            }
        }
    }

    pub fn token_to_id(&self, text: &str) -> Option<u32> {
        match &self.model {
            Model::Bpe { special: tk, .. } | Model::GgufBpe { tk, .. } => tk.token_to_id(text),
            Model::Spm(s) => s.token_to_id(text),
        }
    }

    pub fn vocab_size(&self) -> usize {
        match &self.model {
            Model::Bpe { special: tk, .. } | Model::GgufBpe { tk, .. } => tk.get_vocab_size(true),
            Model::Spm(s) => s.len(),
        }
    }
}

fn read_json(path: &Path) -> Result<Option<serde_json::Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = lensd_core::files::read_to_string(path).map_err(|e| EngineError::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| EngineError::format(path, format!("invalid JSON: {e}")))
}

/// The id of the special token a `tokenizer.json` post-processor puts before a single
/// sequence (`TemplateProcessing`, alone or inside a `Sequence`), if it puts one there.
fn post_processor_bos(tk: &HfTokenizer) -> Option<u32> {
    let pp = serde_json::to_value(tk.get_post_processor()?).ok()?;
    let templates: Vec<&serde_json::Value> = match pp.get("type")?.as_str()? {
        "TemplateProcessing" => vec![&pp],
        "Sequence" => pp.get("processors")?.as_array()?.iter().collect(),
        _ => vec![],
    };
    templates.into_iter().find_map(|t| {
        let first = t.get("single")?.as_array()?.first()?;
        let name = first.get("SpecialToken")?.get("id")?.as_str()?;
        let ids = t.get("special_tokens")?.get(name)?.get("ids")?.as_array()?;
        ids.first()?.as_u64().map(|i| i as u32)
    })
}
