//! Tokenizers: byte-level BPE built from a GGUF file's vocabulary, or a Hugging Face
//! `tokenizer.json`, with special tokens recognised only when the caller asks for it.

use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, Tokenizer as HfTokenizer};

use crate::error::{EngineError, Result};
use crate::weights::gguf::GgufFile;

/// GGUF token types (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// Pre-tokenizers (`tokenizer.ggml.pre`) whose splitting rules are implemented here.
const SUPPORTED_PRE: &[&str] = &["smollm", "gpt-2", "gpt2", "default"];

/// Text of tokens that end a turn in common chat formats.
const END_OF_TURN_TEXTS: &[&str] = &[
    "<|im_end|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<|endoftext|>",
    "<end_of_turn>",
    "</s>",
];

pub struct Tokenizer {
    /// Recognises special tokens written in the text.
    special: HfTokenizer,
    /// Treats special-token text as ordinary characters.
    plain: HfTokenizer,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub add_bos: bool,
    /// Ids that end generation: the end-of-sequence token and end-of-turn markers.
    pub stop_ids: Vec<u32>,
}

fn tok_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Tokenizer(e.to_string())
}

fn string_array<'a>(g: &'a GgufFile, key: &str) -> Result<Vec<&'a str>> {
    match g.get(key) {
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.as_str()),
                _ => Err(EngineError::format(
                    g.path(),
                    format!("`{key}` holds a non-string"),
                )),
            })
            .collect(),
        Some(_) => Err(EngineError::format(
            g.path(),
            format!("`{key}` is not an array"),
        )),
        None => Err(EngineError::format(g.path(), format!("`{key}` is missing"))),
    }
}

fn int_array(g: &GgufFile, key: &str) -> Result<Vec<i32>> {
    match g.get(key) {
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.to_i32()
                    .map_err(|_| EngineError::format(g.path(), format!("`{key}` holds a non-i32")))
            })
            .collect(),
        Some(_) => Err(EngineError::format(
            g.path(),
            format!("`{key}` is not an array"),
        )),
        None => Ok(vec![]),
    }
}

impl Tokenizer {
    /// Builds the tokenizer stored in a GGUF file's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let path = g.path();
        let model = g.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(EngineError::unsupported(
                path,
                format!("tokenizer model `{model}` (supported: gpt2 byte-level BPE)"),
            ));
        }
        let pre = g.get_str("tokenizer.ggml.pre").unwrap_or("default");
        if !SUPPORTED_PRE.contains(&pre) {
            return Err(EngineError::unsupported(
                path,
                format!(
                    "pre-tokenizer `{pre}` (supported: {})",
                    SUPPORTED_PRE.join(", ")
                ),
            ));
        }
        let tokens = string_array(g, "tokenizer.ggml.tokens")?;
        let merges = string_array(g, "tokenizer.ggml.merges")?;
        let types = int_array(g, "tokenizer.ggml.token_type")?;
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect();
        let merges = merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| {
                        EngineError::format(path, format!("merge `{m}` is not two tokens"))
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| {
                EngineError::format(path, format!("cannot build the BPE vocabulary: {e}"))
            })?;
        let byte_level = ByteLevel::new(false, true, true);
        let pre_tok: PreTokenizerWrapper = if pre == "smollm" {
            // Every digit is its own word before the GPT-2 split, as llama.cpp does for smollm.
            Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
        } else {
            byte_level.into()
        };
        let mut tk = HfTokenizer::new(bpe);
        tk.with_pre_tokenizer(Some(pre_tok));
        tk.with_decoder(Some(ByteLevelDecoder::default()));
        let mut special = Vec::new();
        let mut user = Vec::new();
        for (i, &ty) in types.iter().enumerate() {
            let Some(text) = tokens.get(i) else { continue };
            match ty {
                TOKEN_TYPE_CONTROL => special.push(AddedToken::from(text.to_string(), true)),
                TOKEN_TYPE_USER_DEFINED => {
                    user.push(AddedToken::from(text.to_string(), false).normalized(false))
                }
                _ => {}
            }
        }
        tk.add_special_tokens(special).map_err(tok_err)?;
        tk.add_tokens(user).map_err(tok_err)?;
        let id = |key: &str| g.get(key).and_then(|v| v.to_u32().ok());
        let bos_id = id("tokenizer.ggml.bos_token_id");
        let eos_id = id("tokenizer.ggml.eos_token_id");
        let eot_id = id("tokenizer.ggml.eot_token_id");
        let add_bos = g.get_bool("tokenizer.ggml.add_bos_token").unwrap_or(false);
        let special_ids: Vec<u32> = types
            .iter()
            .enumerate()
            .filter(|(_, &t)| t == TOKEN_TYPE_CONTROL)
            .map(|(i, _)| i as u32)
            .collect();
        Ok(Self::assemble(
            tk,
            bos_id,
            eos_id.into_iter().chain(eot_id).collect(),
            add_bos,
            special_ids,
        ))
    }

    /// Loads a Hugging Face `tokenizer.json`.
    pub fn from_json_file(
        path: &Path,
        bos_id: Option<u32>,
        eos_ids: Vec<u32>,
        add_bos: bool,
    ) -> Result<Self> {
        let tk = HfTokenizer::from_file(path)
            .map_err(|e| EngineError::format(path, format!("invalid tokenizer.json: {e}")))?;
        let special_ids = tk
            .get_added_tokens_decoder()
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| *id)
            .collect();
        Ok(Self::assemble(tk, bos_id, eos_ids, add_bos, special_ids))
    }

    fn assemble(
        special: HfTokenizer,
        bos_id: Option<u32>,
        eos_ids: Vec<u32>,
        add_bos: bool,
        special_ids: Vec<u32>,
    ) -> Self {
        let mut plain = special.clone();
        plain.set_encode_special_tokens(true);
        let mut stop_ids = eos_ids.clone();
        for text in END_OF_TURN_TEXTS {
            if let Some(id) = special.token_to_id(text) {
                if special_ids.contains(&id) && !stop_ids.contains(&id) {
                    stop_ids.push(id);
                }
            }
        }
        Tokenizer {
            special,
            plain,
            bos_id,
            eos_id: eos_ids.first().copied(),
            add_bos,
            stop_ids,
        }
    }

    /// Token ids of `text`; with `special`, special-token text such as `<|im_start|>` becomes
    /// its id, otherwise it is split like any other text. Never adds BOS; see [`Self::encode_prompt`].
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        let tk = if special { &self.special } else { &self.plain };
        Ok(tk.encode(text, false).map_err(tok_err)?.get_ids().to_vec())
    }

    /// Ids of a prompt as the model expects it: BOS first when the model asks for one.
    pub fn encode_prompt(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        if self.add_bos {
            ids.extend(self.bos_id);
        }
        ids.extend(self.encode(text, special)?);
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.special.decode(ids, false).map_err(tok_err)
    }

    /// The readable text of one token (bytes that are not valid UTF-8 alone show as `�`).
    pub fn token_text(&self, id: u32) -> String {
        self.special.decode(&[id], false).unwrap_or_default()
    }

    pub fn token_to_id(&self, text: &str) -> Option<u32> {
        self.special.token_to_id(text)
    }

    pub fn vocab_size(&self) -> usize {
        self.special.get_vocab_size(true)
    }
}
