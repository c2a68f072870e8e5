//! Weights of a llama-family base: where they come from (GGUF or safetensors), in which dtype
//! they compute, and the checks that their shapes agree with the configuration.

pub mod experts;
pub mod faulty;
pub mod file;
mod file_quant;
pub mod gguf;
mod gguf_experts;
mod gguf_header;
pub mod mapped;
pub mod mxfp4;
pub(crate) mod quant_product;
pub mod safetensors;
pub mod tensor_file;

use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::{QStorage, QTensor};
use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use crate::config::ModelConfig;
use crate::error::{EngineError, Result};
use experts::ExpertMats;

pub use lensd_core::ComputeDtype;

/// `len` zeros for a base's f32 weights, in pages that Linux may back with huge pages (see
/// [`advise_huge_pages`]).
pub(crate) fn zeroed_f32(len: usize) -> Vec<f32> {
    let v = vec![0f32; len];
    advise_huge_pages(v.as_ptr() as *const u8, std::mem::size_of_val(v.as_slice()));
    v
}

/// Asks Linux to back the whole 2 MiB ranges of a fresh buffer (`len` bytes at `ptr`, not yet
/// written) with huge pages (`MADV_HUGEPAGE`, for systems whose transparent huge pages are on
/// request). Writing a base into fresh 4 KiB pages costs a page fault every 4 KiB: on a
/// virtual machine that made reading a file into memory slower than reading it from the disk,
/// and an f32 load many times slower. Only ranges inside the buffer are advised, so no page
/// outside it becomes resident; elsewhere this does nothing.
pub(crate) fn advise_huge_pages(ptr: *const u8, len: usize) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = ptr as usize;
        let (from, to) = (start.next_multiple_of(HUGE), (start + len) / HUGE * HUGE);
        if to > from {
            // SAFETY: advice on whole pages inside the caller's allocation; it changes how they
            // are backed, not what they hold. A kernel without the advice refuses it, harmlessly.
            unsafe { libc::madvise(from as *mut libc::c_void, to - from, libc::MADV_HUGEPAGE) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (ptr, len);
}

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

/// The largest absolute value of `t` (for the quantized products' tests).
#[cfg(test)]
pub(crate) fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// A weight matrix `[out, in]` applied as `x · Wᵀ`.
#[derive(Debug, Clone)]
pub enum Linear {
    Quant(Arc<QTensor>),
    /// A quantized matrix computed in f32 (`f32` on the CPU): its blocks are kept as stored
    /// and widened a strip at a time inside the product ([`lensd_kernels::wide`]), so the
    /// values are the dequantized matrix's in f32 multiply-adds without an f32 copy of it.
    Wide(Arc<QTensor>),
    /// A float matrix; inputs are cast to its dtype and outputs back to f32.
    Dense(Tensor),
}

impl Linear {
    /// `x`: `[rows, in]` f32 → `[rows, out]` f32.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Linear::Quant(q) => quant_product::forward(q, x),
            Linear::Wide(q) => quant_product::forward_wide(q, x),
            Linear::Dense(w) if w.dtype() == DType::F32 => x.matmul(&w.t()?),
            Linear::Dense(w) => x.to_dtype(w.dtype())?.matmul(&w.t()?)?.to_dtype(DType::F32),
        }
    }

    /// `x · Wᵀ` for several matrices with one input, in one run of the quantized kernels when
    /// all of them are quantized matrices they take; `None` otherwise (multiply them one by
    /// one with [`Linear::forward`]).
    pub fn forward_many(ws: &[&Linear], x: &Tensor) -> candle_core::Result<Option<Vec<Tensor>>> {
        let qs: Option<Vec<&Arc<QTensor>>> = ws
            .iter()
            .map(|w| match w {
                Linear::Quant(q) => Some(q),
                Linear::Wide(_) | Linear::Dense(_) => None,
            })
            .collect();
        match qs {
            Some(qs) => quant_product::forward_many(&qs, x),
            None => Ok(None),
        }
    }

    pub fn dims(&self) -> Vec<usize> {
        match self {
            Linear::Quant(q) | Linear::Wide(q) => q.shape().dims().to_vec(),
            Linear::Dense(w) => w.dims().to_vec(),
        }
    }

    /// The matrix as a dense f32 tensor (a copy for quantized storage).
    pub fn to_f32(&self) -> candle_core::Result<Tensor> {
        match self {
            Linear::Quant(q) | Linear::Wide(q) => q.dequantize(&q.device()),
            Linear::Dense(w) => w.to_dtype(DType::F32),
        }
    }

    pub fn device(&self) -> Device {
        match self {
            Linear::Quant(q) | Linear::Wide(q) => q.device(),
            Linear::Dense(w) => w.device().clone(),
        }
    }

    /// The same matrix in `device`'s memory, as stored (quantized blocks stay quantized; a
    /// matrix computed in f32 from its blocks is widened, as only the CPU has that product);
    /// the matrix itself when it is there already.
    pub fn to_device(&self, device: &Device) -> candle_core::Result<Linear> {
        if self.device().same_device(device) {
            return Ok(self.clone());
        }
        Ok(match self {
            Linear::Quant(q) => {
                let storage = QStorage::from_data(q.data()?, device, q.dtype())?;
                Linear::Quant(Arc::new(QTensor::new(storage, q.shape().clone())?))
            }
            Linear::Wide(q) => Linear::Dense(q.dequantize(device)?),
            Linear::Dense(w) => Linear::Dense(w.to_device(device)?),
        })
    }

    pub fn bytes(&self, mapped: bool) -> WeightBytes {
        let n = match self {
            Linear::Quant(q) | Linear::Wide(q) => q.storage_size_in_bytes() as u64,
            Linear::Dense(w) => (w.elem_count() * w.dtype().size_in_bytes()) as u64,
        };
        if mapped && matches!(self, Linear::Quant(_) | Linear::Wide(_)) {
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
            Linear::Wide(q) => format!("{:?} in f32", q.dtype()),
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
            Linear::Quant(q) | Linear::Wide(q) => q.embedding(ids),
            Linear::Dense(w) => w.index_select(ids, 0)?.to_dtype(DType::F32),
        }
    }
}

