//! Safetensors files read tensor by tensor: the header first, then each tensor's bytes straight
//! into the storage the tensor keeps, so a load costs the tensors' memory and no copy of the
//! whole file. Reads go through [`super::file`], so a file that fails or shrinks mid-read is
//! an error naming it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor, WithDType};
use serde::Deserialize;

use super::file::{self, ReadAt};
use crate::error::{EngineError, Result};

/// Headers larger than this are refused rather than allocated (the format's own bound).
const MAX_HEADER: u64 = 100 << 20;

#[derive(Deserialize)]
struct Info {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: (u64, u64),
}

/// Every tensor of the safetensors file at `path`, on the CPU.
pub fn read_safetensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    read_safetensors_with_progress(path, &mut |_, _| {})
}

/// [`read_safetensors`], calling `progress(bytes read, file bytes)` after each tensor.
pub fn read_safetensors_with_progress(
    path: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<HashMap<String, Tensor>> {
    read_safetensors_where(path, &|_| true, progress)
}

/// The tensors of the file for which `want(name)` holds; the others' bytes are not read
/// (a multimodal checkpoint's vision tower, when only the text model runs).
pub fn read_safetensors_where(
    path: &Path,
    want: &dyn Fn(&str) -> bool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<HashMap<String, Tensor>> {
    let bad = |m: String| EngineError::format(path, format!("invalid safetensors file: {m}"));
    let file = file::open(path)?;
    let len = file.size().map_err(|e| EngineError::io(path, e))?;
    let mut n = [0u8; 8];
    if len < 8 {
        return Err(bad(format!(
            "{len} bytes, fewer than the 8 of the header's length"
        )));
    }
    file::fill_at(path, file.as_ref(), &mut n, 0, len, &mut |_, _| {})?;
    let n = u64::from_le_bytes(n);
    if n > MAX_HEADER || 8 + n > len {
        return Err(bad(format!("a header of {n} bytes in a file of {len}")));
    }
    let mut header = vec![0u8; n as usize];
    file::fill_at(path, file.as_ref(), &mut header, 8, len, &mut |_, _| {})?;
    let mut infos: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| bad(format!("the header: {e}")))?;
    infos.remove("__metadata__");
    let data = 8 + n;
    let mut done = data;
    progress(done, len);
    let mut out = HashMap::with_capacity(infos.len());
    for (name, v) in infos {
        let info: Info =
            serde_json::from_value(v).map_err(|e| bad(format!("tensor `{name}`: {e}")))?;
        let elems = info
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| bad(format!("tensor `{name}`: the shape overflows")))?;
        let (start, end) = info.data_offsets;
        let at = |dtype: DType| -> Result<u64> {
            let bytes = (elems as u64).checked_mul(dtype.size_in_bytes() as u64);
            if start > end || bytes != Some(end - start) || data + end > len {
                return Err(bad(format!(
                    "tensor `{name}` of {} {:?} claims bytes {start}..{end} of the {} after the header",
                    elems,
                    info.shape,
                    len - data
                )));
            }
            Ok(data + start)
        };
        let f = file.as_ref();
        if !want(&name) {
            done += end.saturating_sub(start);
            progress(done, len);
            continue;
        }
        let t = match info.dtype.as_str() {
            "F32" => read_typed::<f32>(path, f, at(DType::F32)?, len, elems, &info.shape),
            "F16" => read_typed::<half::f16>(path, f, at(DType::F16)?, len, elems, &info.shape),
            "BF16" => read_typed::<half::bf16>(path, f, at(DType::BF16)?, len, elems, &info.shape),
            "F64" => read_typed::<f64>(path, f, at(DType::F64)?, len, elems, &info.shape),
            "I64" => read_typed::<i64>(path, f, at(DType::I64)?, len, elems, &info.shape),
            "U32" => read_typed::<u32>(path, f, at(DType::U32)?, len, elems, &info.shape),
            "U8" => read_typed::<u8>(path, f, at(DType::U8)?, len, elems, &info.shape),
            other => Err(bad(format!(
                "tensor `{name}` has dtype {other}, which lensd does not read"
            ))),
        }?;
        done += end - start;
        progress(done, len);
        out.insert(name, t);
    }
    Ok(out)
}

