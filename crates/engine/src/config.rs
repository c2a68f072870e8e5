//! The architecture of a base, as read from a GGUF header or a Hugging Face `config.json` by
//! its family's description (`family/`). Everything the forward pass needs to know about
//! shapes and options lives here; the forward itself has no per-family code paths, only the
//! options below.

use serde::Serialize;

/// The model families lensd runs. Each has a description in `family/` that reads its
/// configuration and names its tensors; the forward pass is shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// Llama 1–3 and models built like them (SmolLM, Mistral without sliding windows).
    Llama,
    Qwen2,
    Qwen3,
    Gemma2,
    Gemma3,
    /// OpenAI's gpt-oss: a mixture of experts, attention sinks, YaRN.
    GptOss,
}

impl Family {
    pub fn name(&self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
            Family::Gemma2 => "gemma2",
            Family::Gemma3 => "gemma3",
            Family::GptOss => "gpt-oss",
        }
    }

    pub const ALL: [Family; 6] = [
        Family::Llama,
        Family::Qwen2,
        Family::Qwen3,
        Family::Gemma2,
        Family::Gemma3,
        Family::GptOss,
    ];
}

/// How rotary embeddings pair up the dimensions of a head.
///
/// GGUF files of llama models converted by llama.cpp store Q and K permuted so that adjacent
/// dimensions form a pair (`Interleaved`); Hugging Face checkpoints, and GGUF files of the other
/// families, rotate the first half against the second (`Halves`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RopeStyle {
    Interleaved,
    Halves,
}

/// How a rotary embedding stretches its frequencies for contexts longer than training's.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RopeScaling {
    None,
    /// Every frequency divided by `factor` (positions interpolated).
    Linear {
        factor: f64,
    },
    /// Llama 3.1's rule: long wavelengths divided by `factor`, short ones kept, the band
    /// between blended smoothly.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_positions: usize,
    },
    /// YaRN (gpt-oss): frequencies whose wavelength fits `original_max_positions` fewer than
    /// `beta_slow` times are divided by `factor`, those fitting more than `beta_fast` times
    /// are kept, with a linear ramp between; cosines and sines are multiplied by
    /// `attention_factor`.
    Yarn {
        factor: f64,
        beta_fast: f64,
        beta_slow: f64,
        original_max_positions: usize,
        /// Whether the ramp's ends are rounded to whole dimensions.
        truncate: bool,
        attention_factor: f64,
    },
}

impl RopeScaling {
    /// YaRN's attention factor when none is given: `0.1 · mscale · ln(factor) + 1` (1 for
    /// factors up to 1), or the ratio of two such terms when `mscale` and `mscale_all_dim`
    /// are both given.
    pub fn yarn_attention_factor(factor: f64, mscale: Option<f64>, all_dim: Option<f64>) -> f64 {
        let m = |scale: f64, m: f64| {
            if scale <= 1.0 {
                1.0
            } else {
                0.1 * m * scale.ln() + 1.0
            }
        };
        match (mscale, all_dim) {
            (Some(a), Some(b)) if a != 0.0 && b != 0.0 => m(factor, a) / m(factor, b),
            _ => m(factor, 1.0),
        }
    }
}

/// One rotary embedding: its base and its scaling.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rope {
    pub theta: f64,
    pub scaling: RopeScaling,
}

impl Rope {
    pub fn plain(theta: f64) -> Self {
        Rope {
            theta,
            scaling: RopeScaling::None,
        }
    }

    /// The `hd / 2` angular frequencies of a head of `hd` dimensions, computed in f32 as the
    /// reference implementations do.
    pub fn inv_freq(&self, hd: usize) -> Vec<f32> {
        if let RopeScaling::Yarn { .. } = self.scaling {
            return self.yarn_inv_freq(hd);
        }
        (0..hd / 2)
            .map(|i| {
                let exponent = (2 * i) as f32 / hd as f32;
                let f = 1.0 / (self.theta as f32).powf(exponent);
                self.scale(f)
            })
            .collect()
    }