#[derive(Debug, Clone)]
pub struct BlockWeights {
    pub attn_norm: Tensor,
    /// The norm of the attention's output before the residual add (Gemma).
    pub post_attn_norm: Option<Tensor>,
    /// Per-head RMSNorm gains `[head_dim]` of queries and keys (Qwen3, Gemma-3).
    pub q_norm: Option<Tensor>,
    pub k_norm: Option<Tensor>,
    pub wq: Linear,
    pub wk: Linear,
    pub wv: Linear,
    pub wo: Linear,
    pub bq: Option<Tensor>,
    pub bk: Option<Tensor>,
    pub bv: Option<Tensor>,
    pub bo: Option<Tensor>,
    /// Per query head, the attention sink's logit `[n_heads]` (gpt-oss).
    pub sinks: Option<Tensor>,
    pub ffn_norm: Tensor,
    /// The norm of the MLP's output before the residual add (Gemma).
    pub post_ffn_norm: Option<Tensor>,
    pub mlp: Mlp,
}

/// What follows the second norm of a block.
#[derive(Debug, Clone)]
pub enum Mlp {
    /// `down(act(gate(x)) · up(x))`.
    Gated {
        gate: Linear,
        up: Linear,
        down: Linear,
    },
    /// A mixture of experts ([`crate::config::Moe`]).
    Experts(Box<MoeWeights>),
}

/// The router and experts of one block.
#[derive(Debug, Clone)]
pub struct MoeWeights {
    /// `[n_experts, d]` in f32, so that routing does not depend on the compute dtype.
    pub router: Tensor,
    pub router_bias: Tensor,
    /// Per expert `[2 · d_ff, d]`, gate and up rows interleaved (gate first).
    pub gate_up: ExpertMats,
    /// `[n_experts, 2 · d_ff]`.
    pub gate_up_bias: Tensor,
    /// Per expert `[d, d_ff]`.
    pub down: ExpertMats,
    /// `[n_experts, d]`.
    pub down_bias: Tensor,
}

impl Mlp {
    fn to_device(&self, device: &Device) -> candle_core::Result<Mlp> {
        Ok(match self {
            Mlp::Gated { gate, up, down } => Mlp::Gated {
                gate: gate.to_device(device)?,
                up: up.to_device(device)?,
                down: down.to_device(device)?,
            },
            Mlp::Experts(m) => Mlp::Experts(Box::new(MoeWeights {
                router: m.router.to_device(device)?,
                router_bias: m.router_bias.to_device(device)?,
                gate_up: m.gate_up.to_device(device)?,
                gate_up_bias: m.gate_up_bias.to_device(device)?,
                down: m.down.to_device(device)?,
                down_bias: m.down_bias.to_device(device)?,
            })),
        })
    }
}

