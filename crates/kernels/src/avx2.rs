//! The dot products of [`crate::portable`] with AVX2: 32 weight values unpacked to bytes at a
//! time, multiplied with the activations' bytes by `vpmaddubsw` (unsigned × signed, pairs summed
//! to i16, which cannot saturate: at most 128·127·2) and widened to i32 by `vpmaddwd`. The
//! integer sums equal the portable ones; only the float additions across blocks differ in order.
//!
//! A decoding step's kernels (`one`, `rows4`) read the blocks in place. A prompt's (`group`)
//! unpack eight weight rows once for all its activation rows, interleaved so that each 32-bit
//! lane holds one row's sums, and add up to `I16_SUMS` `vpmaddubsw` results as i16 before
//! widening (the most that cannot pass 32,767 for the type).
//!
//! Every function here requires AVX2, FMA and F16C; [`tiles32`] and [`tiles256`] hand out safe
//! wrappers, which [`crate::matmul`] selects only after `Level::available` found those features.

use std::arch::x86_64::*;

use crate::act::{Act256, Act32};
use crate::blocks::k_scale_min;
use std::cell::RefCell;

use crate::matmul::{GroupOut, Tiles, GROUP};
use crate::BlockType;

/// The tile kernels of a 32-value type.
pub(crate) fn tiles32(ty: BlockType) -> Tiles<Act32> {
    match ty {
        BlockType::Q4_0 => q4_0::tiles(),
        BlockType::Q4_1 => q4_1::tiles(),
        BlockType::Q5_0 => q5_0::tiles(),
        BlockType::Q8_0 => q8_0::tiles(),
        _ => unreachable!("{ty:?} has 256-value blocks"),
    }
}

/// The tile kernels of a 256-value type.
pub(crate) fn tiles256(ty: BlockType) -> Tiles<Act256> {
    match ty {
        BlockType::Q4K => q4_k::tiles(),
        BlockType::Q5K => q5_k::tiles(),
        BlockType::Q6K => q6_k::tiles(),
        _ => unreachable!("{ty:?} has 32-value blocks"),
    }
}

/// One block type's kernels as named functions (so that a profile says which ran): safe
/// wrappers, which the tables hand out, around `target_feature` functions holding the code.
macro_rules! kernels {
    ($m:ident, $tile:ident, $group:ident, $act:ty, $k:ty) => {
        mod $m {
            use super::*;

            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn one_avx2(w: &[u8], a: &[$act]) -> f32 {
                $tile::<$k, 1, 1>([w], [a])[0][0]
            }

            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn rows4_avx2(w: [&[u8]; 4], a: &[$act]) -> [f32; 4] {
                $tile::<$k, 4, 1>(w, [a]).map(|r| r[0])
            }

            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn group_avx2(w: [&[u8]; GROUP], acts: &[$act], out: &mut [GroupOut]) {
                $group::<$k>(w, acts, out)
            }

            // SAFETY (each function): reached only through `matmul_with`, which checked the CPU
            // has AVX2, FMA and F16C; the driver passes rows of equal block counts.
            fn one(w: &[u8], a: &[$act]) -> f32 {
                unsafe { one_avx2(w, a) }
            }

            fn rows4(w: [&[u8]; 4], a: &[$act]) -> [f32; 4] {
                unsafe { rows4_avx2(w, a) }
            }

            fn group(w: [&[u8]; GROUP], acts: &[$act], out: &mut [GroupOut]) {
                unsafe { group_avx2(w, acts, out) }
            }

            pub(super) fn tiles() -> Tiles<$act> {
                Tiles { one, rows4, group }
            }
        }
    };
}

