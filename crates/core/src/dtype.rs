//! How a base's matrices compute, chosen per base in configuration or per command.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ComputeDtype {
    /// Keep what the file stores: quantized GGUF blocks stay quantized (and memory-mapped),
    /// f16/bf16 safetensors stay in half precision. Smallest; best for decoding.
    #[default]
    Stored,
    /// Dequantize / upcast every matrix to f32 at load. About 4-6x the memory of a 4-bit file,
    /// but the fastest prefill on CPU, which is what lens analysis spends its time on.
    F32,
    /// Every matrix in bf16 (dequantized or converted at load), norms and biases in f32, the
    /// residual stream and every lens statistic in f32: half the memory of `f32`, and what
    /// GPUs compute fastest (the original site's `use_bf16`).
    Bf16,
}

impl ComputeDtype {
    pub fn as_str(&self) -> &'static str {
        match self {
            ComputeDtype::Stored => "stored",
            ComputeDtype::F32 => "f32",
            ComputeDtype::Bf16 => "bf16",
        }
    }
}

impl std::str::FromStr for ComputeDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stored" => Ok(ComputeDtype::Stored),
            "f32" => Ok(ComputeDtype::F32),
            "bf16" => Ok(ComputeDtype::Bf16),
            other => Err(format!(
                "unknown compute dtype `{other}`: expected `stored`, `f32` or `bf16`"
            )),
        }
    }
}

/// The kinds of lens a model entry can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LensKind {
    /// The base's own final norm and unembedding; no files.
    Logit,
    /// One affine translator per layer (tuned-lens package format).
    Tuned,
    /// Decoder and encoder projections with soft prompts (the original site's lenses).
    Talkative,
}

impl LensKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            LensKind::Logit => "logit",
            LensKind::Tuned => "tuned",
            LensKind::Talkative => "talkative",
        }
    }
}
