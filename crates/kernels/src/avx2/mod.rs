//! The dot products of [`crate::portable`] with AVX2: 32 weight values unpacked to bytes at a
//! time, multiplied with the activations' bytes by `vpmaddubsw` (unsigned × signed, pairs summed
//! to i16, which cannot saturate: at most 128·127·2) and widened to i32 by `vpmaddwd`. The
//! integer sums equal the portable ones; only the float additions across blocks differ in order.
//!
//! A decoding step's kernel (`one`, here) reads the blocks in place; a prompt's
//! (`group`, in `prompt`) unpack eight weight rows once for all its activation rows.
//!
//! Every function here requires AVX2, FMA and F16C; [`tiles32`] and [`tiles256`] hand out safe
//! wrappers, which [`crate::matmul`] selects only after `Level::available` found those features.

use std::arch::x86_64::*;

use crate::act::{Act256, Act32};
use crate::blocks::k_scale_min;
use crate::matmul::{GroupOut, Tiles, GROUP};

mod prompt;
use crate::BlockType;
use prompt::{group256, group32};

/// The tile kernels of a 32-value type; `vnni`: the prompt's with `vpdpbusd` (the CPU has
/// AVX-512 VNNI and VL).
pub(crate) fn tiles32(ty: BlockType, vnni: bool) -> Tiles<Act32> {
    match (ty, vnni) {
        (BlockType::Q4_0, false) => q4_0::tiles(),
        (BlockType::Q4_1, false) => q4_1::tiles(),
        (BlockType::Q5_0, false) => q5_0::tiles(),
        (BlockType::Q8_0, false) => q8_0::tiles(),
        (BlockType::Q4_0, true) => q4_0::tiles_vnni(),
        (BlockType::Q4_1, true) => q4_1::tiles_vnni(),
        (BlockType::Q5_0, true) => q5_0::tiles_vnni(),
        (BlockType::Q8_0, true) => q8_0::tiles_vnni(),
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
    ($m:ident, $tile:ident, $group:ident, $act:ty, $k:ty $(, $vnni:ident)?) => {
        mod $m {
            use super::*;
            $(
            #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
            unsafe fn group_vnni(w: [&[u8]; GROUP], acts: &[$act], out: &mut [GroupOut]) {
                $group::<$k, true>(w, acts, out)
            }

            // SAFETY: reached only through `matmul_with` at `Level::Avx512Vnni`, which checked
            // the CPU has AVX2, FMA, F16C and AVX-512 F, VL and VNNI.
            fn $vnni(w: [&[u8]; GROUP], acts: &[$act], out: &mut [GroupOut]) {
                unsafe { group_vnni(w, acts, out) }
            }

            pub(super) fn tiles_vnni() -> Tiles<$act> {
                Tiles { one, group: $vnni }
            }
            )?

            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn one_avx2(w: &[u8], a: &[$act]) -> f32 {
                $tile::<$k, 1, 1>([w], [a])[0][0]
            }

            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn group_avx2(w: [&[u8]; GROUP], acts: &[$act], out: &mut [GroupOut]) {
                $group::<$k, false>(w, acts, out)
            }

            // SAFETY (each function): reached only through `matmul_with`, which checked the CPU
            // has AVX2, FMA and F16C; the driver passes rows of equal block counts.
            fn one(w: &[u8], a: &[$act]) -> f32 {
                unsafe { one_avx2(w, a) }
            }

            fn group(w: [&[u8]; GROUP], acts: &[$act], out: &mut [GroupOut]) {
                unsafe { group_avx2(w, acts, out) }
            }

            pub(super) fn tiles() -> Tiles<$act> {
                Tiles { one, group }
            }
        }
    };
}

kernels!(q4_0, tile32, group32, Act32, Q4_0, group_with_vnni);
kernels!(q4_1, tile32, group32, Act32, Q4_1, group_with_vnni);
kernels!(q5_0, tile32, group32, Act32, Q5_0, group_with_vnni);
kernels!(q8_0, tile32, group32, Act32, Q8_0, group_with_vnni);
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
/// of one matrix, so the next tile's row `r` starts `R` rows after this one's. A prefetch past
/// the matrix's end is a harmless hint.
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

/// `R` weight rows × `C` activation rows of a 32-value type: `R·C` independent accumulators, and
/// each unpacked weight block and loaded activation block used `C` and `R` times. A decoding
/// step's `one` runs it at 1 × 1: four weight rows at once streamed a large matrix more slowly
/// on a Zen 4 (see `run_rows`).
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
