//! The forward pass with taps on the residual stream, shared by every family: a block is
//! (norm → attention → [norm] → add) then (norm → gated MLP → [norm] → add), and the family's
//! configuration switches on the options (biases, per-head q/k norms, soft-caps, sliding
//! windows, rotary variants, embedding scale) that `family/` read from its files.
//!
//! Sequences of different lengths run packed: their tokens are concatenated into one
//! `[N, d]` matrix so that every weight matrix multiplies all tokens at once with no padding;
//! only attention runs per sequence. Layer `i` for `i < L` is the residual stream entering
//! block `i` (0 = token embeddings) and layer `L` is the last block's output before the final
//! norm, the numbering of the tuned-lens package.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use candle_core::{Device, Tensor};
use candle_nn::ops::{rms_norm, softmax_last_dim};
use candle_nn::rotary_emb::{rope, rope_i};

use crate::config::{Activation, ModelConfig, Moe, RopeStyle};
use crate::error::{EngineError, Result};
use crate::lora::{Adapter, BlockAdapter};
use crate::weights::{BlockWeights, Linear, Mlp, ModelWeights, MoeWeights};

pub struct Model {
    pub cfg: ModelConfig,
    pub w: ModelWeights,
    /// Rotary frequencies of each distinct rotary embedding, with the factor its cosines and
    /// sines are multiplied by; `rope_of[block]` indexes them.
    inv_freqs: Vec<(Vec<f32>, f32)>,
    rope_of: Vec<usize>,
    /// Work done so far, for tests and benchmarks.
    pub counters: Counters,
}

/// How much the model has run: block applications (one block over one batch counts once),
/// batched passes, and the time spent in mixtures of experts (routing included).
#[derive(Debug, Default)]
pub struct Counters {
    pub blocks: AtomicU64,
    pub passes: AtomicU64,
    pub expert_nanos: AtomicU64,
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
/// Cloning a cache, or taking a [`KvCache::prefix`] of it, shares its buffers until one of
/// them grows (copy on write).
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<LayerKv>>,
    len: usize,
}

/// One block's keys and values: buffers of `[n_kv_heads, capacity, head_dim]` whose first `len`
/// positions hold the sequence so far, so that a decoding step writes its one position in
/// place instead of copying the whole cache. `owner` is shared by every cache that shares the
/// buffers; a buffer is written only by a cache that holds it alone, so a continuation of one
/// cache never changes what another holds.
#[derive(Debug, Clone)]
struct LayerKv {
    k: Tensor,
    v: Tensor,
    len: usize,
    owner: Arc<()>,
}