    /// What cosines and sines are multiplied by (YaRN's attention factor; 1 otherwise).
    pub fn attention_factor(&self) -> f32 {
        match self.scaling {
            RopeScaling::Yarn {
                attention_factor, ..
            } => attention_factor as f32,
            _ => 1.0,
        }
    }

    /// YaRN's frequencies, in the order of operations (and the f32/f64 split) of
    /// transformers' `_compute_yarn_parameters`.
    fn yarn_inv_freq(&self, hd: usize) -> Vec<f32> {
        let RopeScaling::Yarn {
            factor,
            beta_fast,
            beta_slow,
            original_max_positions,
            truncate,
            ..
        } = self.scaling
        else {
            unreachable!("called for YaRN only")
        };
        let dim = hd as f64;
        let base = self.theta;
        // The dimension at which a frequency completes `rotations` turns over the original
        // context.
        let correction = |rotations: f64| {
            dim * (original_max_positions as f64 / (rotations * 2.0 * std::f64::consts::PI)).ln()
                / (2.0 * base.ln())
        };
        let (mut low, mut high) = (correction(beta_fast), correction(beta_slow));
        if truncate {
            low = low.floor();
            high = high.ceil();
        }
        let low = low.max(0.0);
        let mut high = high.min(dim - 1.0);
        if low == high {
            high += 0.001;
        }
        (0..hd / 2)
            .map(|i| {
                let pos = (base as f32).powf((2 * i) as f32 / hd as f32);
                let extrapolation = 1.0 / pos;
                let interpolation = 1.0 / (factor as f32 * pos);
                let ramp = ((i as f32 - low as f32) / (high - low) as f32).clamp(0.0, 1.0);
                let keep = 1.0 - ramp;
                interpolation * (1.0 - keep) + extrapolation * keep
            })
            .collect()
    }

    fn scale(&self, f: f32) -> f32 {
        match self.scaling {
            RopeScaling::None | RopeScaling::Yarn { .. } => f,
            RopeScaling::Linear { factor } => f / factor as f32,
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_positions,
            } => {
                let (factor, low, high) = (
                    factor as f32,
                    low_freq_factor as f32,
                    high_freq_factor as f32,
                );
                let old = original_max_positions as f32;
                let wavelen = 2.0 * std::f32::consts::PI / f;
                if wavelen < old / high {
                    f
                } else if wavelen > old / low {
                    f / factor
                } else {
                    let smooth = (old / wavelen - low) / (high - low);
                    (1.0 - smooth) * f / factor + smooth * f
                }
            }
        }
    }
}

/// A mixture of experts in place of the MLP (gpt-oss): a linear router with a bias picks the
/// `top_k` highest of `n_experts` logits per token and weighs the chosen experts by the
/// softmax over their logits. Each expert is `down((up + 1) · g · σ(alpha · g))` with
/// `g = min(gate, limit)` and `up` clamped to ±limit, gate and up interleaved in one matrix,
/// with biases; [`ModelConfig::d_ff`] is an expert's width.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Moe {
    pub n_experts: usize,
    pub top_k: usize,
    pub limit: f64,
    pub alpha: f64,
}