/// Where a tensor of a safetensors file lies: its dtype's name, its shape, and its bytes
/// `start..end` counted from the start of the file.
pub(crate) struct Extent {
    pub dtype: String,
    pub shape: Vec<usize>,
    pub start: usize,
    pub end: usize,
}

/// The tensors of a whole safetensors file held in memory (`bytes`), by name, each checked to
/// lie inside the file with as many bytes as its dtype and shape need; `None` for a file that
/// is not one, or holds a dtype other than F32, F16 and BF16 (whoever reads the file the
/// usual way reports what is wrong).
pub(crate) fn extents(bytes: &[u8]) -> Option<BTreeMap<String, Extent>> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    if n > MAX_HEADER {
        return None;
    }
    let data = 8 + n as usize;
    let mut infos: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(bytes.get(8..data)?).ok()?;
    infos.remove("__metadata__");
    infos
        .into_iter()
        .map(|(name, v)| {
            let info: Info = serde_json::from_value(v).ok()?;
            let size = match info.dtype.as_str() {
                "F32" => 4,
                "F16" | "BF16" => 2,
                _ => return None,
            };
            let elems = info
                .shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))?;
            let (start, end) = info.data_offsets;
            let (start, end) = (
                data.checked_add(start as usize)?,
                data.checked_add(end as usize)?,
            );
            if start > end || end - start != elems.checked_mul(size)? || end > bytes.len() {
                return None;
            }
            let extent = Extent {
                dtype: info.dtype,
                shape: info.shape,
                start,
                end,
            };
            Some((name, extent))
        })
        .collect()
}

/// `elems` values of `T` read from byte `offset` into a tensor of `shape`.
fn read_typed<T: WithDType>(
    path: &Path,
    file: &dyn ReadAt,
    offset: u64,
    len: u64,
    elems: usize,
    shape: &[usize],
) -> Result<Tensor> {
    let mut values = vec![T::zero(); elems];
    // SAFETY: T is a plain number type (every bit pattern is a value), the byte view covers
    // exactly the vector's initialized elements, and it is dropped before `values` is used.
    // Safetensors stores little-endian numbers, the byte order of the machines lensd runs on.
    let bytes = unsafe {
        std::slice::from_raw_parts_mut(
            values.as_mut_ptr() as *mut u8,
            elems * std::mem::size_of::<T>(),
        )
    };
    file::fill_at(path, file, bytes, offset, len, &mut |_, _| {})?;
    Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_read_back_as_candle_wrote_them_and_bad_headers_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let a = Tensor::arange(0f32, 12., &Device::Cpu)
            .unwrap()
            .reshape((3, 4))
            .unwrap();
        let b = Tensor::new(&[1u32, 2, 3], &Device::Cpu).unwrap();
        let c = a.to_dtype(DType::BF16).unwrap();
        let all = HashMap::from([("a".to_string(), a), ("b".into(), b), ("c".into(), c)]);
        candle_core::safetensors::save(&all, &path).unwrap();
        let got = read_safetensors(&path).unwrap();
        assert_eq!(got.len(), 3);
        for (name, t) in &all {
            let g = &got[name];
            assert_eq!((g.dtype(), g.dims()), (t.dtype(), t.dims()), "{name}");
            let diff = (g.to_dtype(DType::F64).unwrap() - t.to_dtype(DType::F64).unwrap())
                .unwrap()
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            assert_eq!(diff, 0.0, "{name}");
        }

        let bytes = std::fs::read(&path).unwrap();
        for (cut, needle) in [
            (4, "fewer than the 8"),
            (20, "a header of"),
            (bytes.len() - 4, "claims bytes"),
        ] {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            let e = read_safetensors(&path).unwrap_err().to_string();
            assert!(
                e.contains(&path.display().to_string()) && e.contains(needle),
                "{cut}: {e}"
            );
        }
    }
}
