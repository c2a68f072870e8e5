//! Activations quantized to 8 bits for the integer dot products.
//!
//! - [`Act32`] pairs with the 32-value types: one scale `d` per 32 values (`d = max|x| / 127`)
//!   and `d·Σq`, which folds the weights' offset (`−8`, `−16`, or `Q4_1`'s `m`) into one
//!   multiply per block.
//! - [`Act256`] pairs with the K types: one scale per 256 values and the integer sums of each
//!   16 values, which fold the K types' mins and `Q6_K`'s `−32`.
//!
//! Both are quantized as llama.cpp's x86 build quantizes them, so that lensd's products agree
//! with llama.cpp's on the same file: `Act32`'s `d` and `s` are rounded to f16 as its `Q8_0`
//! and `Q8_1` store them (up to 2⁻¹¹ relative error per block, which a deep model compounds:
//! Gemma-3-270M's logits move by up to 0.2 without the rounding), `Act256` keeps `d` in f32
//! with `q = round(−127/max · x)` as its `Q8_K` does, and values round to nearest, ties to even.

#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct Act32 {
    pub d: f32,
    /// `d·Σq` rounded to f16, as llama.cpp's `Q8_1` stores it (`Q4_1`'s products use it).
    pub s: f32,
    /// `d·Σq` in f32: the weights' zero points of `Q4_0` and `Q5_0`, which llama.cpp applies to
    /// the integers, multiply it.
    pub dsum: f32,
    /// `Σq`: the prompt kernels subtract the zero points from the integer sums instead.
    pub isum: i32,
    pub q: [i8; 32],
}

#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct Act256 {
    pub d: f32,
    pub q: [i8; 256],
    pub sums16: [i16; 16],
}

impl Default for Act32 {
    fn default() -> Self {
        Act32 {
            d: 0.0,
            s: 0.0,
            dsum: 0.0,
            isum: 0,
            q: [0; 32],
        }
    }
}

impl Default for Act256 {
    fn default() -> Self {
        Act256 {
            d: 0.0,
            q: [0; 256],
            sums16: [0; 16],
        }
    }
}

/// Round to nearest, ties to even, for `|v| < 2²²`, without a call to a rounding function
/// (which the baseline x86-64 target cannot inline): adding 1.5·2²³ leaves the integer in the
/// mantissa's low bits. NaN gives an arbitrary value.
#[inline(always)]
fn round_even(v: f32) -> i32 {
    ((v + 12_582_912.0f32).to_bits() as i32).wrapping_sub(0x4B40_0000)
}

/// The value as the nearest f16 stores it.
#[inline(always)]
fn through_f16(v: f32) -> f32 {
    half::f16::from_f32(v).to_f32()
}

/// Quantizes one row (`x.len()` a multiple of 32).
pub fn quantize_row32(x: &[f32], out: &mut [Act32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::Level::detect().avx2() {
        // SAFETY: the CPU has AVX2 (`detect` checked).
        return unsafe { quantize_row32_avx2(x, out) };
    }
    quantize_row32_any(x, out)
}

/// Quantizes one row (`x.len()` a multiple of 256).
pub fn quantize_row256(x: &[f32], out: &mut [Act256]) {
    #[cfg(target_arch = "x86_64")]
    if crate::Level::detect().avx2() {
        // SAFETY: as in `quantize_row32`.
        return unsafe { quantize_row256_avx2(x, out) };
    }
    quantize_row256_any(x, out)
}

/// The same code compiled with AVX2 (the compiler vectorizes it; the results are identical).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_row32_avx2(x: &[f32], out: &mut [Act32]) {
    quantize_row32_any(x, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_row256_avx2(x: &[f32], out: &mut [Act256]) {
    quantize_row256_any(x, out)
}

#[inline(always)]
fn quantize_row32_any(x: &[f32], out: &mut [Act32]) {
    debug_assert_eq!(x.len(), out.len() * 32);
    for (a, x) in out.iter_mut().zip(x.chunks_exact(32)) {
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        for (q, &v) in a.q.iter_mut().zip(x) {
            *q = round_even(v * id).clamp(-127, 127) as i8;
        }
        a.isum = a.q.iter().map(|&v| v as i32).sum::<i32>();
        let sum = a.isum as f32;
        a.d = through_f16(d);
        a.s = through_f16(d * sum);
        a.dsum = a.d * sum;
    }
}

#[inline(always)]
fn quantize_row256_any(x: &[f32], out: &mut [Act256]) {
    debug_assert_eq!(x.len(), out.len() * 256);
    for (a, x) in out.iter_mut().zip(x.chunks_exact(256)) {
        // The value of largest magnitude, with its sign (the first of equals).
        let max = x
            .iter()
            .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        if max == 0.0 {
            *a = Act256::default();
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in a.q.iter_mut().zip(x) {
            *q = round_even(iscale * v).min(127) as i8;
        }
        a.d = 1.0 / iscale;
        for (s, q) in a.sums16.iter_mut().zip(a.q.chunks_exact(16)) {
            *s = q.iter().map(|&v| v as i16).sum();
        }
    }
}
