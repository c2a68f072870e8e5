//! Hugging Face checkpoints: a folder with `config.json` and `model.safetensors` (or shards
//! listed in `model.safetensors.index.json`), stored as f32, f16 or bf16.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use super::experts::ExpertMats;
use super::tensor_file::read_safetensors_where;
use super::{check_shape, ComputeDtype, Linear, ModelWeights, Role, TensorHeader, TensorSource};
use crate::config::{Family, ModelConfig};
use crate::error::{EngineError, Result};

/// Token ids given as a number or a list of numbers (both forms occur in the wild).
pub fn id_list(v: &Option<serde_json::Value>) -> Vec<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => {
            n.as_u64().map(|x| vec![x as u32]).unwrap_or_default()
        }
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        _ => vec![],
    }
}

pub struct HfCheckpoint {
    pub dir: PathBuf,
    /// `config.json` as written.
    pub json: serde_json::Value,
    files: Vec<PathBuf>,
    tensors: Tensors,
    /// What the text model's tensor names start with: `model.` for causal LMs,
    /// `language_model.model.` or `model.language_model.` for multimodal Gemma-3.
    prefix: String,
    head: String,
}

/// Where a checkpoint's tensors are: mapped for reading headers alone, or read tensor by
/// tensor into memory for loading, so that a file changed during a load is an error and not
/// a bus error, and a load never holds a whole shard beside its tensors.
enum Tensors {
    Mapped(MmapedSafetensors),
    Read(HashMap<String, Tensor>),
}

impl Tensors {
    fn has(&self, name: &str) -> bool {
        match self {
            Tensors::Mapped(m) => m.get(name).is_ok(),
            Tensors::Read(t) => t.contains_key(name),
        }
    }

    /// Every tensor's name, dtype, shape and bytes.
    fn table(&self) -> Vec<(String, String, Vec<usize>, u64)> {
        match self {
            Tensors::Mapped(m) => m
                .tensors()
                .into_iter()
                .map(|(n, v)| {
                    let bytes = v.data().len() as u64;
                    (n, format!("{:?}", v.dtype()), v.shape().to_vec(), bytes)
                })
                .collect(),
            Tensors::Read(t) => t
                .iter()
                .map(|(n, t)| {
                    let bytes = (t.elem_count() * t.dtype().size_in_bytes()) as u64;
                    (
                        n.clone(),
                        format!("{:?}", t.dtype()),
                        t.dims().to_vec(),
                        bytes,
                    )
                })
                .collect(),
        }
    }

    /// The tensor's shape (from the header when mapped).
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.shape_dtype(name).map(|(s, _)| s)
    }

    fn shape_dtype(&self, name: &str) -> Option<(Vec<usize>, DType)> {
        match self {
            Tensors::Mapped(m) => {
                let v = m.get(name).ok()?;
                let dtype = DType::try_from(v.dtype()).ok()?;
                Some((v.shape().to_vec(), dtype))
            }
            Tensors::Read(t) => t.get(name).map(|t| (t.dims().to_vec(), t.dtype())),
        }
    }

    fn load(&self, name: &str) -> candle_core::Result<Tensor> {
        match self {
            Tensors::Mapped(m) => m.load(name, &Device::Cpu),
            Tensors::Read(t) => match t.get(name) {
                Some(t) => Ok(t.clone()),
                None => candle_core::bail!("cannot find tensor {name}"),
            },
        }
    }
}

/// Where the text model's tensors may live in a checkpoint, with the head's name.
const LAYOUTS: &[(&str, &str)] = &[
    ("model.", "lm_head.weight"),
    ("language_model.model.", "language_model.lm_head.weight"),
    ("model.language_model.", "lm_head.weight"),
];

