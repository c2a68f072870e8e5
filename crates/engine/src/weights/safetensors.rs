//! Hugging Face checkpoints: a folder with `config.json` and `model.safetensors` (or shards
//! listed in `model.safetensors.index.json`), stored as f32, f16 or bf16.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use super::tensor_file::read_safetensors_with_progress;
use super::{check_shape, ComputeDtype, Linear, ModelWeights, Role, TensorSource};
use crate::config::{ModelConfig, RopeStyle};
use crate::error::{EngineError, Result};

/// The subset of a Hugging Face `config.json` the llama forward depends on.
#[derive(Debug, Deserialize)]
pub struct HfConfig {
    #[serde(default)]
    pub architectures: Vec<String>,
    #[serde(default)]
    pub model_type: Option<String>,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub vocab_size: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// Older configs give the rope base at the top level...
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// ...newer ones inside `rope_parameters`, with the scaling type.
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default = "default_ctx")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default)]
    pub hidden_act: Option<String>,
    #[serde(default)]
    pub bos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
pub struct RopeParameters {
    pub rope_theta: Option<f64>,
    pub rope_type: Option<String>,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_ctx() -> usize {
    2048
}

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
    pub hf: HfConfig,
    files: Vec<PathBuf>,
    tensors: Tensors,
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

    /// The tensor's shape (from the header when mapped) and a way to get the tensor.
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        match self {
            Tensors::Mapped(m) => m.get(name).ok().map(|v| v.shape().to_vec()),
            Tensors::Read(t) => t.get(name).map(|t| t.dims().to_vec()),
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

impl HfCheckpoint {
    pub fn open(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| EngineError::io(&cfg_path, e))?;
        let hf: HfConfig = serde_json::from_str(&text)
            .map_err(|e| EngineError::format(&cfg_path, format!("invalid config.json: {e}")))?;
        let is_llama = hf.model_type.as_deref() == Some("llama")
            || hf.architectures.iter().any(|a| a == "LlamaForCausalLM");
        if !is_llama {
            return Err(EngineError::unsupported(
                &cfg_path,
                format!(
                    "architecture {:?} / model_type {:?} (supported: LlamaForCausalLM)",
                    hf.architectures, hf.model_type
                ),
            ));
        }
        if hf.attention_bias || hf.mlp_bias {
            return Err(EngineError::unsupported(
                &cfg_path,
                "llama variant with bias terms",
            ));
        }
        if let Some(act) = &hf.hidden_act {
            if act != "silu" {
                return Err(EngineError::unsupported(
                    &cfg_path,
                    format!("activation `{act}`"),
                ));
            }
        }
        if hf.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(EngineError::unsupported(&cfg_path, "rope_scaling"));
        }
        if let Some(kind) = hf
            .rope_parameters
            .as_ref()
            .and_then(|r| r.rope_type.as_deref())
        {
            if kind != "default" {
                return Err(EngineError::unsupported(
                    &cfg_path,
                    format!("rope_type `{kind}`"),
                ));
            }
        }
        let files = shard_files(dir)?;
        // SAFETY: read-only maps of files lensd never writes, whose headers alone are read.
        let tensors = unsafe { MmapedSafetensors::multi(&files) }.map_err(|e| {
            EngineError::format(&files[0], format!("invalid safetensors file: {e}"))
        })?;
        Ok(HfCheckpoint {
            dir: dir.to_path_buf(),
            hf,
            files,
            tensors: Tensors::Mapped(tensors),
        })
    }

    /// [`HfCheckpoint::open`], then reads every shard's tensors into memory for loading,
    /// calling `progress(bytes done, bytes total)` per tensor.
    pub fn read(dir: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<Self> {
        let mut ck = Self::open(dir)?;
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
            let shard = read_safetensors_with_progress(f, &mut |done, len| {
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

    pub fn config(&self) -> Result<ModelConfig> {
        let h = &self.hf;
        let head_dim = h.head_dim.unwrap_or(
            h.hidden_size
                .checked_div(h.num_attention_heads)
                .unwrap_or(0),
        );
        let cfg = ModelConfig {
            architecture: "llama".into(),
            n_layers: h.num_hidden_layers,
            d_model: h.hidden_size,
            n_heads: h.num_attention_heads,
            n_kv_heads: h.num_key_value_heads.unwrap_or(h.num_attention_heads),
            head_dim,
            d_ff: h.intermediate_size,
            vocab_size: h.vocab_size,
            rms_eps: h.rms_norm_eps,
            rope_theta: h
                .rope_theta
                .or(h.rope_parameters.as_ref().and_then(|r| r.rope_theta))
                .unwrap_or(10_000.0),
            rope_style: RopeStyle::Halves,
            max_positions: h.max_position_embeddings,
            tied_embeddings: h.tie_word_embeddings || !self.has("lm_head.weight"),
        };
        cfg.check().map_err(|m| {
            EngineError::format(
                &self.dir.join("config.json"),
                format!("inconsistent configuration: {m}"),
            )
        })?;
        Ok(cfg)
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

    pub fn load_weights(&self, cfg: &ModelConfig, compute: ComputeDtype) -> Result<ModelWeights> {
        super::assemble(self, cfg, compute)
    }
}

impl TensorSource for HfCheckpoint {
    fn name(&self, role: Role, layer: usize) -> String {
        let block = |s: &str| format!("model.layers.{layer}.{s}.weight");
        match role {
            Role::Embed => "model.embed_tokens.weight".into(),
            Role::Head => "lm_head.weight".into(),
            Role::FinalNorm => "model.norm.weight".into(),
            Role::AttnNorm => block("input_layernorm"),
            Role::FfnNorm => block("post_attention_layernorm"),
            Role::Q => block("self_attn.q_proj"),
            Role::K => block("self_attn.k_proj"),
            Role::V => block("self_attn.v_proj"),
            Role::O => block("self_attn.o_proj"),
            Role::Gate => block("mlp.gate_proj"),
            Role::Up => block("mlp.up_proj"),
            Role::Down => block("mlp.down_proj"),
        }
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

    fn mapped(&self) -> bool {
        false
    }
}

/// The safetensors files of a checkpoint folder: the shards named by the index, or the single
/// `model.safetensors`.
fn shard_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| EngineError::io(&index, e))?;
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