impl LayerKv {
    /// Appends `k`, `v` (`[n_kv_heads, T, head_dim]`, contiguous) after the first `past`
    /// positions of `slot` and returns views of all `past + T`.
    fn append(
        slot: &mut Option<LayerKv>,
        k: &Tensor,
        v: &Tensor,
        past: usize,
        layer: usize,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let t = k.dim(1)?;
        match slot {
            Some(l) if l.len != past => {
                candle_core::bail!(
                    "the cache holds {past} positions but block {layer} holds {}",
                    l.len
                )
            }
            None if past > 0 => {
                candle_core::bail!("the cache holds {past} positions but none of block {layer}")
            }
            _ => {}
        }
        let capacity = slot.as_ref().map_or(0, |l| l.k.dims()[1]);
        let alone = slot
            .as_ref()
            .is_some_and(|l| Arc::strong_count(&l.owner) == 1);
        if !alone || past + t > capacity {
            // Room for as many positions again, so that growing costs one copy per doubling.
            let capacity = (past + t).max(2 * past);
            let (nkv, hd) = (k.dim(0)?, k.dim(2)?);
            let fresh = || Tensor::zeros((nkv, capacity, hd), k.dtype(), k.device());
            let (nk, nv) = (fresh()?, fresh()?);
            if let Some(l) = slot.as_ref().filter(|_| past > 0) {
                nk.slice_set(&l.k.narrow(1, 0, past)?.contiguous()?, 1, 0)?;
                nv.slice_set(&l.v.narrow(1, 0, past)?.contiguous()?, 1, 0)?;
            }
            *slot = Some(LayerKv {
                k: nk,
                v: nv,
                len: past,
                owner: Arc::new(()),
            });
        }
        let l = slot.as_mut().expect("filled above");
        l.k.slice_set(k, 1, past)?;
        l.v.slice_set(v, 1, past)?;
        l.len = past + t;
        Ok((l.k.narrow(1, 0, l.len)?, l.v.narrow(1, 0, l.len)?))
    }
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
            if let Some(Some(l)) = self.layers.get(b) {
                layers[b] = Some(LayerKv { len, ..l.clone() });
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
    /// Residual streams to return (layer numbering as in [`Model::forward`]).
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

impl Model {
    pub fn new(cfg: ModelConfig, w: ModelWeights) -> Self {
        let hd = cfg.head_dim;
        let mut inv_freqs: Vec<(Vec<f32>, f32)> = Vec::new();
        let mut rope_of = Vec::with_capacity(cfg.n_layers);
        for layer in 0..cfg.n_layers {
            let rope = cfg.rope_of(layer);
            let mut f = rope.inv_freq(hd);
            if let Some(div) = &w.rope_freqs {
                f.iter_mut().zip(div).for_each(|(f, d)| *f /= d);
            }
            let f = (f, rope.attention_factor());
            let i = match inv_freqs.iter().position(|g| *g == f) {
                Some(i) => i,
                None => {
                    inv_freqs.push(f);
                    inv_freqs.len() - 1
                }
            };
            rope_of.push(i);
        }
        Model {
            cfg,
            w,
            inv_freqs,
            rope_of,
            counters: Counters::default(),
        }
    }

    /// Where the weights are and the model computes.
    pub fn device(&self) -> &Device {
        self.w.final_norm.device()
    }

    /// Token embeddings of `ids`, scaled as the family does before the first block: `[len, d]`.
    pub fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        let x = self.embed_unscaled(ids)?;
        Ok(self.scale_embeddings(&x)?)
    }

    /// Rows of the embedding matrix for `ids`, as stored: `[len, d]`.
    pub fn embed_unscaled(&self, ids: &[u32]) -> Result<Tensor> {
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
            return Err(EngineError::Input(format!(
                "token id {bad} is outside the vocabulary (size {})",
                self.cfg.vocab_size
            )));
        }
        let t = Tensor::from_vec(ids.to_vec(), ids.len(), self.device())?;
        Ok(self.w.embed.lookup(&t)?)
    }

    /// Multiplies vectors of the embedding space by the family's embedding scale (√d for
    /// Gemma), as token embeddings are before the first block.
    pub fn scale_embeddings(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.cfg.embed_scale == 1.0 {
            Ok(x.clone())
        } else {
            x * self.cfg.embed_scale as f64
        }
    }

