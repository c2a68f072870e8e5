//! `x · Wᵀ` in f32 for a `W` of quantized blocks and many rows of `x`: a lens analysis's
//! unembedding of every layer × position. Panels of 32 weight rows are dequantized and laid
//! out value by value (`panel[k][0..32]`), and a tile of rows of `x` is multiplied with a
//! panel by broadcasting `x[i][k]` against the panel's 32 values at `k`: each register holds
//! 16 consecutive outputs of one row, so nothing is folded across lanes at the end, which in
//! [`crate::wide`]'s tiles (built for the forward pass's few rows) cost a fifth of the work.
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
/// of `w` (`ty`'s blocks), on the calling thread; `scratch` holds a panel between calls (its
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
    if m == 0 || n == 0 {
        return Ok(());
    }
    let row_bytes = w.len() / n;
    scratch.resize(PANEL * k + k, 0.0);
    let (panel, row) = scratch.split_at_mut(PANEL * k);
    let level = if level.runs_here() {
        level
    } else {
        Level::Portable
    };
    for j0 in (0..n).step_by(PANEL) {
        let len = PANEL.min(n - j0);
        for r in 0..PANEL {
            if r < len {
                let j = j0 + r;
                crate::dequant::run(level, ty, &w[j * row_bytes..(j + 1) * row_bytes], row);
            } else {
                row.fill(0.0);
            }
            for (c, &v) in row.iter().enumerate() {
                panel[c * PANEL + r] = v;
            }
        }
        multiply(level, panel, k, x, m, &mut out[j0..], n, len);
    }
    Ok(())
}

/// Every row of `x` against one panel: columns `0..len` of `out`'s rows (stride `ld`).
#[allow(clippy::too_many_arguments)]
fn multiply(
    level: Level,
    panel: &[f32],
    k: usize,
    x: &[f32],
    m: usize,
    out: &mut [f32],
    ld: usize,
    len: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if level > Level::Avx2 && std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512 F.
        return unsafe { multiply_avx512(panel, k, x, m, out, ld, len) };
    }
    #[cfg(target_arch = "x86_64")]
    if level.avx2() {
        // SAFETY: `Level::avx2` levels run only where AVX2 and FMA are.
        return unsafe { multiply_avx2(panel, k, x, m, out, ld, len) };
    }
    let _ = level;
    tiles::<4>(panel, k, x, m, out, ld, len)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn multiply_avx512(
    panel: &[f32],
    k: usize,
    x: &[f32],
    m: usize,
    out: &mut [f32],
    ld: usize,
    len: usize,
) {
    // 12 rows × 2 registers: 24 sums of the 32 registers.
    tiles::<12>(panel, k, x, m, out, ld, len)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn multiply_avx2(
    panel: &[f32],
    k: usize,
    x: &[f32],
    m: usize,
    out: &mut [f32],
    ld: usize,
    len: usize,
) {
    // 3 rows × 4 registers: 12 sums of the 16 registers.
    tiles::<3>(panel, k, x, m, out, ld, len)
}

/// Tiles of `R` rows of `x` (then the rows left, one at a time) against the panel.
#[inline(always)]
fn tiles<const R: usize>(
    panel: &[f32],
    k: usize,
    x: &[f32],
    m: usize,
    out: &mut [f32],
    ld: usize,
    len: usize,
) {
    let mut i = 0;
    while i + R <= m {
        tile::<R>(
            panel,
            k,
            &x[i * k..(i + R) * k],
            &mut out[i * ld..],
            ld,
            len,
        );
        i += R;
    }
    while i < m {
        tile::<1>(
            panel,
            k,
            &x[i * k..(i + 1) * k],
            &mut out[i * ld..],
            ld,
            len,
        );
        i += 1;
    }
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