impl HfCheckpoint {
    /// Reads `config.json` and the safetensors headers (no tensor data).
    pub fn open(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let text = lensd_core::files::read_to_string(&cfg_path)
            .map_err(|e| EngineError::io(&cfg_path, e))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| EngineError::format(&cfg_path, format!("invalid config.json: {e}")))?;
        let files = shard_files(dir)?;
        // Mapping opens each file plainly: a pipe would wait for a writer.
        for f in &files {
            lensd_core::files::open(f).map_err(|e| EngineError::io(f, e))?;
        }
        // SAFETY: read-only maps of files lensd never writes, whose headers alone are read.
        let tensors = unsafe { MmapedSafetensors::multi(&files) }.map_err(|e| {
            EngineError::format(&files[0], format!("invalid safetensors file: {e}"))
        })?;
        let tensors = Tensors::Mapped(tensors);
        let (prefix, head) = LAYOUTS
            .iter()
            .find(|(p, _)| tensors.has(&format!("{p}embed_tokens.weight")))
            .copied()
            .unwrap_or(LAYOUTS[0]);
        Ok(HfCheckpoint {
            dir: dir.to_path_buf(),
            json,
            files,
            tensors,
            prefix: prefix.into(),
            head: head.into(),
        })
    }

    /// [`HfCheckpoint::open`], then reads the tensors the model uses into memory, calling
    /// `progress(bytes done, bytes total)` per tensor. Tensors the text model does not use (a
    /// vision tower) are skipped without being read.
    pub fn read(dir: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<Self> {
        let mut ck = Self::open(dir)?;
        let cfg = ck.config()?;
        // Experts stored as MXFP4 are two tensors named after the parameter.
        let wanted: std::collections::HashSet<String> = super::plan(&ck, &cfg)
            .into_iter()
            .filter_map(|(role, layer)| ck.name(&cfg, role, layer))
            .flat_map(|n| [format!("{n}{BLOCKS}"), format!("{n}{SCALES}"), n])
            .collect();
        let total: u64 = ck
            .files
            .iter()
            .filter_map(|f| f.metadata().ok())
            .map(|m| m.len())
            .sum();
        let mut tensors = HashMap::new();
        let mut before = 0;
        for f in &ck.files {
            let mut size = 0;
            let shard = read_safetensors_where(f, &|n| wanted.contains(n), &mut |done, len| {
                size = len;
                progress(before + done, total)
            })?;
            before += size;
            tensors.extend(shard);
        }
        ck.tensors = Tensors::Read(tensors);
        Ok(ck)
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The model's configuration, read by its family's description.
    pub fn config(&self) -> Result<ModelConfig> {
        let path = self.dir.join("config.json");
        let rows = self
            .tensors
            .shape(&format!("{}embed_tokens.weight", self.prefix))
            .and_then(|s| s.first().copied());
        let mut cfg = crate::family::from_hf(&path, &self.json, rows)?;
        // A checkpoint without a separate head shares the embedding, whatever the flag says.
        cfg.tied_embeddings |= !self.has(&self.head);
        Ok(cfg)
    }

    /// The BOS id and the EOS ids of `config.json` (or of its `text_config`).
    pub fn token_ids(&self) -> (Option<u32>, Vec<u32>) {
        let text = self.json.get("text_config");
        let find = |key: &str| {
            self.json
                .get(key)
                .filter(|v| !v.is_null())
                .or_else(|| text.and_then(|t| t.get(key)).filter(|v| !v.is_null()))
                .cloned()
        };
        (
            id_list(&find("bos_token_id")).first().copied(),
            id_list(&find("eos_token_id")),
        )
    }

    /// The bytes the model of `cfg` holds once loaded, from the headers alone.
    pub fn resident(&self, cfg: &ModelConfig) -> super::Resident {
        super::resident(self, cfg)
    }

    fn has(&self, name: &str) -> bool {
        self.tensors.has(name)
    }

    /// Per-tensor (name, dtype, shape, bytes) read from the headers only.
    pub fn tensor_table(&self) -> Vec<(String, String, Vec<usize>, u64)> {
        let mut v = self.tensors.table();
        v.sort();
        v
    }

    /// Builds the model's weights on `device`, one tensor at a time.
    pub fn load_weights(
        &self,
        cfg: &ModelConfig,
        compute: ComputeDtype,
        device: &Device,
    ) -> Result<ModelWeights> {
        super::assemble(self, cfg, compute, device)
    }
}

impl TensorSource for HfCheckpoint {
    fn path(&self) -> &Path {
        &self.dir
    }

    fn name(&self, cfg: &ModelConfig, role: Role, layer: usize) -> Option<String> {
        let p = &self.prefix;
        let block = |s: &str| format!("{p}layers.{layer}.{s}");
        Some(match role {
            Role::Embed => format!("{p}embed_tokens.weight"),
            Role::Head => self.head.clone(),
            Role::FinalNorm => format!("{p}norm.weight"),
            Role::RopeFreqs => return None,
            Role::AttnNorm => block("input_layernorm.weight"),
            // Gemma names its four norms by place; llama-shaped models call their pre-MLP norm
            // `post_attention_layernorm`.
            Role::PostAttnNorm => block("post_attention_layernorm.weight"),
            Role::FfnNorm if cfg.sandwich_norms => block("pre_feedforward_layernorm.weight"),
            Role::FfnNorm => block("post_attention_layernorm.weight"),
            Role::PostFfnNorm => block("post_feedforward_layernorm.weight"),
            Role::QNorm => block("self_attn.q_norm.weight"),
            Role::KNorm => block("self_attn.k_norm.weight"),
            Role::Q => block("self_attn.q_proj.weight"),
            Role::K => block("self_attn.k_proj.weight"),
            Role::V => block("self_attn.v_proj.weight"),
            Role::O => block("self_attn.o_proj.weight"),
            Role::QBias => block("self_attn.q_proj.bias"),
            Role::KBias => block("self_attn.k_proj.bias"),
            Role::VBias => block("self_attn.v_proj.bias"),
            Role::OBias => block("self_attn.o_proj.bias"),
            Role::Gate => block("mlp.gate_proj.weight"),
            Role::Up => block("mlp.up_proj.weight"),
            Role::Down => block("mlp.down_proj.weight"),
            Role::Sinks => block("self_attn.sinks"),
            Role::Router => block("mlp.router.weight"),
            Role::RouterBias => block("mlp.router.bias"),
            Role::GateUpExperts => block("mlp.experts.gate_up_proj"),
            Role::GateUpBias => block("mlp.experts.gate_up_proj_bias"),
            Role::DownExperts => block("mlp.experts.down_proj"),
            Role::DownBias => block("mlp.experts.down_proj_bias"),
            // Gate and up are one interleaved matrix (and bias) in these checkpoints.
            Role::UpExperts | Role::UpBias => return None,
        })
    }

    fn header(&self, name: &str) -> Option<TensorHeader> {
        if let Some((experts, out, inp)) = self.mxfp4_dims(name) {
            // The parameter's shape ([E, in, out]); the bytes as stored.
            return Some(TensorHeader {
                shape: vec![experts, inp, out],
                bytes: (experts * out * inp / 2 + experts * out * inp / 32) as u64,
                packed: true,
                wide: false,
            });
        }
        let (shape, dtype) = self.tensors.shape_dtype(name)?;
        let elements = shape.iter().product::<usize>() as u64;
        Some(TensorHeader {
            bytes: elements * dtype.size_in_bytes() as u64,
            packed: matches!(dtype, DType::F16 | DType::BF16),
            wide: false,
            shape,
        })
    }

    fn norm_offset(&self, cfg: &ModelConfig) -> f32 {
        match cfg.family {
            Family::Gemma2 | Family::Gemma3 => 1.0,
            _ => 0.0,
        }
    }

    fn load_experts(
        &self,
        name: &str,
        role: Role,
        cfg: &ModelConfig,
        compute: ComputeDtype,
    ) -> Result<ExpertMats> {
        let want = role.expected(cfg);
        let (experts, inp, out) = (want[0], want[1], want[2]);
        let blocks_name = format!("{name}{BLOCKS}");
        if self.tensors.has(&blocks_name) {
            let scales_name = format!("{name}{SCALES}");
            let groups = inp / 32;
            let read = |tensor: &str, shape: Vec<usize>| -> Result<Vec<u8>> {
                let (got, dtype) = self.tensors.shape_dtype(tensor).ok_or_else(|| {
                    EngineError::format(
                        &self.dir,
                        format!("tensor `{tensor}` is missing from the checkpoint"),
                    )
                })?;
                if got != shape || inp % 32 != 0 {
                    return Err(EngineError::Shape {
                        path: self.dir.clone(),
                        tensor: tensor.to_string(),
                        expected: shape,
                        got,
                    });
                }
                if dtype != DType::U8 {
                    return Err(EngineError::format(
                        &self.dir,
                        format!("MXFP4 tensor `{tensor}` is {dtype:?}, not U8"),
                    ));
                }
                let t = self.tensors.load(tensor).map_err(|e| {
                    EngineError::format(&self.dir, format!("tensor `{tensor}`: {e}"))
                })?;
                Ok(t.flatten_all()?.to_vec1::<u8>()?)
            };
            let blocks = read(&blocks_name, vec![experts, out, groups, 16])?;
            let scales = read(&scales_name, vec![experts, out, groups])?;
            return ExpertMats::from_mxfp4(blocks, scales, (experts, out, inp), compute, name)
                .map_err(|e| EngineError::format(&self.dir, e.to_string()));
        }
        // Unquantized experts: [E, in, out], each transposed to [out, in].
        let Linear::Dense(all) = self.load(name, role, cfg, compute)? else {
            return Err(EngineError::format(
                &self.dir,
                format!("`{name}` is quantized"),
            ));
        };
        let mats = (0..experts)
            .map(|e| Ok(Linear::Dense(all.get(e)?.t()?.contiguous()?)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(ExpertMats::Dense(mats))
    }

    fn load(
        &self,
        name: &str,
        role: Role,
        cfg: &ModelConfig,
        compute: ComputeDtype,
    ) -> Result<Linear> {
        let shape = self.tensors.shape(name).ok_or_else(|| {
            EngineError::format(
                &self.dir,
                format!("tensor `{name}` is missing from the checkpoint"),
            )
        })?;
        check_shape(&self.dir, name, role, cfg, &shape)?;
        let t = self
            .tensors
            .load(name)
            .map_err(|e| EngineError::format(&self.dir, format!("tensor `{name}`: {e}")))?;
        let t = match (t.dtype(), compute) {
            (DType::BF16, ComputeDtype::Bf16) => t,
            (DType::F32 | DType::F16, ComputeDtype::Bf16) => t.to_dtype(DType::BF16)?,
            (DType::F32, _) => t,
            (DType::F16 | DType::BF16, ComputeDtype::Stored) => t,
            (DType::F16 | DType::BF16, ComputeDtype::F32) => t.to_dtype(DType::F32)?,
            (other, _) => {
                return Err(EngineError::unsupported(
                    &self.dir,
                    format!("dtype {other:?} of tensor `{name}` (expected f32, f16 or bf16)"),
                ))
            }
        };
        Ok(Linear::Dense(t))
    }
}

/// What MXFP4 checkpoints append to a parameter's name for its blocks and its scales.
const BLOCKS: &str = "_blocks";
const SCALES: &str = "_scales";

impl HfCheckpoint {
    /// `(experts, out, in)` of the parameter `name` when the checkpoint stores it as MXFP4
    /// blocks `[E, out, in / 32, 16]` (and scales); `None` otherwise.
    fn mxfp4_dims(&self, name: &str) -> Option<(usize, usize, usize)> {
        if self.tensors.has(name) {
            return None;
        }
        match self.tensors.shape(&format!("{name}{BLOCKS}"))?.as_slice() {
            &[e, out, groups, 16] => Some((e, out, groups * 32)),
            _ => None,
        }
    }
}

/// The safetensors files of a checkpoint folder: the shards named by the index, or the single
/// `model.safetensors`.
fn shard_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text =
            lensd_core::files::read_to_string(&index).map_err(|e| EngineError::io(&index, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| EngineError::format(&index, format!("invalid JSON: {e}")))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| EngineError::format(&index, "missing object `weight_map`"))?;
        let names: BTreeSet<&str> = map.values().filter_map(|f| f.as_str()).collect();
        let files: Vec<PathBuf> = names.into_iter().map(|f| dir.join(f)).collect();
        for f in &files {
            if !f.is_file() {
                return Err(EngineError::format(
                    &index,
                    format!("shard {} is missing", f.display()),
                ));
            }
        }
        if files.is_empty() {
            return Err(EngineError::format(&index, "`weight_map` names no files"));
        }
        return Ok(files);
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        Ok(vec![single])
    } else {
        Err(EngineError::format(
            dir,
            "no model.safetensors or model.safetensors.index.json in the folder",
        ))
    }
}
