//! Llama 1–3 (and SmolLM): pre-norm blocks, SiLU-gated MLP, rotary embeddings with optional
//! `linear` or `llama3` scaling, tied or untied head, optional attention biases.

use super::{gguf_sizes, HfFields};
use crate::config::{Activation, Family, ModelConfig, RopeStyle};
use crate::error::{EngineError, Result};
use crate::weights::gguf::GgufFile;

pub(super) fn from_hf(f: &HfFields) -> Result<ModelConfig> {
    let mut c = f.sizes(Family::Llama, None, false)?;
    c.rope = f.rope(10_000.0)?;
    c.activation = f.activation(
        &["hidden_act"],
        &[("silu", Activation::Silu)],
        Activation::Silu,
    )?;
    let bias = f.bool_or("attention_bias", false)?;
    c.qkv_bias = bias;
    c.o_bias = bias;
    if f.bool_or("mlp_bias", false)? {
        return Err(EngineError::unsupported(
            f.path(),
            "biases on the MLP (`mlp_bias`: true)",
        ));
    }
    Ok(c)
}

pub(super) fn from_gguf(g: &GgufFile) -> Result<ModelConfig> {
    let mut c = gguf_sizes(g, Family::Llama)?;
    // llama.cpp's converter permutes Q/K rows of llama models for adjacent-pair rotation.
    c.rope_style = RopeStyle::Interleaved;
    let has = |name: &str| g.tensor_infos().contains_key(name);
    c.qkv_bias = has("blk.0.attn_q.bias");
    c.o_bias = has("blk.0.attn_output.bias");
    Ok(c)
}
