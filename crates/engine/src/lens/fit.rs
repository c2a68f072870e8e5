//! Fitting a tuned lens in closed form.
//!
//! For each layer `l < L`, an affine map `h_l ↦ h_l·A + b` is fitted by ridge least squares to
//! the last block's output `h_L` over a corpus (the "linear shortcut" of Din et al.), rows
//! weighted by `1/rms(h_L)` so that a few positions with huge norms do not dominate, and the
//! ridge pulling `A` toward the identity. The result is stored in the tuned-lens package's
//! residual form, `W = (A − I)ᵀ`, so that `h + h·Wᵀ + b = h·A + b`.

use std::ops::ControlFlow;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, D};
use serde::Serialize;

use super::analyze::{analyze, AnalyzeOptions};
use super::tuned::{TunedLens, TunedLensConfig};
use super::Lens;
use crate::base::Base;
use crate::error::{EngineError, Result};

#[derive(Debug, Clone)]
pub struct FitOptions {
    /// Tokens per training sequence.
    pub seq_len: usize,
    /// Sequences run in one forward pass while collecting states.
    pub batch_seqs: usize,
    /// Upper bound on training tokens taken from the corpus.
    pub max_train_tokens: usize,
    /// Tokens held out (whole sequences spread over the corpus) to compare the lenses.
    pub holdout_tokens: usize,
    /// Ridge strength relative to the mean diagonal of the Gram matrix.
    pub ridge: f64,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            seq_len: 128,
            batch_seqs: 8,
            max_train_tokens: 32_768,
            holdout_tokens: 2_048,
            ridge: 1e-3,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LayerFit {
    pub layer: usize,
    /// Mean KL(final ‖ lens) on the held-out text, nats.
    pub kl_logit: f64,
    pub kl_tuned: f64,
    /// Fraction of held-out positions where the lens's top-1 is the model's top-1.
    pub top1_logit: f64,
    pub top1_tuned: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FitReport {
    pub train_tokens: usize,
    pub holdout_tokens: usize,
    pub layers: Vec<LayerFit>,
    pub collect_seconds: f64,
    pub solve_seconds: f64,
    pub eval_seconds: f64,
}

impl FitReport {
    pub fn mean_kl(&self) -> (f64, f64) {
        let n = self.layers.len().max(1) as f64;
        let l: f64 = self.layers.iter().map(|x| x.kl_logit).sum();
        let t: f64 = self.layers.iter().map(|x| x.kl_tuned).sum();
        (l / n, t / n)
    }
}

/// What the fit is doing, for progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FitStage {
    Collect,
    Solve,
    Evaluate,
}

/// Splits `corpus` into training and held-out sequences of `seq_len` tokens. Both are spread
/// evenly over the corpus so that each sees every source it was assembled from.
pub fn split_corpus(corpus: &[u32], opts: &FitOptions) -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
    let seqs: Vec<&[u32]> = corpus.chunks_exact(opts.seq_len).collect();
    let n_hold = (opts.holdout_tokens / opts.seq_len).min(seqs.len() / 2);
    let stride = seqs.len().checked_div(n_hold).unwrap_or(usize::MAX);
    let (mut hold, mut rest) = (Vec::new(), Vec::new());
    for (i, s) in seqs.into_iter().enumerate() {
        if hold.len() < n_hold && i % stride == stride - 1 {
            hold.push(s.to_vec());
        } else {
            rest.push(s);
        }
    }
    let n_train = (opts.max_train_tokens / opts.seq_len).min(rest.len());
    let train = (0..n_train)
        .map(|k| rest[k * rest.len() / n_train].to_vec())
        .collect();
    (train, hold)
}

