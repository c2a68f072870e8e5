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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Analysis {
    /// `logit`, or the name of a tuned lens.
    pub lens: String,
    pub tokens: Vec<TokenInfo>,
    pub layers: Vec<LayerRow>,
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
