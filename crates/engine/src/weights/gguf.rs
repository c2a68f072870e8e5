//! GGUF files: the header (metadata and tensor table), the configuration read from it,
//! and tensors served without copies out of the file's bytes, read once into memory.

use std::collections::HashMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file::{Content, TensorInfo, Value};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device};

use super::file::{self, FileBytes, ReadAt};
use super::{
    check_shape, file_quant, ComputeDtype, Linear, ModelWeights, Role, TensorHeader, TensorSource,
};
use crate::config::ModelConfig;
use crate::error::{EngineError, Result};

const MAGIC: &[u8; 4] = b"GGUF";

pub struct GgufFile {
    path: PathBuf,
    /// The file's length when it was opened.
    len: u64,
    /// The whole file, when it was read for its tensors (not only its header).
    bytes: Option<Arc<FileBytes>>,
    content: Content,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("tensors", &self.content.tensor_infos.len())
            .finish()
    }
}

/// Whether `path` starts with the GGUF magic bytes.
pub fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    lensd_core::files::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map(|_| &magic == MAGIC)
        .unwrap_or(false)
}

impl GgufFile {
    /// Parses the header alone (metadata and tensor table), reading no tensor data. Every
    /// tensor's byte range is checked against the file size, so that a truncated file fails
    /// here, not mid-forward.
    pub fn open(path: &Path) -> Result<Self> {
        let file = file::open(path)?;
        let len = file.size().map_err(|e| EngineError::io(path, e))?;
        let mut reader = std::io::BufReader::with_capacity(1 << 16, At { file, pos: 0 });
        Self::parse(path, len, None, &mut reader)
    }

    /// Reads the whole file into memory, calling `progress(bytes done, bytes total)` as it
    /// arrives, then parses the header; tensors are then views of those bytes.
    pub fn read(path: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<Self> {
        let bytes = Arc::new(file::read_whole(path, progress)?);
        let len = bytes.len() as u64;
        Self::parse(path, len, Some(bytes.clone()), &mut Cursor::new(&bytes[..]))
    }

    fn parse<R: std::io::Read + std::io::Seek>(
        path: &Path,
        len: u64,
        bytes: Option<Arc<FileBytes>>,
        reader: &mut R,
    ) -> Result<Self> {
        let mut magic = [0u8; 4];
        if reader.read_exact(&mut magic).is_err() || &magic != MAGIC {
            return Err(EngineError::format(
                path,
                "not a GGUF file (the first four bytes are not `GGUF`)",
            ));
        }
        reader.rewind().map_err(|e| EngineError::io(path, e))?;
        let content = Content::read(reader).map_err(|e| {
            EngineError::format(
                path,
                format!("the GGUF header is corrupt or truncated: {e}"),
            )
        })?;
        let g = GgufFile {
            path: path.to_path_buf(),
            len,
            bytes,
            content,
        };
        for (name, info) in &g.content.tensor_infos {
            g.byte_range(name, info)?;
        }
        Ok(g)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file_len(&self) -> u64 {
        self.len
    }

    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    pub fn tensor_infos(&self) -> &HashMap<String, TensorInfo> {
        &self.content.tensor_infos
    }

    pub fn tensor_data_offset(&self) -> u64 {
        self.content.tensor_data_offset
    }

    /// Bytes a tensor occupies in the file.
    pub fn tensor_bytes(info: &TensorInfo) -> u64 {
        let elems = info.shape.elem_count() as u64;
        elems / info.ggml_dtype.block_size() as u64 * info.ggml_dtype.type_size() as u64
    }

    fn byte_range(&self, name: &str, info: &TensorInfo) -> Result<(usize, usize)> {
        let block = info.ggml_dtype.block_size();
        if !info.shape.elem_count().is_multiple_of(block) {
            return Err(EngineError::format(
                &self.path,
                format!(
                    "tensor `{name}` has {} elements, not a multiple of the {:?} block size {block}",
                    info.shape.elem_count(),
                    info.ggml_dtype
                ),
            ));
        }
        let start = self.content.tensor_data_offset.saturating_add(info.offset);
        let len = Self::tensor_bytes(info);
        let end = start.saturating_add(len);
        if end > self.len {
            return Err(EngineError::format(
                &self.path,
                format!(
                    "tensor `{name}` needs bytes {start}..{end} but the file has {} bytes (truncated?)",
                    self.len
                ),
            ));
        }
        Ok((start as usize, len as usize))
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    fn meta_err(&self, key: &str, what: &str) -> EngineError {
        EngineError::format(&self.path, format!("metadata `{key}` {what}"))
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        match self.get(key) {
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(self.meta_err(key, "is not a string")),
            None => Err(self.meta_err(key, "is missing")),
        }
    }

    pub fn get_usize(&self, key: &str) -> Result<usize> {
        let v = self
            .get(key)
            .ok_or_else(|| self.meta_err(key, "is missing"))?;
        let n = match v {
            Value::U8(x) => *x as i128,
            Value::I8(x) => *x as i128,
            Value::U16(x) => *x as i128,
            Value::I16(x) => *x as i128,
            Value::U32(x) => *x as i128,
            Value::I32(x) => *x as i128,
            Value::U64(x) => *x as i128,
            Value::I64(x) => *x as i128,
            _ => return Err(self.meta_err(key, "is not an integer")),
        };
        usize::try_from(n).map_err(|_| self.meta_err(key, &format!("is {n}, not a valid size")))
    }

    pub fn get_f64(&self, key: &str) -> Result<f64> {
        match self.get(key) {
            Some(Value::F32(x)) => Ok(*x as f64),
            Some(Value::F64(x)) => Ok(*x),
            Some(_) => Err(self.meta_err(key, "is not a float")),
            None => Err(self.meta_err(key, "is missing")),
        }
    }

    pub fn get_bool(&self, key: &str) -> Option<bool> {
        match self.get(key) {
            Some(Value::Bool(b)) => Some(*b),
            _ => None,
        }
    }

    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
    }

    /// The model's configuration from `{arch}.*` metadata, read by its family's description;
    /// fails for architectures lensd does not run.
    pub fn config(&self) -> Result<ModelConfig> {
        crate::family::from_gguf(self)
    }

    /// The bytes the model of `cfg` holds once loaded from this file, from the header alone.
    pub fn resident(&self, cfg: &ModelConfig) -> super::Resident {
        super::resident(self, cfg)
    }

    fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.tensor_infos()
            .get(name)
            .ok_or_else(|| EngineError::format(&self.path, format!("tensor `{name}` is missing")))
    }

    /// Builds the model's weights on `device` from a file opened with [`GgufFile::read`]. With
    /// `Stored` on the CPU, quantized matrices are views into the file's bytes.
    pub fn load_weights(
        &self,
        cfg: &ModelConfig,
        compute: ComputeDtype,
        device: &Device,
    ) -> Result<ModelWeights> {
        super::assemble(self, cfg, compute, device)
    }
}

impl TensorSource for GgufFile {
    fn path(&self) -> &Path {
        &self.path
    }

