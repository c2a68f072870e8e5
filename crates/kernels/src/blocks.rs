//! GGML's block layouts and their dequantization (the definition every kernel must agree with).
//!
//! Byte layouts, little-endian, as llama.cpp writes them:
//! - `Q4_0` (18 bytes / 32 values): `d: f16`, `qs[16]`; value `i < 16` is `d·((qs[i] & 15) − 8)`,
//!   value `i + 16` is `d·((qs[i] >> 4) − 8)`.
//! - `Q4_1` (20 / 32): `d: f16`, `m: f16`, `qs[16]`; `d·q + m` with `q` as in `Q4_0` without the 8.
//! - `Q5_0` (22 / 32): `d: f16`, `qh: u32`, `qs[16]`; bit `i` of `qh` is the fifth bit of value
//!   `i`; `d·(q − 16)`.
//! - `Q8_0` (34 / 32): `d: f16`, `qs: [i8; 32]`.
//! - `Q4_K` (144 / 256): `d, dmin: f16`, `scales[12]` (eight 6-bit scales and mins), `qs[128]`;
//!   value `e` is `d·sc·q − dmin·m` for sub-block `e / 32`; byte `qs[32·(e/64) + e%32]` holds it,
//!   in the low nibble for the first 32 of each 64, the high for the next.
//! - `Q5_K` (176 / 256): as `Q4_K` with `qh[32]` before `qs`: bit `e / 32` of `qh[e % 32]` is
//!   the fifth bit.
//! - `Q6_K` (210 / 256): `ql[128]`, `qh[64]`, `scales: [i8; 16]`, `d: f16`; value `e` is
//!   `d·scales[e/16]·(q − 32)` with `q` six bits from `ql` and `qh` (see [`q6k_value`]).

