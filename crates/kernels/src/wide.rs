//! `x · Wᵀ` in f32 for a `W` kept in GGML's quantized blocks: a base computed in f32 without
//! an f32 copy of its matrices. A strip of weight rows is dequantized into a small buffer that
//! stays in cache, and multiplied there with every row of `x` in f32 multiply-adds; the file's
//! blocks are all that is kept, so loading such a base costs what loading the stored one does.
//!
//! Every value is one fixed sequence of f32 operations, the same on every CPU and for any
//! number of rows or threads ([`dot`]): 16 partial sums, lane `l` summing the products of the
//! positions `k ≡ l (mod 16)` in order with fused multiply-adds, then folded in halves
//! (`s[l] + s[l + 8]`, then `+ 4`, `+ 2`, `+ 1`). The rows are therefore whole multiples of 16
//! values, as every block type's rows are (32 or 256 values a block).

use std::ops::Range;

use crate::matmul::{check_len, check_weights, Parallel, Shared, TASK_MACS};
use crate::{BlockType, KernelError, Level};

/// Partial sums of a value: the lanes of one AVX-512 register.
const LANES: usize = 16;
thread_local! {
    /// A thread's dequantized strip for [`matmul`] (`STRIP` rows of the longest rows it met).
    static STRIP_BUFFER: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Rows of `x` and of `W` that one tile multiplies: 24 accumulators of the 32 registers.
const TILE_X: usize = 4;
const TILE_W: usize = 6;
/// Weight rows dequantized at once: whole tiles, about 110 KB of f32 at 576 values a row.
const STRIP: usize = 8 * TILE_W;

/// `Σₖ x[k]·w[k]` as the kernels compute it (the module's sequence). `x.len()` must equal
/// `w.len()` and be a multiple of 16.
pub fn dot(x: &[f32], w: &[f32]) -> f32 {
    assert_eq!(x.len(), w.len(), "dot of different lengths");
    assert!(
        x.len().is_multiple_of(LANES),
        "a length not a multiple of 16"
    );
    let mut s = [0f32; LANES];
    for (xc, wc) in x.chunks_exact(LANES).zip(w.chunks_exact(LANES)) {
        for l in 0..LANES {
            s[l] = xc[l].mul_add(wc[l], s[l]);
        }
    }
    fold(s)
}

#[inline(always)]
fn fold(mut s: [f32; LANES]) -> f32 {
    let mut half = LANES / 2;
    while half > 0 {
        for l in 0..half {
            s[l] += s[l + half];
        }
        half /= 2;
    }
    s[0]
}

/// Which code multiplies: AVX-512 F, AVX2 with FMA, or the portable loops. All compute
/// [`dot`]'s sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

/// The code for the kernels' `level` (which caps it: `LENSD_CPU_KERNELS=avx2` leaves AVX-512
/// out here too): AVX-512 F on any AVX-512 level of a CPU that has it.
fn path_for(level: Level) -> Path {
    #[cfg(target_arch = "x86_64")]
    if level.avx2() && level.runs_here() {
        if level > Level::Avx2 && std::arch::is_x86_feature_detected!("avx512f") {
            return Path::Avx512;
        }
        return Path::Avx2;
    }
    let _ = level;
    Path::Portable
}

/// The name of the code [`matmul`] runs at `level` on this CPU (for benchmarks' reports).
pub fn path_name(level: Level) -> &'static str {
    match path_for(level) {
        Path::Portable => "portable",
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 => "avx2+fma",
        #[cfg(target_arch = "x86_64")]
        Path::Avx512 => "avx512f",
    }
}

fn check(
    ty: BlockType,
    w: &[u8],
    n: usize,
    k: usize,
    x: &[f32],
    m: usize,
) -> Result<(), KernelError> {
    check_weights(ty, w, n, k)?;
    check_len("the input", m * k, x.len())
}

