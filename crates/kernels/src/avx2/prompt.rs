//! A prompt's products (`group`): eight weight rows unpacked once for all the prompt's
//! activation rows and interleaved four values at a time, so that one `vpmaddubsw` with four
//! activation bytes broadcast gives partial sums of all eight rows, one row per 32-bit lane.
//! Up to `I16_SUMS` `vpmaddubsw` results add as i16 before widening (the most that cannot pass
//! 32,767 for the type). With AVX-512 VNNI (`V`), the 32-value types' products are one
//! `vpdpbusd` each instead, four byte products added into i32 lanes with no intermediate i16:
//! the same integer sums, so the same results to the bit.

use std::arch::x86_64::*;
use std::cell::RefCell;

use super::{f16_at, load_i16x16, Kind256, Kind32};
use crate::act::{Act256, Act32};
use crate::matmul::GROUP;

/// Activation rows of a prompt tile: each unpacked weight block serves this many at a time.
const TILE_ACTS: usize = 4;

/// Eight weight rows' 32-value blocks, unpacked and interleaved: `q[g]` holds values
/// `4g..4g + 4` of each row in turn, so that one `vpmaddubsw` with four activation bytes
/// broadcast gives partial sums of all eight rows, one row per 32-bit lane, and a block's
/// scales apply to the eight rows with one multiply.
#[derive(Clone, Copy, Default)]
#[repr(C, align(32))]
struct Interleaved32 {
    /// The values as unsigned bytes (`Q8_0`: their magnitudes).
    q: [[u8; 32]; 8],
    /// `Q8_0`'s values with their signs, which the activations take on.
    sign: [[u8; 32]; 8],
    d: [f32; 8],
    /// `Q4_1`'s `m`, which multiplies the activations' rounded sum.
    m: [f32; 8],
}

/// Eight weight rows' 256-value superblocks, unpacked and interleaved as [`Interleaved32`]'s
/// blocks are.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct Interleaved256 {
    /// `q[8i + g]`: values `32i + 4g .. 32i + 4g + 4` of each row in turn.
    q: [[u8; 32]; 64],
    /// `mult[2i + h]`: the multipliers of the `vpmaddubsw` pairs of values `32i + 16h ..
    /// 32i + 16h + 16`, row `r`'s in i16 lanes `2r` and `2r + 1`.
    mult: [[i16; 16]; 16],
    /// `off[p]`: the multipliers of the activations' 16-value sums `2p` and `2p + 1` in the
    /// offset, row `r`'s in lanes `2r` and `2r + 1`.
    off: [[i16; 16]; 8],
    d: [f32; 8],
    dmin: [f32; 8],
}

impl Default for Interleaved256 {
    fn default() -> Self {
        Interleaved256 {
            q: [[0; 32]; 64],
            mult: [[0; 16]; 16],
            off: [[0; 16]; 8],
            d: [0.0; 8],
            dmin: [0.0; 8],
        }
    }
}

