//! The llama-family forward pass with taps on the residual stream.
//!
//! Sequences of different lengths run packed: their tokens are concatenated into one
//! `[N, d]` matrix so that every weight matrix multiplies all tokens at once with no padding;
//! only attention runs per sequence. Layer `i` for `i < L` is the residual stream entering
//! block `i` (0 = token embeddings) and layer `L` is the last block's output before the final
//! norm, the numbering of the tuned-lens package.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{Device, Tensor};
use candle_nn::ops::{rms_norm, silu, softmax_last_dim};
use candle_nn::rotary_emb::{rope, rope_i};

use crate::config::{ModelConfig, RopeStyle};
use crate::error::{EngineError, Result};
use crate::lora::{Adapter, BlockAdapter};
use crate::weights::{BlockWeights, Linear, ModelWeights};

pub struct Llama {
    pub cfg: ModelConfig,
    pub w: ModelWeights,
    inv_freq: Vec<f32>,
    /// Work done so far, for tests and benchmarks.
    pub counters: Counters,
}

/// How much the model has run: block applications (one block over one batch counts once) and
/// batched passes.
#[derive(Debug, Default)]
pub struct Counters {
    pub blocks: AtomicU64,
    pub passes: AtomicU64,
}

impl Counters {
    pub fn read(&self) -> (u64, u64) {
        (
            self.blocks.load(Ordering::Relaxed),
            self.passes.load(Ordering::Relaxed),
        )
    }
}

/// Keys and values of one sequence, `[n_kv_heads, T, head_dim]` per block that has run.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl KvCache {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first `len` positions of the blocks in `blocks` (others are left out): what a
    /// continuation from position `len` through those blocks needs.
    pub fn prefix(&self, len: usize, blocks: Range<usize>) -> Result<KvCache> {
        if len > self.len {
            return Err(EngineError::Input(format!(
                "a prefix of {len} positions of a cache of {}",
                self.len
            )));
        }
        let mut layers = vec![None; self.layers.len().min(blocks.end)];
        for b in blocks {
            if let Some(Some((k, v))) = self.layers.get(b) {
                layers[b] = Some((k.narrow(1, 0, len)?, v.narrow(1, 0, len)?));
            }
        }
        Ok(KvCache { layers, len })
    }
}

/// A replacement of residual rows entering a block: called with the block index and the packed
/// residual `[N, d]` before the block runs; returns the rows to use instead, or `None`.
pub type Patch<'a> = &'a dyn Fn(usize, &Tensor) -> candle_core::Result<Option<Tensor>>;