kernels!(q4_0, tile32, group32, Act32, Q4_0);
kernels!(q4_1, tile32, group32, Act32, Q4_1);
kernels!(q5_0, tile32, group32, Act32, Q5_0);
kernels!(q8_0, tile32, group32, Act32, Q8_0);
kernels!(q4_k, tile256, group256, Act256, QK<false>);
kernels!(q5_k, tile256, group256, Act256, QK<true>);
kernels!(q6_k, tile256, group256, Act256, Q6K);
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f16_at(b: &[u8], at: usize) -> f32 {
    let bits = u16::from_le_bytes([b[at], b[at + 1]]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// 32 bytes at `p`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load32(p: &[u8]) -> __m256i {
    assert!(p.len() >= 32);
    // SAFETY: 32 readable bytes, checked above; unaligned load.
    unsafe { _mm256_loadu_si256(p.as_ptr() as *const __m256i) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load32i(p: &[i8]) -> __m256i {
    assert!(p.len() >= 32);
    // SAFETY: as `load32`.
    unsafe { _mm256_loadu_si256(p.as_ptr() as *const __m256i) }
}

/// A 32-value block's 16 packed nibbles as 32 bytes (0..16), values 0..16 then 16..32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn nibbles(qs: &[u8]) -> __m256i {
    assert!(qs.len() >= 16);
    // SAFETY: 16 readable bytes, checked above.
    let v = unsafe { _mm_loadu_si128(qs.as_ptr() as *const __m128i) };
    let both = _mm256_set_m128i(_mm_srli_epi16(v, 4), v);
    _mm256_and_si256(both, _mm256_set1_epi8(15))
}

/// Eight i32 sums of pairs of `u·y` products (`u` unsigned bytes, `y` signed bytes).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn udot(u: __m256i, y: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, y), _mm256_set1_epi16(1))
}

/// Byte `i` is 16 where bit `i` of `bits` is set, else 0.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn bits_to_16s(bits: u32) -> __m256i {
    let v = _mm256_set1_epi32(bits as i32);
    let spread = _mm256_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3,
        3, 3,
    );
    let bytes = _mm256_shuffle_epi8(v, spread);
    let mask = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, mask), mask);
    _mm256_and_si256(set, _mm256_set1_epi8(16))
}

/// Asks for the bytes at `at` of the rows the driver hands over next: it walks consecutive rows
/// of one matrix, so the next tile's row `r` starts `R` rows after this one's. Streaming the
/// weights from memory is what bounds a decoding step, and the hardware prefetcher alone does
/// not keep `R` interleaved streams ahead. A prefetch past the matrix's end is a harmless hint.
#[inline(always)]
unsafe fn prefetch_next_rows<const R: usize>(w: &[&[u8]; R], at: usize) {
    let ahead = R * w[0].len() + at;
    for row in w {
        _mm_prefetch::<_MM_HINT_T0>(row.as_ptr().wrapping_add(ahead) as *const i8);
    }
}

/// How a 32-value type's block becomes 32 unsigned bytes, and the term its block adds per unit
/// of the activations' sum `s` (its zero point: `−8·d`, `−16·d`, `Q4_1`'s `m`).
trait Kind32 {
    const BYTES: usize;
    /// `Q8_0`'s values are signed: multiplied as |q| × (y with q's sign).
    const SIGNED: bool = false;
    /// The offset multiplies the activations' f16-rounded `s` (`Q4_1`, as llama.cpp's `Q8_1`
    /// pairing does) rather than their exact `dsum`.
    const ROUNDED_SUM: bool = false;
    /// The zero point that the prompt kernels subtract from the integer sums (`Q4_0`, `Q5_0`).
    const ZERO: i32 = 0;
    /// How many `vpmaddubsw` results the prompt kernels add as i16 before widening: the most
    /// whose sum cannot pass 32,767 (each is at most `2·max q·127`).
    const I16_SUMS: usize;
    /// # Safety
    /// AVX2, FMA and F16C are present.
    unsafe fn unpack(b: &[u8]) -> __m256i;
    /// # Safety
    /// As `unpack`.
    unsafe fn offset(b: &[u8], d: f32) -> f32;
}

struct Q4_0;
struct Q4_1;
struct Q5_0;
struct Q8_0;

impl Kind32 for Q4_0 {
    const BYTES: usize = 18;
    const ZERO: i32 = 8;
    const I16_SUMS: usize = 8;
    #[inline(always)]
    unsafe fn unpack(b: &[u8]) -> __m256i {
        nibbles(&b[2..])
    }
    #[inline(always)]
    unsafe fn offset(_: &[u8], d: f32) -> f32 {
        -8.0 * d
    }
}

impl Kind32 for Q4_1 {
    const BYTES: usize = 20;
    const ROUNDED_SUM: bool = true;
    const I16_SUMS: usize = 8;
    #[inline(always)]
    unsafe fn unpack(b: &[u8]) -> __m256i {
        nibbles(&b[4..])
    }
    #[inline(always)]
    unsafe fn offset(b: &[u8], _: f32) -> f32 {
        f16_at(b, 2)
    }
}