/// The activation of the gated MLP: `down(act(gate(x)) * up(x))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Silu,
    /// GELU with the tanh approximation (Gemma's `gelu_pytorch_tanh`, GeGLU).
    GeluTanh,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelConfig {
    /// The family's name (`llama`, `qwen2`, ...), as `lensd inspect` prints it.
    pub architecture: String,
    pub family: Family,
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub d_ff: usize,
    pub vocab_size: usize,
    pub rms_eps: f64,
    /// The rotary embedding of full-attention layers.
    pub rope: Rope,
    /// The rotary embedding of sliding-window layers when it differs (Gemma-3's local base).
    pub sliding_rope: Option<Rope>,
    pub rope_style: RopeStyle,
    pub max_positions: usize,
    pub tied_embeddings: bool,
    pub activation: Activation,
    /// Token embeddings are multiplied by this before the first block (Gemma: √d).
    pub embed_scale: f32,
    /// Biases on the query, key and value maps (Qwen2), and on the output map.
    pub qkv_bias: bool,
    pub o_bias: bool,
    /// An RMSNorm over each head of the queries and keys, before rotation (Qwen3, Gemma-3).
    pub qk_norm: bool,
    /// A norm after attention and after the MLP as well as before each (Gemma).
    pub sandwich_norms: bool,
    /// Attention scores are multiplied by this (1/√head_dim unless the family says otherwise).
    pub query_scale: f64,
    /// Attention scores are soft-capped at this: `cap · tanh(s / cap)` (Gemma-2).
    pub attn_softcap: Option<f64>,
    /// The output logits are soft-capped at this (Gemma-2); every lens applies it too.
    pub final_softcap: Option<f64>,
    /// Keys farther back than this many positions are not attended to, on the layers marked
    /// in `sliding_layers`.
    pub sliding_window: Option<usize>,
    /// Per block: whether it attends within the sliding window only.
    pub sliding_layers: Vec<bool>,
    /// A learned logit per query head joins each softmax over keys and takes its share of
    /// the probability without contributing a value (gpt-oss's attention sinks).
    pub attn_sinks: bool,
    /// Experts in place of the MLP (gpt-oss).
    pub moe: Option<Moe>,
}

impl ModelConfig {
    /// A llama-family configuration with every option at its plain value; family readers
    /// start from it and set what differs.
    #[allow(clippy::too_many_arguments)]
    pub fn plain(
        family: Family,
        n_layers: usize,
        d_model: usize,
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        d_ff: usize,
        vocab_size: usize,
    ) -> Self {
        ModelConfig {
            architecture: family.name().into(),
            family,
            n_layers,
            d_model,
            n_heads,
            n_kv_heads,
            head_dim,
            d_ff,
            vocab_size,
            rms_eps: 1e-6,
            rope: Rope::plain(10_000.0),
            sliding_rope: None,
            rope_style: RopeStyle::Halves,
            max_positions: 2048,
            tied_embeddings: false,
            activation: Activation::Silu,
            embed_scale: 1.0,
            qkv_bias: false,
            o_bias: false,
            qk_norm: false,
            sandwich_norms: false,
            query_scale: if head_dim > 0 {
                1.0 / (head_dim as f64).sqrt()
            } else {
                0.0
            },
            attn_softcap: None,
            final_softcap: None,
            sliding_window: None,
            sliding_layers: vec![false; n_layers],
            attn_sinks: false,
            moe: None,
        }
    }

