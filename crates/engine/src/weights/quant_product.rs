//! `x · Wᵀ` for a quantized `W` on the CPU with lensd's kernels (`lensd-kernels`), as a candle
//! custom op so that it sits in a forward pass like any other operation. Block types the
//! kernels do not cover, inputs that are not f32, and GPU tensors go through candle's `QMatMul`.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use lensd_kernels::{BlockType, Parallel};

/// Which quantized products a process uses: lensd's kernels, or candle's `QMatMul` with
/// `LENSD_QUANT_MATMUL=candle` (for benchmarks comparing the two in one build).
fn use_candle() -> bool {
    static CANDLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CANDLE.get_or_init(|| std::env::var("LENSD_QUANT_MATMUL").as_deref() == Ok("candle"))
}

pub(crate) fn block_type(dtype: GgmlDType) -> Option<BlockType> {
    Some(match dtype {
        GgmlDType::Q4_0 => BlockType::Q4_0,
        GgmlDType::Q4_1 => BlockType::Q4_1,
        GgmlDType::Q5_0 => BlockType::Q5_0,
        GgmlDType::Q8_0 => BlockType::Q8_0,
        GgmlDType::Q4K => BlockType::Q4K,
        GgmlDType::Q5K => BlockType::Q5K,
        GgmlDType::Q6K => BlockType::Q6K,
        _ => return None,
    })
}

/// `x`: `[.., in]` f32 → `[.., out]` f32.
pub(crate) fn forward(q: &Arc<QTensor>, x: &Tensor) -> candle_core::Result<Tensor> {
    match forward_many(&[q], x)? {
        Some(mut outs) => Ok(outs.remove(0)),
        None => x.apply(&QMatMul::QTensor(q.clone())),
    }
}

/// `x · Wᵀ` in f32 for a quantized `W` ([`super::Linear::Wide`]): `x`: `[.., in]` f32 →
/// `[.., out]` f32, widened a strip of rows at a time by lensd's kernels
/// ([`lensd_kernels::wide`]). A block type they lack, or an input not in f32 on the CPU,
/// multiplies the dequantized matrix instead (the same products, in another order).
pub(crate) fn forward_wide(q: &Arc<QTensor>, x: &Tensor) -> candle_core::Result<Tensor> {
    let fits = |(n, k): (usize, usize)| {
        let ty = block_type(q.dtype())?;
        (x.device().is_cpu() && x.dtype() == DType::F32 && x.dims().last() == Some(&k))
            .then_some((ty, n, k))
    };
    match q.shape().dims2().ok().and_then(fits) {
        Some((ty, n, k)) => x.contiguous()?.apply_op1_no_bwd(&WideProduct {
            q: q.clone(),
            ty,
            n,
            k,
        }),
        None => x.broadcast_matmul(&q.dequantize(&x.device().clone())?.t()?),
    }
}

/// `x · Wᵢᵀ` for several matrices in one run of the kernels (see [`lensd_kernels::matmul_many`]),
/// or `None` when one of them, or `x`, is not something the kernels take (the caller then
/// multiplies them one by one).
pub(crate) fn forward_many(
    qs: &[&Arc<QTensor>],
    x: &Tensor,
) -> candle_core::Result<Option<Vec<Tensor>>> {
    let Some(mats) = qs
        .iter()
        .map(|q| {
            let ty = block_type(q.dtype())?;
            let (n, k) = q.shape().dims2().ok()?;
            Some(((*q).clone(), ty, n, k))
        })
        .collect::<Option<Vec<_>>>()
    else {
        return Ok(None);
    };
    let k = x.dims().last().copied();
    if !x.device().is_cpu()
        || x.dtype() != DType::F32
        || use_candle()
        || mats.iter().any(|m| Some(m.3) != k)
    {
        return Ok(None);
    }
    let widths: Vec<usize> = mats.iter().map(|m| m.2).collect();
    let all = x.apply_op1_no_bwd(&QuantProducts { mats })?;
    let last = all.rank() - 1;
    let mut at = 0;
    let mut outs = Vec::with_capacity(widths.len());
    for n in widths {
        outs.push(all.narrow(last, at, n)?);
        at += n;
    }
    Ok(Some(outs))
}