/// Fits one translator per layer `0..L` on `corpus` and compares the result with the logit
/// lens on held-out text.
pub fn fit_tuned_lens(
    base: &Base,
    corpus: &[u32],
    opts: &FitOptions,
    base_name: &str,
    on_progress: &mut dyn FnMut(FitStage, usize, usize),
) -> Result<(TunedLens, FitReport)> {
    let cfg = &base.model.cfg;
    let (l_count, d) = (cfg.n_layers, cfg.d_model);
    if opts.seq_len < 2 || opts.batch_seqs == 0 {
        return Err(EngineError::Input(
            "seq_len must be at least 2 and batch_seqs at least 1".into(),
        ));
    }
    let (mut train, mut hold) = split_corpus(corpus, opts);
    // Every sequence starts as the model expects a text to (Gemma needs its BOS).
    if let (true, Some(bos)) = (base.tokenizer.add_bos, base.tokenizer.bos_id) {
        for s in train.iter_mut().chain(hold.iter_mut()) {
            s.insert(0, bos);
        }
    }
    let train_tokens = train.len() * opts.seq_len;
    if train_tokens < 4 * (d + 1) {
        return Err(EngineError::Input(format!(
            "the corpus gives {train_tokens} training tokens; fitting {d}-wide translators needs at least {}",
            4 * (d + 1)
        )));
    }
    if hold.is_empty() {
        return Err(EngineError::Input(format!(
            "the corpus is too short to hold out a {}-token sequence for evaluation",
            opts.seq_len
        )));
    }
    let t0 = Instant::now();
    let taps: Vec<usize> = (0..=l_count).collect();
    let mut gram = vec![Tensor::zeros((d + 1, d + 1), DType::F64, &Device::Cpu)?; l_count];
    let mut cross = vec![Tensor::zeros((d + 1, d), DType::F64, &Device::Cpu)?; l_count];
    for (bi, batch) in train.chunks(opts.batch_seqs).enumerate() {
        let seqs: Vec<&[u32]> = batch.iter().map(|s| s.as_slice()).collect();
        let out = base
            .model
            .forward(&seqs, None, &taps, crate::model::Logits::None)?;
        let h_last = out.tap(l_count).expect("tapped");
        let n = h_last.dim(0)?;
        let w = h_last.sqr()?.mean_keepdim(D::Minus1)?.sqrt()?.recip()?;
        let y = h_last.broadcast_mul(&w)?;
        let ones = Tensor::ones((n, 1), DType::F32, &Device::Cpu)?;
        for l in 0..l_count {
            let h = out.tap(l).expect("tapped");
            let x = Tensor::cat(&[h, &ones], 1)?.broadcast_mul(&w)?;
            let xt = x.t()?;
            gram[l] = (&gram[l] + xt.matmul(&x)?.to_dtype(DType::F64)?)?;
            cross[l] = (&cross[l] + xt.matmul(&y)?.to_dtype(DType::F64)?)?;
        }
        on_progress(
            FitStage::Collect,
            (bi + 1) * opts.batch_seqs.min(batch.len()),
            train.len(),
        );
    }
    let collect_seconds = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut weights = Vec::with_capacity(l_count);
    let mut biases = Vec::with_capacity(l_count);
    for l in 0..l_count {
        let g = gram[l].flatten_all()?.to_vec1::<f64>()?;
        let c = cross[l].flatten_all()?.to_vec1::<f64>()?;
        let a = ridge_to_identity(g, c, d, opts.ridge).ok_or_else(|| {
            EngineError::Input(format!(
                "layer {l}: the hidden states are degenerate; cannot fit"
            ))
        })?;
        // a is [(d+1), d]: rows 0..d are A (h_out = h·A), row d is the bias.
        let mut wt = vec![0f32; d * d];
        for i in 0..d {
            for j in 0..d {
                // W[j][i] = A[i][j] − δij (PyTorch layout: out × in).
                wt[j * d + i] = (a[i * d + j] - if i == j { 1.0 } else { 0.0 }) as f32;
            }
        }
        let b: Vec<f32> = a[d * d..].iter().map(|&x| x as f32).collect();
        weights.push(Tensor::from_vec(wt, (d, d), &Device::Cpu)?);
        biases.push(Tensor::from_vec(b, d, &Device::Cpu)?);
        on_progress(FitStage::Solve, l + 1, l_count);
    }
    let solve_seconds = t1.elapsed().as_secs_f64();
    let config = TunedLensConfig {
        base_model_name_or_path: base_name.to_string(),
        d_model: d,
        num_hidden_layers: l_count,
        bias: true,
        base_model_revision: None,
        unembed_hash: None,
        lens_type: "linear_tuned_lens".into(),
    };
    let lens = Lens::Tuned(TunedLens::from_parts(config, weights, biases));
    let t2 = Instant::now();
    let layers = compare_on_holdout(base, &lens, &hold, on_progress)?;
    let report = FitReport {
        train_tokens,
        holdout_tokens: hold.len() * opts.seq_len,
        layers,
        collect_seconds,
        solve_seconds,
        eval_seconds: t2.elapsed().as_secs_f64(),
    };
    let Lens::Tuned(tuned) = lens else {
        unreachable!("built as tuned")
    };
    Ok((tuned, report))
}

