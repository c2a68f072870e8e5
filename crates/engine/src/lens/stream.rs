//! The CPU path of a lens analysis's statistics: logit rows are unembedded one vocabulary block
//! at a time, and each block is reduced into its rows' statistics while it is still in cache
//! ([`lensd_kernels::logit_stats`]). No row of logits is stored whole or read twice, and the
//! memory an analysis needs is a block per thread instead of a chunk of whole rows.
//!
//! The vocabulary is cut into fixed segments that run in parallel and are combined in order,
//! so the numbers do not depend on how many threads ran them or in which order they finished.

use candle_core::{Storage, Tensor};
use lensd_kernels::bf16::{self, Bf16Rows};
use lensd_kernels::logit_stats::{RowAcc, RowQuery};
use lensd_kernels::{panel, BlockType, Serial, Shared};
use rayon::prelude::*;

use super::analyze::Unembed;
use super::stats::{FinalDist, RowStats};
use crate::model::Model;
use crate::weights::quant_product::block_type;
use crate::weights::Linear;

/// Vocabulary ids per block: the block's logits for a chunk's rows are reduced while they are
/// still in cache. 512 was the fastest of 128 to 1024 for the demo model's analysis on a
/// 2-core Zen 3 (by 5 % over 256 and 19 % over 1024).
const VOCAB_BLOCK: usize = 512;
/// Blocks per segment, the unit of parallel work.
const SEGMENT_BLOCKS: usize = 16;

/// The unembedding matrix `[vocab, d]` as the kernels read it.
enum Head<'a> {
    F32(&'a [f32]),
    /// An f32 matrix multiplied with the rows in bf16, accumulated in f32 ([`Unembed::Bf16`]).
    Bf16(&'a [f32]),
    Quant {
        ty: BlockType,
        data: &'a [u8],
        row_bytes: usize,
    },
    /// Quantized blocks multiplied in f32 ([`Linear::Wide`]): in panels of widened rows
    /// ([`lensd_kernels::panel`], whose sums run in order of `k`, where the forward pass's
    /// `wide` products fold 16 lanes; the rank's band covers either order). With `bf16`, a
    /// block's rows are widened to f32 and multiplied in bf16 as an f32 head's are.
    Wide {
        ty: BlockType,
        data: &'a [u8],
        row_bytes: usize,
        bf16: bool,
    },
}

/// One row's reference: the model's own distribution at its position, and the next token.
pub(super) struct RowRef<'a> {
    pub fin: &'a FinalDist,
    pub next: Option<u32>,
}

/// Statistics of the rows `normed` (`[R, d]`, final-normed) unembedded by the model's head, or
/// `None` when the head is not one this path reads (not on the CPU, or a dtype it lacks); the
/// caller then unembeds whole rows. An f32 head is multiplied in bf16 where `unembed` asks for
/// it and the CPU does so in hardware.
pub(super) fn rows_stats(
    model: &Model,
    normed: &Tensor,
    refs: &[RowRef],
    k: usize,
    unembed: Unembed,
) -> candle_core::Result<Option<Vec<RowStats>>> {
    let softcap = model.cfg.final_softcap;
    with_head(model, normed, unembed, |head, shape, x| {
        run(head, shape, x, refs, k, softcap)
    })
}

/// The logits `[R, vocab]` of the rows `normed` (final-normed, soft-capped as the model's output
/// is) from the products [`rows_stats`] takes in f32, so that a lens that reads a row as the
/// model does gets these values from either; `None` where [`rows_stats`] would be.
pub(super) fn logits(model: &Model, normed: &Tensor) -> candle_core::Result<Option<Vec<f32>>> {
    let softcap = model.cfg.final_softcap;
    with_head(model, normed, Unembed::F32, |head, shape, x| {
        whole_rows(head, shape, x, softcap)
    })
}

