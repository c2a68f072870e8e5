//! Lens analysis of one text: one forward pass, then every requested lens applied to the same
//! hidden states. The unembedding of all (layer, position) rows runs as a few large matrix
//! products over position chunks, and only the top-k and statistics of each row are kept, so
//! memory stays bounded by one chunk of logits whatever the text's length.

use std::ops::ControlFlow;

use candle_core::Tensor;
use lensd_core::{Analysis, Cell, LayerRow, TokenInfo, TopToken};
use rayon::prelude::*;

use super::stats::{row_stats, FinalDist, RowStats};
use super::Lens;
use crate::base::Base;
use crate::error::{EngineError, Result};
use crate::model::Logits;

/// About this many logit rows are unembedded at once (each row is `vocab` floats).
const ROWS_PER_CHUNK: usize = 512;

#[derive(Debug, Clone)]
pub struct AnalyzeOptions {
    /// Layers `0..=L` to read; `L` is the model's own output.
    pub layers: Vec<usize>,
    pub top_k: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub rows_done: usize,
    pub rows_total: usize,
}

/// Reads every lens at `opts.layers` over the positions of `ids`. `on_progress` is called after
/// each chunk and may cancel the analysis by returning `Break`.
pub fn analyze(
    base: &Base,
    lenses: &[&Lens],
    ids: &[u32],
    opts: &AnalyzeOptions,
    on_progress: &mut dyn FnMut(Progress) -> ControlFlow<()>,
) -> Result<Vec<Analysis>> {
    let model = &base.model;
    let cfg = &model.cfg;
    let n_layers = cfg.n_layers;
    if ids.is_empty() {
        return Err(EngineError::Input("the text has no tokens".into()));
    }
    if opts.layers.is_empty() {
        return Err(EngineError::Input("no layers selected".into()));
    }
    if opts.top_k == 0 || opts.top_k > cfg.vocab_size {
        return Err(EngineError::Input(format!(
            "top_k must be between 1 and the vocabulary size {}, got {}",
            cfg.vocab_size, opts.top_k
        )));
    }
    let mut taps = opts.layers.clone();
    taps.push(n_layers);
    taps.sort_unstable();
    taps.dedup();
    let out = model.forward(&[ids], None, &taps, Logits::None)?;
    let last = out.tap(n_layers).expect("final layer is always tapped");
    let t = ids.len();
    let nl = opts.layers.len();
    let chunk = (ROWS_PER_CHUNK / nl).clamp(1, t);
    let rows_total = t * nl * lenses.len();
    let mut rows_done = 0;
    let mut stats: Vec<Vec<RowStats>> = vec![Vec::with_capacity(t * nl); lenses.len()];
    let mut order: Vec<Vec<(usize, usize)>> = vec![Vec::with_capacity(t * nl); lenses.len()];
    for p0 in (0..t).step_by(chunk) {
        let p = chunk.min(t - p0);
        let fin_logits = model.unembed(&model.final_norm(&last.narrow(0, p0, p)?)?)?;
        let fin_rows = rows_of(&fin_logits)?;
        let v = cfg.vocab_size;
        let finals: Vec<FinalDist> = fin_rows.par_chunks(v).map(FinalDist::from_logits).collect();
        for (li, lens) in lenses.iter().enumerate() {
            let mut parts = Vec::with_capacity(nl);
            for &layer in &opts.layers {
                let h = out.tap(layer).expect("tapped").narrow(0, p0, p)?;
                parts.push(lens.transform(layer, &h)?);
            }
            let rows = Tensor::cat(&parts, 0)?;
            let logits = model.unembed(&model.final_norm(&rows)?)?;
            let flat = rows_of(&logits)?;
            let chunk_stats: Vec<RowStats> = flat
                .par_chunks(v)
                .enumerate()
                .map(|(r, z)| {
                    let pos = p0 + r % p;
                    let next = ids.get(pos + 1).copied();
                    row_stats(z, &finals[r % p], next, opts.top_k)
                })
                .collect();
            for (r, s) in chunk_stats.into_iter().enumerate() {
                order[li].push((r / p, p0 + r % p));
                stats[li].push(s);
            }
            rows_done += p * nl;
            if on_progress(Progress {
                rows_done,
                rows_total,
            })
            .is_break()
            {
                return Err(EngineError::Cancelled);
            }
        }
    }
    let tokens: Vec<TokenInfo> = ids
        .iter()
        .map(|&id| TokenInfo {
            id,
            text: base.tokenizer.token_text(id),
        })
        .collect();
    let mut results = Vec::with_capacity(lenses.len());
    for (li, lens) in lenses.iter().enumerate() {
        let mut grid: Vec<Vec<Option<Cell>>> = vec![vec![None; t]; nl];
        for (&(layer_idx, pos), s) in order[li].iter().zip(std::mem::take(&mut stats[li])) {
            grid[layer_idx][pos] = Some(cell(base, s));
        }
        let layers = opts
            .layers
            .iter()
            .zip(grid)
            .map(|(&layer, cells)| LayerRow {
                layer,
                positions: cells
                    .into_iter()
                    .map(|c| c.expect("every cell computed"))
                    .collect(),
            })
            .collect();
        results.push(Analysis {
            lens: lens.name(),
            tokens: tokens.clone(),
            layers,
        });
    }
    Ok(results)
}

fn rows_of(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

fn cell(base: &Base, s: RowStats) -> Cell {
    Cell {
        top: s
            .top
            .into_iter()
            .map(|(id, prob)| TopToken {
                id,
                token: base.tokenizer.token_text(id),
                prob,
            })
            .collect(),
        entropy: s.entropy,
        kl_to_final: s.kl_to_final,
        final_rank: s.final_rank,
        next_token_ce: s.next_token_ce,
    }
}