/// A vector or matrix moved to `device`, absent ones staying absent.
fn moved(t: &Option<Tensor>, device: &Device) -> candle_core::Result<Option<Tensor>> {
    t.as_ref().map(|t| t.to_device(device)).transpose()
}

impl BlockWeights {
    fn to_device(&self, device: &Device) -> candle_core::Result<BlockWeights> {
        Ok(BlockWeights {
            attn_norm: self.attn_norm.to_device(device)?,
            post_attn_norm: moved(&self.post_attn_norm, device)?,
            q_norm: moved(&self.q_norm, device)?,
            k_norm: moved(&self.k_norm, device)?,
            wq: self.wq.to_device(device)?,
            wk: self.wk.to_device(device)?,
            wv: self.wv.to_device(device)?,
            wo: self.wo.to_device(device)?,
            bq: moved(&self.bq, device)?,
            bk: moved(&self.bk, device)?,
            bv: moved(&self.bv, device)?,
            bo: moved(&self.bo, device)?,
            sinks: moved(&self.sinks, device)?,
            ffn_norm: self.ffn_norm.to_device(device)?,
            post_ffn_norm: moved(&self.post_ffn_norm, device)?,
            mlp: self.mlp.to_device(device)?,
        })
    }
}

#[derive(Debug, Clone)]
pub struct ModelWeights {
    pub embed: Embedding,
    pub blocks: Vec<BlockWeights>,
    pub final_norm: Tensor,
    /// The unembedding `[vocab, d]`; shares storage with `embed` when the base ties them.
    pub head: Linear,
    /// Divisors of the rotary frequencies, `[head_dim / 2]` (llama.cpp writes Llama-3's
    /// scaling this way).
    pub rope_freqs: Option<Vec<f32>>,
    pub bytes: WeightBytes,
}

impl ModelWeights {
    /// A copy in `device`'s memory, one tensor at a time, so that the copy never needs a second
    /// whole model of staging memory. Every byte of a copy is owned: nothing stays mapped from
    /// a file. A tied unembedding (`tied`) stays one matrix.
    pub fn to_device(&self, device: &Device, tied: bool) -> candle_core::Result<ModelWeights> {
        if self.final_norm.device().same_device(device) {
            return Ok(self.clone());
        }
        let embed = self.embed.0.to_device(device)?;
        let head = if tied {
            embed.clone()
        } else {
            self.head.to_device(device)?
        };
        let blocks = self
            .blocks
            .iter()
            .map(|b| b.to_device(device))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(ModelWeights {
            embed: Embedding(embed),
            blocks,
            final_norm: self.final_norm.to_device(device)?,
            head,
            rope_freqs: self.rope_freqs.clone(),
            bytes: WeightBytes {
                mapped: 0,
                owned: self.bytes.mapped + self.bytes.owned,
            },
        })
    }
}

/// What a tensor is for; each file format names the roles its own way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Embed,
    Head,
    FinalNorm,
    AttnNorm,
    PostAttnNorm,
    FfnNorm,
    PostFfnNorm,
    QNorm,
    KNorm,
    Q,
    K,
    V,
    O,
    QBias,
    KBias,
    VBias,
    OBias,
    Gate,
    Up,
    Down,
    RopeFreqs,
    Sinks,
    Router,
    RouterBias,
    /// Every expert's gate-and-up matrix, in the Hugging Face layout `[E, d, 2 · d_ff]`.
    GateUpExperts,
    GateUpBias,
    /// Every expert's down matrix, `[E, d_ff, d]`.
    DownExperts,
    DownBias,
    /// Formats that store the experts' up matrices and biases apart from their gates (GGUF:
    /// `[E, d_ff, d]` and `[E, d_ff]`) name them here; they load with the gates, so these
    /// roles only count their bytes.
    UpExperts,
    UpBias,
}

