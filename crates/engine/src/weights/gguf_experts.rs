//! gpt-oss's experts as llama.cpp writes them into GGUF files: gate, up and down apart
//! (`ffn_{gate,up,down}_exps`, `[E, rows, cols]` row-major), with their biases apart, and the
//! matrices as GGML's MXFP4 blocks (17 bytes: the E8M0 scale, then 16 bytes whose low nibbles
//! are values 0..16 and high nibbles values 16..32) or as floats. They are turned into the
//! layout of [`ExpertMats`]: gate and up rows interleaved in one matrix, and MXFP4 blocks as
//! the published checkpoint stores them (scales apart, values in pairs, low nibble first).

use candle_core::{Device, Tensor};

use super::experts::ExpertMats;
use super::mxfp4::BLOCK_BYTES;
use super::ComputeDtype;
use crate::error::{EngineError, Result};

/// Bytes of one GGML MXFP4 block: the scale, then the values.
pub(crate) const GGML_BLOCK_BYTES: usize = 1 + BLOCK_BYTES;

/// GGML MXFP4 blocks as `(blocks, scales)` in the published layout.
fn split_blocks(ggml: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let n = ggml.len() / GGML_BLOCK_BYTES;
    let mut blocks = Vec::with_capacity(n * BLOCK_BYTES);
    let mut scales = Vec::with_capacity(n);
    for b in ggml.chunks_exact(GGML_BLOCK_BYTES) {
        scales.push(b[0]);
        let qs = &b[1..];
        // Value i is qs[i] & 15 for i < 16 and qs[i - 16] >> 4 after; published byte k holds
        // values 2k (low nibble) and 2k + 1 (high).
        let value = |i: usize| {
            if i < 16 {
                qs[i] & 0x0f
            } else {
                qs[i - 16] >> 4
            }
        };
        for k in 0..BLOCK_BYTES {
            blocks.push(value(2 * k) | (value(2 * k + 1) << 4));
        }
    }
    (blocks, scales)
}

/// The matrices of `experts` experts of `rows × cols` in GGML's MXFP4 blocks, checked for
/// size; `what` names the tensor.
fn mxfp4_rows(data: &[u8], (experts, rows, cols): (usize, usize, usize), what: &str) -> Result<()> {
    let want = experts * rows * (cols / 32) * GGML_BLOCK_BYTES;
    if cols % 32 != 0 || data.len() != want {
        return Err(EngineError::Input(format!(
            "{what}: {} bytes of MXFP4 for {experts} experts of [{rows}, {cols}] ({want} expected)",
            data.len()
        )));
    }
    Ok(())
}

/// Interleaves the rows of two `[E, rows, width]` arrays (elements of `width` units each):
/// gate row r becomes row 2r, up row r row 2r + 1.
fn interleave<T: Copy>(gate: &[T], up: &[T], experts: usize, rows: usize, width: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(gate.len() + up.len());
    for e in 0..experts {
        for r in 0..rows {
            let at = (e * rows + r) * width;
            out.extend_from_slice(&gate[at..at + width]);
            out.extend_from_slice(&up[at..at + width]);
        }
    }
    out
}

/// One expert matrix tensor of a GGUF file: MXFP4 blocks, or its values.
pub(crate) enum Stored<'a> {
    Mxfp4(&'a [u8]),
    Values(Vec<f32>),
}

/// `ffn_gate_exps` and `ffn_up_exps` (each `[E, d_ff, d]`) as one matrix per expert with their
/// rows interleaved (`[2 · d_ff, d]`), ready to compute in `compute`.
pub(crate) fn gate_up(
    gate: Stored,
    up: Stored,
    (experts, rows, cols): (usize, usize, usize),
    compute: ComputeDtype,
    what: &str,
) -> Result<ExpertMats> {
    match (gate, up) {
        (Stored::Mxfp4(g), Stored::Mxfp4(u)) => {
            mxfp4_rows(g, (experts, rows, cols), what)?;
            mxfp4_rows(u, (experts, rows, cols), what)?;
            let (gb, gs) = split_blocks(g);
            let (ub, us) = split_blocks(u);
            let groups = cols / 32;
            let blocks = interleave(&gb, &ub, experts, rows, groups * BLOCK_BYTES);
            let scales = interleave(&gs, &us, experts, rows, groups);
            ExpertMats::from_mxfp4(blocks, scales, (experts, 2 * rows, cols), compute, what)
        }
        (Stored::Values(g), Stored::Values(u)) => {
            let values = interleave(&g, &u, experts, rows, cols);
            ExpertMats::from_values(values, (experts, 2 * rows, cols), compute)
        }
        _ => Err(EngineError::Input(format!(
            "{what}: the experts' gate and up are stored in different types"
        ))),
    }
}

/// `ffn_down_exps` (`[E, d, d_ff]`) as one matrix per expert.
pub(crate) fn down(
    down: Stored,
    (experts, rows, cols): (usize, usize, usize),
    compute: ComputeDtype,
    what: &str,
) -> Result<ExpertMats> {
    match down {
        Stored::Mxfp4(d) => {
            mxfp4_rows(d, (experts, rows, cols), what)?;
            let (blocks, scales) = split_blocks(d);
            ExpertMats::from_mxfp4(blocks, scales, (experts, rows, cols), compute, what)
        }
        Stored::Values(v) => ExpertMats::from_values(v, (experts, rows, cols), compute),
    }
}

/// The gate and up biases (`[E, d_ff]` each) as one `[E, 2 · d_ff]` bias, interleaved as the
/// rows of [`gate_up`].
pub(crate) fn gate_up_bias(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let (experts, rows) = gate.dims2()?;
    if up.dims() != gate.dims() {
        return Err(EngineError::Input(format!(
            "the experts' gate bias is {:?} and their up bias {:?}",
            gate.dims(),
            up.dims()
        )));
    }
    let g = gate.flatten_all()?.to_vec1::<f32>()?;
    let u = up.flatten_all()?.to_vec1::<f32>()?;
    let v = interleave(&g, &u, experts, rows, 1);
    Ok(Tensor::from_vec(v, (experts, 2 * rows), &Device::Cpu)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::mxfp4;

    #[test]
    fn ggml_blocks_read_as_the_published_ones() {
        // Values 0..32 as nibbles i % 16, scale 2^1: GGML puts value i < 16 in qs[i]'s low
        // nibble and value i + 16 in its high nibble.
        let values: Vec<u8> = (0..32u8).map(|i| (i * 7) % 16).collect();
        let mut ggml = vec![128u8];
        ggml.extend((0..16).map(|j| values[j] | (values[j + 16] << 4)));
        let (blocks, scales) = split_blocks(&ggml);
        let got = mxfp4::dequantize(&blocks, &scales, "t").unwrap();
        let want: Vec<f32> = values
            .iter()
            .map(|&n| mxfp4::FP4_VALUES[n as usize] * 2.0)
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn gate_and_up_rows_interleave() {
        let gate = [1, 2, 3, 4, 5, 6];
        let up = [10, 20, 30, 40, 50, 60];
        // Two experts of three rows, one unit wide.
        assert_eq!(
            interleave(&gate, &up, 2, 3, 1),
            vec![1, 10, 2, 20, 3, 30, 4, 40, 5, 50, 6, 60]
        );
        let e = gate_up(
            Stored::Mxfp4(&[0; 17]),
            Stored::Mxfp4(&[0; 16]),
            (1, 1, 32),
            ComputeDtype::Stored,
            "blk.0.ffn_gate_exps.weight",
        )
        .unwrap_err();
        assert!(e.to_string().contains("16 bytes of MXFP4"), "{e}");
    }
}
