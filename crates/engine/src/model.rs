//! The llama-family forward pass with taps on the residual stream.
//!
//! Sequences of different lengths run packed: their tokens are concatenated into one
//! `[N, d]` matrix so that every weight matrix multiplies all tokens at once with no padding;
//! only attention runs per sequence. Layer `i` for `i < L` is the residual stream entering
//! block `i` (0 = token embeddings) and layer `L` is the last block's output before the final
//! norm, the numbering of the tuned-lens package.

use candle_core::{Device, Tensor};
use candle_nn::ops::{rms_norm, silu, softmax_last_dim};
use candle_nn::rotary_emb::{rope, rope_i};

use crate::config::{ModelConfig, RopeStyle};
use crate::error::{EngineError, Result};
use crate::weights::{BlockWeights, ModelWeights};

pub struct Llama {
    pub cfg: ModelConfig,
    pub w: ModelWeights,
    inv_freq: Vec<f32>,
}

/// Keys and values of one sequence for every layer, `[n_kv_heads, T, head_dim]` each.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<(Tensor, Tensor)>,
    len: usize,
}

impl KvCache {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    None,
    /// Only each sequence's last position: `[S, V]`.
    Last,
    /// Every position: `[N, V]`.
    All,
}

pub struct ForwardOutput {
    /// `(layer, [N, d])` for each requested layer, in ascending layer order.
    pub taps: Vec<(usize, Tensor)>,
    pub logits: Option<Tensor>,
    /// Start of each sequence's rows in the packed `N`.
    pub offsets: Vec<usize>,
}

impl ForwardOutput {
    pub fn tap(&self, layer: usize) -> Option<&Tensor> {
        self.taps.iter().find(|(l, _)| *l == layer).map(|(_, t)| t)
    }
}

impl Llama {
    pub fn new(cfg: ModelConfig, w: ModelWeights) -> Self {
        let hd = cfg.head_dim;
        let inv_freq = (0..hd / 2)
            .map(|i| (1.0 / cfg.rope_theta.powf((2 * i) as f64 / hd as f64)) as f32)
            .collect();
        Llama { cfg, w, inv_freq }
    }

