//! gpt-oss (OpenAI's open-weight mixture of experts): pre-norm blocks whose MLP is a set of
//! experts chosen per token by a linear router (`moe`), attention with biases on every map
//! and a learned sink logit per head (`attn_sinks`), sliding-window (128) and full attention
//! layers alternating, YaRN rotary scaling, rotation over halves. The published checkpoint
//! stores the experts' matrices as MXFP4 (`quantization_config.quant_method: mxfp4`).

use super::{gguf_f64_or, gguf_sizes, sliding_pattern, HfFields};
use crate::config::{Family, ModelConfig, Moe, Rope, RopeScaling, RopeStyle};
use crate::error::{EngineError, Result};
use crate::weights::gguf::GgufFile;

/// The activation's constants as gpt-oss defines them (transformers' `GptOssExperts`).
const ALPHA: f64 = 1.702;
const DEFAULT_LIMIT: f64 = 7.0;

/// `GptOssConfig`'s rotary scaling when `config.json` has no `rope_scaling` key.
fn default_yarn() -> RopeScaling {
    RopeScaling::Yarn {
        factor: 32.0,
        beta_fast: 32.0,
        beta_slow: 1.0,
        original_max_positions: 4096,
        truncate: false,
        attention_factor: RopeScaling::yarn_attention_factor(32.0, None, None),
    }
}

pub(super) fn from_hf(f: &HfFields) -> Result<ModelConfig> {
    let mut c = f.sizes(Family::GptOss, Some(64), false)?;
    c.rms_eps = f.f64_or("rms_norm_eps", 1e-5)?;
    c.max_positions = f.usize_or("max_position_embeddings", 131_072)?;
    c.rope_style = RopeStyle::Halves;
    c.rope = if f.raw("rope_scaling").is_none() && f.get("rope_parameters").is_none() {
        Rope {
            theta: f.f64_or("rope_theta", 150_000.0)?,
            scaling: default_yarn(),
        }
    } else {
        f.rope(150_000.0)?
    };
    // transformers sets attention_bias to true whatever the file says.
    c.qkv_bias = true;
    c.o_bias = true;
    c.attn_sinks = true;
    c.sliding_window = Some(f.usize_or("sliding_window", 128)?);
    let n = c.n_layers;
    c.sliding_layers = f
        .layer_types(n)?
        .unwrap_or_else(|| sliding_pattern(n, |i| i % 2 == 0));
    c.moe = Some(Moe {
        n_experts: f.usize_or("num_local_experts", 128)?,
        top_k: f.usize_or("num_experts_per_tok", 4)?,
        limit: f.f64_or("swiglu_limit", DEFAULT_LIMIT)?,
        alpha: ALPHA,
    });
    if let Some(q) = f.get("quantization_config") {
        let method = q.get("quant_method").and_then(|m| m.as_str());
        if method != Some("mxfp4") {
            return Err(EngineError::unsupported(
                f.path(),
                format!(
                    "`quantization_config` with quant_method {} (gpt-oss checkpoints are read \
                     unquantized or with MXFP4 experts)",
                    q.get("quant_method")
                        .map_or("none".into(), |m| m.to_string())
                ),
            ));
        }
    }
    Ok(c)
}

/// llama.cpp's GGUF files of gpt-oss: the sizes under `gpt-oss.*`, the experts' width in
/// `expert_feed_forward_length`, no sliding pattern (llama.cpp slides on even layers, as the
/// published configuration does) and no YaRN truncation flag (the published configuration's
/// is false).
pub(super) fn from_gguf(g: &GgufFile) -> Result<ModelConfig> {
    let k = |s: &str| format!("gpt-oss.{s}");
    let mut c = gguf_sizes(g, Family::GptOss)?;
    if g.get(&k("expert_feed_forward_length")).is_some() {
        c.d_ff = g.get_usize(&k("expert_feed_forward_length"))?;
    }
    c.rope_style = RopeStyle::Halves;
    if let RopeScaling::Yarn { truncate, .. } = &mut c.rope.scaling {
        *truncate = false;
    }
    c.qkv_bias = true;
    c.o_bias = true;
    c.attn_sinks = true;
    c.sliding_window = Some(g.get_usize(&k("attention.sliding_window"))?);
    c.sliding_layers = sliding_pattern(c.n_layers, |i| i % 2 == 0);
    c.moe = Some(Moe {
        n_experts: g.get_usize(&k("expert_count"))?,
        top_k: g.get_usize(&k("expert_used_count"))?,
        limit: gguf_f64_or(g, &k("swiglu_clamp"), DEFAULT_LIMIT)?,
        alpha: ALPHA,
    });
    Ok(c)
}