/// The logits `[R, vocab]` of the rows `x` by `head`, block by block as [`run`] takes them.
fn whole_rows(
    head: &Head,
    (vocab, d): (usize, usize),
    x: &[f32],
    softcap: Option<f64>,
) -> candle_core::Result<Vec<f32>> {
    let r = x.len() / d;
    let ctx = Product {
        head,
        rows16: None,
        d,
        softcap,
    };
    let mut out = vec![0f32; r * vocab];
    let shared = Shared::new(&mut out);
    let segment = VOCAB_BLOCK * SEGMENT_BLOCKS;
    (0..vocab.div_ceil(segment))
        .into_par_iter()
        .try_for_each_init(Scratch::default, |scratch, s| {
            let end = ((s + 1) * segment).min(vocab);
            for v0 in (s * segment..end).step_by(VOCAB_BLOCK) {
                let n = VOCAB_BLOCK.min(end - v0);
                ctx.product_rows(v0, n, x, r, scratch, &mut |i0, rows| {
                    for (j, row) in rows.chunks_exact(n).enumerate() {
                        // SAFETY: this block alone writes ids `v0..v0 + n` of row `i0 + j`,
                        // inside `out` (`r` rows of `vocab`), which is read after every
                        // segment has returned.
                        unsafe { shared.slice((i0 + j) * vocab + v0, n) }.copy_from_slice(row);
                    }
                })?;
            }
            Ok::<_, candle_core::Error>(())
        })?;
    Ok(out)
}

/// Statistics of whole rows of logits (`[R, vocab]`, `logits`), reduced block by block in the
/// order [`rows_stats`] reduces its blocks, so that a row gives the same numbers from either.
pub(super) fn logits_stats(
    logits: &[f32],
    vocab: usize,
    refs: &[RowRef],
    k: usize,
) -> candle_core::Result<Vec<RowStats>> {
    let r = refs.len();
    if logits.len() != r * vocab {
        candle_core::bail!("{} logits for {r} rows of {vocab}", logits.len());
    }
    // The target's value is known: its band is the value itself.
    let queries: Vec<RowQuery> = refs
        .iter()
        .enumerate()
        .map(|(i, rf)| {
            let v = logits[i * vocab + rf.fin.top1 as usize];
            query(rf, (v, v), k)
        })
        .collect();
    reduce(vocab, refs, &queries, k, |v0, n, scratch, emit| {
        let buf = &mut scratch.block;
        buf.resize(r * n, 0.0);
        for (i, row) in buf.chunks_exact_mut(n).enumerate() {
            row.copy_from_slice(&logits[i * vocab + v0..i * vocab + v0 + n]);
        }
        emit(0, buf);
        Ok(())
    })
}

/// `f(head, (vocab, d), x)` with the model's head as the kernels read it and the rows `normed`
/// as f32 values, or `None` when the head is not one they read.
fn with_head<T>(
    model: &Model,
    normed: &Tensor,
    unembed: Unembed,
    f: impl FnOnce(&Head, (usize, usize), &[f32]) -> candle_core::Result<T>,
) -> candle_core::Result<Option<T>> {
    if !normed.device().is_cpu() {
        return Ok(None);
    }
    let x: Vec<f32> = normed
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    match &model.w.head {
        Linear::Dense(w) if w.dtype() == candle_core::DType::F32 && w.device().is_cpu() => {
            let w = w.contiguous()?;
            let (storage, layout) = w.storage_and_layout();
            let Storage::Cpu(cpu) = &*storage else {
                return Ok(None);
            };
            let Some((start, end)) = layout.contiguous_offsets() else {
                return Ok(None);
            };
            let data = &cpu.as_slice::<f32>()?[start..end];
            if data.len() != model.cfg.vocab_size * model.cfg.d_model {
                return Ok(None);
            }
            let head = if unembed.effective() == Unembed::Bf16 {
                Head::Bf16(data)
            } else {
                Head::F32(data)
            };
            Ok(Some(f(&head, shape(model), &x)?))
        }
        Linear::Quant(q) | Linear::Wide(q) if q.device().is_cpu() => {
            let d = model.cfg.d_model;
            let Some((ty, row_bytes)) =
                block_type(q.dtype()).and_then(|ty| ty.bytes_for(1, d).map(|b| (ty, b)))
            else {
                return Ok(None);
            };
            let data = q.data()?;
            if data.len() != row_bytes * model.cfg.vocab_size {
                return Ok(None);
            }
            let data = &data;
            let head = match &model.w.head {
                Linear::Quant(_) => Head::Quant {
                    ty,
                    data,
                    row_bytes,
                },
                _ => Head::Wide {
                    ty,
                    data,
                    row_bytes,
                    bf16: unembed.effective() == Unembed::Bf16,
                },
            };
            Ok(Some(f(&head, shape(model), &x)?))
        }
        _ => Ok(None),
    }
}

