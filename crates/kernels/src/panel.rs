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
    matmul_tiles(level, ty, w, n, k, x, m, scratch, &mut |i0, rows| {
        out[i0 * n..i0 * n + rows.len()].copy_from_slice(rows)
    })
}

/// [`matmul`]'s values a tile of rows at a time, while they are in cache: `f(i0, rows)`
/// receives rows `i0..i0 + rows.len() / n` of the product (`n` values each, in order), and may
/// change them. Every row of `x` is given once, in order.
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
    // Every panel of `w`, one row being widened, a tile of rows of `x` (where the last tile is
    // short) and the tile's product.
    scratch.resize(panels * PANEL * k + k + r * k + r * n, 0.0);
    let (all, rest) = scratch.split_at_mut(panels * PANEL * k);
    let (row, rest) = rest.split_at_mut(k);
    let (padded, tile_out) = rest.split_at_mut(r * k);
    let row_bytes = w.len() / n;
    for (p, panel) in all.chunks_exact_mut(PANEL * k).enumerate() {
        for r in 0..PANEL {
            let j = p * PANEL + r;
            if j < n {
                crate::dequant::run(level, ty, &w[j * row_bytes..(j + 1) * row_bytes], row);
            } else {
                row.fill(0.0);
            }
            for (c, &v) in row.iter().enumerate() {
                panel[c * PANEL + r] = v;
            }
        }
    }
    for i0 in (0..m).step_by(r) {
        let rows = r.min(m - i0);
        let xs = if rows == r {
            &x[i0 * k..(i0 + r) * k]
        } else {
            padded[..rows * k].copy_from_slice(&x[i0 * k..(i0 + rows) * k]);
            padded[rows * k..].fill(0.0);
            &padded[..]
        };
        for (p, panel) in all.chunks_exact(PANEL * k).enumerate() {
            let len = PANEL.min(n - p * PANEL);
            path.tile(panel, k, xs, &mut tile_out[p * PANEL..], n, len);
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

    /// [`Path::rows`] rows of `x` against the panel: `out[r·ld + j] = dot(x[r], W[j])` for
    /// `j < len`.
    fn tile(self, panel: &[f32], k: usize, x: &[f32], out: &mut [f32], ld: usize, len: usize) {
        match self {
            Path::Portable => tile::<4>(panel, k, x, out, ld, len),
            // SAFETY: `for_level` chose the path where the CPU has its instructions.
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => unsafe { tile_avx2(panel, k, x, out, ld, len) },
            #[cfg(target_arch = "x86_64")]
            Path::Avx512 => unsafe { tile_avx512(panel, k, x, out, ld, len) },
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn tile_avx512(panel: &[f32], k: usize, x: &[f32], out: &mut [f32], ld: usize, len: usize) {
    tile::<12>(panel, k, x, out, ld, len)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2(panel: &[f32], k: usize, x: &[f32], out: &mut [f32], ld: usize, len: usize) {
    tile::<3>(panel, k, x, out, ld, len)
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
