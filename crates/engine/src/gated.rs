//! `act(gate) · up` of a gated MLP on the CPU as one operation ([`lensd_kernels::gated`]):
//! one pass over the two inputs, vectorized, instead of an activation through the C
//! library's `exp` or `tanh` for each value and then a separate product.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};
use lensd_kernels::gated::Gate;

use crate::config::Activation;
use crate::weights::quant_product::CandlePool;

/// `act(g) · u` for `[rows, n]` f32 tensors on the CPU (each row's values adjacent, as the
/// columns of a wider product are); `None` otherwise, for the caller's general path.
pub fn gated(act: Activation, g: &Tensor, u: &Tensor) -> candle_core::Result<Option<Tensor>> {
    let fits = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32 && t.rank() == 2;
    if !(fits(g) && fits(u)) || g.dims() != u.dims() {
        return Ok(None);
    }
    let gate = match act {
        Activation::Silu => Gate::Silu,
        Activation::GeluTanh => Gate::GeluTanh,
    };
    Ok(Some(g.apply_op2_no_bwd(u, &Gated(gate))?))
}

struct Gated(Gate);

/// Rows of `n` values `stride` apart from `start`.
fn rows<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<(&'a [f32], usize, usize)> {
    let st = l.stride();
    if st[1] != 1 {
        candle_core::bail!("the gate's or up's values are not adjacent: strides {st:?}");
    }
    Ok((s.as_slice::<f32>()?, l.start_offset(), st[0]))
}

impl CustomOp2 for Gated {
    fn name(&self) -> &'static str {
        "lensd-gated"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, n) = gl.shape().dims2()?;
        let (g, g0, gst) = rows(gs, gl)?;
        let (u, u0, ust) = rows(us, ul)?;
        let mut out = vec![0f32; m * n];
        let row = |i: usize, o: &mut [f32]| {
            let gi = &g[g0 + i * gst..g0 + i * gst + n];
            let ui = &u[u0 + i * ust..u0 + i * ust + n];
            lensd_kernels::gated::gated(self.0, gi, ui, o);
        };
        // A decoding step's row is too short to be worth a hand-off.
        CandlePool::fill(&mut out, n, m * n >= 1 << 15, &row);
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// On column views of a wider matrix (as a joint gate-and-up product gives), the same
    /// values as candle's activation and product, for both activations.
    #[test]
    fn views_give_candles_values() {
        let dev = &Device::Cpu;
        for m in [1, 40] {
            let both = (Tensor::randn(0f32, 1.0, (m, 2000), dev).unwrap() * 3.0).unwrap();
            let (g, u) = (
                both.narrow(1, 0, 1000).unwrap(),
                both.narrow(1, 1000, 1000).unwrap(),
            );
            for act in [Activation::Silu, Activation::GeluTanh] {
                let got = gated(act, &g, &u).unwrap().expect("f32 on the CPU");
                let a = match act {
                    Activation::Silu => candle_nn::ops::silu(&g).unwrap(),
                    Activation::GeluTanh => g.gelu().unwrap(),
                };
                let want = (a * &u).unwrap();
                let diff = (got - &want).unwrap().abs().unwrap();
                let scale = (want.abs().unwrap() + 1.0).unwrap();
                let worst = crate::weights::max_abs(&(diff / scale).unwrap());
                assert!(worst < 2e-6, "{act:?}, {m} rows: {worst}");
            }
        }
        let bf16 = Tensor::zeros((2, 3), DType::BF16, dev).unwrap();
        assert!(gated(Activation::Silu, &bf16, &bf16).unwrap().is_none());
    }
}