    /// Checks the relations between sizes that the forward pass relies on. Returns the first
    /// violated relation as a sentence.
    pub fn check(&self) -> std::result::Result<(), String> {
        let positive = [
            ("layer count", self.n_layers),
            ("model width", self.d_model),
            ("head count", self.n_heads),
            ("key/value head count", self.n_kv_heads),
            ("feed-forward width", self.d_ff),
            ("vocabulary size", self.vocab_size),
            ("context length", self.max_positions),
        ];
        for (what, v) in positive {
            if v == 0 {
                return Err(format!("{what} is 0"));
            }
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(format!(
                "head count {} is not a multiple of the key/value head count {}",
                self.n_heads, self.n_kv_heads
            ));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return Err(format!(
                "head dimension {} must be even and non-zero",
                self.head_dim
            ));
        }
        let thetas = std::iter::once(&self.rope).chain(&self.sliding_rope);
        if !(self.rms_eps > 0.0 && thetas.clone().all(|r| r.theta > 0.0)) {
            return Err(format!(
                "rms epsilon ({}) and rope base ({}) must be positive",
                self.rms_eps, self.rope.theta
            ));
        }
        for r in thetas {
            let factor = match r.scaling {
                RopeScaling::None => 1.0,
                RopeScaling::Linear { factor } => factor,
                RopeScaling::Llama3 {
                    factor,
                    low_freq_factor,
                    high_freq_factor,
                    original_max_positions,
                } => {
                    if !(high_freq_factor > low_freq_factor && low_freq_factor > 0.0)
                        || original_max_positions == 0
                    {
                        return Err(format!(
                            "llama3 rope scaling needs 0 < low_freq_factor ({low_freq_factor}) < \
                             high_freq_factor ({high_freq_factor}) and a positive \
                             original_max_position_embeddings ({original_max_positions})"
                        ));
                    }
                    factor
                }
                RopeScaling::Yarn {
                    factor,
                    beta_fast,
                    beta_slow,
                    original_max_positions,
                    attention_factor,
                    ..
                } => {
                    if !(beta_fast > 0.0 && beta_slow > 0.0)
                        || original_max_positions == 0
                        || !(attention_factor.is_finite() && attention_factor > 0.0)
                    {
                        return Err(format!(
                            "yarn rope scaling needs positive beta_fast ({beta_fast}), beta_slow \
                             ({beta_slow}), original_max_position_embeddings \
                             ({original_max_positions}) and attention factor ({attention_factor})"
                        ));
                    }
                    factor
                }
            };
            if !(factor.is_finite() && factor > 0.0) {
                return Err(format!("rope scaling factor {factor} must be positive"));
            }
        }
        for (what, cap) in [
            ("attention soft-cap", self.attn_softcap),
            ("final soft-cap", self.final_softcap),
        ] {
            if let Some(c) = cap.filter(|c| !(c.is_finite() && *c > 0.0)) {
                return Err(format!("{what} {c} must be positive"));
            }
        }
        if !(self.query_scale.is_finite() && self.query_scale > 0.0) {
            return Err(format!("query scale {} must be positive", self.query_scale));
        }
        if self.sliding_layers.len() != self.n_layers {
            return Err(format!(
                "{} layers are marked sliding or not, but the model has {}",
                self.sliding_layers.len(),
                self.n_layers
            ));
        }
        if self.sliding_window == Some(0) {
            return Err("sliding window is 0".into());
        }
        if self.sliding_layers.iter().any(|&s| s) && self.sliding_window.is_none() {
            return Err("layers are marked sliding but no sliding window is given".into());
        }
        if let Some(m) = &self.moe {
            if m.n_experts == 0 || m.top_k == 0 || m.top_k > m.n_experts {
                return Err(format!(
                    "{} experts per token of {} experts (needs 1 ..= the expert count)",
                    m.top_k, m.n_experts
                ));
            }
            if !(m.limit.is_finite() && m.limit > 0.0 && m.alpha.is_finite()) {
                return Err(format!(
                    "expert activation limit {} must be positive and alpha {} finite",
                    m.limit, m.alpha
                ));
            }
        }
        Ok(())
    }

    /// Experts per block (0 without a mixture of experts).
    pub fn n_experts(&self) -> usize {
        self.moe.as_ref().map_or(0, |m| m.n_experts)
    }

    pub fn q_width(&self) -> usize {
        self.n_heads * self.head_dim
    }

    pub fn kv_width(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// The attention window of block `layer`: `None` for full causal attention.
    pub fn window(&self, layer: usize) -> Option<usize> {
        self.sliding_layers
            .get(layer)
            .copied()
            .unwrap_or(false)
            .then_some(self.sliding_window)
            .flatten()
    }

    /// The rotary embedding block `layer` uses.
    pub fn rope_of(&self, layer: usize) -> &Rope {
        match (&self.sliding_rope, self.window(layer)) {
            (Some(r), Some(_)) => r,
            _ => &self.rope,
        }
    }
}