/// `(vocab, d)` of the head.
fn shape(model: &Model) -> (usize, usize) {
    (model.cfg.vocab_size, model.cfg.d_model)
}

fn run(
    head: &Head,
    (vocab, d): (usize, usize),
    x: &[f32],
    refs: &[RowRef],
    k: usize,
    softcap: Option<f64>,
) -> candle_core::Result<Vec<RowStats>> {
    let r = refs.len();
    if x.len() != r * d {
        candle_core::bail!("{} values for {r} rows of {d}", x.len());
    }
    let capped = |v: f32| softcap.map_or(v, |c| cap(c, v));
    let rows16 = match head {
        Head::Bf16(_) | Head::Wide { bf16: true, .. } => {
            Some(Bf16Rows::new(x, r, d).map_err(kernel_error)?)
        }
        _ => None,
    };
    let ctx = Product {
        head,
        rows16: rows16.as_ref(),
        d,
        softcap,
    };
    // Each row's value at the final top-1 is only computed in its own block; a band around
    // an estimate lets every block count the values above it (see `logit_stats`).
    let queries: Vec<RowQuery> = refs
        .iter()
        .enumerate()
        .map(|(i, rf)| {
            let row = &x[i * d..(i + 1) * d];
            let (est, tol) = target_band(&ctx, rf.fin.top1 as usize, i, row)?;
            let band = (capped((est - tol) as f32), capped((est + tol) as f32));
            Ok(query(rf, band, k))
        })
        .collect::<candle_core::Result<_>>()?;
    reduce(vocab, refs, &queries, k, |v0, n, scratch, emit| {
        ctx.product_rows(v0, n, x, r, scratch, emit)
    })
}

/// A soft cap's value of `v`.
fn cap(c: f64, v: f32) -> f32 {
    (c * (v as f64 / c).tanh()) as f32
}

/// What a row is measured against, with the band `(near, above)` its target's value lies in.
fn query<'a>(rf: &RowRef<'a>, (near, above): (f32, f32), k: usize) -> RowQuery<'a> {
    RowQuery {
        p: &rf.fin.probs,
        target_id: rf.fin.top1,
        near,
        above,
        pick: rf.next,
        k,
    }
}