    /// `[N, hd/2]` cosines and sines for the given absolute positions, for rotary embedding
    /// number `rope`.
    fn rope_tables(
        &self,
        rope: usize,
        positions: &[usize],
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let (inv_freq, gain) = &self.inv_freqs[rope];
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            for &f in inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos() * gain);
                sin.push(angle.sin() * gain);
            }
        }
        let n = positions.len();
        Ok((
            Tensor::from_vec(cos, (n, 1, half), self.device())?,
            Tensor::from_vec(sin, (n, 1, half), self.device())?,
        ))
    }

    /// Rotates `x` (`[N, heads * hd]`), after the per-head norm `norm` when the family has one.
    fn apply_rope(
        &self,
        x: &Tensor,
        norm: Option<&Tensor>,
        (cos, sin): (&Tensor, &Tensor),
        heads: usize,
    ) -> candle_core::Result<Tensor> {
        let n = x.dim(0)?;
        let hd = self.cfg.head_dim;
        let mut x = x.reshape((n * heads, hd))?;
        if let Some(w) = norm {
            x = rms_norm(&x, w, self.cfg.rms_eps as f32)?;
        }
        let x = x.reshape((n, heads, 1, hd))?;
        let y = match self.cfg.rope_style {
            RopeStyle::Interleaved => rope_i(&x, cos, sin)?,
            RopeStyle::Halves => rope(&x, cos, sin)?,
        };
        y.reshape((n, heads, hd))
    }

    /// Applies the final RMSNorm to rows of the residual stream.
    pub fn final_norm(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        rms_norm(
            &x.contiguous()?,
            &self.w.final_norm,
            self.cfg.rms_eps as f32,
        )
    }

    /// Unembeds rows that are already final-normed: `[R, d]` → `[R, V]`, soft-capped as the
    /// family's output is, so every lens reads the logits the model itself would give.
    pub fn unembed(&self, normed: &Tensor) -> candle_core::Result<Tensor> {
        let logits = self.w.head.forward(normed)?;
        match self.cfg.final_softcap {
            Some(cap) => softcap(&logits, cap),
            None => Ok(logits),
        }
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

    /// [`Model::forward`] with a LoRA adapter applied to the blocks.
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
                let idx = Tensor::from_vec(last, seqs.len(), self.device())?;
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
        let mut tables = vec![None; self.inv_freqs.len()];
        for i in blocks.clone() {
            let r = self.rope_of[i];
            if tables[r].is_none() {
                tables[r] = Some(self.rope_tables(r, &positions)?);
            }
        }
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
            let (cos, sin) = tables[self.rope_of[i]].as_ref().expect("built above");
            x = self.block(
                i,
                &self.w.blocks[i],
                lora,
                &x,
                (cos, sin),
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
        let biased = |y: Tensor, bias: &Option<Tensor>| match bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        };
        // Matrices that share an input run as one product where the kernels take them all.
        let together = |ws: &[&Linear], adapted: bool, h: &Tensor| match adapted {
            true => Ok(None),
            false => Linear::forward_many(ws, h),
        };
        let h = rms_norm(x, &b.attn_norm, eps)?;
        let qkv_adapted = lora.is_some_and(|a| a.q.is_some() || a.k.is_some() || a.v.is_some());
        let (q, k, v) = match together(&[&b.wq, &b.wk, &b.wv], qkv_adapted, &h)?.as_deref() {
            Some([q, k, v]) => (q.clone(), k.clone(), v.clone()),
            _ => (
                lin(&b.wq, |a| a.q.as_ref(), &h)?,
                lin(&b.wk, |a| a.k.as_ref(), &h)?,
                lin(&b.wv, |a| a.v.as_ref(), &h)?,
            ),
        };
        let q = biased(q, &b.bq)?;
        let k = biased(k, &b.bk)?;
        let v = biased(v, &b.bv)?;
        let q = self.apply_rope(&q, b.q_norm.as_ref(), (cos, sin), cfg.n_heads)?;
        let k = self.apply_rope(&k, b.k_norm.as_ref(), (cos, sin), cfg.n_kv_heads)?;
        let v = v.reshape((x.dim(0)?, cfg.n_kv_heads, cfg.head_dim))?;
        let mut outs = Vec::with_capacity(lens.len());
        for (s, &t) in lens.iter().enumerate() {
            let o = offsets[s];
            let cache = caches.as_deref_mut().map(|c| &mut c[s]);
            outs.push(self.attention(
                layer,
                &q.narrow(0, o, t)?,
                &k.narrow(0, o, t)?,
                &v.narrow(0, o, t)?,
                b.sinks.as_ref(),
                cache,
            )?);
        }
        let attn = if outs.len() == 1 {
            outs.pop().expect("one output")
        } else {
            Tensor::cat(&outs, 0)?
        };
        let mut a = biased(lin(&b.wo, |a| a.o.as_ref(), &attn)?, &b.bo)?;
        if let Some(w) = &b.post_attn_norm {
            a = rms_norm(&a, w, eps)?;
        }
        let x = (x + a)?;
        let h = rms_norm(&x, &b.ffn_norm, eps)?;
        let mut m = match &b.mlp {
            Mlp::Gated { gate, up, down } => {
                let adapted = lora.is_some_and(|a| a.gate.is_some() || a.up.is_some());
                let (g, u) = match together(&[gate, up], adapted, &h)?.as_deref() {
                    Some([g, u]) => (g.clone(), u.clone()),
                    _ => (
                        lin(gate, |a| a.gate.as_ref(), &h)?,
                        lin(up, |a| a.up.as_ref(), &h)?,
                    ),
                };
                let ff = match crate::gated::gated(cfg.activation, &g, &u)? {
                    Some(ff) => ff,
                    None => {
                        let g = match cfg.activation {
                            Activation::Silu => candle_nn::ops::silu(&g)?,
                            Activation::GeluTanh => g.gelu()?,
                        };
                        (g * u)?
                    }
                };
                lin(down, |a| a.down.as_ref(), &ff)?
            }
            Mlp::Experts(w) => {
                if lora.is_some_and(|a| a.gate.is_some() || a.up.is_some() || a.down.is_some()) {
                    candle_core::bail!(
                        "a LoRA adapter on the MLP does not apply to a mixture of experts"
                    );
                }
                let moe = cfg
                    .moe
                    .as_ref()
                    .expect("experts come with a moe configuration");
                let started = std::time::Instant::now();
                let y = experts_forward(moe, w, &h)?;
                self.counters
                    .expert_nanos
                    .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
                y
            }
        };
        if let Some(w) = &b.post_ffn_norm {
            m = rms_norm(&m, w, eps)?;
        }
        x + m
    }

    /// Causal attention of one sequence's new tokens over its cached and new keys.
    /// `q`: `[T, nh, hd]`, `k`/`v`: `[T, nkv, hd]` → `[T, nh * hd]`.
    fn attention(
        &self,
        layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        sinks: Option<&Tensor>,
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
            (k, v) = LayerKv::append(&mut cache.layers[layer], &k, &v, past, layer)?;
        }
        let tk = k.dim(1)?;
        let window = cfg.window(layer);
        // One query on the CPU: the sinks are read to the host only then (a GPU step would
        // wait for the copy).
        if t == 1 && q.device().is_cpu() {
            let params = crate::attention::DecodeParams {
                scale: cfg.query_scale as f32,
                softcap: cfg.attn_softcap.map(|c| c as f32),
                first: window.map_or(0, |w| (past + 1).saturating_sub(w)),
                sinks: sinks
                    .map(|s| s.to_dtype(candle_core::DType::F32)?.to_vec1())
                    .transpose()?,
            };
            if let Some(out) = crate::attention::decode(q, &k, &v, &params)? {
                return Ok(out);
            }
        }
        // Query heads that share a key/value head are stacked as rows: [nkv, group * T, hd].
        let q = q
            .transpose(0, 1)?
            .contiguous()?
            .reshape((nkv, group * t, hd))?;
        let mut scores = (q.matmul(&k.t()?)? * cfg.query_scale)?;
        if let Some(cap) = cfg.attn_softcap {
            scores = softcap(&scores, cap)?;
        }
        if t > 1 || window.is_some_and(|w| past + t > w) {
            let mask = causal_mask(group, t, past, tk, window, self.device())?;
            scores = scores.broadcast_add(&mask)?;
        }
        let p = match sinks {
            // Each head's sink joins its rows' softmax as one more logit, then is dropped.
            Some(s) => {
                let rows = group * t;
                let col = s
                    .reshape((nkv, group, 1))?
                    .broadcast_as((nkv, group, t))?
                    .reshape((nkv, rows, 1))?
                    .to_dtype(scores.dtype())?;
                let all = softmax_last_dim(&Tensor::cat(&[&scores, &col], 2)?)?;
                all.narrow(2, 0, tk)?
            }
            None => softmax_last_dim(&scores)?,
        };
        let out = p.matmul(&v)?;
        out.reshape((nh, t, hd))?
            .transpose(0, 1)?
            .contiguous()?
            .reshape((t, nh * hd))
    }
}

