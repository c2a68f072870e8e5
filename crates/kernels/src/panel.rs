//! `x · Wᵀ` in f32 for a `W` of quantized blocks and many rows of `x`: a lens analysis's
//! unembedding of every layer × position. Panels of 32 weight rows are dequantized and laid
//! out value by value (`panel[k][0..32]`), and a tile of rows of `x` is multiplied with a
//! panel by broadcasting `x[i][k]` against the panel's 32 values at `k`: each register holds
//! 16 consecutive outputs of one row, so nothing is folded across lanes at the end, which in
//! [`crate::wide`]'s tiles (built for the forward pass's few rows) cost a fifth of the work.
//! Every panel of `W` is laid out first; then a tile of rows is multiplied with each in turn,
//! and [`matmul_tiles`] hands its rows of the product to the caller while they are in cache.
//!
//! Every value is one fixed sequence: `Σₖ x[k]·w[k]` added in order of `k` with fused
//! multiply-adds ([`dot`]); it does not depend on the CPU's level, the tile or the row count.

use crate::matmul::{check_len, check_weights};
use crate::{BlockType, KernelError, Level};

/// Weight rows of a panel: two registers of 16 lanes.
const PANEL: usize = 32;
/// Weight rows [`matmul`] lays out at once.
const GROUP: usize = 16 * PANEL;

/// `Σₖ x[k]·w[k]` as [`matmul`] computes it: in order of `k`, each product fused with the sum.
pub fn dot(x: &[f32], w: &[f32]) -> f32 {
    assert_eq!(x.len(), w.len(), "dot of different lengths");
    x.iter()
        .zip(w)
        .fold(0f32, |acc, (&a, &b)| a.mul_add(b, acc))
}

/// `out[i·n + j] = dot(x[i], W[j])` for the `m` rows of `x` (`k` values each) and the `n` rows
/// of `w` (`ty`'s blocks), on the calling thread; `scratch` holds the panels between calls (its
/// contents do not matter). Every level gives the same values.
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
    scratch: &mut Vec<f32>,
) -> Result<(), KernelError> {
    check_weights(ty, w, n, k)?;
    check_len("the input", m * k, x.len())?;
    check_len("the output", m * n, out.len())?;
    // Groups of weight rows, so that the panels laid out at once stay a few hundred KB.
    let row_bytes = w.len().checked_div(n).unwrap_or(0);
    for j0 in (0..n).step_by(GROUP) {
        let len = GROUP.min(n - j0);
        let wg = &w[j0 * row_bytes..(j0 + len) * row_bytes];
        matmul_tiles(level, ty, wg, len, k, x, m, scratch, &mut |i0, rows| {
            for (i, row) in rows.chunks_exact(len).enumerate() {
                out[(i0 + i) * n + j0..(i0 + i) * n + j0 + len].copy_from_slice(row);
            }
        })?;
    }
    Ok(())
}

/// [`matmul`]'s values a tile of rows at a time, while they are in cache: `f(i0, rows)`
/// receives rows `i0..i0 + rows.len() / n` of the product (`n` values each, in order), and may
/// change them. Every row of `x` is given once, in order. `scratch` grows to hold every panel of
/// `w` (`n·k` values and a few rows), so `n` is best a block of a few hundred rows.
#[allow(clippy::too_many_arguments)]
pub fn matmul_tiles(
    level: Level,
    ty: BlockType,
    w: &[u8],
    n: usize,
    k: usize,
    x: &[f32],
    m: usize,
    scratch: &mut Vec<f32>,
    f: &mut dyn FnMut(usize, &mut [f32]),
) -> Result<(), KernelError> {
    check_weights(ty, w, n, k)?;
    check_len("the input", m * k, x.len())?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    let level = if level.runs_here() {
        level
    } else {
        Level::Portable
    };
    let path = Path::for_level(level);
    let r = path.rows();
    let panels = n.div_ceil(PANEL);
    // Every panel of `w`, a panel's rows widened, and a tile's product.
    scratch.resize(panels * PANEL * k + PANEL * k + r * n, 0.0);
    let (all, rest) = scratch.split_at_mut(panels * PANEL * k);
    let (widened, tile_out) = rest.split_at_mut(PANEL * k);
    let row_bytes = w.len() / n;
    for (p, panel) in all.chunks_exact_mut(PANEL * k).enumerate() {
        let len = PANEL.min(n - p * PANEL);
        let rows = &w[p * PANEL * row_bytes..(p * PANEL + len) * row_bytes];
        crate::dequant::run(level, ty, rows, &mut widened[..len * k]);
        widened[len * k..].fill(0.0);
        // Value by value: the 32 rows' values at `c` are read from 32 lines that stay in cache
        // for the next 15 values, and written to one.
        for (c, out) in panel.chunks_exact_mut(PANEL).enumerate() {
            for (r, v) in out.iter_mut().enumerate() {
                *v = widened[r * k + c];
            }
        }
    }
    for i0 in (0..m).step_by(r) {
        let rows = r.min(m - i0);
        let xs = &x[i0 * k..(i0 + rows) * k];
        for (p, panel) in all.chunks_exact(PANEL * k).enumerate() {
            let len = PANEL.min(n - p * PANEL);
            path.tile(rows, panel, k, xs, &mut tile_out[p * PANEL..], n, len);
        }
        f(i0, &mut tile_out[..rows * n]);
    }
    Ok(())
}

