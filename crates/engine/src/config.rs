//! The architecture of a llama-family base, as read from a GGUF header or a Hugging Face
//! `config.json`. Everything the forward pass needs to know about shapes lives here.

use serde::Serialize;

/// How rotary embeddings pair up the dimensions of a head.
///
/// GGUF files converted by llama.cpp store Q and K permuted so that adjacent dimensions form
/// a pair (`Interleaved`); Hugging Face checkpoints rotate the first half against the second
/// (`Halves`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RopeStyle {
    Interleaved,
    Halves,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelConfig {
    pub architecture: String,
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub d_ff: usize,
    pub vocab_size: usize,
    pub rms_eps: f64,
    pub rope_theta: f64,
    pub rope_style: RopeStyle,
    pub max_positions: usize,
    pub tied_embeddings: bool,
}

impl ModelConfig {
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
        if !(self.rms_eps > 0.0 && self.rope_theta > 0.0) {
            return Err(format!(
                "rms epsilon ({}) and rope base ({}) must be positive",
                self.rms_eps, self.rope_theta
            ));
        }
        Ok(())
    }

    pub fn q_width(&self) -> usize {
        self.n_heads * self.head_dim
    }

    pub fn kv_width(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}
