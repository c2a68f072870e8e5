//! The gated MLP's middle step, `act(gate) · up`, in one pass: SiLU (`x / (1 + exp(−x))`) or
//! GELU in its tanh form (`½x·(1 + tanh u)`, `u = √(2/π)·x·(1 + 0.044715·x²)`), each written
//! as PyTorch, candle and llama.cpp write it, with a polynomial `exp` (and `tanh` from it)
//! that the compiler vectorizes, where a library `exp` or `tanh` per value cannot be.
//!
//! The GELU keeps that form although `x / (1 + exp(−2u))` is the same function without the
//! cancellation of `1 + tanh u` for negative `x`: the models' reference implementations
//! compute the form with the cancellation, and following them keeps lensd's logits closer to
//! theirs (on Gemma-3-270M against llama.cpp, the exact form flipped a top-1 that the
//! reference form keeps).

/// The activation applied to the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Silu,
    GeluTanh,
}

/// `out[i] = act(gate[i]) · up[i]`.
pub fn gated(act: Gate, gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(
        gate.len() == up.len() && up.len() == out.len(),
        "gate, up and out differ in length"
    );
    match act {
        Gate::Silu => {
            for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
                *o = g / (1.0 + exp(-g)) * u;
            }
        }
        Gate::GeluTanh => {
            const C: f32 = 0.797_884_6; // √(2/π)
            for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
                *o = 0.5 * g * (1.0 + tanh(C * g * (1.0 + 0.044_715 * g * g))) * u;
            }
        }
    }
}

/// `exp(x)` in f32 for any `x` without a branch: the argument is clamped to
/// `[−87, 88]` (where the result stays a normal f32; beyond it, a sigmoid is 0 or 1 to f32
/// precision anyway) and reduced as in [`crate::logit_stats::exp_nonpositive`].
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    crate::logit_stats::exp_reduced(x)
}

/// `tanh(x)` as `±(1 − 2 / (exp(2|x|) + 1))`: within about 2⁻²³ of it in absolute terms,
/// which is what `1 + tanh x` needs.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let t = 1.0 - 2.0 / (exp(2.0 * x.abs()) + 1.0);
    t.copysign(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activations_match_their_definitions() {
        let gate: Vec<f32> = (-400..400).map(|i| i as f32 * 0.037).collect();
        let up: Vec<f32> = gate.iter().map(|g| 1.5 - g * 0.25).collect();
        let mut out = vec![0f32; gate.len()];
        for act in [Gate::Silu, Gate::GeluTanh] {
            gated(act, &gate, &up, &mut out);
            for ((&g, &u), &o) in gate.iter().zip(&up).zip(&out) {
                let g64 = g as f64;
                let a = match act {
                    Gate::Silu => g64 / (1.0 + (-g64).exp()),
                    Gate::GeluTanh => {
                        let c = (2.0 / std::f64::consts::PI).sqrt();
                        0.5 * g64 * (1.0 + (c * (g64 + 0.044715 * g64.powi(3))).tanh())
                    }
                };
                let want = a * u as f64;
                assert!(
                    (o as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()),
                    "{act:?}({g}) · {u} = {o}, want {want}"
                );
            }
        }
        // Extremes saturate instead of overflowing.
        gated(Gate::GeluTanh, &[-1e4, 1e4], &[1.0, 1.0], &mut out[..2]);
        assert!(out[0].abs() < 1e-30 && out[1] == 1e4, "{:?}", &out[..2]);
    }
}