thread_local! {
    /// Each thread's unpacked weight rows, kept between calls to spare the allocation.
    static ROWS32: RefCell<Vec<Interleaved32>> = const { RefCell::new(Vec::new()) };
    static ROWS256: RefCell<Vec<Interleaved256>> = const { RefCell::new(Vec::new()) };
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn store32(to: &mut [u8; 32], v: __m256i) {
    // SAFETY: 32 writable bytes.
    unsafe { _mm256_storeu_si256(to.as_mut_ptr() as *mut __m256i, v) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_bytes(v: &[u8; 32]) -> __m256i {
    // SAFETY: 32 readable bytes.
    unsafe { _mm256_loadu_si256(v.as_ptr() as *const __m256i) }
}

/// Block `blk` of the eight rows `w`.
///
/// # Safety
/// AVX2, FMA and F16C are present; every row holds block `blk`.
#[inline(always)]
unsafe fn interleave32<K: Kind32>(w: &[&[u8]; GROUP], blk: usize) -> Interleaved32 {
    let mut vals = [[0u8; 32]; GROUP];
    let mut signs = [[0u8; 32]; GROUP];
    let mut u = Interleaved32::default();
    for r in 0..GROUP {
        let b = &w[r][blk * K::BYTES..(blk + 1) * K::BYTES];
        let q = K::unpack(b);
        if K::SIGNED {
            store32(&mut signs[r], q);
            store32(&mut vals[r], _mm256_sign_epi8(q, q));
        } else {
            store32(&mut vals[r], q);
        }
        u.d[r] = f16_at(b, 0);
        if K::ROUNDED_SUM {
            u.m[r] = K::offset(b, 0.0);
        }
    }
    for g in 0..8 {
        for r in 0..GROUP {
            u.q[g][4 * r..4 * r + 4].copy_from_slice(&vals[r][4 * g..4 * g + 4]);
            if K::SIGNED {
                u.sign[g][4 * r..4 * r + 4].copy_from_slice(&signs[r][4 * g..4 * g + 4]);
            }
        }
    }
    u
}

/// Superblock `blk` of the eight rows `w`.
///
/// # Safety
/// AVX2, FMA and F16C are present; every row holds superblock `blk`.
#[inline(always)]
unsafe fn interleave256<K: Kind256>(w: &[&[u8]; GROUP], blk: usize) -> Interleaved256 {
    let mut u = Interleaved256::default();
    for (r, row) in w.iter().enumerate() {
        let b = &row[blk * K::BYTES..(blk + 1) * K::BYTES];
        let p = K::prep(b);
        let mut vals = [[0u8; 32]; 8];
        let mut mult = [[0i16; 16]; 8];
        for i in 0..8 {
            store32(&mut vals[i], K::chunk(b, i));
            _mm256_storeu_si256(mult[i].as_mut_ptr() as *mut __m256i, K::mult(&p, i));
        }
        let (off16, d, dmin) = K::offsets(b, &p);
        let mut off = [0i16; 16];
        _mm256_storeu_si256(off.as_mut_ptr() as *mut __m256i, off16);
        u.d[r] = d;
        u.dmin[r] = dmin;
        for i in 0..8 {
            for g in 0..8 {
                u.q[8 * i + g][4 * r..4 * r + 4].copy_from_slice(&vals[i][4 * g..4 * g + 4]);
            }
            // A half's eight pairs share one multiplier.
            for h in 0..2 {
                u.mult[2 * i + h][2 * r] = mult[i][8 * h];
                u.mult[2 * i + h][2 * r + 1] = mult[i][8 * h];
            }
        }
        for p in 0..8 {
            u.off[p][2 * r] = off[2 * p];
            u.off[p][2 * r + 1] = off[2 * p + 1];
        }
    }
    u
}

/// Adds the `vpmaddubsw` result `p`, the `at`-th of a run, to the i16 sums `part`; every
/// `every` results, widens `part` to i32 with `vpmaddwd` by `mult` into `sum`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn add_products(
    part: &mut __m256i,
    sum: &mut __m256i,
    p: __m256i,
    at: usize,
    every: usize,
    mult: __m256i,
) {
    *part = if at.is_multiple_of(every) {
        p
    } else {
        _mm256_add_epi16(*part, p)
    };
    if at % every == every - 1 {
        *sum = _mm256_add_epi32(*sum, _mm256_madd_epi16(*part, mult));
    }
}

/// Eight interleaved weight rows × `C` activation rows of a 32-value type: for each activation
/// row, its products with the eight weight rows. The zero points of `Q4_0` and `Q5_0` are
/// taken from the integer sums (`Σ(q − z)·y`, as llama.cpp computes them).
///
/// # Safety
/// AVX2, FMA and F16C are present, and with `V` AVX-512 VNNI and VL; every activation row holds
/// at least `w.len()` blocks.
#[inline(always)]
unsafe fn tile32i<K: Kind32, const V: bool, const C: usize>(
    w: &[Interleaved32],
    a: [&[Act32]; C],
) -> [__m256; C] {
    let nb = w.len();
    assert!(a.iter().all(|a| a.len() >= nb));
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); C];
    for (blk, u) in w.iter().enumerate() {
        // SAFETY: `blk < nb`, within every activation row (asserted above).
        let ab: [&Act32; C] = std::array::from_fn(|c| unsafe { a[c].get_unchecked(blk) });
        let mut sum = [_mm256_setzero_si256(); C];
        let mut part = [_mm256_setzero_si256(); C];
        for g in 0..8 {
            let q = load_bytes(&u.q[g]);
            let sign = if K::SIGNED { load_bytes(&u.sign[g]) } else { q };
            for c in 0..C {
                // SAFETY: bytes `4g..4g + 4` of the 32.
                let y4 =
                    unsafe { std::ptr::read_unaligned(ab[c].q.as_ptr().add(4 * g) as *const i32) };
                let y = _mm256_set1_epi32(y4);
                let y = if K::SIGNED {
                    _mm256_sign_epi8(y, sign)
                } else {
                    y
                };
                if V {
                    sum[c] = _mm256_dpbusd_epi32(sum[c], q, y);
                } else {
                    let p = _mm256_maddubs_epi16(q, y);
                    add_products(&mut part[c], &mut sum[c], p, g, K::I16_SUMS, ones);
                }
            }
        }
        let dw = _mm256_loadu_ps(u.d.as_ptr());
        for c in 0..C {
            let s = if K::ZERO != 0 {
                _mm256_sub_epi32(sum[c], _mm256_set1_epi32(K::ZERO * ab[c].isum))
            } else {
                sum[c]
            };
            let scale = _mm256_mul_ps(dw, _mm256_set1_ps(ab[c].d));
            acc[c] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(s), acc[c]);
            if K::ROUNDED_SUM {
                let m = _mm256_loadu_ps(u.m.as_ptr());
                acc[c] = _mm256_fmadd_ps(m, _mm256_set1_ps(ab[c].s), acc[c]);
            }
        }
    }
    acc
}