/// candle's CPU thread pool, so that these products and candle's own share one set of threads
/// (two pools on the same cores would each spin while the other works).
pub(crate) struct CandlePool;

impl Parallel for CandlePool {
    fn run(&self, tasks: usize, f: &(dyn Fn(std::ops::Range<usize>) + Sync)) {
        candle_core::utils::barrier_pool().execute_chunked(tasks, f)
    }

    fn threads(&self) -> usize {
        candle_core::utils::get_num_threads()
    }
}

impl CandlePool {
    /// Fills `out`, consecutive parts of `len` values, with `f(part index, part)`: on the
    /// pool's threads when `split`, else on the calling thread (work too small for a hand-off).
    pub(crate) fn fill(
        out: &mut [f32],
        len: usize,
        split: bool,
        f: &(dyn Fn(usize, &mut [f32]) + Sync),
    ) {
        let parts = out.len() / len.max(1);
        if !split || CandlePool.threads() < 2 {
            for (i, part) in out.chunks_exact_mut(len.max(1)).enumerate() {
                f(i, part);
            }
            return;
        }
        let shared = lensd_kernels::Shared::new(out);
        CandlePool.run(parts, &|range| {
            for i in range {
                // SAFETY: part `i` lies inside `out`, and only this task writes it.
                f(i, unsafe { shared.slice(i * len, len) });
            }
        });
    }
}

/// Several matrices `(tensor, type, rows, columns)` with one input, outputs side by side.
struct QuantProducts {
    mats: Vec<(Arc<QTensor>, BlockType, usize, usize)>,
}