/// Mean KL and top-1 agreement per layer `0..L` of the logit lens and `tuned` on `seqs`.
pub fn compare_on_holdout(
    base: &Base,
    tuned: &Lens,
    seqs: &[Vec<u32>],
    on_progress: &mut dyn FnMut(FitStage, usize, usize),
) -> Result<Vec<LayerFit>> {
    let l_count = base.model.cfg.n_layers;
    let opts = AnalyzeOptions::new((0..l_count).collect(), 1);
    let mut sums = vec![[0f64; 4]; l_count];
    let mut n = 0usize;
    for (i, s) in seqs.iter().enumerate() {
        let res = analyze(base, &[&Lens::Logit, tuned], s, &opts, &mut |_| {
            ControlFlow::Continue(())
        })?;
        for (li, a) in res.iter().enumerate() {
            for (row, acc) in a.layers.iter().zip(sums.iter_mut()) {
                for c in &row.positions {
                    acc[li] += c.kl_to_final as f64;
                    acc[2 + li] += (c.final_rank == 1) as u32 as f64;
                }
            }
        }
        n += s.len();
        on_progress(FitStage::Evaluate, i + 1, seqs.len());
    }
    let n = n as f64;
    Ok(sums
        .iter()
        .enumerate()
        .map(|(layer, s)| LayerFit {
            layer,
            kl_logit: s[0] / n,
            kl_tuned: s[1] / n,
            top1_logit: s[2] / n,
            top1_tuned: s[3] / n,
        })
        .collect())
}

/// Solves `min ‖X·A − Y‖² + λ‖A − A₀‖²` from `G = XᵀX` (`(d+1)²`) and `C = XᵀY` (`(d+1) × d`),
/// where `A₀` is the identity on the first `d` rows and zero on the bias row, and
/// `λ = ridge · trace(G) / (d+1)`. Returns `A` row-major, or `None` if the system is singular.
pub fn ridge_to_identity(
    mut g: Vec<f64>,
    mut c: Vec<f64>,
    d: usize,
    ridge: f64,
) -> Option<Vec<f64>> {
    let n = d + 1;
    let trace: f64 = (0..n).map(|i| g[i * n + i]).sum();
    let lambda = ridge * trace / n as f64;
    for i in 0..n {
        g[i * n + i] += lambda;
    }
    for i in 0..d {
        c[i * d + i] += lambda;
    }
    cholesky_solve(&mut g, n, &mut c, d)?;
    Some(c)
}