/// Eight interleaved weight rows × `C` activation rows of a 256-value type, as [`tile32i`].
/// `V` changes nothing: the K types' sub-block scales multiply pairs of i16 sums in
/// `vpmaddwd`, which `vpdpbusd`'s i32 sums would need a 32-bit multiply per half for.
///
/// # Safety
/// As [`tile32i`].
#[inline(always)]
unsafe fn tile256i<K: Kind256, const V: bool, const C: usize>(
    w: &[Interleaved256],
    a: [&[Act256]; C],
) -> [__m256; C] {
    let nb = w.len();
    assert!(a.iter().all(|a| a.len() >= nb));
    let mut acc = [_mm256_setzero_ps(); C];
    for (blk, u) in w.iter().enumerate() {
        // SAFETY: `blk < nb`, within every activation row (asserted above).
        let ab: [&Act256; C] = std::array::from_fn(|c| unsafe { a[c].get_unchecked(blk) });
        let mut sumi = [_mm256_setzero_si256(); C];
        for i in 0..8 {
            for h in 0..2 {
                let m = load_i16x16(&u.mult[2 * i + h]);
                let mut part = [_mm256_setzero_si256(); C];
                for gg in 0..4 {
                    let g = 4 * h + gg;
                    let q = load_bytes(&u.q[8 * i + g]);
                    for c in 0..C {
                        // SAFETY: bytes `32i + 4g .. + 4` of the 256.
                        let y4 = unsafe {
                            std::ptr::read_unaligned(
                                ab[c].q.as_ptr().add(32 * i + 4 * g) as *const i32
                            )
                        };
                        let p = _mm256_maddubs_epi16(q, _mm256_set1_epi32(y4));
                        add_products(&mut part[c], &mut sumi[c], p, gg, K::I16_SUMS, m);
                    }
                }
            }
        }
        let d = _mm256_loadu_ps(u.d.as_ptr());
        for c in 0..C {
            let mut offs = _mm256_setzero_si256();
            for p in 0..8 {
                // SAFETY: sums `2p` and `2p + 1` of the 16.
                let s2 = unsafe {
                    std::ptr::read_unaligned(ab[c].sums16.as_ptr().add(2 * p) as *const i32)
                };
                let o = _mm256_madd_epi16(_mm256_set1_epi32(s2), load_i16x16(&u.off[p]));
                offs = _mm256_add_epi32(offs, o);
            }
            let scale = _mm256_mul_ps(d, _mm256_set1_ps(ab[c].d));
            acc[c] = if K::INT_OFFSET {
                let s = _mm256_sub_epi32(sumi[c], _mm256_slli_epi32(offs, 5));
                _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(s), acc[c])
            } else {
                let a = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(sumi[c]), acc[c]);
                let smin = _mm256_mul_ps(_mm256_loadu_ps(u.dmin.as_ptr()), _mm256_set1_ps(ab[c].d));
                _mm256_fnmadd_ps(smin, _mm256_cvtepi32_ps(offs), a)
            };
        }
    }
    acc
}

/// The eight weight rows `w` against every activation row of `acts` (`out.len()` rows): each
/// block is unpacked and interleaved once, then serves the activation rows [`TILE_ACTS`] at a
/// time.
macro_rules! group_fn {
    ($name:ident, $kind:ident, $act:ty, $rows:ident, $interleave:ident, $tile:ident) => {
        /// # Safety
        /// AVX2, FMA and F16C are present; `acts` holds `out.len()` rows of the weight rows'
        /// block count.
        #[inline(always)]
        pub(super) unsafe fn $name<K: $kind, const V: bool>(
            w: [&[u8]; GROUP],
            acts: &[$act],
            out: &mut [[f32; GROUP]],
        ) {
            let m = out.len();
            if m == 0 {
                return;
            }
            let nb = acts.len() / m;
            let mut rows = $rows.take();
            rows.clear();
            for blk in 0..nb {
                rows.push($interleave::<K>(&w, blk));
            }
            let arow = |i: usize| &acts[i * nb..(i + 1) * nb];
            let mut i = 0;
            while i + TILE_ACTS <= m {
                let v = $tile::<K, V, TILE_ACTS>(&rows, std::array::from_fn(|c| arow(i + c)));
                for (c, v) in v.into_iter().enumerate() {
                    _mm256_storeu_ps(out[i + c].as_mut_ptr(), v);
                }
                i += TILE_ACTS;
            }
            for (i, o) in out.iter_mut().enumerate().skip(i) {
                let [v] = $tile::<K, V, 1>(&rows, [arow(i)]);
                _mm256_storeu_ps(o.as_mut_ptr(), v);
            }
            $rows.set(rows);
        }
    };
}

group_fn!(group32, Kind32, Act32, ROWS32, interleave32, tile32i);
group_fn!(group256, Kind256, Act256, ROWS256, interleave256, tile256i);
