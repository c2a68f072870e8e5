//! One decoding step's attention on the CPU as a single operation: each query head's scores
//! over its key/value head's cached positions, their softmax and the weighted sum of values,
//! read in place from the cache's buffers. The general path (any number of queries, any
//! device) takes a dozen tensor operations a block for the same work, each with its own
//! allocation and hand-off to the thread pool, which for one query cost more than the
//! arithmetic.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};

use crate::weights::quant_product::CandlePool;

/// What a step's attention needs besides its tensors.
#[derive(Debug, Clone)]
pub struct DecodeParams {
    /// Multiplies every score (`1/√head_dim` or the family's own).
    pub scale: f32,
    /// Scores become `cap · tanh(score / cap)` (Gemma-2).
    pub softcap: Option<f32>,
    /// Keys before this position are outside the sliding window.
    pub first: usize,
    /// Per query head, a logit that joins the softmax and takes no value (gpt-oss).
    pub sinks: Option<Vec<f32>>,
}

/// `q`: `[1, nh, hd]`; `k`, `v`: `[nkv, tk, hd]` with unit stride along `hd` (views of a
/// cache's buffers) → `[1, nh · hd]`. `None` when the tensors are not f32 on the CPU, for the
/// general path to take.
pub fn decode(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    p: &DecodeParams,
) -> candle_core::Result<Option<Tensor>> {
    let cpu_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
    if !(cpu_f32(q) && cpu_f32(k) && cpu_f32(v)) || q.dim(0)? != 1 {
        return Ok(None);
    }
    let (_, nh, hd) = q.dims3()?;
    let q = q.contiguous()?;
    let out = q.apply_op3_no_bwd(k, v, &DecodeAttention(p.clone()))?;
    Ok(Some(out.reshape((1, nh * hd))?))
}

struct DecodeAttention(DecodeParams);

/// A `[heads, positions, hd]` view: its values and the strides of its first two dimensions.
struct View<'a> {
    data: &'a [f32],
    start: usize,
    head: usize,
    pos: usize,
}

