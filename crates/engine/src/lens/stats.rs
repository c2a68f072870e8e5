//! Statistics of one lens distribution against the model's final distribution, computed from
//! a row of logits in two passes without materialising probabilities.

use lensd_kernels::logit_stats::exp_nonpositive;

/// The model's own output at one position, prepared once and compared with every layer.
pub struct FinalDist {
    /// Probabilities of the final distribution.
    pub probs: Vec<f32>,
    /// Σ p log p of the final distribution (minus its entropy).
    pub neg_entropy: f64,
    pub top1: u32,
}

impl FinalDist {
    /// The exponentials are `lensd_kernels::logit_stats::exp_nonpositive` (within 2 ulp of
    /// f32's exact value) on eight lanes, their sums taken in f64 lanes: a whole row of the
    /// vocabulary in a few vector passes, instead of two calls of libm's f64 `exp` a value.
    pub fn from_logits(z: &[f32]) -> Self {
        const L: usize = 8;
        let mut top1 = 0usize;
        for (j, &x) in z.iter().enumerate() {
            if x > z[top1] {
                top1 = j;
            }
        }
        let m = z.get(top1).copied().unwrap_or(f32::NEG_INFINITY);
        // Σ exp(x − m): each lane of eight sums its values in f64.
        let mut sums = [0f64; L];
        let (whole, rest) = z.split_at(z.len() - z.len() % L);
        for c in whole.chunks_exact(L) {
            for l in 0..L {
                sums[l] += exp_nonpositive(c[l] - m) as f64;
            }
        }
        for (l, &x) in rest.iter().enumerate() {
            sums[l] += exp_nonpositive(x - m) as f64;
        }
        let lse = (m as f64 + sums.iter().sum::<f64>().ln()) as f32;
        // p = exp(x − lse) ≤ 1 and Σ p·(x − lse), again in f64 lanes.
        let mut probs = vec![0f32; z.len()];
        let mut ent = [0f64; L];
        let (pw, pr) = probs.split_at_mut(whole.len());
        for (c, p) in whole.chunks_exact(L).zip(pw.chunks_exact_mut(L)) {
            for l in 0..L {
                let lp = c[l] - lse;
                p[l] = exp_nonpositive(lp);
                ent[l] += p[l] as f64 * lp as f64;
            }
        }
        for (l, (&x, p)) in rest.iter().zip(pr).enumerate() {
            let lp = x - lse;
            *p = exp_nonpositive(lp);
            ent[l] += *p as f64 * lp as f64;
        }
        FinalDist {
            probs,
            neg_entropy: ent.iter().sum(),
            top1: top1 as u32,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RowStats {
    /// `(id, prob)` by descending probability; ties keep the lower id first.
    pub top: Vec<(u32, f32)>,
    pub entropy: f32,
    pub kl_to_final: f32,
    pub final_rank: u32,
    pub next_token_ce: Option<f32>,
}

/// `(max, log Σ exp)` of a row, accumulated in f64.
pub fn log_sum_exp(z: &[f32]) -> (f32, f64) {
    let m = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let s: f64 = z.iter().map(|&x| ((x - m) as f64).exp()).sum();
    (m, m as f64 + s.ln())
}

/// Statistics of the lens logits `z` against the final distribution `fin`; `next` is the
/// actual next token when there is one.
pub fn row_stats(z: &[f32], fin: &FinalDist, next: Option<u32>, k: usize) -> RowStats {
    let m = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f64;
    let mut sum_ez = 0.0f64;
    let mut sum_pz = 0.0f64;
    let target = z[fin.top1 as usize];
    let mut above = 0u32;
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    for (j, (&x, &pf)) in z.iter().zip(&fin.probs).enumerate() {
        // exp in f32 is several times cheaper than in f64 and exact enough per term; the sums
        // that cancel later are kept in f64.
        let e = (x - m).exp() as f64;
        sum += e;
        sum_ez += e * x as f64;
        sum_pz += pf as f64 * x as f64;
        if x > target {
            above += 1;
        }
        if top.len() < k || x > top[top.len() - 1].1 {
            let at = top.partition_point(|&(_, v)| v >= x);
            top.insert(at, (j as u32, x));
            top.truncate(k);
        }
    }
    let lse = m as f64 + sum.ln();
    let entropy = lse - sum_ez / sum;
    // KL(f ‖ q) = Σ f log f − Σ f log q, and log q = z − lse.
    let kl = fin.neg_entropy - sum_pz + lse;
    for t in &mut top {
        t.1 = ((t.1 as f64 - lse).exp()) as f32;
    }
    RowStats {
        top,
        entropy: entropy as f32,
        kl_to_final: kl.max(0.0) as f32,
        final_rank: above + 1,
        next_token_ce: next.map(|n| (lse - z[n as usize] as f64) as f32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn softmax(z: &[f32]) -> Vec<f64> {
        let m = z.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let e: Vec<f64> = z.iter().map(|&x| (x as f64 - m).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|x| x / s).collect()
    }

    #[test]
    fn statistics_match_their_definitions() {
        let z = [1.0f32, 3.0, -2.0, 0.5, 3.0, 2.0];
        let zf = [0.0f32, 1.0, 4.0, 0.0, -1.0, 2.5];
        let fin = FinalDist::from_logits(&zf);
        assert_eq!(fin.top1, 2);
        let s = row_stats(&z, &fin, Some(3), 3);
        let p = softmax(&z);
        let f = softmax(&zf);
        let entropy: f64 = -p.iter().map(|x| x * x.ln()).sum::<f64>();
        let kl: f64 = f.iter().zip(&p).map(|(a, b)| a * (a.ln() - b.ln())).sum();
        assert!((s.entropy as f64 - entropy).abs() < 1e-6);
        assert!((s.kl_to_final as f64 - kl).abs() < 1e-6);
        assert!((s.next_token_ce.unwrap() as f64 + p[3].ln()).abs() < 1e-6);
        // Final top-1 is id 2, the smallest logit under the lens: rank 6.
        assert_eq!(s.final_rank, 6);
        let ids: Vec<u32> = s.top.iter().map(|t| t.0).collect();
        assert_eq!(ids, vec![1, 4, 5], "ties keep the lower id first");
        assert!((s.top[0].1 as f64 - p[1]).abs() < 1e-6);
    }

    #[test]
    fn the_final_distribution_against_itself_has_zero_kl_and_rank_one() {
        let z = [0.3f32, -1.0, 2.0, 2.0];
        let fin = FinalDist::from_logits(&z);
        let s = row_stats(&z, &fin, None, 2);
        assert!(s.kl_to_final.abs() < 1e-6);
        assert_eq!(s.final_rank, 1);
        assert_eq!(s.next_token_ce, None);
    }

    #[test]
    fn the_final_distribution_is_within_a_few_f32_roundings_of_its_f64_definition() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        // A vocabulary's worth of logits spread over 40 units, lengths whole lanes and not,
        // and rows with ties for the top.
        for &(n, spread) in &[(49_152, 40.0f32), (1_003, 8.0), (7, 1.0), (1, 0.0)] {
            let mut z: Vec<f32> = (0..n).map(|_| rng.random_range(-spread..=spread)).collect();
            if n > 10 {
                z[n - 1] = 60.0;
                z[n / 2] = 60.0;
            }
            let fin = FinalDist::from_logits(&z);
            let want = softmax(&z);
            let lse = log_sum_exp(&z).1;
            let top = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(z[fin.top1 as usize], top);
            assert!(
                z[..fin.top1 as usize].iter().all(|&v| v < top),
                "the first of a tie"
            );
            for (j, (&got, &want)) in fin.probs.iter().zip(&want).enumerate() {
                // log Σ exp and log p = x − log Σ exp are f32s, each within half an ulp of
                // its magnitude (p's relative error); exp adds 2 ulp. Probabilities below
                // e⁻⁸⁷ (1.6e-38) read as e⁻⁸⁷.
                let tol = want * (8.0 + lse.abs() - want.ln()) * 2f64.powi(-23) + 1.7e-38;
                assert!(
                    (got as f64 - want).abs() <= tol,
                    "{n} values: p[{j}] = {got} against {want}"
                );
            }
            let neg_entropy: f64 = want
                .iter()
                .map(|&p| if p > 0.0 { p * p.ln() } else { 0.0 })
                .sum();
            assert!(
                (fin.neg_entropy - neg_entropy).abs() <= 1e-6 * neg_entropy.abs().max(1.0),
                "{n} values: {} against {neg_entropy}",
                fin.neg_entropy
            );
        }
    }
}
