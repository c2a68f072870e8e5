//! MXFP4 (the OCP microscaling format gpt-oss stores its experts in): blocks of 32 FP4 (E2M1)
//! values, two per byte with the first value in the low nibble, sharing one E8M0 scale byte,
//! the power of two `2^(scale - 127)`.

use crate::error::{EngineError, Result};

/// The 16 values of an E2M1 nibble: sign bit 3, then exponent and mantissa.
pub const FP4_VALUES: [f32; 16] = [
    0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
];

/// Bytes of one block (32 values).
pub const BLOCK_BYTES: usize = 16;

/// E8M0's NaN: a scale byte no quantizer writes.
const SCALE_NAN: u8 = 0xff;

/// `2^(scale - 127)` exactly (f32 holds every power from 2^-149, so all of 0..=254).
fn scale_of(s: u8) -> f32 {
    f32::from_bits(if s >= 1 {
        (s as u32) << 23
    } else {
        // 2^-127: a subnormal, bit 22 of the mantissa
        1 << 22
    })
}

/// Checks that `blocks` hold 16 bytes per scale and that no scale is E8M0's NaN; `what`
/// names the tensor in errors.
pub fn check(blocks: &[u8], scales: &[u8], what: &str) -> Result<()> {
    if blocks.len() != scales.len() * BLOCK_BYTES {
        return Err(EngineError::Input(format!(
            "{what}: {} bytes of MXFP4 blocks for {} scales (16 bytes each expected)",
            blocks.len(),
            scales.len()
        )));
    }
    if let Some(g) = scales.iter().position(|&s| s == SCALE_NAN) {
        return Err(EngineError::Input(format!(
            "{what}: block {g} has the scale byte 0xff, E8M0's NaN"
        )));
    }
    Ok(())
}

/// The values of `scales.len()` blocks, in order: block `g` holds `blocks[16g..16g+16]`.
/// `what` names the tensor in errors.
pub fn dequantize(blocks: &[u8], scales: &[u8], what: &str) -> Result<Vec<f32>> {
    check(blocks, scales, what)?;
    let mut out = Vec::with_capacity(blocks.len() * 2);
    for (block, &s) in blocks.chunks_exact(BLOCK_BYTES).zip(scales) {
        let scale = scale_of(s);
        for &b in block {
            out.push(FP4_VALUES[(b & 0x0f) as usize] * scale);
            out.push(FP4_VALUES[(b >> 4) as usize] * scale);
        }
    }
    Ok(out)
}

/// `x · Wᵀ` for `x` `[n, cols]` (row-major f32) and `W` `[rows, cols]` stored as MXFP4 rows of
/// `cols / 32` blocks (checked beforehand with [`check`]): `[n, rows]`, row-major. Each block's
/// 32 products are summed in f32 and multiplied by the block's scale, which is exact for the
/// scale (a power of two). Output rows are computed in parallel, in tasks of at least
/// [`TASK_MACS`] multiply-adds so that small products (a decoding step) do not pay more for
/// the threads than for the arithmetic.
pub fn matmul(x: &[f32], n: usize, blocks: &[u8], scales: &[u8], rows: usize) -> Vec<f32> {
    use rayon::prelude::*;
    let groups = scales.len() / rows.max(1);
    let cols = groups * 32;
    debug_assert_eq!(x.len(), n * cols);
    debug_assert_eq!(blocks.len(), rows * groups * BLOCK_BYTES);
    if n == 0 || rows == 0 {
        return vec![0.0; n * rows];
    }
    // Output row r for every token: [rows, n], transposed at the end.
    let mut by_row = vec![0f32; rows * n];
    let per_task = (TASK_MACS / (cols * n).max(1)).clamp(1, rows);
    let row_range = |first: usize, out: &mut [f32]| {
        let mut w = [0f32; 32];
        for (i, out) in out.chunks_exact_mut(n).enumerate() {
            let r = first + i;
            for g in 0..groups {
                let block = &blocks[(r * groups + g) * BLOCK_BYTES..][..BLOCK_BYTES];
                for (j, &b) in block.iter().enumerate() {
                    w[2 * j] = FP4_VALUES[(b & 0x0f) as usize];
                    w[2 * j + 1] = FP4_VALUES[(b >> 4) as usize];
                }
                let scale = scale_of(scales[r * groups + g]);
                for (t, o) in out.iter_mut().enumerate() {
                    let xs = &x[t * cols + g * 32..][..32];
                    *o += dot32(&w, xs) * scale;
                }
            }
        }
    };
    if per_task >= rows {
        row_range(0, &mut by_row);
    } else {
        by_row
            .par_chunks_mut(per_task * n)
            .enumerate()
            .for_each(|(task, out)| row_range(task * per_task, out));
    }
    if n == 1 {
        return by_row;
    }
    let mut y = vec![0f32; n * rows];
    for (r, col) in by_row.chunks_exact(n).enumerate() {
        for (t, v) in col.iter().enumerate() {
            y[t * rows + r] = *v;
        }
    }
    y
}