/// What a run of blocks over packed rows does besides computing them.
#[derive(Default, Clone, Copy)]
pub struct Run<'a> {
    /// Residual streams to return (layer numbering as in [`Llama::forward`]).
    pub taps: &'a [usize],
    /// A LoRA adapter applied to the blocks' linear maps.
    pub adapter: Option<&'a Adapter>,
    pub patch: Option<Patch<'a>>,
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
        Llama {
            cfg,
            w,
            inv_freq,
            counters: Counters::default(),
        }
    }

    /// Token embeddings of `ids`: `[len, d]`.
    pub fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
            return Err(EngineError::Input(format!(
                "token id {bad} is outside the vocabulary (size {})",
                self.cfg.vocab_size
            )));
        }
        let t = Tensor::from_vec(ids.to_vec(), ids.len(), &Device::Cpu)?;
        Ok(self.w.embed.lookup(&t)?)
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
        caches: Option<&mut [KvCache]>,
        taps: &[usize],
        logits: Logits,
    ) -> Result<ForwardOutput> {
        self.forward_with(seqs, caches, taps, logits, None)
    }

    /// [`Llama::forward`] with a LoRA adapter applied to the blocks.
    pub fn forward_with(
        &self,
        seqs: &[&[u32]],
        caches: Option<&mut [KvCache]>,
        taps: &[usize],
        logits: Logits,
        adapter: Option<&Adapter>,
    ) -> Result<ForwardOutput> {
        let cfg = &self.cfg;
        if seqs.is_empty() || seqs.iter().any(|s| s.is_empty()) {
            return Err(EngineError::Input(
                "every sequence needs at least one token".into(),
            ));
        }
        if let Some(&bad) = taps.iter().find(|&&l| l > cfg.n_layers) {
            return Err(EngineError::Input(format!(
                "layer {bad} does not exist: the model has layers 0..={}",
                cfg.n_layers
            )));
        }
        let mut ids = Vec::new();
        let mut offsets = Vec::with_capacity(seqs.len());
        for seq in seqs {
            offsets.push(ids.len());
            ids.extend_from_slice(seq);
        }
        let x = self.embed(&ids)?;
        let lens: Vec<usize> = seqs.iter().map(|s| s.len()).collect();
        let run = Run {
            taps,
            adapter,
            ..Run::default()
        };
        let (x, tapped) = self.run_blocks(x, &lens, caches, 0..cfg.n_layers, run)?;
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

    /// Runs blocks `blocks` over packed rows `x` (`[N, d]`, the residual entering the first of
    /// them; `lens` rows per sequence), each sequence continuing its cache when `caches` is
    /// given. Returns the residual after the last block and the taps in `blocks.start..=end`.
    pub fn run_blocks(
        &self,
        mut x: Tensor,
        lens: &[usize],
        mut caches: Option<&mut [KvCache]>,
        blocks: Range<usize>,
        run: Run<'_>,
    ) -> Result<(Tensor, Vec<(usize, Tensor)>)> {
        let cfg = &self.cfg;
        if blocks.end > cfg.n_layers || blocks.start > blocks.end {
            return Err(EngineError::Input(format!(
                "blocks {blocks:?} do not exist: the model has blocks 0..{}",
                cfg.n_layers
            )));
        }
        if lens.is_empty() || lens.contains(&0) {
            return Err(EngineError::Input(
                "every sequence needs at least one row".into(),
            ));
        }
        if x.dim(0)? != lens.iter().sum::<usize>() {
            return Err(EngineError::Input(format!(
                "{} rows given for sequences of {} rows",
                x.dim(0)?,
                lens.iter().sum::<usize>()
            )));
        }
        if let Some(c) = caches.as_deref() {
            if c.len() != lens.len() {
                return Err(EngineError::Input(format!(
                    "{} caches given for {} sequences",
                    c.len(),
                    lens.len()
                )));
            }
        }
        if let Some(a) = run.adapter {
            if a.blocks.len() > cfg.n_layers {
                return Err(EngineError::Input(format!(
                    "the adapter has {} blocks, the model {}",
                    a.blocks.len(),
                    cfg.n_layers
                )));
            }
        }
        let mut positions = Vec::with_capacity(x.dim(0)?);
        let mut offsets = Vec::with_capacity(lens.len());
        let mut n = 0;
        for (s, &len) in lens.iter().enumerate() {
            let past = caches.as_deref().map_or(0, |c| c[s].len);
            if past + len > cfg.max_positions {
                return Err(EngineError::Input(format!(
                    "sequence {s} reaches {} positions, beyond the model's context length of {}",
                    past + len,
                    cfg.max_positions
                )));
            }
            offsets.push(n);
            positions.extend(past..past + len);
            n += len;
        }
        let (cos, sin) = self.rope_tables(&positions)?;
        let mut tapped = Vec::with_capacity(run.taps.len());
        let want = |l: usize| run.taps.contains(&l);
        self.counters.passes.fetch_add(1, Ordering::Relaxed);
        for i in blocks.clone() {
            if let Some(patch) = run.patch {
                if let Some(y) = patch(i, &x)? {
                    x = y;
                }
            }
            if want(i) {
                tapped.push((i, x.clone()));
            }
            let lora = run.adapter.and_then(|a| a.blocks.get(i));
            x = self.block(
                i,
                &self.w.blocks[i],
                lora,
                &x,
                (&cos, &sin),
                lens,
                &offsets,
                caches.as_deref_mut(),
            )?;
            self.counters.blocks.fetch_add(1, Ordering::Relaxed);
        }
        if want(blocks.end) {
            tapped.push((blocks.end, x.clone()));
        }
        if let Some(c) = caches {
            for (cache, len) in c.iter_mut().zip(lens) {
                cache.len += len;
            }
        }
        Ok((x, tapped))
    }

    #[allow(clippy::too_many_arguments)]
    fn block(
        &self,
        layer: usize,
        b: &BlockWeights,
        lora: Option<&BlockAdapter>,
        x: &Tensor,
        (cos, sin): (&Tensor, &Tensor),
        lens: &[usize],
        offsets: &[usize],
        mut caches: Option<&mut [KvCache]>,
    ) -> candle_core::Result<Tensor> {
        let cfg = &self.cfg;
        let eps = cfg.rms_eps as f32;
        let lin =
            |w: &Linear, pick: fn(&BlockAdapter) -> Option<&crate::lora::Pair>, h: &Tensor| {
                let y = w.forward(h)?;
                match lora.and_then(pick) {
                    Some(pair) => y + pair.apply(h)?,
                    None => Ok(y),
                }
            };
        let h = rms_norm(x, &b.attn_norm, eps)?;
        let q = self.apply_rope(&lin(&b.wq, |a| a.q.as_ref(), &h)?, cos, sin, cfg.n_heads)?;
        let k = self.apply_rope(&lin(&b.wk, |a| a.k.as_ref(), &h)?, cos, sin, cfg.n_kv_heads)?;
        let v =
            lin(&b.wv, |a| a.v.as_ref(), &h)?.reshape((x.dim(0)?, cfg.n_kv_heads, cfg.head_dim))?;
        let mut outs = Vec::with_capacity(lens.len());
        for (s, &t) in lens.iter().enumerate() {
            let o = offsets[s];
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
        let x = (x + lin(&b.wo, |a| a.o.as_ref(), &attn)?)?;
        let h = rms_norm(&x, &b.ffn_norm, eps)?;
        let ff = (silu(&lin(&b.w_gate, |a| a.gate.as_ref(), &h)?)?
            * lin(&b.w_up, |a| a.up.as_ref(), &h)?)?;
        x + lin(&b.w_down, |a| a.down.as_ref(), &ff)?
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
            if cache.layers.len() <= layer {
                cache.layers.resize(layer + 1, None);
            }
            match &cache.layers[layer] {
                Some((pk, pv)) => {
                    k = Tensor::cat(&[pk, &k], 1)?;
                    v = Tensor::cat(&[pv, &v], 1)?;
                }
                None if past > 0 => {
                    candle_core::bail!("the cache holds {past} positions but none of block {layer}")
                }
                None => {}
            }
            cache.layers[layer] = Some((k.clone(), v.clone()));
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
