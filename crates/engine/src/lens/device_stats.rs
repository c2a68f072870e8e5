//! The statistics of [`super::stats`], computed where the logits are (a GPU's memory), so that
//! only a few numbers per row and the top-k candidates cross to the host, never a row of
//! `vocab` logits. Every reduction runs in f32 on the device.
//!
//! Top-k without a device sort: the row is cut into blocks of [`BLOCK`] logits and the `k`
//! blocks with the largest maxima are kept. Every one of the row's `k` largest logits lies in
//! one of them (a block outside them has `k` larger block maxima above its own, so none of
//! its logits can be among the `k` largest), so the exact top-k is chosen on the host among
//! `k · BLOCK` candidates. Exact ties between candidates keep the lower id first, as on the
//! host path.

use candle_core::{DType, Device, Tensor, D};

use super::stats::RowStats;

/// Logits per block of the top-k search: small enough that `k` blocks are few candidates,
/// large enough that the block maxima are a small matrix.
pub const BLOCK: usize = 64;

/// The model's own output at a chunk of positions, on the device: `[P, V]` log-probabilities
/// and probabilities, and each position's top-1 id `[P]`.
pub struct DeviceFinal {
    log_probs: Tensor,
    probs: Tensor,
    top1: Tensor,
}

impl DeviceFinal {
    /// From final logits `[P, V]` (any float dtype; computed in f32).
    pub fn from_logits(z: &Tensor) -> candle_core::Result<Self> {
        let z = z.to_dtype(DType::F32)?;
        let log_probs = log_softmax(&z)?;
        Ok(DeviceFinal {
            probs: log_probs.exp()?,
            top1: z.argmax_keepdim(D::Minus1)?,
            log_probs,
        })
    }

    fn positions(&self) -> candle_core::Result<usize> {
        self.log_probs.dim(0)
    }
}