    fn name(&self, _cfg: &ModelConfig, role: Role, layer: usize) -> Option<String> {
        let block = |s: &str| format!("blk.{layer}.{s}");
        Some(match role {
            Role::Embed => "token_embd.weight".into(),
            Role::Head => "output.weight".into(),
            Role::FinalNorm => "output_norm.weight".into(),
            Role::RopeFreqs => "rope_freqs.weight".into(),
            Role::AttnNorm => block("attn_norm.weight"),
            Role::PostAttnNorm => block("post_attention_norm.weight"),
            Role::FfnNorm => block("ffn_norm.weight"),
            Role::PostFfnNorm => block("post_ffw_norm.weight"),
            Role::QNorm => block("attn_q_norm.weight"),
            Role::KNorm => block("attn_k_norm.weight"),
            Role::Q => block("attn_q.weight"),
            Role::K => block("attn_k.weight"),
            Role::V => block("attn_v.weight"),
            Role::O => block("attn_output.weight"),
            Role::QBias => block("attn_q.bias"),
            Role::KBias => block("attn_k.bias"),
            Role::VBias => block("attn_v.bias"),
            Role::OBias => block("attn_output.bias"),
            Role::Gate => block("ffn_gate.weight"),
            Role::Up => block("ffn_up.weight"),
            Role::Down => block("ffn_down.weight"),
            // gpt-oss's GGUF files split the experts' gate and up: not read yet.
            Role::Sinks
            | Role::Router
            | Role::RouterBias
            | Role::GateUpExperts
            | Role::GateUpBias
            | Role::DownExperts
            | Role::DownBias => return None,
        })
    }

    fn header(&self, name: &str) -> Option<TensorHeader> {
        let info = self.tensor_infos().get(name)?;
        Some(TensorHeader {
            shape: info.shape.dims().to_vec(),
            bytes: Self::tensor_bytes(info),
            packed: !matches!(
                info.ggml_dtype,
                GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16
            ),
        })
    }

    fn norm_offset(&self, _cfg: &ModelConfig) -> f32 {
        0.0
    }

    fn load(
        &self,
        name: &str,
        role: Role,
        cfg: &ModelConfig,
        compute: ComputeDtype,
    ) -> Result<Linear> {
        let info = self.info(name)?;
        check_shape(&self.path, name, role, cfg, info.shape.dims())?;
        let (offset, len) = self.byte_range(name, info)?;
        let bytes = self.bytes.as_ref().ok_or_else(|| {
            EngineError::format(
                &self.path,
                "only the header was read; tensors need the whole file (GgufFile::read)",
            )
        })?;
        let q = file_quant::view(bytes, offset, len, info.ggml_dtype, info.shape.dims())
            .map_err(|m| EngineError::format(&self.path, format!("tensor `{name}`: {m}")))?;
        let float = matches!(
            info.ggml_dtype,
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16
        );
        match compute {
            ComputeDtype::Bf16 => Ok(Linear::Dense(
                q.dequantize(&Device::Cpu)?.to_dtype(DType::BF16)?,
            )),
            ComputeDtype::F32 => Ok(Linear::Dense(q.dequantize(&Device::Cpu)?)),
            ComputeDtype::Stored if float => Ok(Linear::Dense(q.dequantize(&Device::Cpu)?)),
            ComputeDtype::Stored => Ok(Linear::Quant(Arc::new(q))),
        }
    }
}

/// A file read from a position, for parsing a header without reading the rest.
struct At {
    file: Box<dyn ReadAt>,
    pos: u64,
}

impl std::io::Read for At {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl std::io::Seek for At {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        use std::io::SeekFrom;
        let invalid =
            || std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the start");
        self.pos = match to {
            SeekFrom::Start(p) => p,
            SeekFrom::Current(d) => self.pos.checked_add_signed(d).ok_or_else(invalid)?,
            SeekFrom::End(d) => self
                .file
                .size()?
                .checked_add_signed(d)
                .ok_or_else(invalid)?,
        };
        Ok(self.pos)
    }
}