    /// `[N, hd/2]` cosines and sines for the given absolute positions.
    fn rope_tables(&self, positions: &[usize]) -> candle_core::Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            for &f in &self.inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let n = positions.len();
        Ok((
            Tensor::from_vec(cos, (n, 1, half), &Device::Cpu)?,
            Tensor::from_vec(sin, (n, 1, half), &Device::Cpu)?,
        ))
    }

    fn apply_rope(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        heads: usize,
    ) -> candle_core::Result<Tensor> {
        let n = x.dim(0)?;
        let x = x.reshape((n, heads, 1, self.cfg.head_dim))?;
        let y = match self.cfg.rope_style {
            RopeStyle::Interleaved => rope_i(&x, cos, sin)?,
            RopeStyle::Halves => rope(&x, cos, sin)?,
        };
        y.reshape((n, heads, self.cfg.head_dim))
    }

    /// Applies the final RMSNorm to rows of the residual stream.
    pub fn final_norm(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        rms_norm(
            &x.contiguous()?,
            &self.w.final_norm,
            self.cfg.rms_eps as f32,
        )
    }

    /// Unembeds rows that are already final-normed: `[R, d]` → `[R, V]`.
    pub fn unembed(&self, normed: &Tensor) -> candle_core::Result<Tensor> {
        self.w.head.forward(normed)
    }

    /// Runs the sequences, each continuing its cache when `caches` is given, and returns the
    /// residual stream at `taps` (layers `0..=L`) and the requested logits.
    pub fn forward(
        &self,
        seqs: &[&[u32]],
        mut caches: Option<&mut [KvCache]>,
        taps: &[usize],
        logits: Logits,
    ) -> Result<ForwardOutput> {
        let cfg = &self.cfg;
        if seqs.is_empty() || seqs.iter().any(|s| s.is_empty()) {
            return Err(EngineError::Input(
                "every sequence needs at least one token".into(),
            ));
        }
        if let Some(c) = caches.as_deref() {
            if c.len() != seqs.len() {
                return Err(EngineError::Input(format!(
                    "{} caches given for {} sequences",
                    c.len(),
                    seqs.len()
                )));
            }
        }
        if let Some(&bad) = taps.iter().find(|&&l| l > cfg.n_layers) {
            return Err(EngineError::Input(format!(
                "layer {bad} does not exist: the model has layers 0..={}",
                cfg.n_layers
            )));
        }
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        let mut offsets = Vec::with_capacity(seqs.len());
        for (s, seq) in seqs.iter().enumerate() {
            let past = caches.as_deref().map_or(0, |c| c[s].len);
            if past + seq.len() > cfg.max_positions {
                return Err(EngineError::Input(format!(
                    "sequence {s} reaches {} tokens, beyond the model's context length of {}",
                    past + seq.len(),
                    cfg.max_positions
                )));
            }
            if let Some(&bad) = seq.iter().find(|&&t| t as usize >= cfg.vocab_size) {
                return Err(EngineError::Input(format!(
                    "token id {bad} is outside the vocabulary (size {})",
                    cfg.vocab_size
                )));
            }
            offsets.push(ids.len());
            ids.extend_from_slice(seq);
            positions.extend(past..past + seq.len());
        }
        let n = ids.len();
        let (cos, sin) = self.rope_tables(&positions)?;
        let ids_t = Tensor::from_vec(ids, n, &Device::Cpu)?;
        let mut x = self.w.embed.lookup(&ids_t)?;
        let mut tapped = Vec::with_capacity(taps.len());
        let want = |l: usize| taps.contains(&l);
        for (i, block) in self.w.blocks.iter().enumerate() {
            if want(i) {
                tapped.push((i, x.clone()));
            }
            x = self.block(
                i,
                block,
                &x,
                &cos,
                &sin,
                seqs,
                &offsets,
                caches.as_deref_mut(),
            )?;
        }
        if want(cfg.n_layers) {
            tapped.push((cfg.n_layers, x.clone()));
        }
        if let Some(c) = caches {
            for (cache, seq) in c.iter_mut().zip(seqs) {
                cache.len += seq.len();
            }
        }
        let logits = match logits {
            Logits::None => None,
            Logits::All => Some(self.unembed(&self.final_norm(&x)?)?),
            Logits::Last => {
                let last: Vec<u32> = offsets
                    .iter()
                    .zip(seqs)
                    .map(|(o, s)| (o + s.len() - 1) as u32)
                    .collect();
                let idx = Tensor::from_vec(last, seqs.len(), &Device::Cpu)?;
                Some(self.unembed(&self.final_norm(&x.index_select(&idx, 0)?)?)?)
            }
        };
        Ok(ForwardOutput {
            taps: tapped,
            logits,
            offsets,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn block(
        &self,
        layer: usize,
        b: &BlockWeights,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        seqs: &[&[u32]],
        offsets: &[usize],
        mut caches: Option<&mut [KvCache]>,
    ) -> candle_core::Result<Tensor> {
        let cfg = &self.cfg;
        let eps = cfg.rms_eps as f32;
        let h = rms_norm(x, &b.attn_norm, eps)?;
        let q = self.apply_rope(&b.wq.forward(&h)?, cos, sin, cfg.n_heads)?;
        let k = self.apply_rope(&b.wk.forward(&h)?, cos, sin, cfg.n_kv_heads)?;
        let v =
            b.wv.forward(&h)?
                .reshape((x.dim(0)?, cfg.n_kv_heads, cfg.head_dim))?;
        let mut outs = Vec::with_capacity(seqs.len());
        for (s, seq) in seqs.iter().enumerate() {
            let (o, t) = (offsets[s], seq.len());
            let cache = caches.as_deref_mut().map(|c| &mut c[s]);
            outs.push(self.attention(
                layer,
                &q.narrow(0, o, t)?,
                &k.narrow(0, o, t)?,
                &v.narrow(0, o, t)?,
                cache,
            )?);
        }
        let attn = if outs.len() == 1 {
            outs.pop().expect("one output")
        } else {
            Tensor::cat(&outs, 0)?
        };
        let x = (x + b.wo.forward(&attn)?)?;
        let h = rms_norm(&x, &b.ffn_norm, eps)?;
        let ff = (silu(&b.w_gate.forward(&h)?)? * b.w_up.forward(&h)?)?;
        x + b.w_down.forward(&ff)?
    }

    /// Causal attention of one sequence's new tokens over its cached and new keys.
    /// `q`: `[T, nh, hd]`, `k`/`v`: `[T, nkv, hd]` → `[T, nh * hd]`.
    fn attention(
        &self,
        layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        cache: Option<&mut KvCache>,
    ) -> candle_core::Result<Tensor> {
        let cfg = &self.cfg;
        let (t, nh, hd) = q.dims3()?;
        let nkv = cfg.n_kv_heads;
        let group = nh / nkv;
        let mut k = k.transpose(0, 1)?.contiguous()?;
        let mut v = v.transpose(0, 1)?.contiguous()?;
        let mut past = 0;
        if let Some(cache) = cache {
            past = cache.len;
            if let Some((pk, pv)) = cache.layers.get(layer) {
                k = Tensor::cat(&[pk, &k], 1)?;
                v = Tensor::cat(&[pv, &v], 1)?;
                cache.layers[layer] = (k.clone(), v.clone());
            } else {
                cache.layers.push((k.clone(), v.clone()));
            }
        }
        let tk = k.dim(1)?;
        // Query heads that share a key/value head are stacked as rows: [nkv, group * T, hd].
        let q = q
            .transpose(0, 1)?
            .contiguous()?
            .reshape((nkv, group * t, hd))?;
        let scale = 1.0 / (hd as f64).sqrt();
        let mut scores = (q.matmul(&k.t()?)? * scale)?;
        if t > 1 {
            scores = scores.broadcast_add(&causal_mask(group, t, past, tk)?)?;
        }
        let p = softmax_last_dim(&scores)?;
        let out = p.matmul(&v)?;
        out.reshape((nh, t, hd))?
            .transpose(0, 1)?
            .contiguous()?
            .reshape((t, nh * hd))
    }
}

/// `[group * T, Tk]` additive mask: row `r` is query `r % T` at absolute position `past + r % T`.
fn causal_mask(group: usize, t: usize, past: usize, tk: usize) -> candle_core::Result<Tensor> {
    let mut m = vec![0f32; group * t * tk];
    for r in 0..group * t {
        let pos = past + r % t;
        for j in pos + 1..tk {
            m[r * tk + j] = f32::NEG_INFINITY;
        }
    }
    Tensor::from_vec(m, (group * t, tk), &Device::Cpu)
}