/// `out[i·ld + j] = dot(x[i], W[j])` for the `m` rows of `x` (`k` values each) and the `n`
/// rows of `w` (`ty`'s blocks), on the calling thread. `out` holds `m` rows of stride `ld ≥ n`;
/// the values past `n` in each row are left as they were. `scratch` holds dequantized rows
/// between calls (its contents do not matter). `level` picks the code as for the quantized
/// products ([`Level::detect`] is the fastest here); every level gives the same values.
#[allow(clippy::too_many_arguments)]
pub fn matmul_serial(
    level: Level,
    ty: BlockType,
    w: &[u8],
    n: usize,
    k: usize,
    x: &[f32],
    m: usize,
    out: &mut [f32],
    ld: usize,
    scratch: &mut Vec<f32>,
) -> Result<(), KernelError> {
    check(ty, w, n, k, x, m)?;
    if ld < n {
        return Err(KernelError::Stride { ld, n });
    }
    let want = if m == 0 { 0 } else { (m - 1) * ld + n };
    if out.len() < want {
        return Err(KernelError::Length {
            what: "the output",
            want,
            got: out.len(),
        });
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    // SAFETY: `out` holds every `i·ld + j` written (checked above).
    let p = path_for(level);
    unsafe { rows_into(p, ty, w, 0..n, k, x, m, out.as_mut_ptr(), ld, scratch) };
    Ok(())
}

/// [`matmul_serial`] with `out` of `m` rows of exactly `n`, strips of weight rows run as
/// `par`'s tasks.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    level: Level,
    ty: BlockType,
    w: &[u8],
    n: usize,
    k: usize,
    x: &[f32],
    m: usize,
    out: &mut [f32],
    par: &dyn Parallel,
) -> Result<(), KernelError> {
    check(ty, w, n, k, x, m)?;
    check_len("the output", m * n, out.len())?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    let threads = par.threads().max(1);
    let min_tasks = (n * k * m / TASK_MACS).max(1).next_multiple_of(threads);
    let rows_per_task = n.div_ceil(min_tasks).next_multiple_of(TILE_W);
    let tasks = n.div_ceil(rows_per_task);
    let shared = Shared::new(out);
    let p = path_for(level);
    par.run(tasks, &|range: Range<usize>| {
        // Each thread keeps its strip buffer between products: a decoding step runs hundreds
        // of them, and zeroing a fresh buffer each time was 5 % of an f32 step's profile.
        STRIP_BUFFER.with_borrow_mut(|scratch| {
            for t in range {
                let rows = t * rows_per_task..((t + 1) * rows_per_task).min(n);
                // SAFETY: task `t` alone writes the columns `rows` of every output row, all
                // inside `out` (m rows of n, checked above).
                unsafe { rows_into(p, ty, w, rows, k, x, m, shared.ptr(), n, scratch) };
            }
        })
    });
    Ok(())
}

/// The columns `rows` of `out` (row stride `ld`), a strip of weight rows at a time.
///
/// # Safety
/// `out` is valid for writes at `i·ld + j` for `i < m`, `j` in `rows`; `x` holds `m·k` values
/// and `w` `n ≥ rows.end` rows of `k` values in `ty`'s blocks.
#[allow(clippy::too_many_arguments)]
unsafe fn rows_into(
    p: Path,
    ty: BlockType,
    w: &[u8],
    rows: Range<usize>,
    k: usize,
    x: &[f32],
    m: usize,
    out: *mut f32,
    ld: usize,
    scratch: &mut Vec<f32>,
) {
    let row_bytes = ty.bytes_for(1, k).expect("checked by the caller");
    scratch.resize(STRIP * k, 0.0);
    for j0 in rows.clone().step_by(STRIP) {
        let len = STRIP.min(rows.end - j0);
        let strip = &mut scratch[..len * k];
        dequantize(p, ty, &w[j0 * row_bytes..(j0 + len) * row_bytes], strip);
        strip_into(p, strip, len, k, x, m, out.add(j0), ld);
    }
}