/// Solves `M·X = B` in place for symmetric positive definite `M` (`n × n`) and `B` (`n × m`),
/// both row-major; `B` becomes `X`. `None` when `M` is not positive definite.
pub fn cholesky_solve(m: &mut [f64], n: usize, b: &mut [f64], cols: usize) -> Option<()> {
    // Lower-triangular factor L with M = L·Lᵀ, written over M's lower triangle.
    for j in 0..n {
        let mut diag = m[j * n + j];
        for k in 0..j {
            diag -= m[j * n + k] * m[j * n + k];
        }
        if diag.is_nan() || diag <= 0.0 {
            return None;
        }
        let diag = diag.sqrt();
        m[j * n + j] = diag;
        for i in j + 1..n {
            let mut s = m[i * n + j];
            for k in 0..j {
                s -= m[i * n + k] * m[j * n + k];
            }
            m[i * n + j] = s / diag;
        }
    }
    // Forward substitution L·Z = B, then back substitution Lᵀ·X = Z, row by row of B.
    for i in 0..n {
        for k in 0..i {
            let f = m[i * n + k];
            if f != 0.0 {
                for c in 0..cols {
                    b[i * cols + c] -= f * b[k * cols + c];
                }
            }
        }
        let inv = 1.0 / m[i * n + i];
        for c in 0..cols {
            b[i * cols + c] *= inv;
        }
    }
    for i in (0..n).rev() {
        for k in i + 1..n {
            let f = m[k * n + i];
            if f != 0.0 {
                for c in 0..cols {
                    b[i * cols + c] -= f * b[k * cols + c];
                }
            }
        }
        let inv = 1.0 / m[i * n + i];
        for c in 0..cols {
            b[i * cols + c] *= inv;
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cholesky_solves_a_known_system() {
        // M = [[4,2,0],[2,5,1],[0,1,3]], X = [[1,0],[2,-1],[0,3]] → B = M·X.
        let m = [4.0, 2.0, 0.0, 2.0, 5.0, 1.0, 0.0, 1.0, 3.0];
        let x = [1.0, 0.0, 2.0, -1.0, 0.0, 3.0];
        let mut b = vec![0.0; 6];
        for i in 0..3 {
            for c in 0..2 {
                b[i * 2 + c] = (0..3).map(|k| m[i * 3 + k] * x[k * 2 + c]).sum();
            }
        }
        let mut mm = m.to_vec();
        cholesky_solve(&mut mm, 3, &mut b, 2).unwrap();
        for (got, want) in b.iter().zip(x) {
            assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        }
    }

    #[test]
    fn an_indefinite_matrix_is_refused() {
        let mut m = vec![1.0, 2.0, 2.0, 1.0];
        let mut b = vec![1.0, 1.0];
        assert!(cholesky_solve(&mut m, 2, &mut b, 1).is_none());
    }

    #[test]
    fn the_ridge_recovers_an_exact_affine_map() {
        // y = x·A + b with d = 2, from 50 rows: the fit with a tiny ridge returns A and b.
        let (d, n) = (2usize, 50usize);
        let a = [[0.5, -1.0], [2.0, 0.25]];
        let bias = [0.3, -0.7];
        let mut g = vec![0.0; (d + 1) * (d + 1)];
        let mut c = vec![0.0; (d + 1) * d];
        for r in 0..n {
            let x = [(r as f64 * 0.37).sin(), (r as f64 * 0.11).cos() * 2.0, 1.0];
            let y: Vec<f64> = (0..d)
                .map(|j| x[0] * a[0][j] + x[1] * a[1][j] + bias[j])
                .collect();
            for i in 0..=d {
                for k in 0..=d {
                    g[i * (d + 1) + k] += x[i] * x[k];
                }
                for j in 0..d {
                    c[i * d + j] += x[i] * y[j];
                }
            }
        }
        let sol = ridge_to_identity(g, c, d, 1e-12).unwrap();
        let want = [a[0][0], a[0][1], a[1][0], a[1][1], bias[0], bias[1]];
        for (got, w) in sol.iter().zip(want) {
            assert!((got - w).abs() < 1e-6, "{got} vs {w}");
        }
    }

    #[test]
    fn held_out_sequences_are_spread_over_the_corpus() {
        let corpus: Vec<u32> = (0..1000).collect();
        let opts = FitOptions {
            seq_len: 10,
            holdout_tokens: 200,
            max_train_tokens: 10_000,
            ..FitOptions::default()
        };
        let (train, hold) = split_corpus(&corpus, &opts);
        assert_eq!(hold.len(), 20);
        assert_eq!(train.len(), 80);
        let capped = FitOptions {
            max_train_tokens: 200,
            ..opts.clone()
        };
        let (few, _) = split_corpus(&corpus, &capped);
        assert_eq!(few.len(), 20);
        assert!(
            few[19][0] >= 900,
            "training sequences reach the end of the corpus"
        );
        assert_eq!(hold[0][0], 40, "the fifth sequence is the first held out");
        assert_eq!(hold[19][0], 990);
        for h in &hold {
            assert!(!train.contains(h));
        }
    }
}