impl Kind32 for Q5_0 {
    const BYTES: usize = 22;
    const ZERO: i32 = 16;
    const I16_SUMS: usize = 4;
    #[inline(always)]
    unsafe fn unpack(b: &[u8]) -> __m256i {
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        _mm256_or_si256(nibbles(&b[6..]), bits_to_16s(qh))
    }
    #[inline(always)]
    unsafe fn offset(_: &[u8], d: f32) -> f32 {
        -16.0 * d
    }
}

impl Kind32 for Q8_0 {
    const BYTES: usize = 34;
    const SIGNED: bool = true;
    const I16_SUMS: usize = 1;
    #[inline(always)]
    unsafe fn unpack(b: &[u8]) -> __m256i {
        load32(&b[2..])
    }
    #[inline(always)]
    unsafe fn offset(_: &[u8], _: f32) -> f32 {
        0.0
    }
}

/// `R` weight rows × `C` activation rows of a 32-value type: `R·C` independent accumulators, so
/// that the multiply-adds of consecutive blocks do not wait on each other, and each unpacked
/// weight block and loaded activation block is used `C` and `R` times.
///
/// # Safety
/// AVX2, FMA and F16C are present; every row holds the same number of blocks.
#[inline(always)]
unsafe fn tile32<K: Kind32, const R: usize, const C: usize>(
    w: [&[u8]; R],
    a: [&[Act32]; C],
) -> [[f32; C]; R] {
    let nb = a[0].len();
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    let mut off = [[0f32; C]; R];
    for blk in 0..nb {
        prefetch_next_rows(&w, blk * K::BYTES);
        let wb: [&[u8]; R] = std::array::from_fn(|r| &w[r][blk * K::BYTES..(blk + 1) * K::BYTES]);
        let q: [__m256i; R] = std::array::from_fn(|r| K::unpack(wb[r]));
        let dw: [f32; R] = std::array::from_fn(|r| f16_at(wb[r], 0));
        let ow: [f32; R] = std::array::from_fn(|r| K::offset(wb[r], dw[r]));
        for c in 0..C {
            let ab = &a[c][blk];
            let y = load32i(&ab.q);
            for r in 0..R {
                let dot = if K::SIGNED {
                    udot(_mm256_sign_epi8(q[r], q[r]), _mm256_sign_epi8(y, q[r]))
                } else {
                    udot(q[r], y)
                };
                let scale = _mm256_set1_ps(dw[r] * ab.d);
                acc[r][c] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(dot), acc[r][c]);
                off[r][c] += ow[r] * if K::ROUNDED_SUM { ab.s } else { ab.dsum };
            }
        }
    }
    std::array::from_fn(|r| std::array::from_fn(|c| hsum(acc[r][c]) + off[r][c]))
}