impl Role {
    pub(crate) fn expected(&self, c: &ModelConfig) -> Vec<usize> {
        match self {
            Role::Embed | Role::Head => vec![c.vocab_size, c.d_model],
            Role::FinalNorm
            | Role::AttnNorm
            | Role::PostAttnNorm
            | Role::FfnNorm
            | Role::PostFfnNorm
            | Role::OBias => vec![c.d_model],
            Role::QNorm | Role::KNorm => vec![c.head_dim],
            Role::RopeFreqs => vec![c.head_dim / 2],
            Role::QBias => vec![c.q_width()],
            Role::KBias | Role::VBias => vec![c.kv_width()],
            Role::Q => vec![c.q_width(), c.d_model],
            Role::K | Role::V => vec![c.kv_width(), c.d_model],
            Role::O => vec![c.d_model, c.q_width()],
            Role::Gate | Role::Up => vec![c.d_ff, c.d_model],
            Role::Down => vec![c.d_model, c.d_ff],
            Role::Sinks => vec![c.n_heads],
            Role::Router => vec![c.n_experts(), c.d_model],
            Role::RouterBias => vec![c.n_experts()],
            Role::GateUpExperts => vec![c.n_experts(), c.d_model, 2 * c.d_ff],
            Role::GateUpBias => vec![c.n_experts(), 2 * c.d_ff],
            Role::DownExperts => vec![c.n_experts(), c.d_ff, c.d_model],
            Role::DownBias => vec![c.n_experts(), c.d_model],
            Role::UpExperts => vec![c.n_experts(), c.d_ff, c.d_model],
            Role::UpBias => vec![c.n_experts(), c.d_ff],
        }
    }

    /// Vectors (norm gains, biases, rotary divisors, sinks) and the small router matrix are
    /// always held in f32.
    pub(crate) fn is_vector(&self) -> bool {
        !matches!(
            self,
            Role::Embed
                | Role::Head
                | Role::Q
                | Role::K
                | Role::V
                | Role::O
                | Role::Gate
                | Role::Up
                | Role::Down
                | Role::GateUpExperts
                | Role::DownExperts
                | Role::UpExperts
        )
    }

    pub(crate) fn is_norm(&self) -> bool {
        matches!(
            self,
            Role::FinalNorm
                | Role::AttnNorm
                | Role::PostAttnNorm
                | Role::FfnNorm
                | Role::PostFfnNorm
                | Role::QNorm
                | Role::KNorm
        )
    }
}

/// Per block, the roles a base of `cfg` has.
fn block_roles(cfg: &ModelConfig) -> Vec<Role> {
    let mut roles = vec![Role::AttnNorm];
    if cfg.qk_norm {
        roles.extend([Role::QNorm, Role::KNorm]);
    }
    roles.extend([Role::Q, Role::K, Role::V, Role::O]);
    if cfg.qkv_bias {
        roles.extend([Role::QBias, Role::KBias, Role::VBias]);
    }
    if cfg.o_bias {
        roles.push(Role::OBias);
    }
    if cfg.attn_sinks {
        roles.push(Role::Sinks);
    }
    if cfg.sandwich_norms {
        roles.extend([Role::PostAttnNorm, Role::PostFfnNorm]);
    }
    roles.push(Role::FfnNorm);
    if cfg.moe.is_some() {
        roles.extend([
            Role::Router,
            Role::RouterBias,
            Role::GateUpExperts,
            Role::GateUpBias,
            Role::UpExperts,
            Role::UpBias,
            Role::DownExperts,
            Role::DownBias,
        ]);
    } else {
        roles.extend([Role::Gate, Role::Up, Role::Down]);
    }
    roles
}

