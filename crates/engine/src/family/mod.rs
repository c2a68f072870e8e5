//! Model families: one small description per family that reads its configuration (a Hugging
//! Face `config.json` or GGUF metadata) into a [`ModelConfig`]. The forward pass is shared and
//! has no per-family code: a family only sets options (biases, norms, soft-caps, windows,
//! rotary variants) and the tensor names follow from them (`weights/`).
//!
//! Adding a family: write `family/<name>.rs` with `from_hf` and `from_gguf`, add a variant to
//! [`Family`] and a line to [`detect_hf`] and [`from_gguf`]; if it needs an option the forward
//! does not have, add the option to [`ModelConfig`] and to the shared layers in `model.rs`.

mod gemma;
mod gptoss;
mod hf;
mod llama;
mod qwen;

use std::path::Path;

use crate::config::{Family, ModelConfig, Rope, RopeScaling};
use crate::error::{EngineError, Result};
use crate::weights::gguf::GgufFile;

pub(crate) use hf::HfFields;

/// Hugging Face `model_type`s and architectures of each family.
const HF_NAMES: &[(&str, &str, Family)] = &[
    ("llama", "LlamaForCausalLM", Family::Llama),
    ("qwen2", "Qwen2ForCausalLM", Family::Qwen2),
    ("qwen3", "Qwen3ForCausalLM", Family::Qwen3),
    ("gemma2", "Gemma2ForCausalLM", Family::Gemma2),
    ("gemma3_text", "Gemma3ForCausalLM", Family::Gemma3),
    // The multimodal Gemma-3 checkpoints (4B and larger): lensd runs their text model.
    ("gemma3", "Gemma3ForConditionalGeneration", Family::Gemma3),
    ("gpt_oss", "GptOssForCausalLM", Family::GptOss),
];

fn supported_hf() -> String {
    HF_NAMES
        .iter()
        .map(|(_, a, _)| *a)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The family of a Hugging Face `config.json`, and the object that holds the text model's
/// configuration (`text_config` for multimodal Gemma-3).
fn detect_hf<'a>(
    path: &Path,
    json: &'a serde_json::Value,
) -> Result<(Family, &'a serde_json::Map<String, serde_json::Value>)> {
    let obj = json
        .as_object()
        .ok_or_else(|| EngineError::format(path, "config.json is not a JSON object"))?;
    let model_type = obj.get("model_type").and_then(|v| v.as_str());
    let architectures: Vec<&str> = obj
        .get("architectures")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    let found = HF_NAMES
        .iter()
        .find(|(mt, _, _)| model_type == Some(*mt))
        .or_else(|| {
            HF_NAMES
                .iter()
                .find(|(_, arch, _)| architectures.contains(arch))
        });
    let Some(&(mt, _, family)) = found else {
        return Err(EngineError::unsupported(
            path,
            format!(
                "architecture {architectures:?} / model_type {:?} (supported: {})",
                model_type.unwrap_or("none"),
                supported_hf()
            ),
        ));
    };
    if mt == "gemma3" {
        let text = obj
            .get("text_config")
            .and_then(|v| v.as_object())
            .ok_or_else(|| {
                EngineError::format(
                    path,
                    "a Gemma3ForConditionalGeneration config needs a `text_config` object",
                )
            })?;
        return Ok((family, text));
    }
    Ok((family, obj))
}

/// Reads a Hugging Face `config.json` (already parsed) of any supported family. Values the
/// forward cannot honour (unknown rotary scaling, MLP biases, other activations, ...) are
/// refused by name. `vocab_rows` is the embedding's row count, used when the configuration
/// leaves the vocabulary size to a default.
pub(crate) fn from_hf(
    path: &Path,
    json: &serde_json::Value,
    vocab_rows: Option<usize>,
) -> Result<ModelConfig> {
    let (family, obj) = detect_hf(path, json)?;
    let f = HfFields::new(path, obj, vocab_rows);
    let cfg = match family {
        Family::Llama => llama::from_hf(&f)?,
        Family::Qwen2 | Family::Qwen3 => qwen::from_hf(&f, family)?,
        Family::Gemma2 | Family::Gemma3 => gemma::from_hf(&f, family)?,
        Family::GptOss => gptoss::from_hf(&f)?,
    };
    checked(path, cfg)
}