/// The eight 6-bit scales and the eight mins (each twice, to pair with the 16-value sums).
#[inline]
fn k_scales(s: &[u8]) -> ([i16; 8], [i16; 16]) {
    let mut sc = [0i16; 8];
    let mut mins = [0i16; 16];
    for j in 0..8 {
        let (a, m) = k_scale_min(s, j);
        sc[j] = a as i16;
        mins[2 * j] = m as i16;
        mins[2 * j + 1] = m as i16;
    }
    (sc, mins)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_i16x16(v: &[i16; 16]) -> __m256i {
    // SAFETY: 32 readable bytes.
    unsafe { _mm256_loadu_si256(v.as_ptr() as *const __m256i) }
}

/// How a 256-value type's superblock becomes eight chunks of 32 unsigned bytes with their
/// scales, and how its offset (the K types' mins, `Q6_K`'s `−32`) is applied.
trait Kind256 {
    const BYTES: usize;
    type Prep: Copy;
    /// # Safety
    /// AVX2, FMA and F16C are present (for every method).
    unsafe fn prep(b: &[u8]) -> Self::Prep;
    /// Values `32·i .. 32·i + 32`.
    unsafe fn chunk(b: &[u8], i: usize) -> __m256i;
    /// The 16 i16 multipliers of chunk `i`'s `vpmaddubsw` pairs.
    unsafe fn mult(p: &Self::Prep, i: usize) -> __m256i;
    /// `acc` plus the superblock's contribution, given its integer sums `sumi` (8 lanes).
    unsafe fn finish(b: &[u8], p: &Self::Prep, a: &Act256, sumi: __m256i, acc: __m256) -> __m256;
    /// The 16 multipliers of the activations' 16-value sums in the offset, the superblock's
    /// scale and the offset's scale, for [`Interleaved256`].
    unsafe fn offsets(b: &[u8], p: &Self::Prep) -> (__m256i, f32, f32);
    /// The offset is an integer term of the sums (`Q6_K`'s `−32`, times 32 after the product)
    /// rather than a float one with its own scale (the K types' mins).
    const INT_OFFSET: bool;
    /// As [`Kind32::I16_SUMS`], within the four `vpmaddubsw` results of a 16-value half.
    const I16_SUMS: usize;
}

/// `Q4_K` (`FIVE` false) and `Q5_K`.
struct QK<const FIVE: bool>;

impl<const FIVE: bool> Kind256 for QK<FIVE> {
    const BYTES: usize = if FIVE { 176 } else { 144 };
    /// The eight scales; the eight mins, each twice to pair with the 16-value sums.
    type Prep = ([i16; 8], __m256i);

    #[inline(always)]
    unsafe fn prep(b: &[u8]) -> Self::Prep {
        let (sc, mins) = k_scales(&b[4..16]);
        (sc, load_i16x16(&mins))
    }

    #[inline(always)]
    unsafe fn chunk(b: &[u8], i: usize) -> __m256i {
        let qs_at = if FIVE { 48 } else { 16 };
        let q = load32(&b[qs_at + 32 * (i / 2)..]);
        let q = if i.is_multiple_of(2) {
            q
        } else {
            _mm256_srli_epi16(q, 4)
        };
        let q = _mm256_and_si256(q, _mm256_set1_epi8(15));
        if FIVE {
            let qh = load32(&b[16..48]);
            let bit = _mm256_and_si256(
                _mm256_srl_epi16(qh, _mm_cvtsi32_si128(i as i32)),
                _mm256_set1_epi8(1),
            );
            _mm256_or_si256(q, _mm256_slli_epi16(bit, 4))
        } else {
            q
        }
    }

    #[inline(always)]
    unsafe fn mult(p: &Self::Prep, i: usize) -> __m256i {
        _mm256_set1_epi16(p.0[i])
    }

    const INT_OFFSET: bool = false;
    const I16_SUMS: usize = 4;

    #[inline(always)]
    unsafe fn offsets(b: &[u8], p: &Self::Prep) -> (__m256i, f32, f32) {
        (p.1, f16_at(b, 0), f16_at(b, 2))
    }

    #[inline(always)]
    unsafe fn finish(b: &[u8], p: &Self::Prep, a: &Act256, sumi: __m256i, acc: __m256) -> __m256 {
        let mins = _mm256_madd_epi16(load_i16x16(&a.sums16), p.1);
        let acc = _mm256_fmadd_ps(
            _mm256_set1_ps(f16_at(b, 0) * a.d),
            _mm256_cvtepi32_ps(sumi),
            acc,
        );
        _mm256_fnmadd_ps(
            _mm256_set1_ps(f16_at(b, 2) * a.d),
            _mm256_cvtepi32_ps(mins),
            acc,
        )
    }
}

struct Q6K;

impl Kind256 for Q6K {
    const BYTES: usize = 210;
    /// The 16 scales widened to i16.
    type Prep = __m256i;

    #[inline(always)]
    unsafe fn prep(b: &[u8]) -> __m256i {
        let s = &b[192..208];
        _mm256_cvtepi8_epi16(_mm_loadu_si128(s.as_ptr() as *const __m128i))
    }

    #[inline(always)]
    unsafe fn chunk(b: &[u8], i: usize) -> __m256i {
        let (h, quarter) = (i / 4, i % 4);
        let ql = load32(&b[64 * h + 32 * (quarter % 2)..]);
        let low = if quarter < 2 {
            ql
        } else {
            _mm256_srli_epi16(ql, 4)
        };
        let low = _mm256_and_si256(low, _mm256_set1_epi8(15));
        let qh = load32(&b[128 + 32 * h..]);
        let high = _mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * quarter as i32));
        let high = _mm256_and_si256(high, _mm256_set1_epi8(3));
        _mm256_or_si256(low, _mm256_slli_epi16(high, 4))
    }

    #[inline(always)]
    unsafe fn mult(p: &__m256i, i: usize) -> __m256i {
        // Chunk i's two 16-value halves have scales 2i and 2i + 1: spread each over 8 lanes.
        let both = _mm256_permutevar8x32_epi32(*p, _mm256_set1_epi32(i as i32));
        _mm256_shuffle_epi8(
            both,
            _mm256_setr_epi8(
                0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3,
                2, 3, 2, 3,
            ),
        )
    }

    const INT_OFFSET: bool = true;
    const I16_SUMS: usize = 2;

    #[inline(always)]
    unsafe fn offsets(b: &[u8], p: &__m256i) -> (__m256i, f32, f32) {
        (*p, f16_at(b, 208), 0.0)
    }

    #[inline(always)]
    unsafe fn finish(b: &[u8], p: &__m256i, a: &Act256, sumi: __m256i, acc: __m256) -> __m256 {
        let offset = _mm256_slli_epi32(_mm256_madd_epi16(load_i16x16(&a.sums16), *p), 5);
        let sumi = _mm256_sub_epi32(sumi, offset);
        _mm256_fmadd_ps(
            _mm256_set1_ps(f16_at(b, 208) * a.d),
            _mm256_cvtepi32_ps(sumi),
            acc,
        )
    }
}

