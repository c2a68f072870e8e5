//! The experts of a mixture-of-experts block (gpt-oss): per expert a gate-and-up matrix and a
//! down matrix, held either as float matrices or, for checkpoints that store them so, as MXFP4
//! blocks that the products read directly (about 4.25 bits a weight, no widened copy).

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::{ComputeDtype, Linear, WeightBytes};
use crate::error::{EngineError, Result};
use crate::weights::mxfp4;

/// One matrix per expert, all of `[out, in]`.
#[derive(Debug, Clone)]
pub enum ExpertMats {
    Dense(Vec<Linear>),
    Mxfp4(Arc<Mxfp4Mats>),
}

/// MXFP4 matrices as stored: expert `e`'s row `r` is `in / 32` blocks of 16 bytes with one
/// scale byte each, at `(e · out + r) · in / 32`.
#[derive(Debug)]
pub struct Mxfp4Mats {
    blocks: Vec<u8>,
    scales: Vec<u8>,
    experts: usize,
    out: usize,
    inp: usize,
}

impl ExpertMats {
    /// MXFP4 blocks and scales of `experts` matrices `[out, in]`, kept as stored or widened
    /// for `compute`. `what` names the tensor in errors.
    pub fn from_mxfp4(
        blocks: Vec<u8>,
        scales: Vec<u8>,
        (experts, out, inp): (usize, usize, usize),
        compute: ComputeDtype,
        what: &str,
    ) -> Result<Self> {
        if inp % 32 != 0 || scales.len() != experts * out * inp / 32 {
            return Err(EngineError::Input(format!(
                "{what}: {} MXFP4 scales for {experts} experts of [{out}, {inp}]",
                scales.len()
            )));
        }
        mxfp4::check(&blocks, &scales, what)?;
        let dtype = match compute {
            ComputeDtype::Stored => {
                return Ok(ExpertMats::Mxfp4(Arc::new(Mxfp4Mats {
                    blocks,
                    scales,
                    experts,
                    out,
                    inp,
                })))
            }
            ComputeDtype::F32 => DType::F32,
            ComputeDtype::Bf16 => DType::BF16,
        };
        let per_expert = out * inp / 32;
        let mats = (0..experts)
            .map(|e| {
                let rows = e * per_expert..(e + 1) * per_expert;
                let values = mxfp4::dequantize(
                    &blocks[rows.start * 16..rows.end * 16],
                    &scales[rows],
                    what,
                )?;
                let t = Tensor::from_vec(values, (out, inp), &Device::Cpu)?.to_dtype(dtype)?;
                Ok(Linear::Dense(t))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ExpertMats::Dense(mats))
    }

    /// Float values of `experts` matrices `[out, in]`, one after the other, in `compute`'s
    /// dtype (f32 for `stored`: the values came as floats).
    pub fn from_values(
        values: Vec<f32>,
        (experts, out, inp): (usize, usize, usize),
        compute: ComputeDtype,
    ) -> Result<Self> {
        let dtype = match compute {
            ComputeDtype::Bf16 => DType::BF16,
            ComputeDtype::Stored | ComputeDtype::F32 => DType::F32,
        };
        let all = Tensor::from_vec(values, (experts, out, inp), &Device::Cpu)?;
        let mats = (0..experts)
            .map(|e| Ok(Linear::Dense(all.get(e)?.to_dtype(dtype)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(ExpertMats::Dense(mats))
    }

    pub fn len(&self) -> usize {
        match self {
            ExpertMats::Dense(m) => m.len(),
            ExpertMats::Mxfp4(m) => m.experts,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `x · W_eᵀ`: `[n, in]` f32 → `[n, out]` f32.
    pub fn forward(&self, e: usize, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            ExpertMats::Dense(m) => m[e].forward(x),
            ExpertMats::Mxfp4(m) => {
                let n = x.dim(0)?;
                let per_expert = m.out * m.inp / 32;
                let rows = e * per_expert..(e + 1) * per_expert;
                let xs = x.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
                let y = mxfp4::matmul(
                    &xs,
                    n,
                    &m.blocks[rows.start * 16..rows.end * 16],
                    &m.scales[rows],
                    m.out,
                );
                Tensor::from_vec(y, (n, m.out), x.device())
            }
        }
    }

    /// Expert `e`'s matrix as a dense f32 tensor.
    pub fn to_f32(&self, e: usize) -> candle_core::Result<Tensor> {
        match self {
            ExpertMats::Dense(m) => m[e].to_f32(),
            ExpertMats::Mxfp4(m) => {
                let per_expert = m.out * m.inp / 32;
                let rows = e * per_expert..(e + 1) * per_expert;
                let v = mxfp4::dequantize(
                    &m.blocks[rows.start * 16..rows.end * 16],
                    &m.scales[rows],
                    "experts",
                )
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
                Tensor::from_vec(v, (m.out, m.inp), &Device::Cpu)
            }
        }
    }

    pub fn bytes(&self) -> WeightBytes {
        let owned = match self {
            ExpertMats::Dense(m) => m.iter().map(|l| l.bytes(false).owned).sum(),
            ExpertMats::Mxfp4(m) => (m.blocks.len() + m.scales.len()) as u64,
        };
        WeightBytes { mapped: 0, owned }
    }

    pub fn dtype_name(&self) -> String {
        match self {
            ExpertMats::Dense(m) => m.first().map_or("none".into(), |l| l.dtype_name()),
            ExpertMats::Mxfp4(_) => "MXFP4".into(),
        }
    }

    /// The matrices in `device`'s memory. MXFP4 blocks are read by a CPU kernel only, so they
    /// do not move: a base that computes on a GPU loads its experts in bf16.
    pub fn to_device(&self, device: &Device) -> candle_core::Result<ExpertMats> {
        match self {
            ExpertMats::Dense(m) => Ok(ExpertMats::Dense(
                m.iter()
                    .map(|l| l.to_device(device))
                    .collect::<candle_core::Result<_>>()?,
            )),
            ExpertMats::Mxfp4(_) if device.is_cpu() => Ok(self.clone()),
            ExpertMats::Mxfp4(_) => candle_core::bail!(
                "MXFP4 experts compute on the CPU only: load the base with dtype bf16 to place \
                 it on {device:?}"
            ),
        }
    }
}