/// GGUF `general.architecture` values and their families.
const GGUF_NAMES: &[(&str, Family)] = &[
    ("llama", Family::Llama),
    ("qwen2", Family::Qwen2),
    ("qwen3", Family::Qwen3),
    ("gemma2", Family::Gemma2),
    ("gemma3", Family::Gemma3),
    ("gpt-oss", Family::GptOss),
];

/// Reads the configuration of a GGUF file of any supported family from its metadata.
pub(crate) fn from_gguf(g: &GgufFile) -> Result<ModelConfig> {
    let arch = g.architecture()?;
    let Some(&(_, family)) = GGUF_NAMES.iter().find(|(a, _)| *a == arch) else {
        let names: Vec<&str> = GGUF_NAMES.iter().map(|(a, _)| *a).collect();
        return Err(EngineError::unsupported(
            g.path(),
            format!("architecture `{arch}` (supported: {})", names.join(", ")),
        ));
    };
    let cfg = match family {
        Family::Llama => llama::from_gguf(g)?,
        Family::Qwen2 | Family::Qwen3 => qwen::from_gguf(g, family)?,
        Family::Gemma2 | Family::Gemma3 => gemma::from_gguf(g, family)?,
        Family::GptOss => gptoss::from_gguf(g)?,
    };
    checked(g.path(), cfg)
}

fn checked(path: &Path, cfg: ModelConfig) -> Result<ModelConfig> {
    cfg.check()
        .map_err(|m| EngineError::format(path, format!("inconsistent configuration: {m}")))?;
    Ok(cfg)
}

/// The sizes every GGUF family writes under `{arch}.*`, into a plain configuration.
fn gguf_sizes(g: &GgufFile, family: Family) -> Result<ModelConfig> {
    let arch = g.architecture()?.to_string();
    let k = |s: &str| format!("{arch}.{s}");
    let d_model = g.get_usize(&k("embedding_length"))?;
    let n_heads = g.get_usize(&k("attention.head_count"))?;
    let n_kv_heads = match g.get(&k("attention.head_count_kv")) {
        Some(_) => g.get_usize(&k("attention.head_count_kv"))?,
        None => n_heads,
    };
    let head_dim = match g.get(&k("attention.key_length")) {
        Some(_) => g.get_usize(&k("attention.key_length"))?,
        None => d_model.checked_div(n_heads).unwrap_or(0),
    };
    if let Some(v) = g.get(&k("attention.value_length")) {
        let v = g.get_usize(&k("attention.value_length")).map_err(|_| {
            EngineError::format(
                g.path(),
                format!("`{}` is not an integer: {v:?}", k("attention.value_length")),
            )
        })?;
        if v != head_dim {
            return Err(EngineError::unsupported(
                g.path(),
                format!("value heads of {v} dimensions with key heads of {head_dim}"),
            ));
        }
    }
    let embd = g
        .tensor_infos()
        .get("token_embd.weight")
        .ok_or_else(|| EngineError::format(g.path(), "tensor `token_embd.weight` is missing"))?;
    let vocab_size = match g.get(&k("vocab_size")) {
        Some(_) => g.get_usize(&k("vocab_size"))?,
        None => embd.shape.dims().first().copied().unwrap_or(0),
    };
    let mut cfg = ModelConfig::plain(
        family,
        g.get_usize(&k("block_count"))?,
        d_model,
        n_heads,
        n_kv_heads,
        head_dim,
        g.get_usize(&k("feed_forward_length"))?,
        vocab_size,
    );
    cfg.rms_eps = g.get_f64(&k("attention.layer_norm_rms_epsilon"))?;
    cfg.max_positions = g.get_usize(&k("context_length"))?;
    cfg.tied_embeddings = !g.tensor_infos().contains_key("output.weight");
    cfg.rope = Rope {
        theta: gguf_f64_or(g, &k("rope.freq_base"), 10_000.0)?,
        scaling: gguf_rope_scaling(g, &arch)?,
    };
    if let Some(n) = g.get(&k("rope.dimension_count")) {
        let n = g.get_usize(&k("rope.dimension_count")).map_err(|_| {
            EngineError::format(
                g.path(),
                format!("`{}` is not an integer: {n:?}", k("rope.dimension_count")),
            )
        })?;
        if n != head_dim {
            return Err(EngineError::unsupported(
                g.path(),
                format!("partial rotary embedding ({n} of {head_dim} head dimensions)"),
            ));
        }
    }
    Ok(cfg)
}