impl<'a> View<'a> {
    fn of(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<(Self, [usize; 3])> {
        let dims: [usize; 3] = l.shape().dims().try_into().map_err(|_| {
            candle_core::Error::Msg(format!("{what} is not [heads, positions, hd]"))
        })?;
        let st = l.stride();
        if st[2] != 1 {
            candle_core::bail!("{what}'s values along hd are not adjacent: strides {st:?}");
        }
        Ok((
            View {
                data: s.as_slice::<f32>()?,
                start: l.start_offset(),
                head: st[0],
                pos: st[1],
            },
            dims,
        ))
    }

    fn row(&self, head: usize, pos: usize, hd: usize) -> &[f32] {
        let at = self.start + head * self.head + pos * self.pos;
        &self.data[at..at + hd]
    }
}

/// `Σ a·b` in eight lanes (which the compiler keeps in one vector register).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, ar) = a.split_at(a.len() - a.len() % 8);
    for (x, y) in ac.chunks_exact(8).zip(b.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ar.iter().zip(&b[ac.len()..]).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

impl CustomOp3 for DecodeAttention {
    fn name(&self) -> &'static str {
        "lensd-decode-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let p = &self.0;
        let (qv, [_, nh, hd]) = View::of(qs, ql, "the query")?;
        let (kv, [nkv, tk, khd]) = View::of(ks, kl, "the keys")?;
        let (vv, vdims) = View::of(vs, vl, "the values")?;
        if khd != hd || vdims != [nkv, tk, hd] || nkv == 0 || nh % nkv != 0 {
            candle_core::bail!(
                "query [1, {nh}, {hd}], keys [{nkv}, {tk}, {khd}] and values {vdims:?} do not \
                 fit one attention"
            );
        }
        if p.sinks.as_ref().is_some_and(|s| s.len() != nh) {
            candle_core::bail!(
                "{} sinks for {nh} query heads",
                p.sinks.as_ref().unwrap().len()
            );
        }
        let group = nh / nkv;
        let first = p.first.min(tk);
        let mut out = vec![0f32; nh * hd];
        let head = |h: usize, o: &mut [f32]| {
            let kvh = h / group;
            let q = qv.row(0, h, hd);
            let mut scores: Vec<f32> = (first..tk)
                .map(|j| {
                    let s = dot(q, kv.row(kvh, j, hd)) * p.scale;
                    match p.softcap {
                        Some(c) => c * (s / c).tanh(),
                        None => s,
                    }
                })
                .collect();
            let sink = p.sinks.as_ref().map(|s| s[h]);
            let max = scores
                .iter()
                .copied()
                .chain(sink)
                .fold(f32::NEG_INFINITY, f32::max);
            let mut sum = sink.map_or(0.0, |s| (s - max).exp());
            for s in &mut scores {
                *s = (*s - max).exp();
                sum += *s;
            }
            o.fill(0.0);
            for (j, &e) in (first..tk).zip(&scores) {
                let w = e / sum;
                for (a, &b) in o.iter_mut().zip(vv.row(kvh, j, hd)) {
                    *a += w * b;
                }
            }
        };
        let work = nh * (tk - first) * hd * 2;
        CandlePool::fill(&mut out, hd, work >= lensd_kernels::TASK_MACS, &head);
        Ok((CpuStorage::F32(out), Shape::from((1, nh, hd))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The definition in f64: softmax over the visible scores (and the sink), values weighed.
    fn reference(
        q: &[f32],
        k: &[Vec<f32>],
        v: &[Vec<f32>],
        hd: usize,
        p: &DecodeParams,
    ) -> Vec<f64> {
        let (nh, nkv, tk) = (q.len() / hd, k.len(), k[0].len() / hd);
        let mut out = vec![0f64; nh * hd];
        for h in 0..nh {
            let kvh = h / (nh / nkv);
            let qh = &q[h * hd..(h + 1) * hd];
            let scores: Vec<f64> = (p.first..tk)
                .map(|j| {
                    let s: f64 = (0..hd)
                        .map(|i| qh[i] as f64 * k[kvh][j * hd + i] as f64)
                        .sum::<f64>()
                        * p.scale as f64;
                    p.softcap.map_or(s, |c| c as f64 * (s / c as f64).tanh())
                })
                .collect();
            let sink = p.sinks.as_ref().map(|s| s[h] as f64);
            let max = scores.iter().copied().chain(sink).fold(f64::MIN, f64::max);
            let sum: f64 = scores
                .iter()
                .chain(sink.as_ref())
                .map(|s| (s - max).exp())
                .sum();
            for (j, s) in (p.first..tk).zip(&scores) {
                let w = (s - max).exp() / sum;
                for i in 0..hd {
                    out[h * hd + i] += w * v[kvh][j * hd + i] as f64;
                }
            }
        }
        out
    }

    #[test]
    fn one_query_over_a_cache_view_matches_the_definition() {
        let dev = &Device::Cpu;
        // The second shape has enough work to split its heads among threads.
        for (nh, nkv, hd, cap) in [(6, 2, 20, 40), (16, 4, 64, 48)] {
            for (tk, softcap, first, sinks) in [
                (1, None, 0, None),
                (17, None, 0, None),
                (33, Some(5.0), 0, None),
                (33, None, 29, None),
                (40, None, 3, Some((0..nh).map(|h| h as f32 - 2.5).collect())),
            ] {
                let q = Tensor::randn(0f32, 1.0, (1, nh, hd), dev).unwrap();
                // Buffers with room for more positions, viewed up to `tk` as the cache does.
                let kb = Tensor::randn(0f32, 1.0, (nkv, cap, hd), dev).unwrap();
                let vb = Tensor::randn(0f32, 1.0, (nkv, cap, hd), dev).unwrap();
                let (k, v) = (kb.narrow(1, 0, tk).unwrap(), vb.narrow(1, 0, tk).unwrap());
                let p = DecodeParams {
                    scale: 0.3,
                    softcap,
                    first,
                    sinks,
                };
                let got: Vec<f32> = decode(&q, &k, &v, &p)
                    .unwrap()
                    .expect("f32 on the CPU")
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let rows = |t: &Tensor| -> Vec<Vec<f32>> {
                    (0..nkv)
                        .map(|h| t.get(h).unwrap().flatten_all().unwrap().to_vec1().unwrap())
                        .collect()
                };
                let qv: Vec<f32> = q.flatten_all().unwrap().to_vec1().unwrap();
                let want = reference(&qv, &rows(&k), &rows(&v), hd, &p);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (*g as f64 - w).abs() < 1e-5,
                        "tk {tk}, first {first}: value {i} is {g}, want {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn shapes_that_do_not_fit_are_refused() {
        let dev = &Device::Cpu;
        let q = Tensor::zeros((1, 5, 8), DType::F32, dev).unwrap();
        let k = Tensor::zeros((2, 3, 8), DType::F32, dev).unwrap();
        let p = DecodeParams {
            scale: 1.0,
            softcap: None,
            first: 0,
            sinks: None,
        };
        let err = decode(&q, &k, &k, &p).unwrap_err().to_string();
        assert!(err.contains("do not fit"), "{err}");
        let bf16 = q.to_dtype(DType::BF16).unwrap();
        assert!(decode(&bf16, &k, &k, &p).unwrap().is_none());
    }
}
