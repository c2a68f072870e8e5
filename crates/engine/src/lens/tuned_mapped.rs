//! A tuned lens's translators kept in a mapping of its safetensors file, as a GGUF base's blocks
//! are (`weights::mapped`: under a read lease, copied into lensd's own memory before anyone
//! may change the file). Reading 40 MB of translators into fresh memory cost a page fault
//! every 4 KiB on top of the read, 1.4-1.8 times the raw read of the file in all; a mapping
//! costs the read alone. The translators are then multiplied where they lie ([`affine`]).
//!
//! Only files of f32 translators at 4-byte offsets are mapped; any other file, or one for which
//! no lease is granted, is read as before ([`super::tuned`]).

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Storage, Tensor};

use crate::error::{EngineError, Result};
use crate::weights::mapped::Mapping;
use crate::weights::tensor_file::extents;

/// A layer's mapped `W` and its bias, copied out of the file.
pub(super) type Translator = (MappedMatrix, Option<Tensor>);

/// One `[d, d]` f32 matrix inside a mapped file.
#[derive(Clone)]
pub struct MappedMatrix {
    map: Arc<Mapping>,
    /// The matrix's first byte in the file.
    at: usize,
    d: usize,
}

impl std::fmt::Debug for MappedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MappedMatrix({0}×{0} at byte {1})", self.d, self.at)
    }
}

impl MappedMatrix {
    pub fn d(&self) -> usize {
        self.d
    }

    pub fn values(&self) -> &[f32] {
        let bytes = &self.map.bytes()[self.at..self.at + self.d * self.d * 4];
        // SAFETY: the mapping starts on a page and `at` is a multiple of 4 (checked when it was
        // made), so the bytes are aligned f32s, which every bit pattern is; they live as long
        // as `self.map`, and are never written (see `Mapping`).
        unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const f32, self.d * self.d) }
    }

    /// Whether the values are still the page cache's (no change of the file made lensd copy
    /// them).
    pub fn is_shared_with_the_file(&self) -> bool {
        self.map.is_shared_with_the_file()
    }
}

/// The translators (`{i}.weight` `[d, d]` and, with `bias`, `{i}.bias` `[d]`, for `i < layers`)
/// of the safetensors file at `path`, mapped, with the biases copied out; `None` where the
/// file cannot be mapped or is not exactly such translators in f32 at 4-byte offsets (the
/// caller then reads it, and names what is wrong with it).
pub(super) fn open(
    path: &Path,
    d: usize,
    layers: usize,
    bias: bool,
) -> Result<Option<Vec<Translator>>> {
    let file = std::fs::File::open(path).map_err(|e| EngineError::io(path, e))?;
    let Some(map) = Mapping::open(&file, path) else {
        return Ok(None);
    };
    // Read in whole first: a failing disk is an error here, never a bus error later.
    map.populate(0, map.bytes().len())
        .map_err(|e| EngineError::io(path, e))?;
    let Some(mut tensors) = extents(map.bytes()) else {
        return Ok(None);
    };
    let expected = layers * if bias { 2 } else { 1 };
    if tensors.len() != expected {
        return Ok(None);
    }
    let map = Arc::new(map);
    let mut out = Vec::with_capacity(layers);
    for i in 0..layers {
        let Some(w) = tensors.remove(&format!("{i}.weight")) else {
            return Ok(None);
        };
        if w.dtype != "F32" || w.shape != [d, d] || w.start % 4 != 0 {
            return Ok(None);
        }
        let b = if bias {
            let Some(b) = tensors.remove(&format!("{i}.bias")) else {
                return Ok(None);
            };
            if b.dtype != "F32" || b.shape != [d] {
                return Ok(None);
            }
            let values: Vec<f32> = map.bytes()[b.start..b.end]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Some(Tensor::from_vec(values, d, &Device::Cpu)?)
        } else {
            None
        };
        let matrix = MappedMatrix {
            map: map.clone(),
            at: w.start,
            d,
        };
        out.push((matrix, b));
    }
    Ok(Some(out))
}

/// The values of a contiguous f32 tensor on the CPU, to `f`; `None` for any other tensor.
pub(super) fn with_cpu_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    if t.dtype() != DType::F32 || !t.device().is_cpu() {
        return None;
    }
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return None;
    };
    let (start, end) = layout.contiguous_offsets()?;
    let values = cpu.as_slice::<f32>().ok()?;
    Some(f(&values[start..end]))
}

/// `h + h·Wᵀ + b` for `h` `[n, d]` (f32, on the CPU) and `w` the `d × d` values of `W`
/// (PyTorch's out × in layout), with the `gemm` crate as candle's CPU matmul calls it: the
/// product of a translator held in a mapping or in a tensor, to the same bits.
pub(super) fn affine(h: &Tensor, w: &[f32], b: Option<&Tensor>) -> candle_core::Result<Tensor> {
    let (n, d) = h.dims2()?;
    if w.len() != d * d {
        candle_core::bail!("a translator of {} values for rows of {d}", w.len());
    }
    let x: Vec<f32> = h.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let mut y = x.clone();
    let threads = candle_core::utils::get_num_threads();
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: `x` and `y` are n×d (row stride d), `w` is d×d and read as its transpose (column
    // stride d); all are in bounds. `y` starts as `x`: y = 1·y + 1·(x·Wᵀ).
    unsafe {
        gemm::gemm(
            n,
            d,
            d,
            y.as_mut_ptr(),
            1,
            d as isize,
            true,
            x.as_ptr(),
            1,
            d as isize,
            w.as_ptr(),
            d as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
    let y = Tensor::from_vec(y, (n, d), h.device())?;
    match b {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}
