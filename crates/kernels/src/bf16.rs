//! Products `x · Wᵀ` of f32 rows with an f32 matrix, both rounded to bf16 and accumulated in
//! f32: half the bytes and, with AVX-512 BF16, twice the multiply-adds per instruction of an
//! f32 product. A lens analysis's unembedding (every layer × position against the whole
//! vocabulary) is the product this is for.
//!
//! The rows are rounded once ([`Bf16Rows`]); the matrix is rounded a few rows at a time as the
//! product reads it, so no bf16 copy of it is kept. Each output value accumulates in one lane
//! of one register, pair of values after pair, as `VDPBF16PS` defines it (the odd value's
//! product added first, then the even one's, each rounded to f32; a product of two bf16 is
//! exact). [`dot`] computes the same sequence in plain Rust, so the kernel's results are
//! known to the bit: the tests compare them exactly, and a caller can recompute one value
//! without the kernel.

use crate::{BlockType, KernelError};

/// `v` rounded to bf16 as `VCVTNE2PS2BF16` rounds it: to nearest, ties to even; an f32
/// subnormal becomes a zero of its sign, a NaN a quiet NaN.
pub fn to_bf16(v: f32) -> u16 {
    let bits = v.to_bits();
    if v.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    if bits & 0x7F80_0000 == 0 {
        return ((bits >> 16) & 0x8000) as u16;
    }
    let rounded = bits.wrapping_add(0x7FFF + ((bits >> 16) & 1));
    (rounded >> 16) as u16
}

