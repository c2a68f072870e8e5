//! GGUF files: the header (metadata and tensor table, parsed in `gguf_header`), the
//! configuration read from it, and tensors served without copies out of the file's bytes, read
//! once into memory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device};

use super::experts::ExpertMats;
use super::file::{self, FileBytes, ReadAt};
use super::gguf_experts;
use super::gguf_header::{self, GgufHeader, HeaderError};
use super::{
    check_shape, file_quant, ComputeDtype, Linear, ModelWeights, Role, TensorHeader, TensorSource,
};
use crate::config::ModelConfig;
use crate::error::{EngineError, Result};

pub use super::gguf_header::{GgufDType, GgufTensor};

const MAGIC: &[u8; 4] = b"GGUF";

mod mapped_read;

pub struct GgufFile {
    path: PathBuf,
    /// The file's length when it was opened.
    len: u64,
    /// The whole file, when it was read for its tensors (not only its header).
    bytes: Option<Arc<FileBytes>>,
    header: GgufHeader,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.header.version)
            .field("tensors", &self.header.tensors.len())
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

/// Bytes of the start of the file read before its header is parsed (the rest follows if the
/// header is longer): one of the reads the whole file is read in, so that their offsets stay
/// those of a plain read.
const HEADER_READ: usize = file::CHUNK;

/// The bytes of a file read so far; reading past them (the file goes on) is `WouldBlock`, so
/// that the header's parser asks for more instead of calling the file truncated.
struct Prefix<'a>(&'a [u8]);

impl std::io::Read for Prefix<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.0.is_empty() && !buf.is_empty() {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.0.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

fn header_error(path: &Path, len: u64, e: HeaderError) -> EngineError {
    match e {
        HeaderError::Corrupt(m) => EngineError::format(
            path,
            format!("the GGUF header is corrupt or truncated: {m}"),
        ),
        HeaderError::Unsupported(m) => EngineError::unsupported(path, m),
        HeaderError::Io { at, error } => EngineError::io(
            path,
            std::io::Error::new(error.kind(), format!("{error} (at byte {at} of {len})")),
        ),
    }
}

impl GgufFile {
    /// Parses the header alone (metadata and tensor table), reading no tensor data. Every
    /// tensor's byte range is checked against the file size, so that a truncated file fails
    /// here, not mid-forward.
    pub fn open(path: &Path) -> Result<Self> {
        let file = file::open(path)?;
        let len = file.size().map_err(|e| EngineError::io(path, e))?;
        let reader = std::io::BufReader::with_capacity(1 << 16, At { file, pos: 0 });
        Self::parse(path, len, None, reader)
    }

