//! Gemma-2 and Gemma-3 (text). Both scale the embeddings by √d, use GeGLU (tanh GELU), wrap
//! attention and the MLP in norms before and after, scale queries by `query_pre_attn_scalar`
//! and alternate sliding-window and global layers. Gemma-2 soft-caps the attention scores and
//! the output logits and slides on every other layer; Gemma-3 normalises each query and key
//! head, slides on five of every six layers with a rotary base of its own, and may scale the
//! global layers' rotary embedding linearly.
//!
//! Hugging Face checkpoints store Gemma's norm gains as `w` for `(1 + w)`; llama.cpp's
//! converter adds the 1 into GGUF files. The loaders add it for Hugging Face checkpoints, so
//! the forward applies plain RMSNorm gains for every family.

use serde_json::Value;

use super::{gguf_opt_f64, gguf_sizes, sliding_pattern, HfFields};
use crate::config::{Activation, Family, ModelConfig, Rope, RopeStyle};
use crate::error::{EngineError, Result};
use crate::weights::gguf::GgufFile;

/// transformers' defaults where a Gemma config leaves a value out.
struct Defaults {
    rope_theta: f64,
    sliding_window: usize,
    attn_softcap: Option<f64>,
    final_softcap: Option<f64>,
    max_positions: usize,
}

fn defaults(family: Family) -> Defaults {
    match family {
        Family::Gemma2 => Defaults {
            rope_theta: 10_000.0,
            sliding_window: 4096,
            attn_softcap: Some(50.0),
            final_softcap: Some(30.0),
            max_positions: 8192,
        },
        _ => Defaults {
            rope_theta: 1_000_000.0,
            sliding_window: 4096,
            attn_softcap: None,
            final_softcap: None,
            max_positions: 131_072,
        },
    }
}

/// A soft-cap: the family's default when the key is absent, none when it is `null`.
fn softcap(f: &HfFields, key: &str, default: Option<f64>) -> Result<Option<f64>> {
    match f.raw(key) {
        None => Ok(default),
        Some(v) if v.is_null() => Ok(None),
        Some(_) => f.opt_f64(key),
    }
}

fn common(c: &mut ModelConfig) {
    c.activation = Activation::GeluTanh;
    c.embed_scale = (c.d_model as f64).sqrt() as f32;
    c.sandwich_norms = true;
    c.rope_style = RopeStyle::Halves;
}

pub(super) fn from_hf(f: &HfFields, family: Family) -> Result<ModelConfig> {
    let d = defaults(family);
    let mut c = f.sizes(family, Some(256), true)?;
    common(&mut c);
    c.max_positions = f.usize_or("max_position_embeddings", d.max_positions)?;
    c.activation = f.activation(
        &["hidden_activation", "hidden_act"],
        &[("gelu_pytorch_tanh", Activation::GeluTanh)],
        Activation::GeluTanh,
    )?;
    c.query_scale = 1.0 / f.f64_or("query_pre_attn_scalar", 256.0)?.sqrt();
    c.attn_softcap = softcap(f, "attn_logit_softcapping", d.attn_softcap)?;
    c.final_softcap = softcap(f, "final_logit_softcapping", d.final_softcap)?;
    c.sliding_window = Some(f.usize_or("sliding_window", d.sliding_window)?);
    c.rope = f.rope(d.rope_theta)?;
    let n = c.n_layers;
    let listed = f.layer_types(n)?;
    match family {
        Family::Gemma2 => {
            c.sliding_layers = listed.unwrap_or_else(|| sliding_pattern(n, |i| i % 2 == 0));
        }
        _ => {
            f.refuse_unless(
                "use_bidirectional_attention",
                &Value::Bool(false),
                "bidirectional attention",
            )?;
            c.qk_norm = true;
            // transformers 5 writes the pattern as `_sliding_window_pattern` beside the list.
            let pattern = match f.opt_usize("sliding_window_pattern")? {
                Some(p) => p,
                None => f.usize_or("_sliding_window_pattern", 6)?,
            }
            .max(1);
            c.sliding_layers =
                listed.unwrap_or_else(|| sliding_pattern(n, |i| (i + 1) % pattern != 0));
            let per_kind = f
                .get("rope_parameters")
                .and_then(|p| p.get("sliding_attention"))
                .is_some();
            c.sliding_rope = Some(if per_kind {
                f.rope_of_kind("sliding_attention", 10_000.0)?
            } else {
                Rope::plain(f.f64_or("rope_local_base_freq", 10_000.0)?)
            });
        }
    }
    Ok(c)
}

pub(super) fn from_gguf(g: &GgufFile, family: Family) -> Result<ModelConfig> {
    let arch = family.name();
    let k = |s: &str| format!("{arch}.{s}");
    let mut c = gguf_sizes(g, family)?;
    common(&mut c);
    // GGUF files carry no query_pre_attn_scalar: llama.cpp uses d / heads for the 27B models
    // (46 layers for Gemma-2, 62 for Gemma-3) and the head size otherwise, as their
    // configurations say.
    let big = matches!(
        (family, c.n_layers),
        (Family::Gemma2, 46) | (Family::Gemma3, 62)
    );
    let scalar = match gguf_opt_f64(g, &k("attention.query_pre_attn_scalar"))? {
        Some(s) => s,
        None if big => (c.d_model / c.n_heads) as f64,
        None => c.head_dim as f64,
    };
    c.query_scale = 1.0 / scalar.sqrt();
    c.attn_softcap = gguf_opt_f64(g, &k("attn_logit_softcapping"))?;
    c.final_softcap = gguf_opt_f64(g, &k("final_logit_softcapping"))?;
    c.sliding_window = Some(g.get_usize(&k("attention.sliding_window")).map_err(|_| {
        EngineError::format(
            g.path(),
            format!(
                "metadata `{}` is missing or not an integer",
                k("attention.sliding_window")
            ),
        )
    })?);
    let n = c.n_layers;
    match family {
        Family::Gemma2 => c.sliding_layers = sliding_pattern(n, |i| i % 2 == 0),
        _ => {
            c.qk_norm = true;
            let pattern = match g.get(&k("attention.sliding_window_pattern")) {
                Some(_) => g.get_usize(&k("attention.sliding_window_pattern"))?.max(1),
                None => 6,
            };
            c.sliding_layers = sliding_pattern(n, |i| (i + 1) % pattern != 0);
            let local = super::gguf_f64_or(g, &k("rope.freq_base_swa"), 10_000.0)?;
            c.sliding_rope = Some(Rope::plain(local));
        }
    }
    Ok(c)
}