pub fn from_bf16(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// One product as the kernel computes it: `x` and `w` are bf16 values of one row each (the same
/// even length), added pair by pair, the odd value of a pair first.
pub fn dot(x: &[u16], w: &[u16]) -> f32 {
    debug_assert_eq!(x.len(), w.len());
    let mut acc = 0f32;
    for (x, w) in x.chunks_exact(2).zip(w.chunks_exact(2)) {
        acc += from_bf16(x[1]) * from_bf16(w[1]);
        acc += from_bf16(x[0]) * from_bf16(w[0]);
    }
    acc
}

/// One row of f32 as bf16, padded with a zero to an even length.
pub fn row_to_bf16(v: &[f32]) -> Vec<u16> {
    let mut out: Vec<u16> = v.iter().map(|&v| to_bf16(v)).collect();
    if out.len() % 2 == 1 {
        out.push(0);
    }
    out
}

/// Whether this CPU runs the bf16 products in hardware (AVX-512 F, BW and BF16); without it
/// [`matmul`] computes the same values in plain Rust, far more slowly, so callers that only want
/// speed use f32 instead. `LENSD_CPU_KERNELS=portable` turns it off, as for the other kernels.
pub fn fast() -> bool {
    static FAST: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FAST.get_or_init(|| {
        if std::env::var("LENSD_CPU_KERNELS").as_deref() == Ok("portable") {
            return false;
        }
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512bf16")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

/// `rows` rows of `d` values rounded to bf16, in groups of [`GROUP_ROWS`] rows: pair `p` of a
/// group is `GROUP_ROWS` consecutive `u32`, row `r`'s values `2p` (low half) and `2p + 1` (high
/// half), so that the kernel broadcasts each from a fixed offset. The last group is padded with
/// zero rows, odd `d` with a zero value.
pub struct Bf16Rows {
    rows: usize,
    d: usize,
    pairs: usize,
    groups: Vec<u32>,
}

/// Rows of [`Bf16Rows`] that the kernel takes at once: with two panels of 16 matrix rows that
/// is 24 accumulators of the 32 registers.
const GROUP_ROWS: usize = 12;

impl Bf16Rows {
    /// `x` holds `rows` rows of `d` values.
    pub fn new(x: &[f32], rows: usize, d: usize) -> Result<Bf16Rows, KernelError> {
        if x.len() != rows * d {
            return Err(KernelError::Length {
                what: "the rows",
                want: rows * d,
                got: x.len(),
            });
        }
        let pairs = d.div_ceil(2);
        let mut groups = vec![0u32; rows.div_ceil(GROUP_ROWS) * pairs * GROUP_ROWS];
        for (i, row) in x.chunks_exact(d.max(1)).enumerate().take(rows) {
            let group = &mut groups[(i / GROUP_ROWS) * pairs * GROUP_ROWS..][..pairs * GROUP_ROWS];
            for (p, pair) in row.chunks(2).enumerate() {
                let lo = to_bf16(pair[0]) as u32;
                let hi = pair.get(1).map_or(0, |&v| to_bf16(v) as u32);
                group[p * GROUP_ROWS + i % GROUP_ROWS] = lo | hi << 16;
            }
        }
        Ok(Bf16Rows {
            rows,
            d,
            pairs,
            groups,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Row `i` as bf16 values, padded to an even length (what [`dot`] takes).
    pub fn row(&self, i: usize) -> Vec<u16> {
        let group = &self.groups[(i / GROUP_ROWS) * self.pairs * GROUP_ROWS..];
        (0..self.pairs)
            .flat_map(|p| {
                let v = group[p * GROUP_ROWS + i % GROUP_ROWS];
                [v as u16, (v >> 16) as u16]
            })
            .collect()
    }
}

/// The matrix of a product: rows of f32, or rows of quantized blocks, each widened to f32 as
/// the product reads it (so that no f32 copy of the matrix is written).
#[derive(Clone, Copy)]
enum Matrix<'a> {
    F32(&'a [f32]),
    Blocks { ty: BlockType, data: &'a [u8] },
}

impl Matrix<'_> {
    /// Matrix row `j` of `d` values as bf16 pairs, on the portable path.
    fn row_bf16(&self, j: usize, d: usize, n: usize) -> Vec<u16> {
        match *self {
            Matrix::F32(w) => row_to_bf16(&w[j * d..(j + 1) * d]),
            Matrix::Blocks { ty, data } => {
                let rb = data.len() / n;
                let mut row = vec![0f32; d];
                ty.dequantize(&data[j * rb..(j + 1) * rb], &mut row);
                row_to_bf16(&row)
            }
        }
    }
}

/// A thread's buffers for the products (their contents do not matter between calls).
#[derive(Default)]
pub struct Scratch {
    /// Matrix rows rounded to bf16 and spread over their panels.
    rounded: Vec<u32>,
    /// One quantized matrix row widened to f32.
    widened: Vec<f32>,
}

/// `out[i * n + j] = dot(x[i], W[j])` for every row `i` of `x` and `j < n`, where `w` holds `n`
/// rows of `x`'s `d` values in f32, rounded to bf16 as they are read. Runs on the calling
/// thread.
pub fn matmul(
    w: &[f32],
    n: usize,
    x: &Bf16Rows,
    out: &mut [f32],
    scratch: &mut Scratch,
) -> Result<(), KernelError> {
    if w.len() != n * x.d {
        return Err(KernelError::Length {
            what: "the matrix",
            want: n * x.d,
            got: w.len(),
        });
    }
    product(Matrix::F32(w), n, x, out, scratch)
}

/// [`matmul`] for a matrix of `n` rows of quantized blocks (`ty`, `x`'s `d` values a row):
/// each row is widened to f32 as [`BlockType::dequantize`] widens it, then rounded to bf16,
/// one row at a time as the product reads it. The values are those of [`matmul`] on the
/// dequantized matrix, to the bit.
pub fn matmul_blocks(
    ty: BlockType,
    data: &[u8],
    n: usize,
    x: &Bf16Rows,
    out: &mut [f32],
    scratch: &mut Scratch,
) -> Result<(), KernelError> {
    crate::matmul::check_weights(ty, data, n, x.d)?;
    product(Matrix::Blocks { ty, data }, n, x, out, scratch)
}

fn product(
    w: Matrix,
    n: usize,
    x: &Bf16Rows,
    out: &mut [f32],
    scratch: &mut Scratch,
) -> Result<(), KernelError> {
    if out.len() != x.rows * n {
        return Err(KernelError::Length {
            what: "the output",
            want: x.rows * n,
            got: out.len(),
        });
    }
    if x.rows == 0 || n == 0 {
        return Ok(());
    }
    #[cfg(target_arch = "x86_64")]
    if fast() {
        // SAFETY: `fast` found AVX-512 F, BW and BF16; the sizes were checked by the callers.
        unsafe { avx512::matmul(w, n, x, out, scratch) };
        return Ok(());
    }
    let _ = scratch;
    let rows: Vec<Vec<u16>> = (0..x.rows).map(|i| x.row(i)).collect();
    for j in 0..n {
        let wj = w.row_bf16(j, x.d, n);
        for (i, xi) in rows.iter().enumerate() {
            out[i * n + j] = dot(xi, &wj);
        }
    }
    Ok(())
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{Bf16Rows, Matrix, Scratch, GROUP_ROWS};

    /// Matrix rows of a panel: one per lane, so that a product's 16 values are consecutive
    /// outputs of one row.
    const PANEL: usize = 16;
    /// Panels rounded and multiplied at once (32 matrix rows, about 37 KB for d = 576).
    const PANELS: usize = 2;

    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn matmul(
        w: Matrix,
        n: usize,
        x: &Bf16Rows,
        out: &mut [f32],
        scratch: &mut Scratch,
    ) {
        let (d, pairs) = (x.d, x.pairs);
        scratch.rounded.resize((PANELS + 1) * PANEL * pairs, 0);
        let (panels, rows) = scratch.rounded.split_at_mut(PANELS * PANEL * pairs);
        let widened = &mut scratch.widened;
        if let Matrix::Blocks { .. } = w {
            widened.resize(d, 0.0);
        }
        let groups = x.groups.len() / (pairs * GROUP_ROWS);
        for j0 in (0..n).step_by(PANELS * PANEL) {
            let len = (n - j0).min(PANELS * PANEL);
            // Each panel's matrix rows rounded one after the other (zeros past the matrix's
            // end), then transposed so that each row lies in its lane of the panel.
            for (s, panel) in panels.chunks_exact_mut(PANEL * pairs).enumerate() {
                for (r, row) in rows.chunks_exact_mut(pairs).enumerate() {
                    let j = j0 + s * PANEL + r;
                    if j >= j0 + len {
                        row.fill(0);
                        continue;
                    }
                    match w {
                        Matrix::F32(w) => round_row(&w[j * d..(j + 1) * d], row),
                        Matrix::Blocks { ty, data } => {
                            let rb = data.len() / n;
                            // Inlined here, so compiled with this function's instructions.
                            ty.dequantize(&data[j * rb..(j + 1) * rb], widened);
                            round_row(widened, row);
                        }
                    }
                }
                transpose(rows, pairs, panel);
            }
            for g in 0..groups {
                let first = g * GROUP_ROWS;
                let group = &x.groups[first * pairs..(first + GROUP_ROWS) * pairs];
                let acc = tile(panels, pairs, group);
                let mask = |from: usize| -> __mmask16 {
                    match len.saturating_sub(from) {
                        0 => 0,
                        l if l >= PANEL => 0xFFFF,
                        l => (1u16 << l) - 1,
                    }
                };
                for (r, acc) in acc.iter().enumerate().take(x.rows - first) {
                    let o = out.as_mut_ptr().add((first + r) * n + j0);
                    for (s, v) in acc.iter().enumerate() {
                        // Masked: only the matrix's rows, inside output row `first + r`.
                        _mm512_mask_storeu_ps(o.add(s * PANEL), mask(s * PANEL), *v);
                    }
                }
            }
        }
    }

    /// `rows` (16 rows of `pairs` values) into `panel` (`pairs` groups of 16, value `p` of
    /// row `r` at `16·p + r`): 16 × 16 values at a time in registers, the rest one by one.
    #[target_feature(enable = "avx512f")]
    unsafe fn transpose(rows: &[u32], pairs: usize, panel: &mut [u32]) {
        debug_assert!(rows.len() == PANEL * pairs && panel.len() == PANEL * pairs);
        let whole = pairs - pairs % PANEL;
        let (src, dst) = (rows.as_ptr() as *const i32, panel.as_mut_ptr() as *mut i32);
        for p0 in (0..whole).step_by(PANEL) {
            // SAFETY: row r's values p0..p0 + 16 lie within `rows` (p0 + 16 ≤ pairs).
            let r: [__m512i; 16] = std::array::from_fn(|i| unsafe {
                _mm512_loadu_si512(src.add(i * pairs + p0).cast())
            });
            // Within each 128-bit lane: pairs of rows interleaved, then fours of rows.
            let t: [__m512i; 16] = std::array::from_fn(|i| {
                let (a, b) = (r[i & !1], r[i | 1]);
                if i % 2 == 0 {
                    _mm512_unpacklo_epi32(a, b)
                } else {
                    _mm512_unpackhi_epi32(a, b)
                }
            });
            // u[4q + c] holds, in lane L, value 4L + c of rows 4q..4q + 4.
            let u: [__m512i; 16] = std::array::from_fn(|i| {
                let (q, c) = (i / 4, i % 4);
                let (a, b) = (t[4 * q + c / 2], t[4 * q + 2 + c / 2]);
                if c % 2 == 0 {
                    _mm512_unpacklo_epi64(a, b)
                } else {
                    _mm512_unpackhi_epi64(a, b)
                }
            });
            for c in 0..4 {
                // Lanes 0 and 2, then 1 and 3, of rows 0..8 and of rows 8..16.
                let v0 = _mm512_shuffle_i32x4::<0x88>(u[c], u[4 + c]);
                let v1 = _mm512_shuffle_i32x4::<0xDD>(u[c], u[4 + c]);
                let v2 = _mm512_shuffle_i32x4::<0x88>(u[8 + c], u[12 + c]);
                let v3 = _mm512_shuffle_i32x4::<0xDD>(u[8 + c], u[12 + c]);
                // Value p0 + c + 4m of all 16 rows, for m = 0..4.
                let cols = [
                    _mm512_shuffle_i32x4::<0x88>(v0, v2),
                    _mm512_shuffle_i32x4::<0x88>(v1, v3),
                    _mm512_shuffle_i32x4::<0xDD>(v0, v2),
                    _mm512_shuffle_i32x4::<0xDD>(v1, v3),
                ];
                for (m, col) in cols.into_iter().enumerate() {
                    // SAFETY: value p0 + c + 4m < pairs of every row: 16 values in `panel`.
                    _mm512_storeu_si512(dst.add((p0 + c + 4 * m) * PANEL).cast(), col);
                }
            }
        }
        for p in whole..pairs {
            for r in 0..PANEL {
                panel[p * PANEL + r] = rows[r * pairs + p];
            }
        }
    }

    /// One group of rows against two panels: `acc[r][s]` holds row `r`'s products with panel
    /// `s`'s 16 matrix rows.
    #[inline(always)]
    unsafe fn tile(panels: &[u32], pairs: usize, group: &[u32]) -> [[__m512; PANELS]; GROUP_ROWS] {
        let pa = panels.as_ptr() as *const __m512i;
        let pb = pa.add(pairs);
        let xp = group.as_ptr() as *const i32;
        let mut acc = [[_mm512_setzero_ps(); PANELS]; GROUP_ROWS];
        for p in 0..pairs {
            let wa: __m512bh = std::mem::transmute(_mm512_loadu_si512(pa.add(p)));
            let wb: __m512bh = std::mem::transmute(_mm512_loadu_si512(pb.add(p)));
            let xr = xp.add(p * GROUP_ROWS);
            for (r, acc) in acc.iter_mut().enumerate() {
                let xv: __m512bh = std::mem::transmute(_mm512_set1_epi32(*xr.add(r)));
                acc[0] = _mm512_dpbf16_ps(acc[0], xv, wa);
                acc[1] = _mm512_dpbf16_ps(acc[1], xv, wb);
            }
        }
        acc
    }

    /// One f32 row into `out` as pairs of bf16 (the last one padded with a zero), 32 values an
    /// instruction.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn round_row(row: &[f32], out: &mut [u32]) {
        let values = out.len() * 2;
        let dst = out.as_mut_ptr() as *mut i16;
        let mut k = 0;
        while k < row.len() {
            let left = row.len() - k;
            let mask = |from: usize| -> __mmask16 {
                match left.saturating_sub(from) {
                    0 => 0,
                    l if l >= 16 => 0xFFFF,
                    l => (1u16 << l) - 1,
                }
            };
            let p = row.as_ptr().add(k);
            let lo = _mm512_maskz_loadu_ps(mask(0), p);
            let hi = _mm512_maskz_loadu_ps(mask(16), p.add(16));
            let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            // Masked lanes are rounded zeros; the store writes only the padded row's values.
            let store = values - k;
            let smask: __mmask32 = if store >= 32 {
                u32::MAX
            } else {
                (1u32 << store) - 1
            };
            _mm512_mask_storeu_epi16(dst.add(k), smask, v);
            k += 32;
        }
    }
}
