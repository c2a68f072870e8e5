//! The plain-Rust dot products of one weight row with one quantized activation row: the
//! kernels of CPUs without a SIMD path, and the tests' reference for the SIMD ones. Each
//! block's products are summed as integers; only the block's scales are floats.

use crate::act::{Act256, Act32};
use crate::blocks::{f16_at, k_scale_min, k_value, nibble, q5_0_value, q6k_value};

fn blocks32<'a>(
    w: &'a [u8],
    a: &'a [Act32],
    bytes: usize,
) -> impl Iterator<Item = (&'a [u8], &'a Act32)> {
    w.chunks_exact(bytes).zip(a)
}

/// `Σ q·y` over a block, `q` given by `value(i)`.
#[inline]
fn isum32(a: &Act32, value: impl Fn(usize) -> u8) -> i32 {
    (0..32).map(|i| value(i) as i32 * a.q[i] as i32).sum()
}

pub fn dot_q4_0(w: &[u8], a: &[Act32]) -> f32 {
    blocks32(w, a, 18)
        .map(|(b, a)| {
            f16_at(b, 0) * (a.d * isum32(a, |i| nibble(&b[2..18], i)) as f32 - 8.0 * a.dsum)
        })
        .sum()
}

pub fn dot_q4_1(w: &[u8], a: &[Act32]) -> f32 {
    blocks32(w, a, 20)
        .map(|(b, a)| {
            f16_at(b, 0) * a.d * isum32(a, |i| nibble(&b[4..20], i)) as f32 + f16_at(b, 2) * a.s
        })
        .sum()
}

pub fn dot_q5_0(w: &[u8], a: &[Act32]) -> f32 {
    blocks32(w, a, 22)
        .map(|(b, a)| f16_at(b, 0) * (a.d * isum32(a, |i| q5_0_value(b, i)) as f32 - 16.0 * a.dsum))
        .sum()
}

pub fn dot_q8_0(w: &[u8], a: &[Act32]) -> f32 {
    blocks32(w, a, 34)
        .map(|(b, a)| {
            let isum: i32 = (0..32)
                .map(|i| (b[2 + i] as i8) as i32 * a.q[i] as i32)
                .sum();
            f16_at(b, 0) * a.d * isum as f32
        })
        .sum()
}

/// `Q4_K` (`five` false) and `Q5_K`.
pub fn dot_k(w: &[u8], a: &[Act256], five: bool) -> f32 {
    let bytes = if five { 176 } else { 144 };
    w.chunks_exact(bytes)
        .zip(a)
        .map(|(b, a)| {
            let (mut sumi, mut summ) = (0i32, 0i32);
            for j in 0..8 {
                let (sc, m) = k_scale_min(&b[4..16], j);
                let dot: i32 = (32 * j..32 * (j + 1))
                    .map(|e| k_value(b, e, five) as i32 * a.q[e] as i32)
                    .sum();
                sumi += sc as i32 * dot;
                summ += m as i32 * (a.sums16[2 * j] as i32 + a.sums16[2 * j + 1] as i32);
            }
            a.d * (f16_at(b, 0) * sumi as f32 - f16_at(b, 2) * summ as f32)
        })
        .sum()
}

pub fn dot_q6k(w: &[u8], a: &[Act256]) -> f32 {
    w.chunks_exact(210)
        .zip(a)
        .map(|(b, a)| {
            let (mut sumi, mut sumb) = (0i32, 0i32);
            for j in 0..16 {
                let sc = b[192 + j] as i8 as i32;
                let dot: i32 = (16 * j..16 * (j + 1))
                    .map(|e| q6k_value(b, e) as i32 * a.q[e] as i32)
                    .sum();
                sumi += sc * dot;
                sumb += sc * a.sums16[j] as i32;
            }
            f16_at(b, 208) * a.d * (sumi - 32 * sumb) as f32
        })
        .sum()
}