/// Every tensor a base of `cfg` loads from `src`, as (role, block).
pub(crate) fn plan(src: &dyn TensorSource, cfg: &ModelConfig) -> Vec<(Role, usize)> {
    let mut plan = vec![(Role::Embed, 0)];
    let roles = block_roles(cfg);
    for i in 0..cfg.n_layers {
        plan.extend(roles.iter().map(|&r| (r, i)));
    }
    plan.push((Role::FinalNorm, 0));
    if !cfg.tied_embeddings {
        plan.push((Role::Head, 0));
    }
    if let Some(name) = src.name(cfg, Role::RopeFreqs, 0) {
        if src.header(&name).is_some() {
            plan.push((Role::RopeFreqs, 0));
        }
    }
    plan
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

/// What a file's header says of one tensor.
#[derive(Debug, Clone)]
pub(crate) struct TensorHeader {
    pub shape: Vec<usize>,
    /// Bytes as stored.
    pub bytes: u64,
    /// Whether a matrix of this dtype is kept as stored with the `stored` compute dtype
    /// (quantized blocks, f16, bf16); others are widened to f32.
    pub packed: bool,
    /// Whether a matrix of this dtype is also kept as stored with the `f32` compute dtype on
    /// the CPU (quantized blocks that [`Linear::Wide`] multiplies in f32).
    pub wide: bool,
}

impl TensorHeader {
    fn elements(&self) -> u64 {
        self.shape.iter().product::<usize>() as u64
    }

    /// Bytes the tensor holds once loaded for `role` in `compute`.
    fn resident(&self, role: Role, compute: ComputeDtype) -> u64 {
        if role.is_vector() {
            return self.elements() * 4;
        }
        match compute {
            ComputeDtype::Stored if self.packed => self.bytes,
            ComputeDtype::F32 if self.wide => self.bytes,
            ComputeDtype::Stored | ComputeDtype::F32 => self.elements() * 4,
            ComputeDtype::Bf16 => self.elements() * 2,
        }
    }
}

/// A file format's view of a checkpoint: how it names each tensor and how it loads one.
pub(crate) trait TensorSource {
    fn path(&self) -> &Path;
    /// The tensor's name for `role` (`layer` matters for the per-block roles only); `None`
    /// where the format has no such tensor.
    fn name(&self, cfg: &ModelConfig, role: Role, layer: usize) -> Option<String>;
    fn header(&self, name: &str) -> Option<TensorHeader>;
    /// Loads `name`, checked against `role`'s shape, ready to compute in `compute`.
    fn load(
        &self,
        name: &str,
        role: Role,
        cfg: &ModelConfig,
        compute: ComputeDtype,
    ) -> Result<Linear>;
    /// Loads every expert's matrix of `role` (`GateUpExperts` or `DownExperts`) from `name`, as stored
    /// (dense or MXFP4) and ready to compute in `compute`.
    fn load_experts(
        &self,
        name: &str,
        role: Role,
        _cfg: &ModelConfig,
        _compute: ComputeDtype,
    ) -> Result<ExpertMats> {
        Err(EngineError::unsupported(
            self.path(),
            format!("experts ({role:?} `{name}`) in this format"),
        ))
    }
    /// Added to norm gains as they are read (Gemma's Hugging Face checkpoints store `w` for a
    /// gain of `1 + w`; its GGUF files store the sum).
    fn norm_offset(&self, cfg: &ModelConfig) -> f32;
}

fn required_name(
    src: &dyn TensorSource,
    cfg: &ModelConfig,
    role: Role,
    layer: usize,
) -> Result<String> {
    src.name(cfg, role, layer).ok_or_else(|| {
        EngineError::format(
            src.path(),
            format!("the format has no tensor for {role:?} of block {layer}"),
        )
    })
}

/// Bytes of a base's weights once loaded, in each compute dtype, from the headers alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Resident {
    pub stored: u64,
    /// `f32` on the CPU, where quantized matrices of the block types lensd's kernels read stay
    /// as stored ([`Linear::Wide`]).
    pub f32: u64,
    /// `f32` on a GPU, where every matrix is widened to f32.
    pub f32_widened: u64,
    pub bf16: u64,
}

impl Resident {
    pub fn of(&self, dtype: ComputeDtype) -> u64 {
        match dtype {
            ComputeDtype::Stored => self.stored,
            ComputeDtype::F32 => self.f32,
            ComputeDtype::Bf16 => self.bf16,
        }
    }
}

/// What loading `cfg` from `src` will hold, tensor by tensor as [`assemble`] loads them. A
/// tensor missing from the headers counts nothing (the load itself will name it).
pub(crate) fn resident(src: &dyn TensorSource, cfg: &ModelConfig) -> Resident {
    let mut r = Resident {
        stored: 0,
        f32: 0,
        f32_widened: 0,
        bf16: 0,
    };
    for (role, layer) in plan(src, cfg) {
        let Some(h) = src.name(cfg, role, layer).and_then(|n| src.header(&n)) else {
            continue;
        };
        r.stored += h.resident(role, ComputeDtype::Stored);
        r.f32 += h.resident(role, ComputeDtype::F32);
        r.bf16 += h.resident(role, ComputeDtype::Bf16);
        r.f32_widened += TensorHeader { wide: false, ..h }.resident(role, ComputeDtype::F32);
    }
    r
}

