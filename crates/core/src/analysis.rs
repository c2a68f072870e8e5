//! The result of applying one lens to one text: a grid of layers × positions, each cell the
//! lens's distribution summarised as top-k tokens and a few statistics.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: u32,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopToken {
    pub id: u32,
    pub token: String,
    pub prob: f32,
}

/// One (layer, position) cell. All quantities are in nats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    pub top: Vec<TopToken>,
    /// Entropy of the lens's distribution.
    pub entropy: f32,
    /// KL(final ‖ lens): how far the lens is from the model's own output at this position.
    pub kl_to_final: f32,
    /// Rank (1 = most likely) under the lens of the model's final top-1 token.
    pub final_rank: u32,
    /// Cross-entropy of the lens against the actual next token; absent at the last position.
    pub next_token_ce: Option<f32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerRow {
    /// Residual stream entering block `layer`; the last layer is the final block's output.
    pub layer: usize,
    pub positions: Vec<Cell>,
}

/// What a talkative lens says about one position (docs/talkative.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    pub position: usize,
    /// The analysed token's text.
    pub token: String,
    /// `explanation_structured` joined by spaces.
    pub explanation: String,
    /// Each explanation token on its own, then `[token]` when the lens adds the current token.
    pub explanation_structured: Vec<String>,
    pub explanation_ids: Vec<u32>,
    /// Mean squared error of the reconstruction.
    pub mse: f32,
    /// RMSE over the activation's RMS.
    pub relative_rmse: f32,
    /// Per explanation token, the fractional increase in MSE when it is replaced by a space;
    /// empty when not asked for.
    #[serde(default)]
    pub token_salience: Vec<f32>,
    /// KL (nats) of the next-token distribution with the reconstruction patched in; absent
    /// when not asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kl_divergence: Option<f32>,
    /// The logit lens's most likely tokens at the lens's layer (as many as the explanation has,
    /// at most ten), space-separated; when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logit_lens_top: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Analysis {
    /// The model that names the lens.
    pub lens: String,
    pub tokens: Vec<TokenInfo>,
    /// Logit and tuned lenses: layers × positions.
    pub layers: Vec<LayerRow>,
    /// Talkative lenses: one explanation per position.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub explanations: Vec<Explanation>,
}

/// The cells of one lens over a run of positions, at every requested layer: what an analysis
/// streams as each chunk finishes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowsChunk {
    /// Index of the lens among those the request named.
    pub lens: usize,
    pub first_position: usize,
    /// One row per requested layer, each with the chunk's positions.
    pub layers: Vec<LayerRow>,
    /// A talkative lens's explanations of the chunk's positions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub explanations: Vec<Explanation>,
}

impl Analysis {
    /// Mean KL(final ‖ lens) of each layer over positions.
    pub fn mean_kl_per_layer(&self) -> Vec<(usize, f64)> {
        self.layers
            .iter()
            .map(|row| {
                let n = row.positions.len().max(1) as f64;
                let sum: f64 = row.positions.iter().map(|c| c.kl_to_final as f64).sum();
                (row.layer, sum / n)
            })
            .collect()
    }
}
