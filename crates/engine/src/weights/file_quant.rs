//! Quantized tensors whose blocks stay where the GGUF file was read.
//!
//! candle's own GGUF reader copies every tensor into owned memory (twice, briefly). Here the
//! file is read once into memory and each tensor is a read-only view of those bytes, so a base
//! costs its file's size and nothing more. The block types lensd-kernels covers dequantize
//! through it (in parallel, vectorized); other types through candle's code.

use std::marker::PhantomData;
use std::sync::Arc;

use candle_core::quantized::k_quants::{self, GgmlType};
use candle_core::quantized::{GgmlDType, QStorage, QTensor, QuantizedType};
use candle_core::{CpuStorage, Result as CResult};
use half::f16;

use super::file::FileBytes;

/// Blocks of type `T` at `offset..offset + n_blocks * size_of::<T>()` of a file's bytes.
struct MappedBlocks<T> {
    bytes: Arc<FileBytes>,
    offset: usize,
    n_blocks: usize,
    _blocks: PhantomData<T>,
}

impl<T: GgmlType> MappedBlocks<T> {
    fn blocks(&self) -> &[T] {
        // SAFETY: `view` checked that the range lies inside the bytes and that `offset` is
        // aligned for `T`; nothing writes the bytes, which live as long as `self` holds its Arc.
        // Every bit pattern is a valid block (blocks are plain numbers).
        unsafe {
            std::slice::from_raw_parts(
                self.bytes.as_ptr().add(self.offset) as *const T,
                self.n_blocks,
            )
        }
    }
}

impl<T: GgmlType + 'static> QuantizedType for MappedBlocks<T> {
    fn dtype(&self) -> GgmlDType {
        T::DTYPE
    }

    fn matmul_t(&self, mkn: (usize, usize, usize), lhs: &[f32], dst: &mut [f32]) -> CResult<()> {
        k_quants::matmul(mkn, lhs, self.blocks(), dst)
    }

    fn matmul_t_f16(
        &self,
        mkn: (usize, usize, usize),
        lhs: &[f16],
        dst: &mut [f16],
    ) -> CResult<()> {
        k_quants::matmul_f16(mkn, lhs, self.blocks(), dst)
    }

    fn embedding(&self, ids: &[u32], rows: usize, hidden: usize) -> CResult<CpuStorage> {
        let row_blocks = hidden / T::BLCK_SIZE;
        if !hidden.is_multiple_of(T::BLCK_SIZE) || self.n_blocks != rows * row_blocks {
            candle_core::bail!(
                "embedding of {rows}x{hidden} does not fit {} blocks of {}",
                self.n_blocks,
                T::BLCK_SIZE
            )
        }
        let blocks = self.blocks();
        let mut out = vec![0f32; ids.len() * hidden];
        for (dst, &id) in out.chunks_exact_mut(hidden).zip(ids) {
            let row = id as usize;
            if row >= rows {
                candle_core::bail!("token id {row} is outside the vocabulary of {rows} rows")
            }
            T::to_float(&blocks[row * row_blocks..(row + 1) * row_blocks], dst);
        }
        Ok(CpuStorage::F32(out))
    }

    fn dequantize(&self, elem_count: usize) -> CResult<CpuStorage> {
        let mut ys = super::zeroed_f32(elem_count);
        match super::quant_product::block_type(T::DTYPE) {
            Some(ty) => {
                let blocks = self.blocks();
                // SAFETY: the blocks are plain bytes, `size_of_val` of them long.
                let bytes = unsafe {
                    std::slice::from_raw_parts(
                        blocks.as_ptr() as *const u8,
                        std::mem::size_of_val(blocks),
                    )
                };
                lensd_kernels::dequantize(ty, bytes, &mut ys, &super::quant_product::CandlePool)
                    .map_err(|e| candle_core::Error::Msg(e.to_string()))?
            }
            None => T::to_float(self.blocks(), &mut ys),
        }
        Ok(CpuStorage::F32(ys))
    }

    fn storage_size_in_bytes(&self) -> usize {
        self.n_blocks * std::mem::size_of::<T>()
    }

    fn as_ptr(&self) -> *const u8 {
        self.blocks().as_ptr() as *const u8
    }

    fn block_size(&self) -> usize {
        T::BLCK_SIZE
    }

    fn from_float(&mut self, _xs: &[f32]) {
        // Only candle's quantize paths write into storage, and lensd never quantizes into a
        // tensor read from a file: the bytes are shared and read-only by construction.
        panic!("a GGUF tensor read from its file is read-only")
    }

    fn from_float_imatrix(&mut self, _xs: &[f32], _w: &[f32], _n_per_row: usize) {
        panic!("a GGUF tensor read from its file is read-only")
    }

    fn size(&self) -> usize {
        self.storage_size_in_bytes()
    }
}