fn gguf_f64_or(g: &GgufFile, key: &str, default: f64) -> Result<f64> {
    if g.get(key).is_some() {
        g.get_f64(key)
    } else {
        Ok(default)
    }
}

fn gguf_opt_f64(g: &GgufFile, key: &str) -> Result<Option<f64>> {
    match g.get(key) {
        Some(_) => g.get_f64(key).map(Some),
        None => Ok(None),
    }
}

/// `{arch}.rope.scaling.type` / `.factor` (or the older `rope.scale_linear`). llama.cpp
/// writes Llama-3's scaling as a `rope_freqs.weight` tensor instead, read with the weights.
fn gguf_rope_scaling(g: &GgufFile, arch: &str) -> Result<RopeScaling> {
    let k = |s: &str| format!("{arch}.{s}");
    let kind = match g.get(&k("rope.scaling.type")) {
        Some(_) => g.get_str(&k("rope.scaling.type"))?.to_string(),
        None if g.get(&k("rope.scale_linear")).is_some() => "linear".into(),
        None => "none".into(),
    };
    let factor = || -> Result<f64> {
        match gguf_opt_f64(g, &k("rope.scaling.factor"))? {
            Some(f) => Ok(f),
            None => g.get_f64(&k("rope.scale_linear")),
        }
    };
    match kind.as_str() {
        "none" => Ok(RopeScaling::None),
        "linear" => {
            let f = factor()?;
            // A factor of 1 is what converters write for "no scaling".
            Ok(if f == 1.0 {
                RopeScaling::None
            } else {
                RopeScaling::Linear { factor: f }
            })
        }
        "yarn" => {
            let f = factor()?;
            let original = g.get_usize(&k("rope.scaling.original_context_length"))?;
            let attention_factor = match gguf_opt_f64(g, &k("rope.scaling.attn_factor"))? {
                Some(a) => a,
                None => RopeScaling::yarn_attention_factor(f, None, None),
            };
            Ok(RopeScaling::Yarn {
                factor: f,
                beta_fast: gguf_f64_or(g, &k("rope.scaling.yarn_beta_fast"), 32.0)?,
                beta_slow: gguf_f64_or(g, &k("rope.scaling.yarn_beta_slow"), 1.0)?,
                original_max_positions: original,
                // transformers' default; a family whose configuration says otherwise sets it.
                truncate: true,
                attention_factor,
            })
        }
        other => Err(EngineError::unsupported(
            g.path(),
            format!(
                "rotary scaling `{other}` in `{}` (supported: none, linear, yarn, and llama3 \
                 through rope_freqs.weight)",
                k("rope.scaling.type")
            ),
        )),
    }
}

/// Every block of `n` marked sliding where `sliding(i)` says so.
fn sliding_pattern(n: usize, sliding: impl Fn(usize) -> bool) -> Vec<bool> {
    (0..n).map(sliding).collect()
}
