//! Weights of a llama-family base: where they come from (GGUF or safetensors), in which dtype
//! they compute, and the checks that their shapes agree with the configuration.

pub mod faulty;
pub mod file;
mod file_quant;
pub mod gguf;
pub mod safetensors;
pub mod tensor_file;

use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Tensor};
use serde::Serialize;

use crate::config::ModelConfig;
use crate::error::{EngineError, Result};

pub use lensd_core::ComputeDtype;

#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    pub compute: ComputeDtype,
}

/// Bytes a loaded base holds: `mapped` are file pages shared through the page cache,
/// `owned` are private allocations of this process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct WeightBytes {
    pub mapped: u64,
    pub owned: u64,
}

impl std::ops::AddAssign for WeightBytes {
    fn add_assign(&mut self, o: Self) {
        self.mapped += o.mapped;
        self.owned += o.owned;
    }
}

/// A weight matrix `[out, in]` applied as `x · Wᵀ`.
#[derive(Debug, Clone)]
pub enum Linear {
    Quant(Arc<QTensor>),
    /// A float matrix; inputs are cast to its dtype and outputs back to f32.
    Dense(Tensor),
}

impl Linear {
    /// `x`: `[rows, in]` f32 → `[rows, out]` f32.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Linear::Quant(q) => x.apply(&QMatMul::QTensor(q.clone())),
            Linear::Dense(w) if w.dtype() == DType::F32 => x.matmul(&w.t()?),
            Linear::Dense(w) => x.to_dtype(w.dtype())?.matmul(&w.t()?)?.to_dtype(DType::F32),
        }
    }

    pub fn dims(&self) -> Vec<usize> {
        match self {
            Linear::Quant(q) => q.shape().dims().to_vec(),
            Linear::Dense(w) => w.dims().to_vec(),
        }
    }

    /// The matrix as a dense f32 tensor (a copy for quantized storage).
    pub fn to_f32(&self) -> candle_core::Result<Tensor> {
        match self {
            Linear::Quant(q) => q.dequantize(&candle_core::Device::Cpu),
            Linear::Dense(w) => w.to_dtype(DType::F32),
        }
    }

    pub fn bytes(&self, mapped: bool) -> WeightBytes {
        let n = match self {
            Linear::Quant(q) => q.storage_size_in_bytes() as u64,
            Linear::Dense(w) => (w.elem_count() * w.dtype().size_in_bytes()) as u64,
        };
        if mapped && matches!(self, Linear::Quant(_)) {
            WeightBytes {
                mapped: n,
                owned: 0,
            }
        } else {
            WeightBytes {
                mapped: 0,
                owned: n,
            }
        }
    }

    pub fn dtype_name(&self) -> String {
        match self {
            Linear::Quant(q) => format!("{:?}", q.dtype()),
            Linear::Dense(w) => format!("{:?}", w.dtype()),
        }
    }
}

/// The token embedding `[vocab, d]`, looked up row by row.
#[derive(Debug, Clone)]
pub struct Embedding(pub Linear);

impl Embedding {
    pub fn lookup(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        match &self.0 {
            Linear::Quant(q) => q.embedding(ids),
            Linear::Dense(w) => w.index_select(ids, 0)?.to_dtype(DType::F32),
        }
    }
}

#[derive(Debug, Clone)]
pub struct BlockWeights {
    pub attn_norm: Tensor,
    pub wq: Linear,
    pub wk: Linear,
    pub wv: Linear,
    pub wo: Linear,
    pub ffn_norm: Tensor,
    pub w_gate: Linear,
    pub w_up: Linear,
    pub w_down: Linear,
}

#[derive(Debug, Clone)]
pub struct ModelWeights {
    pub embed: Embedding,
    pub blocks: Vec<BlockWeights>,
    pub final_norm: Tensor,
    /// The unembedding `[vocab, d]`; shares storage with `embed` when the base ties them.
    pub head: Linear,
    pub bytes: WeightBytes,
}