/// [`tile32`] for the 256-value types.
///
/// # Safety
/// As [`tile32`].
#[inline(always)]
unsafe fn tile256<K: Kind256, const R: usize, const C: usize>(
    w: [&[u8]; R],
    a: [&[Act256]; C],
) -> [[f32; C]; R] {
    let nb = a[0].len();
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    for blk in 0..nb {
        prefetch_next_rows(&w, blk * K::BYTES);
        let wb: [&[u8]; R] = std::array::from_fn(|r| &w[r][blk * K::BYTES..(blk + 1) * K::BYTES]);
        let prep: [K::Prep; R] = std::array::from_fn(|r| K::prep(wb[r]));
        let mut sumi = [[_mm256_setzero_si256(); C]; R];
        for i in 0..8 {
            let q: [__m256i; R] = std::array::from_fn(|r| K::chunk(wb[r], i));
            let m: [__m256i; R] = std::array::from_fn(|r| K::mult(&prep[r], i));
            for c in 0..C {
                let y = load32i(&a[c][blk].q[32 * i..]);
                for r in 0..R {
                    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(q[r], y), m[r]);
                    sumi[r][c] = _mm256_add_epi32(sumi[r][c], p);
                }
            }
        }
        for r in 0..R {
            for c in 0..C {
                acc[r][c] = K::finish(wb[r], &prep[r], &a[c][blk], sumi[r][c], acc[r][c]);
            }
        }
    }
    std::array::from_fn(|r| std::array::from_fn(|c| hsum(acc[r][c])))
}

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
/// AVX2, FMA and F16C are present; every activation row holds at least `w.len()` blocks.
#[inline(always)]
unsafe fn tile32i<K: Kind32, const C: usize>(w: &[Interleaved32], a: [&[Act32]; C]) -> [__m256; C] {
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
                let p = _mm256_maddubs_epi16(q, y);
                add_products(&mut part[c], &mut sum[c], p, g, K::I16_SUMS, ones);
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
///
/// # Safety
/// As [`tile32i`].
#[inline(always)]
unsafe fn tile256i<K: Kind256, const C: usize>(
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
        unsafe fn $name<K: $kind>(w: [&[u8]; GROUP], acts: &[$act], out: &mut [[f32; GROUP]]) {
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
                let v = $tile::<K, TILE_ACTS>(&rows, std::array::from_fn(|c| arow(i + c)));
                for (c, v) in v.into_iter().enumerate() {
                    _mm256_storeu_ps(out[i + c].as_mut_ptr(), v);
                }
                i += TILE_ACTS;
            }
            for (i, o) in out.iter_mut().enumerate().skip(i) {
                let [v] = $tile::<K, 1>(&rows, [arow(i)]);
                _mm256_storeu_ps(o.as_mut_ptr(), v);
            }
            $rows.set(rows);
        }
    };
}

group_fn!(group32, Kind32, Act32, ROWS32, interleave32, tile32i);
group_fn!(group256, Kind256, Act256, ROWS256, interleave256, tile256i);