fn boxed<T: GgmlType + 'static>(
    bytes: &Arc<FileBytes>,
    offset: usize,
    len: usize,
) -> std::result::Result<Box<dyn QuantizedType>, String> {
    let size = std::mem::size_of::<T>();
    if !len.is_multiple_of(size) {
        return Err(format!(
            "{len} bytes is not a whole number of {size}-byte blocks"
        ));
    }
    let align = std::mem::align_of::<T>();
    if !(bytes.as_ptr() as usize + offset).is_multiple_of(align) {
        return Err(format!(
            "data at offset {offset} is not {align}-byte aligned"
        ));
    }
    Ok(Box::new(MappedBlocks::<T> {
        bytes: bytes.clone(),
        offset,
        n_blocks: len / size,
        _blocks: PhantomData,
    }))
}

/// A `QTensor` over `len` bytes at `offset` in `bytes`. The caller has checked the range lies
/// in the file; this checks the block arithmetic and alignment.
pub(crate) fn view(
    bytes: &Arc<FileBytes>,
    offset: usize,
    len: usize,
    dtype: GgmlDType,
    shape: &[usize],
) -> std::result::Result<QTensor, String> {
    use k_quants::*;
    if offset.checked_add(len).is_none_or(|end| end > bytes.len()) {
        return Err(format!(
            "bytes {offset}..{} lie beyond the end of the file ({} bytes)",
            offset.saturating_add(len),
            bytes.len()
        ));
    }
    let storage = match dtype {
        GgmlDType::F32 => boxed::<f32>(bytes, offset, len)?,
        GgmlDType::F16 => boxed::<f16>(bytes, offset, len)?,
        GgmlDType::BF16 => boxed::<half::bf16>(bytes, offset, len)?,
        GgmlDType::Q4_0 => boxed::<BlockQ4_0>(bytes, offset, len)?,
        GgmlDType::Q4_1 => boxed::<BlockQ4_1>(bytes, offset, len)?,
        GgmlDType::Q5_0 => boxed::<BlockQ5_0>(bytes, offset, len)?,
        GgmlDType::Q5_1 => boxed::<BlockQ5_1>(bytes, offset, len)?,
        GgmlDType::Q8_0 => boxed::<BlockQ8_0>(bytes, offset, len)?,
        GgmlDType::Q8_1 => boxed::<BlockQ8_1>(bytes, offset, len)?,
        GgmlDType::Q2K => boxed::<BlockQ2K>(bytes, offset, len)?,
        GgmlDType::Q3K => boxed::<BlockQ3K>(bytes, offset, len)?,
        GgmlDType::Q4K => boxed::<BlockQ4K>(bytes, offset, len)?,
        GgmlDType::Q5K => boxed::<BlockQ5K>(bytes, offset, len)?,
        GgmlDType::Q6K => boxed::<BlockQ6K>(bytes, offset, len)?,
        GgmlDType::Q8K => boxed::<BlockQ8K>(bytes, offset, len)?,
    };
    QTensor::new(QStorage::Cpu(storage), shape.to_vec()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::max_abs;
    use candle_core::quantized::QMatMul;
    use candle_core::{Device, Module, Tensor};

    /// Every block type common GGUF files use, viewed in place, multiplies as candle's own
    /// quantized tensor does and as its dequantized f32 matrix nearly does (the quantized
    /// product rounds the activations to 8 bits).
    #[test]
    fn views_of_every_common_block_type_multiply_like_their_dequantized_matrices() {
        let dev = &Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (16, 512), dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (3, 512), dev).unwrap();
        for dtype in [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q8_0,
            GgmlDType::Q4K,
            GgmlDType::Q5K,
            GgmlDType::Q6K,
        ] {
            let q = QTensor::quantize(&w, dtype).unwrap();
            let data = q.data().unwrap();
            let bytes = Arc::new(FileBytes::copy_of(&data));
            let v = view(&bytes, 0, data.len(), dtype, &[16, 512]).unwrap();
            let dense = v.dequantize(dev).unwrap();
            let same = max_abs(&(&dense - q.dequantize(dev).unwrap()).unwrap());
            assert_eq!(same, 0.0, "{dtype:?}: the view dequantizes as candle does");
            let got = QMatMul::QTensor(Arc::new(v)).forward(&x).unwrap();
            let want = x.matmul(&dense.t().unwrap()).unwrap();
            let (err, scale) = (max_abs(&(&got - &want).unwrap()), max_abs(&want));
            assert!(
                err < 0.02 * scale,
                "{dtype:?}: quantized product off by {err} of {scale}"
            );
            let reference = QMatMul::QTensor(Arc::new(q)).forward(&x).unwrap();
            let d = max_abs(&(&got - &reference).unwrap());
            assert_eq!(
                d, 0.0,
                "{dtype:?}: the view multiplies as candle's tensor does"
            );
        }
    }
}
