//! Qwen2 / Qwen2.5 (biases on the query, key and value maps) and Qwen3 (an RMSNorm over each
//! head of the queries and keys, no biases). Both are otherwise llama-shaped; their sliding
//! window variant (`use_sliding_window`) is not supported.

use serde_json::Value;

use super::{gguf_sizes, HfFields};
use crate::config::{Activation, Family, ModelConfig, RopeStyle};
use crate::error::Result;
use crate::weights::gguf::GgufFile;

pub(super) fn from_hf(f: &HfFields, family: Family) -> Result<ModelConfig> {
    let default_head_dim = (family == Family::Qwen3).then_some(128);
    let mut c = f.sizes(family, default_head_dim, false)?;
    c.rope = f.rope(10_000.0)?;
    c.activation = f.activation(
        &["hidden_act"],
        &[("silu", Activation::Silu)],
        Activation::Silu,
    )?;
    f.refuse_unless(
        "use_sliding_window",
        &Value::Bool(false),
        "Qwen's sliding-window attention",
    )?;
    match family {
        Family::Qwen2 => c.qkv_bias = true,
        _ => {
            c.qk_norm = true;
            let bias = f.bool_or("attention_bias", false)?;
            c.qkv_bias = bias;
            c.o_bias = bias;
        }
    }
    Ok(c)
}

pub(super) fn from_gguf(g: &GgufFile, family: Family) -> Result<ModelConfig> {
    let mut c = gguf_sizes(g, family)?;
    c.rope_style = RopeStyle::Halves;
    match family {
        Family::Qwen2 => c.qkv_bias = true,
        _ => {
            c.qk_norm = true;
            c.qkv_bias = g.tensor_infos().contains_key("blk.0.attn_q.bias");
            c.o_bias = g.tensor_infos().contains_key("blk.0.attn_output.bias");
        }
    }
    Ok(c)
}
