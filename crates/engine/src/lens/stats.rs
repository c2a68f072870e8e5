//! Statistics of one lens distribution against the model's final distribution, computed from
//! a row of logits in two passes without materialising probabilities.

/// The model's own output at one position, prepared once and compared with every layer.
pub struct FinalDist {
    /// Probabilities of the final distribution.
    pub probs: Vec<f32>,
    /// Σ p log p of the final distribution (minus its entropy).
    pub neg_entropy: f64,
    pub top1: u32,
}

impl FinalDist {
    pub fn from_logits(z: &[f32]) -> Self {
        let (_, lse) = log_sum_exp(z);
        let mut probs = Vec::with_capacity(z.len());
        let mut neg_entropy = 0.0f64;
        let mut top1 = 0usize;
        for (j, &x) in z.iter().enumerate() {
            let lp = (x - lse as f32) as f64;
            let p = lp.exp();
            probs.push(p as f32);
            neg_entropy += p * lp;
            if x > z[top1] {
                top1 = j;
            }
        }
        FinalDist {
            probs,
            neg_entropy,
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
}