/// Each token's chosen experts and their weights, from the router's logits `[N, E]`: the
/// `k` largest (the lower index first among equals), weighed by the softmax over them.
pub fn top_k_routes(logits: &Tensor, k: usize) -> candle_core::Result<Vec<Vec<(usize, f32)>>> {
    let rows = logits.to_device(&Device::Cpu)?.to_vec2::<f32>()?;
    Ok(rows
        .iter()
        .map(|row| {
            let mut idx: Vec<usize> = (0..row.len()).collect();
            idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            idx.truncate(k);
            let top = row[idx[0]];
            let e: Vec<f32> = idx.iter().map(|&i| (row[i] - top).exp()).collect();
            let sum: f32 = e.iter().sum();
            idx.into_iter().zip(e).map(|(i, e)| (i, e / sum)).collect()
        })
        .collect())
}

/// The router's logits `[N, E]` for normed rows `h`.
pub fn router_logits(w: &MoeWeights, h: &Tensor) -> candle_core::Result<Tensor> {
    h.matmul(&w.router.t()?)?.broadcast_add(&w.router_bias)
}

/// A mixture of experts over normed rows `h` (`[N, d]`): each expert runs on the rows routed
/// to it only, and its outputs, weighed, are added into those rows, experts in index order.
fn experts_forward(moe: &Moe, w: &MoeWeights, h: &Tensor) -> candle_core::Result<Tensor> {
    let n = h.dim(0)?;
    let routes = top_k_routes(&router_logits(w, h)?, moe.top_k)?;
    let mut rows_of: Vec<(Vec<u32>, Vec<f32>)> = vec![(Vec::new(), Vec::new()); moe.n_experts];
    for (row, chosen) in routes.iter().enumerate() {
        for &(e, weight) in chosen {
            rows_of[e].0.push(row as u32);
            rows_of[e].1.push(weight);
        }
    }
    let limit = moe.limit;
    let mut out = h.zeros_like()?;
    for (e, (rows, weights)) in rows_of.into_iter().enumerate() {
        if rows.is_empty() {
            continue;
        }
        let m = rows.len();
        let idx = Tensor::from_vec(rows, m, h.device())?;
        let x = h.index_select(&idx, 0)?;
        let gu = w
            .gate_up
            .forward(e, &x)?
            .broadcast_add(&w.gate_up_bias.get(e)?)?;
        let half = gu.dim(1)? / 2;
        let gu = gu.reshape((m, half, 2))?;
        let gate = gu.narrow(2, 0, 1)?.squeeze(2)?.minimum(limit)?;
        let up = gu.narrow(2, 1, 1)?.squeeze(2)?.clamp(-limit, limit)?;
        let glu = (&gate * candle_nn::ops::sigmoid(&(&gate * moe.alpha)?)?)?;
        let y = ((up + 1.0)? * glu)?;
        let y = w.down.forward(e, &y)?.broadcast_add(&w.down_bias.get(e)?)?;
        let weights = Tensor::from_vec(weights, (m, 1), h.device())?;
        out = out.index_add(&idx, &y.broadcast_mul(&weights)?, 0)?;
    }
    debug_assert_eq!(out.dim(0)?, n);
    Ok(out)
}

/// `cap · tanh(x / cap)`: values pass through near zero and saturate at ±cap.
fn softcap(x: &Tensor, cap: f64) -> candle_core::Result<Tensor> {
    (x / cap)?.tanh()? * cap
}

/// `[group * T, Tk]` additive mask: row `r` is query `r % T` at absolute position `past + r % T`;
/// it sees keys at positions up to its own, and within `window` positions back when given.
fn causal_mask(
    group: usize,
    t: usize,
    past: usize,
    tk: usize,
    window: Option<usize>,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let mut m = vec![0f32; group * t * tk];
    for r in 0..group * t {
        let pos = past + r % t;
        let row = &mut m[r * tk..(r + 1) * tk];
        for x in row.iter_mut().skip(pos + 1) {
            *x = f32::NEG_INFINITY;
        }
        if let Some(w) = window {
            // Keys at distance w or more are out of the window.
            let first = (pos + 1).saturating_sub(w);
            for x in row.iter_mut().take(first) {
                *x = f32::NEG_INFINITY;
            }
        }
    }
    Tensor::from_vec(m, (group * t, tk), device)
}