/// Statistics of the rows whose logits `block(v0, n, scratch, emit)` computes for the `n` ids
/// from `v0`, passing them to `emit(i0, rows)` (rows `i0..`, `n` values each) as they are
/// computed: the vocabulary's segments reduced in parallel and combined in order.
fn reduce<F>(
    vocab: usize,
    refs: &[RowRef],
    queries: &[RowQuery],
    k: usize,
    block: F,
) -> candle_core::Result<Vec<RowStats>>
where
    F: Fn(usize, usize, &mut Scratch, &mut dyn FnMut(usize, &mut [f32])) -> candle_core::Result<()>
        + Sync,
{
    let r = refs.len();
    let segment = VOCAB_BLOCK * SEGMENT_BLOCKS;
    let segments: Vec<Vec<RowAcc>> = (0..vocab.div_ceil(segment))
        .into_par_iter()
        .map_init(Scratch::default, |scratch, s| {
            let mut accs = vec![RowAcc::default(); r];
            let end = ((s + 1) * segment).min(vocab);
            for v0 in (s * segment..end).step_by(VOCAB_BLOCK) {
                let n = VOCAB_BLOCK.min(end - v0);
                block(v0, n, scratch, &mut |i0, rows| {
                    for (j, row) in rows.chunks_exact(n).enumerate() {
                        accs[i0 + j].add_block(row, v0, &queries[i0 + j]);
                    }
                })?;
            }
            Ok(accs)
        })
        .collect::<candle_core::Result<_>>()?;
    let mut segments = segments.into_iter();
    let mut accs = segments
        .next()
        .unwrap_or_else(|| vec![RowAcc::default(); r]);
    for seg in segments {
        for (a, b) in accs.iter_mut().zip(seg) {
            a.merge(b, k);
        }
    }
    Ok(accs
        .into_iter()
        .zip(refs)
        .map(|(acc, rf)| finish(acc, rf))
        .collect())
}

fn finish(acc: RowAcc, rf: &RowRef) -> RowStats {
    let lse = acc.log_sum_exp();
    // KL(f ‖ q) = Σ f log f − Σ f log q, and log q = z − lse.
    let kl = rf.fin.neg_entropy - acc.sum_px + lse;
    RowStats {
        top: acc
            .top
            .iter()
            .map(|&(id, z)| (id, ((z as f64 - lse).exp()) as f32))
            .collect(),
        entropy: acc.entropy() as f32,
        kl_to_final: kl.max(0.0) as f32,
        final_rank: acc.rank(),
        next_token_ce: rf
            .next
            .map(|_| (lse - acc.picked.unwrap_or(f32::NAN) as f64) as f32),
    }
}

/// A thread's buffers for the products of its blocks (their contents do not matter).
#[derive(Default)]
struct Scratch {
    /// A block's logits for every row.
    block: Vec<f32>,
    /// A bf16 product's buffers.
    bf16: bf16::Scratch,
    /// Quantized rows widened to f32 for an f32 product.
    widened: Vec<f32>,
}

/// What one block's product needs besides the block: the head, the rows rounded to bf16 once
/// for every block when the head is multiplied in bf16, and the model's soft cap.
struct Product<'a> {
    head: &'a Head<'a>,
    rows16: Option<&'a Bf16Rows>,
    d: usize,
    softcap: Option<f64>,
}

fn kernel_error(e: lensd_kernels::KernelError) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