/// `z − log Σ exp z` per row, the max subtracted first so that nothing overflows.
fn log_softmax(z: &Tensor) -> candle_core::Result<Tensor> {
    let m = z.max_keepdim(D::Minus1)?;
    let shifted = z.broadcast_sub(&m)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

/// Statistics of `[L · P, V]` lens logits, row `r` being layer `r / P` at position `r % P` of
/// `fin`; `next[p]` is the token after position `p` where there is one. Rows come back in order.
pub fn rows_stats(
    logits: &Tensor,
    fin: &DeviceFinal,
    next: &[Option<u32>],
    k: usize,
) -> candle_core::Result<Vec<RowStats>> {
    let z = logits.to_dtype(DType::F32)?;
    let (rows, v) = z.dims2()?;
    let p = fin.positions()?;
    if p == 0 || rows % p != 0 || next.len() != p {
        candle_core::bail!("{rows} lens rows do not fill layers × {p} positions");
    }
    let layers = rows / p;
    let k = k.min(v);
    let z3 = z.reshape((layers, p, v))?;
    let m = z3.max_keepdim(D::Minus1)?;
    let shifted = z3.broadcast_sub(&m)?;
    let lse_shifted = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let log_q = shifted.broadcast_sub(&lse_shifted)?;
    let lse = (m + lse_shifted)?;
    // H(q) = −Σ q log q; KL(f ‖ q) = Σ f (log f − log q), with no cancelling sums.
    let entropy = (log_q.exp()? * &log_q)?.sum(D::Minus1)?.neg()?;
    let kl = log_q
        .broadcast_sub(&fin.log_probs.unsqueeze(0)?)?
        .neg()?
        .broadcast_mul(&fin.probs.unsqueeze(0)?)?
        .sum(D::Minus1)?;
    // The final top-1's rank under the lens: one plus the logits strictly above its own.
    let top1 = fin
        .top1
        .unsqueeze(0)?
        .broadcast_as((layers, p, 1))?
        .contiguous()?;
    let target = z3.gather(&top1, D::Minus1)?;
    let above = z3
        .broadcast_gt(&target)?
        .to_dtype(DType::F32)?
        .sum(D::Minus1)?;
    let next_ids: Vec<u32> = next.iter().map(|n| n.unwrap_or(0)).collect();
    let next_ids = Tensor::from_vec(next_ids, (1, p, 1), z.device())?
        .broadcast_as((layers, p, 1))?
        .contiguous()?;
    let ce = log_q.gather(&next_ids, D::Minus1)?.neg()?;
    let (cand_ids, cand_vals) = top_candidates(&z, k)?;

    let host = |t: Tensor| -> candle_core::Result<Vec<f32>> {
        t.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()
    };
    let entropy = host(entropy)?;
    let kl = host(kl)?;
    let above = host(above)?;
    let ce = host(ce)?;
    let lse = host(lse)?;
    let width = cand_vals.len() / rows.max(1);
    Ok((0..rows)
        .map(|r| {
            let vals = &cand_vals[r * width..(r + 1) * width];
            let ids = &cand_ids[r * width..(r + 1) * width];
            let mut top: Vec<(u32, f32)> = ids.iter().copied().zip(vals.iter().copied()).collect();
            top.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            top.truncate(k);
            for t in &mut top {
                t.1 = ((t.1 as f64 - lse[r] as f64).exp()) as f32;
            }
            RowStats {
                top,
                entropy: entropy[r],
                kl_to_final: kl[r].max(0.0),
                final_rank: above[r] as u32 + 1,
                next_token_ce: next[r % p].map(|_| ce[r]),
            }
        })
        .collect())
}

/// For each row of `z` `[R, V]`, the ids and logits of the `k · BLOCK` candidates among which
/// its `k` largest logits lie (see the module's note), `R · k · BLOCK` of each, row-major.
/// Padding past the vocabulary has id `u32::MAX` and logit −∞, and is never chosen while real
/// logits remain.
fn top_candidates(z: &Tensor, k: usize) -> candle_core::Result<(Vec<u32>, Vec<f32>)> {
    let (rows, v) = z.dims2()?;
    let dev = z.device();
    let blocks = v.div_ceil(BLOCK);
    let padded = if blocks * BLOCK == v {
        z.clone()
    } else {
        let pad = Tensor::full(f32::NEG_INFINITY, (rows, blocks * BLOCK - v), dev)?;
        Tensor::cat(&[z, &pad], 1)?
    };
    let z3 = padded.reshape((rows, blocks, BLOCK))?;
    let k = k.min(blocks);
    let mut maxima = z3.max(D::Minus1)?;
    let block_ids = Tensor::arange(0u32, blocks as u32, dev)?.unsqueeze(0)?;
    let gone = Tensor::full(f32::NEG_INFINITY, (rows, blocks), dev)?;
    let mut chosen = Vec::with_capacity(k);
    for _ in 0..k {
        let best = maxima.argmax_keepdim(D::Minus1)?;
        let hit = block_ids.broadcast_eq(&best)?;
        maxima = hit.where_cond(&gone, &maxima)?;
        chosen.push(best);
    }
    let chosen = Tensor::cat(&chosen, 1)?;
    let index = chosen
        .unsqueeze(2)?
        .broadcast_as((rows, k, BLOCK))?
        .contiguous()?;
    let vals = z3
        .gather(&index, 1)?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let chosen = chosen
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<u32>()?;
    let mut ids = Vec::with_capacity(vals.len());
    for b in chosen {
        for j in 0..BLOCK as u32 {
            let id = b * BLOCK as u32 + j;
            ids.push(if (id as usize) < v { id } else { u32::MAX });
        }
    }
    Ok((ids, vals))
}

#[cfg(test)]
mod tests {
    use super::super::stats::{row_stats, FinalDist};
    use super::*;

    /// Random logits with a few planted ties and a vocabulary not a multiple of the block.
    fn logits(rows: usize, v: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..rows * v)
            .map(|i| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let x = ((s >> 33) as f32 / (1u64 << 31) as f32) * 12.0 - 6.0;
                if i % 97 == 0 {
                    3.5
                } else {
                    x
                }
            })
            .collect()
    }

    #[test]
    fn device_statistics_equal_the_host_path() {
        let (layers, p, v, k) = (3, 4, 1000, 5);
        let dev = Device::Cpu;
        let fin_z = logits(p, v, 7);
        let lens_z = logits(layers * p, v, 11);
        let next = [Some(3u32), Some(999), None, Some(0)];
        let fin = DeviceFinal::from_logits(&Tensor::from_vec(fin_z.clone(), (p, v), &dev).unwrap())
            .unwrap();
        let got = rows_stats(
            &Tensor::from_vec(lens_z.clone(), (layers * p, v), &dev).unwrap(),
            &fin,
            &next,
            k,
        )
        .unwrap();
        let finals: Vec<FinalDist> = fin_z.chunks(v).map(FinalDist::from_logits).collect();
        for (r, g) in got.iter().enumerate() {
            let want = row_stats(&lens_z[r * v..(r + 1) * v], &finals[r % p], next[r % p], k);
            let ids = |s: &RowStats| s.top.iter().map(|t| t.0).collect::<Vec<_>>();
            assert_eq!(ids(g), ids(&want), "row {r}");
            for (a, b) in g.top.iter().zip(&want.top) {
                assert!((a.1 - b.1).abs() < 1e-6, "row {r}: prob {} vs {}", a.1, b.1);
            }
            assert!((g.entropy - want.entropy).abs() < 1e-4, "row {r}");
            assert!((g.kl_to_final - want.kl_to_final).abs() < 1e-4, "row {r}");
            assert_eq!(g.final_rank, want.final_rank, "row {r}");
            match (g.next_token_ce, want.next_token_ce) {
                (Some(a), Some(b)) => assert!((a - b).abs() < 1e-4, "row {r}"),
                (a, b) => assert_eq!(a, b, "row {r}"),
            }
        }
    }

    #[test]
    fn the_top_k_is_exact_when_the_largest_logits_share_a_block() {
        // All of the four largest logits sit in block 2; blocks 0 and 1 have larger maxima
        // than the rest but only one large logit each.
        let v = 5 * BLOCK;
        let mut z = vec![0f32; v];
        for (i, x) in [(2 * BLOCK, 9.0), (2 * BLOCK + 5, 8.0), (2 * BLOCK + 9, 7.5)] {
            z[i] = x;
        }
        z[3] = 7.0;
        z[BLOCK + 1] = 6.0;
        let t = Tensor::from_vec(z, (1, v), &Device::Cpu).unwrap();
        let (ids, vals) = top_candidates(&t, 4).unwrap();
        let mut pairs: Vec<(u32, f32)> = ids.into_iter().zip(vals).collect();
        pairs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let top: Vec<u32> = pairs.iter().take(4).map(|p| p.0).collect();
        let b = BLOCK as u32;
        assert_eq!(top, vec![2 * b, 2 * b + 5, 2 * b + 9, 3]);
    }

    #[test]
    fn rows_that_do_not_fill_the_positions_are_refused() {
        let dev = Device::Cpu;
        let fin =
            DeviceFinal::from_logits(&Tensor::zeros((2, 10), DType::F32, &dev).unwrap()).unwrap();
        let z = Tensor::zeros((3, 10), DType::F32, &dev).unwrap();
        assert!(rows_stats(&z, &fin, &[None, None], 2).is_err());
    }
}