/// The dot product of two blocks, in eight lanes that the compiler keeps in vector registers.
#[inline]
fn dot32(w: &[f32; 32], x: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    for (ws, xs) in w.chunks_exact(8).zip(x.chunks_exact(8)) {
        for l in 0..8 {
            lanes[l] += ws[l] * xs[l];
        }
    }
    lanes.iter().sum()
}

/// Multiply-adds below which a product is not split further between threads.
pub const TASK_MACS: usize = 1 << 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_are_exact_powers_of_two() {
        for s in 0..=254u8 {
            assert_eq!(scale_of(s), 2f32.powi(s as i32 - 127), "scale byte {s}");
        }
    }

    #[test]
    fn nibbles_are_read_low_first() {
        let mut blocks = [0u8; 16];
        blocks[0] = 0x9f; // low 0xf = -6, high 0x9 = -0.5
        blocks[15] = 0x71; // low 0x1 = 0.5, high 0x7 = 6
        let v = dequantize(&blocks, &[128], "t").unwrap();
        assert_eq!(v.len(), 32);
        assert_eq!((v[0], v[1], v[30], v[31]), (-12.0, -1.0, 1.0, 12.0));
        assert!(v[2..30].iter().all(|&x| x == 0.0));
    }

    #[test]
    fn the_product_equals_the_dequantized_matrix_times_x() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (rows, groups, n) = (5, 3, 4);
        let cols = groups * 32;
        let blocks: Vec<u8> = (0..rows * groups * 16).map(|_| rng.random()).collect();
        let scales: Vec<u8> = (0..rows * groups)
            .map(|_| rng.random_range(120..=130))
            .collect();
        let x: Vec<f32> = (0..n * cols).map(|_| rng.random_range(-1.0..1.0)).collect();
        let w = dequantize(&blocks, &scales, "w").unwrap();
        let y = matmul(&x, n, &blocks, &scales, rows);
        for t in 0..n {
            for r in 0..rows {
                let want: f64 = (0..cols)
                    .map(|c| w[r * cols + c] as f64 * x[t * cols + c] as f64)
                    .sum();
                let got = y[t * rows + r] as f64;
                assert!(
                    (got - want).abs() < 1e-4,
                    "token {t} row {r}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn bad_sizes_and_nan_scales_are_refused_by_name() {
        let e = dequantize(&[0; 15], &[127], "experts.gate_up_proj").unwrap_err();
        assert!(
            e.to_string().contains("experts.gate_up_proj: 15 bytes"),
            "{e}"
        );
        let e = dequantize(&[0; 32], &[127, 255], "down").unwrap_err();
        assert!(
            e.to_string().contains("block 1 has the scale byte 0xff"),
            "{e}"
        );
    }
}