/// What a tensor is for; each file format names the roles its own way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Embed,
    Head,
    FinalNorm,
    AttnNorm,
    FfnNorm,
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Role {
    pub(crate) fn expected(&self, c: &ModelConfig) -> Vec<usize> {
        match self {
            Role::Embed | Role::Head => vec![c.vocab_size, c.d_model],
            Role::FinalNorm | Role::AttnNorm | Role::FfnNorm => vec![c.d_model],
            Role::Q => vec![c.q_width(), c.d_model],
            Role::K | Role::V => vec![c.kv_width(), c.d_model],
            Role::O => vec![c.d_model, c.q_width()],
            Role::Gate | Role::Up => vec![c.d_ff, c.d_model],
            Role::Down => vec![c.d_model, c.d_ff],
        }
    }
}

pub(crate) fn check_shape(
    path: &Path,
    name: &str,
    role: Role,
    cfg: &ModelConfig,
    got: &[usize],
) -> Result<()> {
    let expected = role.expected(cfg);
    if got != expected.as_slice() {
        return Err(EngineError::Shape {
            path: path.to_path_buf(),
            tensor: name.to_string(),
            expected,
            got: got.to_vec(),
        });
    }
    Ok(())
}

/// A file format's view of a llama checkpoint: how it names each tensor and how it loads one.
pub(crate) trait TensorSource {
    /// The tensor's name for `role`; `layer` matters for the per-block roles only.
    fn name(&self, role: Role, layer: usize) -> String;
    /// Loads `name`, checked against `role`'s shape, ready to compute in `compute`.
    fn load(
        &self,
        name: &str,
        role: Role,
        cfg: &ModelConfig,
        compute: ComputeDtype,
    ) -> Result<Linear>;
    /// Whether quantized tensors stay in a shared file mapping (not owned memory).
    fn mapped(&self) -> bool;
}

/// Loads every tensor of a llama checkpoint from `src` and counts the bytes it holds.
pub(crate) fn assemble(
    src: &dyn TensorSource,
    cfg: &ModelConfig,
    compute: ComputeDtype,
) -> Result<ModelWeights> {
    let matrix = |role: Role, layer: usize| src.load(&src.name(role, layer), role, cfg, compute);
    // Norm gains are tiny and always kept in f32.
    let norm = |role: Role, layer: usize| -> Result<Tensor> {
        Ok(src
            .load(&src.name(role, layer), role, cfg, ComputeDtype::F32)?
            .to_f32()?)
    };
    let embed = matrix(Role::Embed, 0)?;
    let mut blocks = Vec::with_capacity(cfg.n_layers);
    for i in 0..cfg.n_layers {
        blocks.push(BlockWeights {
            attn_norm: norm(Role::AttnNorm, i)?,
            wq: matrix(Role::Q, i)?,
            wk: matrix(Role::K, i)?,
            wv: matrix(Role::V, i)?,
            wo: matrix(Role::O, i)?,
            ffn_norm: norm(Role::FfnNorm, i)?,
            w_gate: matrix(Role::Gate, i)?,
            w_up: matrix(Role::Up, i)?,
            w_down: matrix(Role::Down, i)?,
        });
    }
    let final_norm = norm(Role::FinalNorm, 0)?;
    let head = if cfg.tied_embeddings {
        embed.clone()
    } else {
        matrix(Role::Head, 0)?
    };
    let mut bytes = WeightBytes::default();
    bytes += embed.bytes(src.mapped());
    if !cfg.tied_embeddings {
        bytes += head.bytes(src.mapped());
    }
    for b in &blocks {
        for l in [&b.wq, &b.wk, &b.wv, &b.wo, &b.w_gate, &b.w_up, &b.w_down] {
            bytes += l.bytes(src.mapped());
        }
    }
    bytes.owned += ((2 * cfg.n_layers + 1) * cfg.d_model * 4) as u64;
    Ok(ModelWeights {
        embed: Embedding(embed),
        blocks,
        final_norm,
        head,
        bytes,
    })
}