use half::f16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockType {
    Q4_0,
    Q4_1,
    Q5_0,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

impl BlockType {
    pub const ALL: [BlockType; 7] = [
        BlockType::Q4_0,
        BlockType::Q4_1,
        BlockType::Q5_0,
        BlockType::Q8_0,
        BlockType::Q4K,
        BlockType::Q5K,
        BlockType::Q6K,
    ];

    /// Values per block.
    pub fn block_values(self) -> usize {
        match self {
            BlockType::Q4_0 | BlockType::Q4_1 | BlockType::Q5_0 | BlockType::Q8_0 => 32,
            BlockType::Q4K | BlockType::Q5K | BlockType::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            BlockType::Q4_0 => 18,
            BlockType::Q4_1 => 20,
            BlockType::Q5_0 => 22,
            BlockType::Q8_0 => 34,
            BlockType::Q4K => 144,
            BlockType::Q5K => 176,
            BlockType::Q6K => 210,
        }
    }

    /// GGML's type number (as in a GGUF header).
    pub fn ggml_type(self) -> u32 {
        match self {
            BlockType::Q4_0 => 2,
            BlockType::Q4_1 => 3,
            BlockType::Q5_0 => 6,
            BlockType::Q8_0 => 8,
            BlockType::Q4K => 12,
            BlockType::Q5K => 13,
            BlockType::Q6K => 14,
        }
    }

    pub fn from_ggml_type(t: u32) -> Option<BlockType> {
        BlockType::ALL.into_iter().find(|b| b.ggml_type() == t)
    }

    /// Bytes of `rows` rows of `k` values.
    pub fn bytes_for(self, rows: usize, k: usize) -> Option<usize> {
        if !k.is_multiple_of(self.block_values()) {
            return None;
        }
        rows.checked_mul(k / self.block_values())?
            .checked_mul(self.block_bytes())
    }

    /// Dequantizes whole blocks: `out.len()` must be `blocks.len() / block_bytes · block_values`.
    /// (On one thread, with the portable code; [`crate::dequantize`] splits the work and uses
    /// the CPU's vector instructions.)
    #[inline(always)]
    pub fn dequantize(self, blocks: &[u8], out: &mut [f32]) {
        let (bb, bv) = (self.block_bytes(), self.block_values());
        assert_eq!(blocks.len() % bb, 0, "not whole {self:?} blocks");
        assert_eq!(out.len(), blocks.len() / bb * bv, "output length");
        for (b, o) in blocks.chunks_exact(bb).zip(out.chunks_exact_mut(bv)) {
            match self {
                BlockType::Q4_0 => dequant_q4_0(b, o),
                BlockType::Q4_1 => dequant_q4_1(b, o),
                BlockType::Q5_0 => dequant_q5_0(b, o),
                BlockType::Q8_0 => dequant_q8_0(b, o),
                BlockType::Q4K => dequant_k(b, o, false),
                BlockType::Q5K => dequant_k(b, o, true),
                BlockType::Q6K => dequant_q6k(b, o),
            }
        }
    }
}

#[inline]
pub(crate) fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// The unsigned 4-bit value `i` (0..32) of a 32-value block's 16 packed bytes.
#[inline]
pub(crate) fn nibble(qs: &[u8], i: usize) -> u8 {
    if i < 16 {
        qs[i] & 15
    } else {
        qs[i - 16] >> 4
    }
}

/// The unsigned 5-bit value `i` of a `Q5_0` block (`b` is the whole block).
#[inline]
pub(crate) fn q5_0_value(b: &[u8], i: usize) -> u8 {
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    nibble(&b[6..22], i) | ((((qh >> i) & 1) as u8) << 4)
}

/// Sub-block `j`'s (0..8) 6-bit scale and min of a `Q4_K`/`Q5_K` block's 12 scale bytes.
#[inline]
pub(crate) fn k_scale_min(s: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// The unsigned 4- or 5-bit value `e` (0..256) of a `Q4_K` (`five` false) or `Q5_K` block.
#[inline]
pub(crate) fn k_value(b: &[u8], e: usize, five: bool) -> u8 {
    let qs = if five { &b[48..176] } else { &b[16..144] };
    let byte = qs[32 * (e / 64) + e % 32];
    let low = if e % 64 < 32 { byte & 15 } else { byte >> 4 };
    if five {
        low | (((b[16 + e % 32] >> (e / 32)) & 1) << 4)
    } else {
        low
    }
}

/// The unsigned 6-bit value `e` (0..256) of a `Q6_K` block.
#[inline]
pub fn q6k_value(b: &[u8], e: usize) -> u8 {
    let (ql, qh) = (&b[0..128], &b[128..192]);
    let (half, r) = (e / 128, e % 128);
    let (quarter, l) = (r / 32, r % 32);
    let low_byte = ql[64 * half + 32 * (quarter % 2) + l];
    let low = if quarter < 2 {
        low_byte & 15
    } else {
        low_byte >> 4
    };
    let high = (qh[32 * half + l] >> (2 * quarter)) & 3;
    low | (high << 4)
}

// The dequantizers below are written as plain loops over a block's bytes so that, compiled
// with AVX2 (`crate::dequantize`), they vectorize; their products are the same f32 operations,
// in the same order, as llama.cpp's reference (tests/llamacpp_dequant.rs checks bit equality).

/// A 32-value block's 16 packed bytes and its two halves of output, as arrays: with their
/// lengths known, the loops over them compile to whole vectors without bounds checks.
#[inline(always)]
fn halves<'a>(
    q: &'a [u8],
    o: &'a mut [f32],
) -> (&'a [u8; 16], &'a mut [f32; 16], &'a mut [f32; 16]) {
    let q: &[u8; 16] = q.try_into().expect("16 packed bytes");
    let (lo, hi) = o.split_at_mut(16);
    (
        q,
        lo.try_into().expect("a block of 32 values"),
        hi.try_into().expect("a block of 32 values"),
    )
}

#[inline(always)]
fn dequant_q4_0(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    let (q, lo, hi) = halves(&b[2..18], o);
    for i in 0..16 {
        lo[i] = d * ((q[i] & 15) as f32 - 8.0);
        hi[i] = d * ((q[i] >> 4) as f32 - 8.0);
    }
}

#[inline(always)]
fn dequant_q4_1(b: &[u8], o: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let (q, lo, hi) = halves(&b[4..20], o);
    for i in 0..16 {
        lo[i] = d * (q[i] & 15) as f32 + m;
        hi[i] = d * (q[i] >> 4) as f32 + m;
    }
}

#[inline(always)]
fn dequant_q5_0(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let (q, lo, hi) = halves(&b[6..22], o);
    for i in 0..16 {
        let l = (q[i] & 15) as u32 | ((qh >> i) & 1) << 4;
        let h = (q[i] >> 4) as u32 | ((qh >> (i + 16)) & 1) << 4;
        lo[i] = d * (l as f32 - 16.0);
        hi[i] = d * (h as f32 - 16.0);
    }
}

#[inline(always)]
fn dequant_q8_0(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    for (v, &q) in o.iter_mut().zip(&b[2..34]) {
        *v = d * (q as i8) as f32;
    }
}

#[inline(always)]
fn dequant_k(b: &[u8], o: &mut [f32], five: bool) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let qs = if five { &b[48..176] } else { &b[16..144] };
    let qh = &b[16..48];
    for (j, o) in o.chunks_exact_mut(32).enumerate() {
        let (sc, m) = k_scale_min(&b[4..16], j);
        let (scale, min) = (d * sc as f32, dmin * m as f32);
        let bytes = &qs[32 * (j / 2)..32 * (j / 2) + 32];
        let shift = 4 * (j % 2) as u32;
        for l in 0..32 {
            let mut q = (bytes[l] >> shift) & 15;
            if five {
                q |= ((qh[l] >> j) & 1) << 4;
            }
            o[l] = scale * q as f32 - min;
        }
    }
}

#[inline(always)]
fn dequant_q6k(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 208);
    for (h, o) in o.chunks_exact_mut(128).enumerate() {
        let (ql, qh) = (&b[64 * h..64 * h + 64], &b[128 + 32 * h..160 + 32 * h]);
        let sc =
            |quarter: usize, l: usize| d * (b[192 + 8 * h + 2 * quarter + l / 16] as i8) as f32;
        for l in 0..32 {
            let q = [
                (ql[l] & 15) | (qh[l] & 3) << 4,
                (ql[l + 32] & 15) | ((qh[l] >> 2) & 3) << 4,
                (ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4,
                (ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4,
            ];
            for (quarter, q) in q.into_iter().enumerate() {
                o[32 * quarter + l] = sc(quarter, l) * (q as f32 - 32.0);
            }
        }
    }
}