fn dequantize(p: Path, ty: BlockType, blocks: &[u8], out: &mut [f32]) {
    match p {
        Path::Portable => ty.dequantize(blocks, out),
        // SAFETY: `path` found the instructions of the level it chose.
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 => unsafe { dequantize_avx2(ty, blocks, out) },
        #[cfg(target_arch = "x86_64")]
        Path::Avx512 => unsafe { dequantize_avx512(ty, blocks, out) },
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dequantize_avx2(ty: BlockType, blocks: &[u8], out: &mut [f32]) {
    ty.dequantize(blocks, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma,f16c")]
unsafe fn dequantize_avx512(ty: BlockType, blocks: &[u8], out: &mut [f32]) {
    ty.dequantize(blocks, out)
}

/// # Safety
/// As [`rows_into`], for the `len` rows of `strip` written at `out`'s columns `0..len`.
#[allow(clippy::too_many_arguments)]
unsafe fn strip_into(
    p: Path,
    strip: &[f32],
    len: usize,
    k: usize,
    x: &[f32],
    m: usize,
    out: *mut f32,
    ld: usize,
) {
    match p {
        Path::Portable => tiles(strip, len, k, x, m, out, ld),
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 => tiles_avx2(strip, len, k, x, m, out, ld),
        #[cfg(target_arch = "x86_64")]
        Path::Avx512 => tiles_avx512(strip, len, k, x, m, out, ld),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tiles_avx2(
    strip: &[f32],
    len: usize,
    k: usize,
    x: &[f32],
    m: usize,
    out: *mut f32,
    ld: usize,
) {
    tiles(strip, len, k, x, m, out, ld)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn tiles_avx512(
    strip: &[f32],
    len: usize,
    k: usize,
    x: &[f32],
    m: usize,
    out: *mut f32,
    ld: usize,
) {
    tiles(strip, len, k, x, m, out, ld)
}

/// Every tile of `TILE_X` rows of `x` by `TILE_W` rows of the strip, smaller at the edges.
/// Compiled once per instruction set: the lanes of the partial sums are what the compiler
/// puts in one vector register (two with AVX2).
#[inline(always)]
unsafe fn tiles(
    strip: &[f32],
    len: usize,
    k: usize,
    x: &[f32],
    m: usize,
    out: *mut f32,
    ld: usize,
) {
    let mut j = 0;
    while j < len {
        let wn = TILE_W.min(len - j);
        let ws = &strip[j * k..(j + wn) * k];
        let mut i = 0;
        while i < m {
            let xn = TILE_X.min(m - i);
            let xs = &x[i * k..(i + xn) * k];
            let o = out.add(i * ld + j);
            if xn == TILE_X && wn == TILE_W {
                tile::<TILE_X, TILE_W>(xs, ws, k, o, ld)
            } else {
                edge(xn, wn, xs, ws, k, o, ld)
            }
            i += xn;
        }
        j += wn;
    }
}

/// A tile smaller than the whole one, its sizes made constants so that its sums stay in
/// registers.
#[inline(always)]
unsafe fn edge(xn: usize, wn: usize, xs: &[f32], ws: &[f32], k: usize, o: *mut f32, ld: usize) {
    macro_rules! w_sizes {
        ($x:literal; $($w:literal),*) => {
            match wn {
                $($w => tile::<$x, $w>(xs, ws, k, o, ld),)*
                _ => unreachable!("tiles hold at most {TILE_W} weight rows"),
            }
        };
    }
    macro_rules! sizes {
        ($($x:literal),*) => {
            match xn {
                $($x => w_sizes!($x; 1, 2, 3, 4, 5, 6),)*
                _ => unreachable!("tiles hold at most {TILE_X} rows of x"),
            }
        };
    }
    sizes!(1, 2, 3, 4)
}

/// `X` rows of `x` by `W` weight rows: `out[i·ld + j] = dot(xs[i], ws[j])`.
#[inline(always)]
unsafe fn tile<const X: usize, const W: usize>(
    xs: &[f32],
    ws: &[f32],
    k: usize,
    out: *mut f32,
    ld: usize,
) {
    let mut s = [[[0f32; LANES]; W]; X];
    let (xp, wp) = (xs.as_ptr(), ws.as_ptr());
    let mut c = 0;
    while c < k {
        let mut wv = [[0f32; LANES]; W];
        for (j, v) in wv.iter_mut().enumerate() {
            *v = *(wp.add(j * k + c) as *const [f32; LANES]);
        }
        for (i, si) in s.iter_mut().enumerate() {
            let xv = *(xp.add(i * k + c) as *const [f32; LANES]);
            for (sij, wj) in si.iter_mut().zip(&wv) {
                for l in 0..LANES {
                    sij[l] = xv[l].mul_add(wj[l], sij[l]);
                }
            }
        }
        c += LANES;
    }
    for (i, si) in s.iter().enumerate() {
        for (j, sij) in si.iter().enumerate() {
            *out.add(i * ld + j) = fold(*sij);
        }
    }
}