/// An estimate of the logit of id `t` for row `i` (`row`) and a bound on how far the blocks'
/// computed value lies from it: twice the worst-case rounding of an f32 sum of `d` products,
/// `d · 2⁻²³ · Σ|xᵢ wᵢ|`. For an f32 head the estimate is the product in f64; for a quantized
/// one it is the same kernel's value (which quantizes the row to 8 bits first, as the blocks
/// do), differing from the blocks' only in the order of its float additions; for a bf16 product
/// it is the kernel's own sequence of additions ([`bf16::dot`]), equal to the blocks' value.
fn target_band(ctx: &Product, t: usize, i: usize, row: &[f32]) -> candle_core::Result<(f64, f64)> {
    let d = ctx.d;
    let magnitude = |w: &[f32]| -> f64 {
        row.iter()
            .zip(w)
            .map(|(&a, &b)| (a as f64 * b as f64).abs())
            .sum()
    };
    let bound = |m: f64| m * d as f64 * 2f64.powi(-22) + f32::MIN_POSITIVE as f64;
    Ok(match ctx.head {
        Head::F32(w) => {
            let wt = &w[t * d..(t + 1) * d];
            let est = row.iter().zip(wt).map(|(&a, &b)| a as f64 * b as f64).sum();
            (est, bound(magnitude(wt)))
        }
        Head::Bf16(w) => {
            let wt = &w[t * d..(t + 1) * d];
            let rows16 = ctx.rows16.expect("rounded with the head");
            let est = bf16::dot(&rows16.row(i), &bf16::row_to_bf16(wt));
            (est as f64, bound(magnitude(wt)))
        }
        Head::Quant {
            ty,
            data,
            row_bytes,
        } => {
            let mut out = [0f32];
            ctx.product(t, 1, row, 1, &mut out, &mut Scratch::default())?;
            let mut wt = vec![0f32; d];
            ty.dequantize(&data[t * row_bytes..(t + 1) * row_bytes], &mut wt);
            (out[0] as f64, bound(magnitude(&wt)))
        }
        Head::Wide {
            ty,
            data,
            row_bytes,
            bf16: widened_in_bf16,
        } => {
            let mut wt = vec![0f32; d];
            ty.dequantize(&data[t * row_bytes..(t + 1) * row_bytes], &mut wt);
            let est = if *widened_in_bf16 {
                let rows16 = ctx.rows16.expect("rounded with the head");
                bf16::dot(&rows16.row(i), &bf16::row_to_bf16(&wt))
            } else {
                lensd_kernels::panel::dot(row, &wt)
            };
            (est as f64, bound(magnitude(&wt)))
        }
    })
}