    /// Reads the whole file into memory, calling `progress(bytes done, bytes total)` as it
    /// arrives, and parses the header; tensors are then views of those bytes.
    pub fn read(path: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<Self> {
        Ok(Self::read_with(path, progress, |_| ())?.0)
    }

    /// [`GgufFile::read`], running `on_header` on a second thread with the header (and no
    /// tensor data) as soon as the header's bytes have arrived, while the rest of the file is
    /// read: a base's tokenizer is built while its weights come from the disk. The header and
    /// the tensors come from the same read of one open file.
    pub fn read_with<T: Send>(
        path: &Path,
        progress: &mut dyn FnMut(u64, u64),
        on_header: impl FnOnce(&GgufFile) -> T + Send,
    ) -> Result<(Self, T)> {
        Self::read_in(path, progress, on_header, HEADER_READ)
    }

    /// [`GgufFile::read_with`], reading the start `first` bytes at a time until the header
    /// parses.
    fn read_in<T: Send>(
        path: &Path,
        progress: &mut dyn FnMut(u64, u64),
        on_header: impl FnOnce(&GgufFile) -> T + Send,
        first: usize,
    ) -> Result<(Self, T)> {
        let (file, size) = file::open_sized(path)?;
        let mut bytes = FileBytes::for_file(path, file.as_ref(), size);
        if bytes.mapping().is_some() {
            return Self::read_mapped(path, bytes, progress, on_header, first.max(1));
        }
        let len = size as u64;
        // Chunks of the start until the header parses.
        let mut have = 0usize;
        let header = loop {
            let upto = (have + first.max(1)).min(size);
            bytes.load(path, file.as_ref(), have, upto, progress)?;
            have = upto;
            if !bytes.starts_with(MAGIC) {
                return Err(EngineError::format(
                    path,
                    "not a GGUF file (the first four bytes are not `GGUF`)",
                ));
            }
            let parsed = if have < size {
                gguf_header::read(Prefix(&bytes[..have]), len)
            } else {
                gguf_header::read(&bytes[..], len)
            };
            match parsed {
                Ok(h) => break h,
                Err(HeaderError::Io { error, .. })
                    if error.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(header_error(path, len, e)),
            }
        };
        let head = GgufFile {
            path: path.to_path_buf(),
            len,
            bytes: None,
            header,
        };
        let (rest, made) = std::thread::scope(|s| {
            let making = s.spawn(|| on_header(&head));
            let rest = bytes.load(path, file.as_ref(), have, size, progress);
            (rest, making.join())
        });
        let made = made.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        rest?;
        let g = GgufFile {
            bytes: Some(Arc::new(bytes)),
            ..head
        };
        for (name, info) in &g.header.tensors {
            g.byte_range(name, info)?;
        }
        Ok((g, made))
    }

    fn parse<R: std::io::Read + std::io::Seek>(
        path: &Path,
        len: u64,
        bytes: Option<Arc<FileBytes>>,
        mut reader: R,
    ) -> Result<Self> {
        let mut magic = [0u8; 4];
        if reader.read_exact(&mut magic).is_err() || &magic != MAGIC {
            return Err(EngineError::format(
                path,
                "not a GGUF file (the first four bytes are not `GGUF`)",
            ));
        }
        reader.rewind().map_err(|e| EngineError::io(path, e))?;
        let header = gguf_header::read(reader, len).map_err(|e| header_error(path, len, e))?;
        let g = GgufFile {
            path: path.to_path_buf(),
            len,
            bytes,
            header,
        };
        for (name, info) in &g.header.tensors {
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

    /// The whole file's bytes, when it was read (not only its header).
    pub fn bytes(&self) -> Option<&[u8]> {
        self.bytes.as_deref().map(|b| &b[..])
    }

    /// Whether the bytes are the page cache's, mapped under a read lease that still holds
    /// (`weights::mapped`); `false` once a change of the file made lensd copy them, and for a
    /// file read into memory.
    pub fn is_mapped(&self) -> bool {
        self.bytes.as_deref().is_some_and(FileBytes::is_mapped)
    }

    /// For mapped bytes that will be computed from (a `stored` base on the CPU): keeps the
    /// mapping where the page cache's 2 MiB folios cover at least half of the file, else copies
    /// the bytes into memory of lensd's own, backed by huge pages, and gives the lease up.
    /// Decoding reads every weight per token, and 4 KiB page-table entries cost it about 5 % in
    /// TLB misses on Gemma-3-270M. A file read from a cold page cache under the mapping's
    /// huge-page advice comes in 2 MiB folios; one that was already cached, read by other
    /// means, often in small ones.
    pub fn settle_for_compute(&self) {
        let Some(m) = self.bytes.as_deref().and_then(FileBytes::mapping) else {
            return;
        };
        if !m.is_shared_with_the_file() {
            return;
        }
        let huge = m.huge_mapped_bytes().unwrap_or(0);
        if huge * 2 < self.len {
            self.make_own();
        }
    }

    /// Bytes of the mapping that 2 MiB page-table entries map; `None` for bytes read into
    /// memory, or where the system does not say.
    pub fn huge_mapped_bytes(&self) -> Option<u64> {
        self.bytes
            .as_deref()
            .and_then(FileBytes::mapping)
            .and_then(|m| m.huge_mapped_bytes())
    }

    /// Copies mapped bytes into memory of lensd's own at the same addresses and gives the
    /// lease up (nothing to do for bytes read into memory). `false` if no memory could be had;
    /// the mapping then stays.
    pub fn make_own(&self) -> bool {
        self.bytes
            .as_deref()
            .and_then(FileBytes::mapping)
            .is_none_or(|m| m.make_own())
    }

    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.header.metadata
    }

    pub fn tensor_infos(&self) -> &HashMap<String, GgufTensor> {
        &self.header.tensors
    }

    pub fn tensor_data_offset(&self) -> u64 {
        self.header.data_offset
    }

    /// The format's version (1, 2 or 3).
    pub fn version(&self) -> u32 {
        self.header.version
    }

    /// `general.alignment`, or 32 when the file leaves it unset.
    pub fn alignment(&self) -> u64 {
        self.header.alignment
    }

    /// Bytes a tensor occupies in the file.
    pub fn tensor_bytes(info: &GgufTensor) -> u64 {
        info.bytes()
    }

    fn byte_range(&self, name: &str, info: &GgufTensor) -> Result<(usize, usize)> {
        let block = info.dtype.block_size() as u64;
        if !info.elements().is_multiple_of(block) {
            return Err(EngineError::format(
                &self.path,
                format!(
                    "tensor `{name}` has {} elements, not a multiple of the {} block size {block}",
                    info.elements(),
                    info.dtype
                ),
            ));
        }
        let start = self.header.data_offset.saturating_add(info.offset);
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

    /// A tensor's bytes as stored, for a file read with [`GgufFile::read`]: how MXFP4 experts,
    /// which candle cannot hold, are read.
    pub(crate) fn raw_bytes(&self, name: &str) -> Result<&[u8]> {
        let (offset, len) = self.byte_range(name, self.info(name)?)?;
        self.file_bytes()?.get(offset..offset + len).ok_or_else(|| {
            EngineError::format(
                &self.path,
                format!("tensor `{name}` lies past the end of the bytes read"),
            )
        })
    }

    /// The whole file, when it was read (not only its header).
    fn file_bytes(&self) -> Result<&Arc<FileBytes>> {
        self.bytes.as_ref().ok_or_else(|| {
            EngineError::format(
                &self.path,
                "only the header was read; tensors need the whole file (GgufFile::read)",
            )
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.header.metadata.get(key)
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

    fn info(&self, name: &str) -> Result<&GgufTensor> {
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

    fn name(&self, cfg: &ModelConfig, role: Role, layer: usize) -> Option<String> {
        let block = |s: &str| format!("blk.{layer}.{s}");
        Some(match role {
            Role::Embed => "token_embd.weight".into(),
            Role::Head => "output.weight".into(),
            Role::FinalNorm => "output_norm.weight".into(),
            Role::RopeFreqs => "rope_freqs.weight".into(),
            Role::AttnNorm => block("attn_norm.weight"),
            Role::PostAttnNorm => block("post_attention_norm.weight"),
            // gpt-oss's norm before its experts keeps the name of the tensor it converts.
            Role::FfnNorm if cfg.moe.is_some() => block("post_attention_norm.weight"),
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
            Role::Sinks => block("attn_sinks.weight"),
            Role::Router => block("ffn_gate_inp.weight"),
            Role::RouterBias => block("ffn_gate_inp.bias"),
            // The experts' gate and up are apart: the gate's names stand for both, and the
            // up's are read with them.
            Role::GateUpExperts => block("ffn_gate_exps.weight"),
            Role::GateUpBias => block("ffn_gate_exps.bias"),
            Role::UpExperts => block("ffn_up_exps.weight"),
            Role::UpBias => block("ffn_up_exps.bias"),
            Role::DownExperts => block("ffn_down_exps.weight"),
            Role::DownBias => block("ffn_down_exps.bias"),
        })
    }

    fn header(&self, name: &str) -> Option<TensorHeader> {
        let info = self.tensor_infos().get(name)?;
        Some(TensorHeader {
            shape: info.shape.dims().to_vec(),
            bytes: Self::tensor_bytes(info),
            packed: !info.dtype.is_float(),
            wide: info.dtype.wide(),
        })
    }

    fn norm_offset(&self, _cfg: &ModelConfig) -> f32 {
        0.0
    }

    fn load_experts(
        &self,
        name: &str,
        role: Role,
        cfg: &ModelConfig,
        compute: ComputeDtype,
    ) -> Result<ExpertMats> {
        let (e, d, ff) = (cfg.n_experts(), cfg.d_model, cfg.d_ff);
        let fail = |m: EngineError| EngineError::format(&self.path, m.to_string());
        match role {
            Role::GateUpExperts => {
                let up = name.replace("ffn_gate_exps", "ffn_up_exps");
                let gate = self.expert_tensor(name, [e, ff, d])?;
                let up = self.expert_tensor(&up, [e, ff, d])?;
                gguf_experts::gate_up(gate, up, (e, ff, d), compute, name).map_err(fail)
            }
            Role::DownExperts => {
                let down = self.expert_tensor(name, [e, d, ff])?;
                gguf_experts::down(down, (e, d, ff), compute, name).map_err(fail)
            }
            other => Err(EngineError::format(
                &self.path,
                format!("`{name}` ({other:?}) is not an expert matrix"),
            )),
        }
    }

    fn load(
        &self,
        name: &str,
        role: Role,
        cfg: &ModelConfig,
        compute: ComputeDtype,
    ) -> Result<Linear> {
        if role == Role::GateUpBias {
            // The gate's bias and the up's, interleaved as the rows of the gate-and-up matrix.
            let up = name.replace("ffn_gate_exps", "ffn_up_exps");
            let gate = self.load(name, Role::UpBias, cfg, compute)?.to_f32()?;
            let up = self.load(&up, Role::UpBias, cfg, compute)?.to_f32()?;
            let both = gguf_experts::gate_up_bias(&gate, &up)
                .map_err(|e| EngineError::format(&self.path, e.to_string()))?;
            return Ok(Linear::Dense(both));
        }
        let info = self.info(name)?;
        check_shape(&self.path, name, role, cfg, info.shape.dims())?;
        let (offset, len) = self.byte_range(name, info)?;
        let dtype = match info.dtype {
            GgufDType::Ggml(d) => d,
            GgufDType::Mxfp4 => {
                return Err(EngineError::unsupported(
                    &self.path,
                    format!(
                        "MXFP4 tensor `{name}` as a {role:?} matrix: MXFP4 tensors are read \
                         with the experts"
                    ),
                ))
            }
        };
        let bytes = self.file_bytes()?;
        let q = file_quant::view(bytes, offset, len, dtype, info.shape.dims())
            .map_err(|m| EngineError::format(&self.path, format!("tensor `{name}`: {m}")))?;
        let float = info.dtype.is_float();
        match compute {
            ComputeDtype::Bf16 => Ok(Linear::Dense(
                q.dequantize(&Device::Cpu)?.to_dtype(DType::BF16)?,
            )),
            ComputeDtype::F32 if info.dtype.wide() => Ok(Linear::Wide(Arc::new(q))),
            ComputeDtype::F32 => Ok(Linear::Dense(q.dequantize(&Device::Cpu)?)),
            ComputeDtype::Stored if float => Ok(Linear::Dense(q.dequantize(&Device::Cpu)?)),
            ComputeDtype::Stored => Ok(Linear::Quant(Arc::new(q))),
        }
    }
}

impl GgufFile {
    /// An expert matrix tensor of shape `shape` (`[E, rows, cols]`): its MXFP4 blocks as
    /// stored, or its values when it is stored as f32. Other types are refused by name.
    fn expert_tensor(&self, name: &str, shape: [usize; 3]) -> Result<gguf_experts::Stored<'_>> {
        let info = self.info(name)?;
        if info.shape.dims() != shape {
            return Err(EngineError::Shape {
                path: self.path.clone(),
                tensor: name.to_string(),
                expected: shape.to_vec(),
                got: info.shape.dims().to_vec(),
            });
        }
        match info.dtype {
            GgufDType::Mxfp4 => Ok(gguf_experts::Stored::Mxfp4(self.raw_bytes(name)?)),
            GgufDType::Ggml(GgmlDType::F32) => {
                let (offset, len) = self.byte_range(name, info)?;
                let q = file_quant::view(self.file_bytes()?, offset, len, GgmlDType::F32, &shape)
                    .map_err(|m| {
                    EngineError::format(&self.path, format!("tensor `{name}`: {m}"))
                })?;
                let values = q
                    .dequantize(&Device::Cpu)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                Ok(gguf_experts::Stored::Values(values))
            }
            other => Err(EngineError::unsupported(
                &self.path,
                format!(
                    "expert tensor `{name}` of type {other} (lensd reads MXFP4 and F32 experts)"
                ),
            )),
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

#[cfg(test)]
mod tests {
    use super::super::gguf_header::tests::Writer;
    use super::*;
    use crate::config::Family;

    /// A llama-named file whose `blk.0.attn_q.weight` ([32, 32]) is MXFP4, beside an f32 norm.
    fn mxfp4_file(dir: &Path) -> (PathBuf, Vec<u8>) {
        let blocks: Vec<u8> = (0..32 * 17).map(|i| (i * 7 % 251) as u8).collect();
        let norm: Vec<u8> = (0..32).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let bytes = Writer::new(3)
            .meta("general.architecture", Value::String("llama".into()))
            .tensor("blk.0.attn_norm.weight", &[32], 0, norm)
            .tensor("blk.0.attn_q.weight", &[32, 32], 39, blocks.clone())
            .bytes();
        let path = dir.join("mxfp4.gguf");
        std::fs::write(&path, bytes).unwrap();
        (path, blocks)
    }

    #[test]
    fn a_header_longer_than_the_first_read_is_read_on_and_handed_over_without_data() {
        let dir = tempfile::tempdir().unwrap();
        let (path, blocks) = mxfp4_file(dir.path());
        let len = std::fs::metadata(&path).unwrap().len();
        let whole = GgufFile::open(&path).unwrap();
        // 7 bytes at a time: the header takes many reads, each ending inside an entry.
        let mut seen = Vec::new();
        let (g, handed) = GgufFile::read_in(
            &path,
            &mut |done, total| seen.push((done, total)),
            |head| {
                (
                    head.tensor_infos().clone(),
                    head.raw_bytes("blk.0.attn_q.weight").is_err(),
                    head.architecture().unwrap().to_string(),
                )
            },
            7,
        )
        .unwrap();
        assert_eq!(handed.0, *whole.tensor_infos());
        assert!(
            handed.1,
            "the header is handed over before, and without, the tensor data"
        );
        assert_eq!(handed.2, "llama");
        assert_eq!(g.raw_bytes("blk.0.attn_q.weight").unwrap(), &blocks[..]);
        assert!(
            seen.len() > 3 && seen.windows(2).all(|w| w[0].0 <= w[1].0),
            "{seen:?}"
        );
        assert_eq!(seen.last(), Some(&(len, len)));

        // Cut inside the header: the file is named truncated, not read on forever.
        let bytes = std::fs::read(&path).unwrap();
        let cut = dir.path().join("cut.gguf");
        std::fs::write(&cut, &bytes[..40]).unwrap();
        let e = GgufFile::read_in(&cut, &mut |_, _| {}, |_| (), 7)
            .map(|_| ())
            .expect_err("a cut header fails")
            .to_string();
        assert!(e.contains("cut.gguf") && e.contains("truncated"), "{e}");
        std::fs::write(&cut, b"GGML and more").unwrap();
        let e = GgufFile::read(&cut, &mut |_, _| {})
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not a GGUF file"), "{e}");
    }

    #[test]
    fn mxfp4_tensors_open_and_their_bytes_are_served_raw() {
        let dir = tempfile::tempdir().unwrap();
        let (path, blocks) = mxfp4_file(dir.path());
        let g = GgufFile::read(&path, &mut |_, _| {}).unwrap();
        let info = &g.tensor_infos()["blk.0.attn_q.weight"];
        assert_eq!(info.dtype, GgufDType::Mxfp4);
        assert_eq!(GgufFile::tensor_bytes(info), 32 * 17);
        assert_eq!(g.raw_bytes("blk.0.attn_q.weight").unwrap(), &blocks[..]);
        let h = g.header("blk.0.attn_q.weight").unwrap();
        assert!(h.packed && h.bytes == 32 * 17 && h.shape == [32, 32]);

        let cfg = ModelConfig::plain(Family::Llama, 1, 32, 1, 1, 32, 64, 16);
        let e = g
            .load("blk.0.attn_q.weight", Role::Q, &cfg, ComputeDtype::Stored)
            .unwrap_err()
            .to_string();
        assert!(e.contains("MXFP4 tensor `blk.0.attn_q.weight`"), "{e}");
        assert!(e.contains("read with the experts"), "{e}");
        // The other tensors load as before.
        let norm = g
            .load(
                "blk.0.attn_norm.weight",
                Role::AttnNorm,
                &cfg,
                ComputeDtype::F32,
            )
            .unwrap();
        assert_eq!(norm.to_f32().unwrap().to_vec1::<f32>().unwrap()[5], 5.0);

        let e = GgufFile::open(&path)
            .unwrap()
            .raw_bytes("blk.0.attn_q.weight")
            .unwrap_err()
            .to_string();
        assert!(e.contains("only the header was read"), "{e}");
        let e = g.raw_bytes("nothing").unwrap_err().to_string();
        assert!(e.contains("tensor `nothing` is missing"), "{e}");
    }

    #[test]
    fn inspect_counts_mxfp4_tensors_by_their_shape() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = mxfp4_file(dir.path());
        let r = crate::inspect::inspect(&path).unwrap();
        let attn = r.kinds.iter().find(|k| k.kind == "attention").unwrap();
        assert_eq!((attn.elements, attn.bytes), (32 * 32, 32 * 17));
        assert_eq!(attn.dtypes.get("MXFP4"), Some(&1));
        let norm = r.kinds.iter().find(|k| k.kind == "norm").unwrap();
        assert_eq!(norm.dtypes.get("F32"), Some(&1));
    }

    #[test]
    fn a_tensor_past_the_end_of_the_file_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = mxfp4_file(dir.path());
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
        let e = GgufFile::open(&path).unwrap_err().to_string();
        assert!(
            e.contains("tensor `blk.0.attn_q.weight` needs bytes") && e.contains("truncated?"),
            "{e}"
        );
    }
}
