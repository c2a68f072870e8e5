//! Lens analysis of one text: one forward pass, then every requested lens applied to the same
//! hidden states. The (layer, position) rows are unembedded over position chunks, and only the
//! top-k and statistics of each row are kept: on the CPU a vocabulary block at a time
//! (`stream.rs`, a block per thread in memory), on a GPU a chunk's logits at once
//! (`device_stats.rs`), so memory is bounded whatever the text's length.

use std::ops::ControlFlow;

use candle_core::Tensor;
use lensd_core::analysis::RowsChunk;
use lensd_core::{Analysis, Cell, LayerRow, TokenInfo, TopToken};
use rayon::prelude::*;

use super::device_stats::{self, DeviceFinal};
use super::stats::{row_stats, FinalDist, RowStats};
use super::stream::{self, RowRef};
use super::Lens;
use crate::base::Base;
use crate::error::{EngineError, Result};
use crate::model::Logits;

/// By default about this many logit rows are unembedded at once (each row is `vocab` floats):
/// large enough for efficient matrix products, small enough that a chunk takes well under a
/// second on a small CPU, which bounds how long a cancellation waits.
pub const ROWS_PER_CHUNK: usize = 512;

/// On the host a chunk also holds about this many multiply-adds of unembedding, where that is
/// more rows than [`ROWS_PER_CHUNK`]: the host path keeps only a vocabulary block per thread
/// (or a tile of rows, in f32), and each chunk reads the whole unembedding once more (widening
/// and rounding it where it is quantized or multiplied in bf16), so a small vocabulary's rows
/// are taken in larger chunks. 2³⁵ is 1,214 of the demo model's rows (about a fifth of a
/// second on 2 cores in bf16), and fewer than 512 of Gemma-3's, which keeps 512. Demo analyses
/// took 0.53 s in chunks of 1,024 rows against 0.57-0.63 s in chunks of 512 (`lensd bench
/// --only analysis --unembed bf16`, alternating runs); 2,048 were no faster than 1,024. In f32,
/// chunks of 2³⁶ were about 2 % faster than 2³⁵ in five alternating runs, but a cancelled
/// analysis waits for its chunk: in `bench/run.sh` cancelling took 714 ms (median) against
/// 444 ms, so the chunk stays 2³⁵.
pub const HOST_CHUNK_MACS: usize = 1 << 35;

#[derive(Debug, Clone)]
pub struct AnalyzeOptions {
    /// Layers `0..=L` to read; `L` is the model's own output.
    pub layers: Vec<usize>,
    pub top_k: usize,
    /// Logit rows per chunk; `None` for [`ROWS_PER_CHUNK`], or more on the host (see
    /// [`HOST_CHUNK_MACS`]).
    pub rows_per_chunk: Option<usize>,
    pub stats: StatsAt,
    pub unembed: Unembed,
}

/// How a CPU analysis multiplies its rows by an f32 unembedding matrix (a base loaded in f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Unembed {
    /// In f32: the statistics of the exact logits, up to f32 rounding.
    #[default]
    F32,
    /// Rows and matrix rounded to bf16, products accumulated in f32 (`lensd_kernels::bf16`):
    /// about twice as fast where the CPU has AVX-512 BF16, and f32 elsewhere (where bf16 would
    /// be slower). Logits move by up to `2⁻⁸ · Σ|xᵢ wᵢ|`; `tests/bf16_unembed.rs` states what
    /// that does to each statistic.
    Bf16,
}

impl Unembed {
    pub fn name(self) -> &'static str {
        match self {
            Unembed::F32 => "f32",
            Unembed::Bf16 => "bf16",
        }
    }

    /// What the products of a CPU analysis run in: bf16 only where asked and fast.
    pub fn effective(self) -> Unembed {
        if self == Unembed::Bf16 && lensd_kernels::bf16::fast() {
            Unembed::Bf16
        } else {
            Unembed::F32
        }
    }
}

impl std::str::FromStr for Unembed {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(Unembed::F32),
            "bf16" => Ok(Unembed::Bf16),
            _ => Err(format!("unembed must be `f32` or `bf16`, got `{s}`")),
        }
    }
}

/// Where each row's statistics are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StatsAt {
    /// On the host for a CPU base (block by block as the logits are computed), on the device
    /// otherwise.
    #[default]
    Auto,
    /// Reduced on the host: block by block for a CPU head the kernels read, else whole logit
    /// rows copied to the host.
    Host,
    /// Reduced where the logits are; only per-row numbers and top-k candidates are copied.
    Device,
}

impl AnalyzeOptions {
    pub fn new(layers: Vec<usize>, top_k: usize) -> Self {
        AnalyzeOptions {
            layers,
            top_k,
            rows_per_chunk: None,
            stats: StatsAt::Auto,
            unembed: Unembed::F32,
        }
    }
}

/// Where an analysis stands after a chunk, with that chunk's cells.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress<'a> {
    pub rows_done: usize,
    pub rows_total: usize,
    pub chunk: &'a RowsChunk,
}