/// The code that multiplies a tile with a panel.
#[derive(Debug, Clone, Copy)]
enum Path {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Path {
    /// The code for `level`, one this CPU runs.
    fn for_level(level: Level) -> Path {
        #[cfg(target_arch = "x86_64")]
        {
            if level > Level::Avx2 && std::arch::is_x86_feature_detected!("avx512f") {
                return Path::Avx512;
            }
            if level.avx2() {
                return Path::Avx2;
            }
        }
        let _ = level;
        Path::Portable
    }

    /// Rows of `x` in a tile: 12 rows × 2 registers are 24 sums of AVX-512's 32 registers, 3 × 4
    /// are 12 of AVX2's 16.
    fn rows(self) -> usize {
        match self {
            Path::Portable => 4,
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => 3,
            #[cfg(target_arch = "x86_64")]
            Path::Avx512 => 12,
        }
    }

    /// `rows` (at most [`Path::rows`]) rows of `x` against the panel: `out[r·ld + j] =
    /// dot(x[r], W[j])` for `j < len`.
    #[allow(clippy::too_many_arguments)]
    fn tile(
        self,
        rows: usize,
        panel: &[f32],
        k: usize,
        x: &[f32],
        out: &mut [f32],
        ld: usize,
        len: usize,
    ) {
        match self {
            Path::Portable => tile_of::<4>(rows, panel, k, x, out, ld, len),
            // SAFETY: `for_level` chose the path where the CPU has its instructions.
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => unsafe { tile_avx2(rows, panel, k, x, out, ld, len) },
            #[cfg(target_arch = "x86_64")]
            Path::Avx512 => unsafe { tile_avx512(rows, panel, k, x, out, ld, len) },
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn tile_avx512(
    rows: usize,
    panel: &[f32],
    k: usize,
    x: &[f32],
    out: &mut [f32],
    ld: usize,
    len: usize,
) {
    tile_of::<12>(rows, panel, k, x, out, ld, len)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2(
    rows: usize,
    panel: &[f32],
    k: usize,
    x: &[f32],
    out: &mut [f32],
    ld: usize,
    len: usize,
) {
    tile_of::<3>(rows, panel, k, x, out, ld, len)
}

/// [`tile`] with its row count made a constant, at most `MAX`: a short last tile keeps its
/// sums in registers too.
#[inline(always)]
fn tile_of<const MAX: usize>(
    rows: usize,
    panel: &[f32],
    k: usize,
    x: &[f32],
    out: &mut [f32],
    ld: usize,
    len: usize,
) {
    macro_rules! by_rows {
        ($($r:literal),*) => {
            match rows {
                $($r if $r <= MAX => tile::<$r>(panel, k, x, out, ld, len),)*
                _ => unreachable!("a tile of {rows} rows, at most {MAX}"),
            }
        };
    }
    by_rows!(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12)
}

/// `R` rows of `x` against the panel: `out[r·ld + j] = dot(x[r], W[j])` for `j < len`.
#[inline(always)]
fn tile<const R: usize>(
    panel: &[f32],
    k: usize,
    x: &[f32],
    out: &mut [f32],
    ld: usize,
    len: usize,
) {
    assert!(
        panel.len() >= k * PANEL && x.len() >= R * k,
        "a panel and {R} rows of {k}"
    );
    assert!(out.len() >= (R - 1) * ld + len, "{R} output rows");
    let (pp, xp) = (panel.as_ptr(), x.as_ptr());
    let mut acc = [[0f32; PANEL]; R];
    for c in 0..k {
        // SAFETY: `c < k`, and the panel holds k·PANEL values (asserted above).
        let w = unsafe { *(pp.add(c * PANEL) as *const [f32; PANEL]) };
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: `r < R` and `c < k`: inside the R rows of `x` (asserted above).
            let v = unsafe { *xp.add(r * k + c) };
            for l in 0..PANEL {
                acc[l] = v.mul_add(w[l], acc[l]);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        out[r * ld..r * ld + len].copy_from_slice(&acc[..len]);
    }
}
