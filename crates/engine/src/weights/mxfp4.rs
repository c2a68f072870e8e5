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

/// The values of `scales.len()` blocks, in order: block `g` holds `blocks[16g..16g+16]`.
/// `what` names the tensor in errors.
pub fn dequantize(blocks: &[u8], scales: &[u8], what: &str) -> Result<Vec<f32>> {
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