/// Loads every tensor of a checkpoint of `cfg` from `src` onto `device` and counts the bytes
/// it holds. Each tensor is read (and converted) in host memory and copied to another device
/// before the next is read, so a load needs one tensor of staging memory, not a second model.
pub(crate) fn assemble(
    src: &dyn TensorSource,
    cfg: &ModelConfig,
    compute: ComputeDtype,
    device: &Device,
) -> Result<ModelWeights> {
    let mut bytes = WeightBytes::default();
    let mut matrix = |role: Role, layer: usize| -> Result<Linear> {
        let m = src.load(&required_name(src, cfg, role, layer)?, role, cfg, compute)?;
        let m = m.to_device(device)?;
        bytes += m.bytes(false);
        Ok(m)
    };
    let embed = matrix(Role::Embed, 0)?;
    let head = if cfg.tied_embeddings {
        embed.clone()
    } else {
        matrix(Role::Head, 0)?
    };
    // The matrices first, then the vectors, as the files of the older families are laid out.
    enum Matrices {
        Gated([Linear; 3]),
        Experts(ExpertMats, ExpertMats),
    }
    let mut mats = Vec::with_capacity(cfg.n_layers);
    let mut expert_bytes = WeightBytes::default();
    for i in 0..cfg.n_layers {
        let attn = [
            matrix(Role::Q, i)?,
            matrix(Role::K, i)?,
            matrix(Role::V, i)?,
            matrix(Role::O, i)?,
        ];
        if cfg.moe.is_some() {
            let mut load = |role: Role| -> Result<ExpertMats> {
                let name = required_name(src, cfg, role, i)?;
                let m = src
                    .load_experts(&name, role, cfg, compute)?
                    .to_device(device)?;
                expert_bytes += m.bytes();
                Ok(m)
            };
            let experts = Matrices::Experts(load(Role::GateUpExperts)?, load(Role::DownExperts)?);
            mats.push((attn, experts));
        } else {
            let mlp = [
                matrix(Role::Gate, i)?,
                matrix(Role::Up, i)?,
                matrix(Role::Down, i)?,
            ];
            mats.push((attn, Matrices::Gated(mlp)));
        }
    }
    let offset = src.norm_offset(cfg);
    let mut vector_bytes = 0u64;
    let mut vector = |role: Role, layer: usize| -> Result<Tensor> {
        let t = src
            .load(
                &required_name(src, cfg, role, layer)?,
                role,
                cfg,
                ComputeDtype::F32,
            )?
            .to_f32()?
            .to_device(device)?;
        let t = if role.is_norm() && offset != 0.0 {
            (t + offset as f64)?
        } else {
            t
        };
        vector_bytes += (t.elem_count() * 4) as u64;
        Ok(t)
    };
    let mut opt = |on: bool, role: Role, layer: usize| on.then(|| vector(role, layer)).transpose();
    let mut blocks = Vec::with_capacity(cfg.n_layers);
    for (i, ([wq, wk, wv, wo], matrices)) in mats.into_iter().enumerate() {
        let mut need = |role: Role| opt(true, role, i).map(|t| t.expect("always loaded"));
        let mlp = match matrices {
            Matrices::Gated([gate, up, down]) => Mlp::Gated { gate, up, down },
            Matrices::Experts(gate_up, down) => Mlp::Experts(Box::new(MoeWeights {
                router: need(Role::Router)?,
                router_bias: need(Role::RouterBias)?,
                gate_up,
                gate_up_bias: need(Role::GateUpBias)?,
                down,
                down_bias: need(Role::DownBias)?,
            })),
        };
        blocks.push(BlockWeights {
            attn_norm: opt(true, Role::AttnNorm, i)?.expect("always loaded"),
            post_attn_norm: opt(cfg.sandwich_norms, Role::PostAttnNorm, i)?,
            q_norm: opt(cfg.qk_norm, Role::QNorm, i)?,
            k_norm: opt(cfg.qk_norm, Role::KNorm, i)?,
            bq: opt(cfg.qkv_bias, Role::QBias, i)?,
            bk: opt(cfg.qkv_bias, Role::KBias, i)?,
            bv: opt(cfg.qkv_bias, Role::VBias, i)?,
            bo: opt(cfg.o_bias, Role::OBias, i)?,
            sinks: opt(cfg.attn_sinks, Role::Sinks, i)?,
            ffn_norm: opt(true, Role::FfnNorm, i)?.expect("always loaded"),
            post_ffn_norm: opt(cfg.sandwich_norms, Role::PostFfnNorm, i)?,
            wq,
            wk,
            wv,
            wo,
            mlp,
        });
    }
    let final_norm = opt(true, Role::FinalNorm, 0)?.expect("always loaded");
    let has_freqs = plan(src, cfg).contains(&(Role::RopeFreqs, 0));
    let rope_freqs = opt(has_freqs, Role::RopeFreqs, 0)?
        .map(|t| t.to_device(&Device::Cpu)?.to_vec1::<f32>())
        .transpose()?;
    bytes.owned += vector_bytes;
    bytes += expert_bytes;
    Ok(ModelWeights {
        embed: Embedding(embed),
        blocks,
        final_norm,
        head,
        rope_freqs,
        bytes,
    })
}