impl CustomOp1 for QuantProducts {
    fn name(&self) -> &'static str {
        "lensd-quant-matmul-many"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let k = self.mats.first().map_or(0, |m| m.3);
        let (x, m, mut dims) = input_rows(storage, layout, k)?;
        let data: Vec<_> = self
            .mats
            .iter()
            .map(|(q, ..)| q.data())
            .collect::<candle_core::Result<_>>()?;
        let mats: Vec<lensd_kernels::Matrix> = self
            .mats
            .iter()
            .zip(&data)
            .map(|(&(_, ty, n, _), w)| lensd_kernels::Matrix { ty, w, n })
            .collect();
        let total: usize = mats.iter().map(|a| a.n).sum();
        let mut out = vec![0f32; m * total];
        lensd_kernels::matmul_many(&mats, k, x, m, &mut out, &CandlePool)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        *dims.last_mut().expect("checked by input_rows") = total;
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

/// One quantized matrix `(tensor, type, rows, columns)` multiplied in f32.
struct WideProduct {
    q: Arc<QTensor>,
    ty: BlockType,
    n: usize,
    k: usize,
}

impl CustomOp1 for WideProduct {
    fn name(&self) -> &'static str {
        "lensd-wide-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, m, mut dims) = input_rows(storage, layout, self.k)?;
        let w = self.q.data()?;
        let mut out = vec![0f32; m * self.n];
        let level = lensd_kernels::Level::detect();
        lensd_kernels::wide::matmul(
            level,
            self.ty,
            &w,
            self.n,
            self.k,
            x,
            m,
            &mut out,
            &CandlePool,
        )
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        *dims.last_mut().expect("checked by input_rows") = self.n;
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

/// The input of a product as `m` rows of `k` values, with its dimensions.
fn input_rows<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    k: usize,
) -> candle_core::Result<(&'a [f32], usize, Vec<usize>)> {
    let Some(start) = layout.contiguous_offsets().map(|(s, _)| s) else {
        candle_core::bail!("the input of a quantized product is not contiguous: {layout:?}")
    };
    let dims = layout.shape().dims().to_vec();
    if dims.last() != Some(&k) {
        candle_core::bail!("input {dims:?} does not end in the matrices' {k} columns")
    }
    let m = layout.shape().elem_count() / k.max(1);
    Ok((&storage.as_slice::<f32>()?[start..start + m * k], m, dims))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::max_abs;
    use candle_core::{Device, Module};

    /// lensd's kernels on candle-quantized matrices of every covered type: as close to the
    /// dequantized product as candle's `QMatMul` (both quantize the activations to 8 bits), and
    /// their block types' dequantization equals candle's (a port of llama.cpp's reference).
    #[test]
    fn every_covered_type_multiplies_like_candle_and_dequantizes_alike() {
        let dev = &Device::Cpu;
        let (n, k) = (40, 1024);
        let w = Tensor::randn(0f32, 1.0, (n, k), dev).unwrap();
        // Rows with outliers, as residual streams have.
        let mut xv: Vec<f32> = Tensor::randn(0f32, 1.0, (5, k), dev)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for i in (7..xv.len()).step_by(301) {
            xv[i] *= 60.0;
        }
        let x = Tensor::from_vec(xv, (5, k), dev).unwrap();
        for dtype in [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q8_0,
            GgmlDType::Q4K,
            GgmlDType::Q5K,
            GgmlDType::Q6K,
        ] {
            let q = Arc::new(QTensor::quantize(&w, dtype).unwrap());
            let ty = block_type(dtype).unwrap();
            let mut ours = vec![0f32; n * k];
            ty.dequantize(&q.data().unwrap(), &mut ours);
            let theirs: Vec<f32> = q
                .dequantize(dev)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert_eq!(ours, theirs, "{dtype:?}: dequantization");
            let dense = q.dequantize(dev).unwrap();
            let want = x.matmul(&dense.t().unwrap()).unwrap();
            let got = forward(&q, &x).unwrap();
            let candle = QMatMul::QTensor(q.clone()).forward(&x).unwrap();
            let ours_err = max_abs(&(&got - &want).unwrap());
            let candle_err = max_abs(&(&candle - &want).unwrap());
            eprintln!(
                "{dtype:?}: lensd off by {ours_err}, candle by {candle_err}, of {}",
                max_abs(&want)
            );
            assert!(
                ours_err <= 1.5 * candle_err + 1e-3,
                "{dtype:?}: lensd off by {ours_err}, candle by {candle_err}"
            );
        }
    }

    /// A matrix kept in blocks and multiplied in f32: each value is the kernels' sequence of
    /// f32 multiply-adds over the dequantized row, to the bit, for an input of any rank; a
    /// block type the kernels lack multiplies the dequantized matrix.
    #[test]
    fn a_wide_matrix_multiplies_its_dequantized_rows_in_f32() {
        let dev = &Device::Cpu;
        let (n, k) = (13, 512);
        let w = Tensor::randn(0f32, 1.0, (n, k), dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 3, k), dev).unwrap();
        let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q6K] {
            let q = Arc::new(QTensor::quantize(&w, dtype).unwrap());
            let rows: Vec<f32> = q
                .dequantize(dev)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let got = forward_wide(&q, &x).unwrap();
            assert_eq!(got.dims(), [2, 3, n]);
            let got: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
            for i in 0..6 {
                for j in 0..n {
                    let want = lensd_kernels::wide::dot(
                        &xs[i * k..(i + 1) * k],
                        &rows[j * k..(j + 1) * k],
                    );
                    assert_eq!(
                        got[i * n + j].to_bits(),
                        want.to_bits(),
                        "{dtype:?} [{i}, {j}]"
                    );
                }
            }
        }
        let q = Arc::new(QTensor::quantize(&w, GgmlDType::Q2K).unwrap());
        let want = x
            .broadcast_matmul(&q.dequantize(dev).unwrap().t().unwrap())
            .unwrap();
        let got = forward_wide(&q, &x).unwrap();
        assert_eq!(max_abs(&(&got - &want).unwrap()), 0.0);
    }
}