impl Product<'_> {
    /// The model's soft cap applied to `values`, as its output applies it.
    fn cap_all(&self, values: &mut [f32]) {
        if let Some(c) = self.softcap {
            values.iter_mut().for_each(|v| *v = cap(c, *v));
        }
    }

    /// [`Product::product`]'s values, soft-capped, passed to `emit(i0, rows)` (rows `i0..` of
    /// the block, `n` values each): a tile of rows at a time while they are in cache where the
    /// product runs in tiles, else the whole block at once.
    fn product_rows(
        &self,
        v0: usize,
        n: usize,
        x: &[f32],
        r: usize,
        scratch: &mut Scratch,
        emit: &mut dyn FnMut(usize, &mut [f32]),
    ) -> candle_core::Result<()> {
        if let Head::Wide {
            ty,
            data,
            row_bytes,
            bf16: false,
        } = self.head
        {
            let w = &data[v0 * row_bytes..(v0 + n) * row_bytes];
            let level = lensd_kernels::Level::detect();
            let widened = &mut scratch.widened;
            return panel::matmul_tiles(
                level,
                *ty,
                w,
                n,
                self.d,
                x,
                r,
                widened,
                &mut |i0, rows| {
                    self.cap_all(rows);
                    emit(i0, rows)
                },
            )
            .map_err(kernel_error);
        }
        let mut buf = std::mem::take(&mut scratch.block);
        buf.resize(r * n, 0.0);
        let done = self.product(v0, n, x, r, &mut buf, scratch);
        if done.is_ok() {
            self.cap_all(&mut buf);
            emit(0, &mut buf);
        }
        scratch.block = buf;
        done
    }

    /// `out[i][j] = x[i] · W[v0 + j]` for `i < r`, `j < n`, on the calling thread (a bf16
    /// product takes its rows from `rows16`, `r` of them).
    fn product(
        &self,
        v0: usize,
        n: usize,
        x: &[f32],
        r: usize,
        out: &mut [f32],
        scratch: &mut Scratch,
    ) -> candle_core::Result<()> {
        let d = self.d;
        debug_assert_eq!(out.len(), r * n);
        match self.head {
            Head::F32(w) => {
                let w = &w[v0 * d..(v0 + n) * d];
                // SAFETY: `x` is r×d (row stride d), `w` is n×d and read as its transpose d×n
                // (column stride d), `out` is r×n (row stride n); all three are in bounds, and
                // `out` is not read (`read_dst` is false).
                unsafe {
                    gemm::gemm(
                        r,
                        n,
                        d,
                        out.as_mut_ptr(),
                        1,
                        n as isize,
                        false,
                        x.as_ptr(),
                        1,
                        d as isize,
                        w.as_ptr(),
                        d as isize,
                        1,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    )
                }
            }
            Head::Bf16(w) => {
                let rows16 = self.rows16.expect("rounded with the head");
                bf16::matmul(&w[v0 * d..(v0 + n) * d], n, rows16, out, &mut scratch.bf16)
                    .map_err(kernel_error)?;
            }
            Head::Quant {
                ty,
                data,
                row_bytes,
            } => {
                let w = &data[v0 * row_bytes..(v0 + n) * row_bytes];
                lensd_kernels::matmul(*ty, w, n, d, x, r, out, &Serial).map_err(kernel_error)?;
            }
            Head::Wide {
                ty,
                data,
                row_bytes,
                bf16: false,
            } => {
                let w = &data[v0 * row_bytes..(v0 + n) * row_bytes];
                let level = lensd_kernels::Level::detect();
                let widened = &mut scratch.widened;
                panel::matmul(level, *ty, w, n, d, x, r, out, widened).map_err(kernel_error)?;
            }
            Head::Wide {
                ty,
                data,
                row_bytes,
                bf16: true,
            } => {
                let rows16 = self.rows16.expect("rounded with the head");
                let w = &data[v0 * row_bytes..(v0 + n) * row_bytes];
                bf16::matmul_blocks(*ty, w, n, rows16, out, &mut scratch.bf16)
                    .map_err(kernel_error)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::stats::row_stats;
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::Device;

    /// Random `[n, d]` values from a fixed seed.
    fn randn(n: usize, d: usize, seed: u64) -> Vec<f32> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n * d).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// The statistics of whole logit rows (`row_stats`, the reference) against the blocks'.
    fn check(head: &Head, logits: &[f32], x: &[f32], vocab: usize, d: usize, cap: Option<f64>) {
        let r = x.len() / d;
        let fins: Vec<FinalDist> = randn(3, vocab, 9)
            .chunks(vocab)
            .map(|z| FinalDist::from_logits(&z.iter().map(|v| v * 8.0).collect::<Vec<_>>()))
            .collect();
        let refs: Vec<RowRef> = (0..r)
            .map(|i| RowRef {
                fin: &fins[i % 3],
                next: (i % 4 != 3).then_some((i * 977 % vocab) as u32),
            })
            .collect();
        let k = 7;
        let got = run(head, (vocab, d), x, &refs, k, cap).unwrap();
        for (i, (g, rf)) in got.iter().zip(&refs).enumerate() {
            let z: Vec<f32> = logits[i * vocab..(i + 1) * vocab]
                .iter()
                .map(|&v| cap.map_or(v, |c| (c * (v as f64 / c).tanh()) as f32))
                .collect();
            let want = row_stats(&z, rf.fin, rf.next, k);
            let ids = |s: &RowStats| s.top.iter().map(|t| t.0).collect::<Vec<_>>();
            assert_eq!(ids(g), ids(&want), "row {i}");
            assert_eq!(g.final_rank, want.final_rank, "row {i}");
            for (a, b) in g.top.iter().zip(&want.top) {
                assert!(
                    (a.1 - b.1).abs() <= 1e-5 * b.1.max(1e-3),
                    "row {i}: {a:?} {b:?}"
                );
            }
            assert!((g.entropy - want.entropy).abs() < 1e-4, "row {i}");
            assert!((g.kl_to_final - want.kl_to_final).abs() < 1e-4, "row {i}");
            match (g.next_token_ce, want.next_token_ce) {
                (Some(a), Some(b)) => assert!((a - b).abs() < 1e-4, "row {i}: {a} {b}"),
                (a, b) => assert_eq!(a, b),
            }
        }
    }

    /// The statistics of rows unembedded whole ([`whole_rows`], as the model's own logits are
    /// taken) equal those of the same rows reduced block by block as they are multiplied.
    fn check_whole_rows(head: &Head, x: &[f32], vocab: usize, d: usize, cap: Option<f64>) {
        let r = x.len() / d;
        let fins: Vec<FinalDist> = randn(2, vocab, 11)
            .chunks(vocab)
            .map(|z| FinalDist::from_logits(&z.iter().map(|v| v * 8.0).collect::<Vec<_>>()))
            .collect();
        let refs: Vec<RowRef> = (0..r)
            .map(|i| RowRef {
                fin: &fins[i % 2],
                next: (i % 3 != 2).then_some((i * 613 % vocab) as u32),
            })
            .collect();
        let logits = whole_rows(head, (vocab, d), x, cap).unwrap();
        let whole = logits_stats(&logits, vocab, &refs, 6).unwrap();
        assert_eq!(whole, run(head, (vocab, d), x, &refs, 6, cap).unwrap());
        assert!(logits_stats(&logits[1..], vocab, &refs, 6).is_err());
    }

    #[test]
    fn whole_rows_give_the_statistics_of_their_blocks() {
        let (vocab, d, r) = (2 * VOCAB_BLOCK * SEGMENT_BLOCKS + 300, 48, 5);
        let mut w = randn(vocab, d, 1);
        tied_rows(&mut w, d, vocab);
        let x: Vec<f32> = randn(r, d, 2).iter().map(|v| v * 6.0).collect();
        check_whole_rows(&Head::F32(&w), &x, vocab, d, None);
        check_whole_rows(&Head::F32(&w), &x, vocab, d, Some(3.0));
        let (data, x) = q8_head(VOCAB_BLOCK * SEGMENT_BLOCKS + 77, 64, 13);
        let ty = BlockType::Q8_0;
        let head = Head::Wide {
            ty,
            data: &data,
            row_bytes: ty.bytes_for(1, 64).unwrap(),
            bf16: false,
        };
        check_whole_rows(&head, &x, VOCAB_BLOCK * SEGMENT_BLOCKS + 77, 64, None);
    }

    /// Rows whose final top-1 shares its unembedding row with other ids: their logits tie
    /// exactly, and a rank counts only values strictly above.
    fn tied_rows(w: &mut [f32], d: usize, vocab: usize) {
        let fins: Vec<u32> = randn(3, vocab, 9)
            .chunks(vocab)
            .map(|z| FinalDist::from_logits(z).top1)
            .collect();
        for (n, &t) in fins.iter().enumerate() {
            let row = w[t as usize * d..(t as usize + 1) * d].to_vec();
            for j in [
                (t as usize + 300 * (n + 1)) % vocab,
                (t as usize + 4500) % vocab,
            ] {
                w[j * d..(j + 1) * d].copy_from_slice(&row);
            }
        }
    }

    #[test]
    fn block_statistics_equal_whole_rows_for_an_f32_head() {
        // Several segments and a last block shorter than the others.
        let (vocab, d, r) = (2 * VOCAB_BLOCK * SEGMENT_BLOCKS + 300, 48, 9);
        let mut w = randn(vocab, d, 1);
        tied_rows(&mut w, d, vocab);
        let x: Vec<f32> = randn(r, d, 2).iter().map(|v| v * 6.0).collect();
        let dev = &Device::Cpu;
        let wt = Tensor::from_vec(w.clone(), (vocab, d), dev).unwrap();
        let xt = Tensor::from_vec(x.clone(), (r, d), dev).unwrap();
        let logits: Vec<f32> = xt
            .matmul(&wt.t().unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        check(&Head::F32(&w), &logits, &x, vocab, d, None);
        check(&Head::F32(&w), &logits, &x, vocab, d, Some(3.0));
    }

    #[test]
    fn block_statistics_equal_whole_rows_for_a_head_multiplied_in_bf16() {
        let (vocab, d, r) = (VOCAB_BLOCK * SEGMENT_BLOCKS + 301, 40, 35);
        let mut w = randn(vocab, d, 5);
        tied_rows(&mut w, d, vocab);
        let x: Vec<f32> = randn(r, d, 6).iter().map(|v| v * 6.0).collect();
        // The reference rows come from the same products on the whole matrix at once.
        let rows = Bf16Rows::new(&x, r, d).unwrap();
        let mut logits = vec![0f32; r * vocab];
        bf16::matmul(&w, vocab, &rows, &mut logits, &mut Default::default()).unwrap();
        check(&Head::Bf16(&w), &logits, &x, vocab, d, None);
        check(&Head::Bf16(&w), &logits, &x, vocab, d, Some(3.0));
    }

    /// A `[vocab, d]` head of random rows (some tied) in Q8_0 blocks, and `r` rows of `x`.
    fn q8_head(vocab: usize, d: usize, r: usize) -> (Vec<u8>, Vec<f32>) {
        let mut w = randn(vocab, d, 3);
        tied_rows(&mut w, d, vocab);
        let x: Vec<f32> = randn(r, d, 4).iter().map(|v| v * 6.0).collect();
        let dev = &Device::Cpu;
        let q = QTensor::quantize(
            &Tensor::from_vec(w, (vocab, d), dev).unwrap(),
            GgmlDType::Q8_0,
        )
        .unwrap();
        (q.data().unwrap().into_owned(), x)
    }

    #[test]
    fn block_statistics_equal_whole_rows_for_a_quantized_head() {
        let (vocab, d, r) = (VOCAB_BLOCK * SEGMENT_BLOCKS + 77, 64, 6);
        let (data, x) = q8_head(vocab, d, r);
        // The reference rows come from the same kernels on the whole matrix at once.
        let mut logits = vec![0f32; r * vocab];
        lensd_kernels::matmul(
            BlockType::Q8_0,
            &data,
            vocab,
            d,
            &x,
            r,
            &mut logits,
            &Serial,
        )
        .unwrap();
        let head = Head::Quant {
            ty: BlockType::Q8_0,
            data: &data,
            row_bytes: BlockType::Q8_0.bytes_for(1, d).unwrap(),
        };
        check(&head, &logits, &x, vocab, d, None);
    }

    #[test]
    fn block_statistics_equal_whole_rows_for_a_quantized_head_multiplied_in_f32_or_bf16() {
        let (vocab, d, r) = (VOCAB_BLOCK * SEGMENT_BLOCKS + 77, 64, 14);
        let (data, x) = q8_head(vocab, d, r);
        let ty = BlockType::Q8_0;
        let row_bytes = ty.bytes_for(1, d).unwrap();
        // f32: the reference rows come from the kernel on the whole matrix at once.
        let mut logits = vec![0f32; r * vocab];
        let level = lensd_kernels::Level::detect();
        let mut scratch = Vec::new();
        panel::matmul(level, ty, &data, vocab, d, &x, r, &mut logits, &mut scratch).unwrap();
        let wide_head = |bf16| Head::Wide {
            ty,
            data: &data,
            row_bytes,
            bf16,
        };
        check(&wide_head(false), &logits, &x, vocab, d, None);
        check(&wide_head(false), &logits, &x, vocab, d, Some(3.0));
        // bf16: the widened matrix multiplied as an f32 head is.
        let mut widened = vec![0f32; vocab * d];
        ty.dequantize(&data, &mut widened);
        let rows = Bf16Rows::new(&x, r, d).unwrap();
        bf16::matmul(&widened, vocab, &rows, &mut logits, &mut Default::default()).unwrap();
        check(&wide_head(true), &logits, &x, vocab, d, None);
    }
}