/// Reads every lens at `opts.layers` over the positions of `ids`. `on_progress` receives each
/// chunk of cells as it is finished and may cancel the analysis by returning `Break`.
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
    let rows_total = t * nl * lenses.len();
    let mut rows_done = 0;
    let tokens: Vec<TokenInfo> = ids
        .iter()
        .map(|&id| TokenInfo {
            id,
            text: base.tokenizer.token_text(id),
        })
        .collect();
    let mut results: Vec<Analysis> = lenses
        .iter()
        .map(|lens| Analysis {
            lens: lens.name(),
            tokens: tokens.clone(),
            layers: opts
                .layers
                .iter()
                .map(|&layer| LayerRow {
                    layer,
                    positions: Vec::with_capacity(t),
                })
                .collect(),
            explanations: Vec::new(),
        })
        .collect();
    let on_device = match opts.stats {
        StatsAt::Auto => !model.device().is_cpu(),
        StatsAt::Host => false,
        StatsAt::Device => true,
    };
    let rows_per_chunk = match opts.rows_per_chunk {
        Some(rows) => rows,
        None if on_device => ROWS_PER_CHUNK,
        None => ROWS_PER_CHUNK.max(HOST_CHUNK_MACS / (cfg.vocab_size * cfg.d_model).max(1)),
    };
    let chunk = (rows_per_chunk / nl).clamp(1, t);
    for p0 in (0..t).step_by(chunk) {
        let p = chunk.min(t - p0);
        let fin_normed = model.final_norm(&last.narrow(0, p0, p)?)?;
        let next: Vec<Option<u32>> = (0..p).map(|i| ids.get(p0 + i + 1).copied()).collect();
        // On the host the model's own logits come from the products the lens rows take, and a
        // lens that reads the final layer as the model does takes its row from them.
        let (finals, fin_rows) = if on_device {
            let fin = DeviceFinal::from_logits(&model.unembed(&fin_normed)?)?;
            (Finals::Device(fin), Vec::new())
        } else {
            let fin_rows = match stream::logits(model, &fin_normed)? {
                Some(rows) => rows,
                None => rows_of(&model.unembed(&fin_normed)?)?,
            };
            let fin = fin_rows
                .par_chunks(cfg.vocab_size)
                .map(FinalDist::from_logits)
                .collect();
            (Finals::Host(fin), fin_rows)
        };
        for (li, lens) in lenses.iter().enumerate() {
            let reuse_final = !on_device && lens.reads_as_the_model(n_layers);
            let unembedded: Vec<usize> = opts
                .layers
                .iter()
                .copied()
                .filter(|&layer| !(reuse_final && layer == n_layers))
                .collect();
            // Row r holds layer unembedded[r / p] at position p0 + r % p.
            let stats = match &finals {
                Finals::Device(fin) => {
                    let normed = lens_rows(model, lens, &out, &unembedded, p0, p)?;
                    device_stats::rows_stats(&model.unembed(&normed)?, fin, &next, opts.top_k)?
                }
                Finals::Host(fin) => {
                    let refs = |rows: usize| -> Vec<RowRef> {
                        (0..rows)
                            .map(|r| RowRef {
                                fin: &fin[r % p],
                                next: next[r % p],
                            })
                            .collect()
                    };
                    let mut stats = if unembedded.is_empty() {
                        Vec::new()
                    } else {
                        let normed = lens_rows(model, lens, &out, &unembedded, p0, p)?;
                        let refs = refs(normed.dim(0)?);
                        match stream::rows_stats(model, &normed, &refs, opts.top_k, opts.unembed)? {
                            Some(stats) => stats,
                            None => rows_of(&model.unembed(&normed)?)?
                                .par_chunks(cfg.vocab_size)
                                .zip(&refs)
                                .map(|(z, rf)| row_stats(z, rf.fin, rf.next, opts.top_k))
                                .collect(),
                        }
                    };
                    if reuse_final && unembedded.len() < opts.layers.len() {
                        let fin_stats =
                            stream::logits_stats(&fin_rows, cfg.vocab_size, &refs(p), opts.top_k)?;
                        stats = in_layer_order(&opts.layers, n_layers, stats, &fin_stats, p);
                    }
                    stats
                }
            };
            let cells: Vec<Cell> = stats.into_iter().map(|s| cell(base, s)).collect();
            let mut cells = cells.into_iter();
            let layers: Vec<LayerRow> = opts
                .layers
                .iter()
                .map(|&layer| LayerRow {
                    layer,
                    positions: cells.by_ref().take(p).collect(),
                })
                .collect();
            let rows_chunk = RowsChunk {
                lens: li,
                first_position: p0,
                layers,
                explanations: Vec::new(),
            };
            rows_done += p * nl;
            let flow = on_progress(Progress {
                rows_done,
                rows_total,
                chunk: &rows_chunk,
            });
            for (row, part) in results[li].layers.iter_mut().zip(rows_chunk.layers) {
                row.positions.extend(part.positions);
            }
            if flow.is_break() {
                return Err(EngineError::Cancelled);
            }
        }
    }
    Ok(results)
}

/// The final-normed rows `[layers.len() · p, d]` of `lens` at `layers` (layer-major) for the
/// positions `p0..p0 + p`.
fn lens_rows(
    model: &crate::model::Model,
    lens: &Lens,
    out: &crate::model::ForwardOutput,
    layers: &[usize],
    p0: usize,
    p: usize,
) -> candle_core::Result<Tensor> {
    let mut parts = Vec::with_capacity(layers.len());
    for &layer in layers {
        let h = out.tap(layer).expect("tapped").narrow(0, p0, p)?;
        parts.push(lens.transform(layer, &h)?);
    }
    model.final_norm(&Tensor::cat(&parts, 0)?)
}

/// The statistics of `layers` (layer-major, `p` positions each): those of the final layer
/// `n_layers` from `fin`, the others in order from `rest`.
fn in_layer_order(
    layers: &[usize],
    n_layers: usize,
    rest: Vec<RowStats>,
    fin: &[RowStats],
    p: usize,
) -> Vec<RowStats> {
    let mut rest = rest.into_iter();
    let mut all = Vec::with_capacity(layers.len() * p);
    for &layer in layers {
        if layer == n_layers {
            all.extend_from_slice(fin);
        } else {
            all.extend(rest.by_ref().take(p));
        }
    }
    all
}

/// The model's own distribution at a chunk's positions, where the statistics are computed.
enum Finals {
    Host(Vec<FinalDist>),
    Device(DeviceFinal),
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
