//! Talkative lenses: a decoder that turns one layer's activation into a short explanation, and
//! an encoder that reconstructs the activation from it, both running on the shared base
//! (docs/talkative.md is the specification this follows step by step).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor, D};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::ModelConfig;
use crate::donor::Donor;
use crate::error::{EngineError, Result};
use crate::generate::{Sampler, SamplingParams};
use crate::lora::Adapter;
use crate::model::{KvCache, Model, Run};

mod untrained;
pub use untrained::{write_untrained, UntrainedSpec};

pub const MANIFEST: &str = "talkative.json";
pub const TENSORS: &str = "lens.safetensors";
const FORMAT: &str = "lensd.talkative";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    /// The activation is the residual stream after this block.
    pub layer: usize,
    pub t_text: usize,
    pub add_current_token: bool,
    pub decoder: DecoderManifest,
    pub encoder: EncoderManifest,
    pub dtype: String,
    pub base: BaseIdentity,
    pub content_sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DecoderManifest {
    pub patched_layers: usize,
    #[serde(default)]
    pub prompt: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EncoderManifest {
    pub output_layer: usize,
    #[serde(default)]
    pub prompt: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BaseIdentity {
    #[serde(default)]
    pub name: String,
    pub d_model: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_layers: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocab_size: Option<usize>,
}

/// A loaded talkative lens: its tensors in f32, laid out for row-major application.
#[derive(Debug, Clone)]
pub struct TalkativeLens {
    pub manifest: Manifest,
    pub dir: PathBuf,
    /// `proj_i` as `[d_in, d_out]` per patched block, so that rows map as `a · W_iᵀ`.
    proj_w_t: Vec<Tensor>,
    proj_b: Vec<Tensor>,
    left: Tensor,
    right: Tensor,
    enc_w_t: Tensor,
    enc_b: Tensor,
    prefix: Tensor,
    postfix: Option<Tensor>,
    special: Tensor,
    bytes: u64,
}

/// What to compute for each explained position.
#[derive(Debug, Clone, PartialEq)]
pub struct ExplainOptions {
    /// Candidate explanations per position; the one with the lowest reconstruction error wins.
    pub best_of_k: usize,
    /// 0 is greedy.
    pub temperature: f32,
    pub seed: u64,
    pub salience: bool,
    pub kl: bool,
    /// Positions decoded together (each with its `best_of_k` candidates) in one batch.
    pub batch_positions: usize,
}

impl Default for ExplainOptions {
    fn default() -> Self {
        ExplainOptions {
            best_of_k: 8,
            temperature: 1.0,
            seed: 42,
            salience: true,
            kl: true,
            batch_positions: 8,
        }
    }
}

impl ExplainOptions {
    pub fn validate(&self) -> Result<()> {
        if !(1..=64).contains(&self.best_of_k) {
            return Err(EngineError::Input(format!(
                "best_of_k must be from 1 to 64, got {}",
                self.best_of_k
            )));
        }
        if !(self.temperature.is_finite() && (0.0..=5.0).contains(&self.temperature)) {
            return Err(EngineError::Input(format!(
                "temperature must be from 0 to 5, got {}",
                self.temperature
            )));
        }
        if self.batch_positions == 0 {
            return Err(EngineError::Input(
                "batch_positions must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// One explained position, with ids only; [`crate::Base`] adds the texts.
#[derive(Debug, Clone, PartialEq)]
pub struct ExplainedRow {
    pub position: usize,
    pub token: u32,
    pub explanation_ids: Vec<u32>,
    pub mse: f32,
    pub relative_rmse: f32,
    /// Empty when salience was not asked for.
    pub token_salience: Vec<f32>,
    pub kl_divergence: Option<f32>,
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl TalkativeLens {
    /// [`TalkativeLens::open`] and [`TalkativeLens::check`].
    pub fn load(dir: &Path, cfg: &ModelConfig) -> Result<TalkativeLens> {
        let lens = TalkativeLens::open(dir)?;
        lens.check(cfg)?;
        Ok(lens)
    }

    /// Checks the lens against the base it is to run on.
    pub fn check(&self, cfg: &ModelConfig) -> Result<()> {
        let m = &self.manifest;
        let mpath = self.dir.join(MANIFEST);
        let mismatch = |msg: String| EngineError::LensMismatch {
            path: mpath.clone(),
            msg,
        };
        if m.base.d_model != cfg.d_model {
            return Err(mismatch(format!(
                "the lens is for d_model {}, the base has {}",
                m.base.d_model, cfg.d_model
            )));
        }
        if let Some(n) = m.base.n_layers.filter(|&n| n != cfg.n_layers) {
            return Err(mismatch(format!(
                "the lens is for {n} blocks, the base has {}",
                cfg.n_layers
            )));
        }
        if let Some(v) = m.base.vocab_size.filter(|&v| v != cfg.vocab_size) {
            return Err(mismatch(format!(
                "the lens is for a vocabulary of {v}, the base has {}",
                cfg.vocab_size
            )));
        }
        if m.layer >= cfg.n_layers {
            return Err(mismatch(format!(
                "`layer` {} is not a block of the base (0..{})",
                m.layer, cfg.n_layers
            )));
        }
        if m.encoder.output_layer >= cfg.n_layers {
            return Err(mismatch(format!(
                "`encoder.output_layer` {} is not a block of the base (0..{})",
                m.encoder.output_layer, cfg.n_layers
            )));
        }
        let p = m.decoder.patched_layers;
        if p > cfg.n_layers {
            return Err(mismatch(format!(
                "`decoder.patched_layers` is {p}; it must be from 1 to the base's {} blocks",
                cfg.n_layers
            )));
        }
        Ok(())
    }

    fn check_with(&self, cfg: &ModelConfig, donor: Option<Donor>) -> Result<()> {
        self.check(cfg)?;
        if let Some(d) = donor {
            d.check(cfg)?;
        }
        Ok(())
    }

    /// Reads the folder's manifest and tensors and checks them against each other.
    pub fn open(dir: &Path) -> Result<TalkativeLens> {
        let mpath = dir.join(MANIFEST);
        std::fs::metadata(dir).map_err(|e| EngineError::io(dir, e))?;
        if !mpath.is_file() {
            return Err(EngineError::format(
                dir,
                format!(
                    "not a lensd talkative lens (no {MANIFEST}): convert a checkpoint of the \
                     original training code with tools/convert_talkative.py (docs/talkative.md)"
                ),
            ));
        }
        let text =
            lensd_core::files::read_to_string(&mpath).map_err(|e| EngineError::io(&mpath, e))?;
        let m: Manifest = serde_json::from_str(&text)
            .map_err(|e| EngineError::format(&mpath, format!("invalid manifest: {e}")))?;
        let bad = |msg: String| EngineError::format(&mpath, msg);
        if m.format != FORMAT {
            return Err(bad(format!(
                "`format` is `{}`, expected `{FORMAT}`",
                m.format
            )));
        }
        if m.version != 1 {
            return Err(EngineError::Unsupported {
                path: mpath.clone(),
                what: format!(
                    "talkative lens version {} (this lensd reads version 1)",
                    m.version
                ),
            });
        }
        if m.t_text == 0 || m.t_text > 256 {
            return Err(bad(format!(
                "`t_text` must be from 1 to 256, got {}",
                m.t_text
            )));
        }
        let p = m.decoder.patched_layers;
        if p == 0 {
            return Err(bad("`decoder.patched_layers` must be at least 1".into()));
        }
        let dtype = match m.dtype.as_str() {
            "f32" => DType::F32,
            "f16" => DType::F16,
            "bf16" => DType::BF16,
            other => {
                return Err(bad(format!(
                    "`dtype` is `{other}`; expected f32, f16 or bf16"
                )))
            }
        };

        let tpath = dir.join(TENSORS);
        let bytes = crate::weights::file::read_vec(&tpath, &mut |_, _| {})?;
        let hash = sha256_hex(&bytes);
        if hash != m.content_sha256.to_ascii_lowercase() {
            return Err(EngineError::format(
                &tpath,
                format!(
                    "content sha256 is {hash}, the manifest says {}: the file changed or is corrupt",
                    m.content_sha256
                ),
            ));
        }
        let mut t: HashMap<String, Tensor> =
            candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|e| {
                EngineError::format(&tpath, format!("invalid safetensors file: {e}"))
            })?;
        let d = m.base.d_model;
        let has_postfix = t.contains_key("encoder.soft_prompt_embeddings_postfix");
        let mut take = |name: &str, shape: &dyn Fn(&[usize]) -> bool, expected: Vec<usize>| {
            let x = t
                .remove(name)
                .ok_or_else(|| EngineError::format(&tpath, format!("missing tensor `{name}`")))?;
            if !shape(x.dims()) {
                return Err(EngineError::Shape {
                    path: tpath.clone(),
                    tensor: name.into(),
                    expected,
                    got: x.dims().to_vec(),
                });
            }
            if x.dtype() != dtype {
                return Err(EngineError::format(
                    &tpath,
                    format!(
                        "tensor `{name}` is {:?}, the manifest says {}",
                        x.dtype(),
                        m.dtype
                    ),
                ));
            }
            Ok(x.to_dtype(DType::F32)?)
        };
        let rows = |x: &[usize]| x.len() == 2 && x[1] == d;
        let proj_w = take("decoder.proj_weight", &|x| x == [p, d, d], vec![p, d, d])?;
        let proj_b = take("decoder.proj_bias", &|x| x == [p, d], vec![p, d])?;
        let left = take("decoder.prompt_left_emb", &rows, vec![0, d])?;
        let right = take("decoder.prompt_right_emb", &rows, vec![0, d])?;
        let enc_w = take("encoder.proj.weight", &|x| x == [d, d], vec![d, d])?;
        let enc_b = take("encoder.proj.bias", &|x| x == [d], vec![d])?;
        let prefix = take("encoder.soft_prompt_embeddings", &rows, vec![0, d])?;
        let special = take("encoder.special_last_token_vector", &|x| x == [d], vec![d])?;
        let postfix = if has_postfix {
            let x = take("encoder.soft_prompt_embeddings_postfix", &rows, vec![0, d])?;
            (x.dim(0)? > 0).then_some(x)
        } else {
            None
        };
        if let Some(extra) = t.keys().min() {
            return Err(EngineError::format(
                &tpath,
                format!("unexpected tensor `{extra}`: a talkative lens holds only the decoder and encoder tensors of docs/talkative.md"),
            ));
        }
        let proj_w_t = (0..p)
            .map(|i| proj_w.i(i)?.t()?.contiguous())
            .collect::<candle_core::Result<Vec<_>>>()?;
        let proj_b = (0..p)
            .map(|i| proj_b.i(i))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let memory = [&proj_w, &enc_w, &left, &right, &prefix]
            .iter()
            .map(|x| x.elem_count())
            .sum::<usize>()
            + postfix.as_ref().map_or(0, |x| x.elem_count())
            + (p + 2) * d;
        Ok(TalkativeLens {
            manifest: m,
            dir: dir.to_path_buf(),
            proj_w_t,
            proj_b,
            left,
            right,
            enc_w_t: enc_w.t()?.contiguous()?,
            enc_b,
            prefix,
            postfix,
            special,
            bytes: (memory * 4) as u64,
        })
    }

    /// The same lens with its tensors in `device`'s memory.
    pub fn to_device(&self, device: &Device) -> candle_core::Result<TalkativeLens> {
        let one = |t: &Tensor| t.to_device(device);
        let all = |v: &[Tensor]| v.iter().map(one).collect::<candle_core::Result<Vec<_>>>();
        Ok(TalkativeLens {
            manifest: self.manifest.clone(),
            dir: self.dir.clone(),
            proj_w_t: all(&self.proj_w_t)?,
            proj_b: all(&self.proj_b)?,
            left: one(&self.left)?,
            right: one(&self.right)?,
            enc_w_t: one(&self.enc_w_t)?,
            enc_b: one(&self.enc_b)?,
            prefix: one(&self.prefix)?,
            postfix: self.postfix.as_ref().map(one).transpose()?,
            special: one(&self.special)?,
            bytes: self.bytes,
        })
    }

    pub fn device(&self) -> &Device {
        self.left.device()
    }

    /// Bytes the lens's tensors take in memory (f32).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The lensd layer whose residual stream the lens reads (the output of block `layer`).
    pub fn tap(&self) -> usize {
        self.manifest.layer + 1
    }

    /// `proj_i(a)` for rows `a` `[R, d]`.
    fn project(&self, i: usize, a: &Tensor) -> candle_core::Result<Tensor> {
        a.matmul(&self.proj_w_t[i])?.broadcast_add(&self.proj_b[i])
    }

    /// Decodes one explanation per row of `acts` (`[R, d]`), `t_text` tokens each.
    fn decode(&self, model: &Model, acts: &Tensor, sampler: &mut Sampler) -> Result<Vec<Vec<u32>>> {
        let r = acts.dim(0)?;
        let (n_l, n_r) = (self.left.dim(0)?, self.right.dim(0)?);
        let m = n_l + 1 + n_r;
        let first = self.project(0, acts)?;
        // Soft prompts live in the embedding space, scaled like token embeddings (√d for
        // Gemma); the projected activations are residual-stream vectors and are not.
        let left = model.scale_embeddings(&self.left)?;
        let right = model.scale_embeddings(&self.right)?;
        let mut rows = Vec::with_capacity(3 * r);
        for s in 0..r {
            rows.push(left.clone());
            rows.push(first.narrow(0, s, 1)?);
            rows.push(right.clone());
        }
        let x = Tensor::cat(&rows, 0)?;
        let d = model.cfg.d_model;
        let place: Vec<u32> = (0..r)
            .flat_map(|s| std::iter::repeat_n((s * m + n_l) as u32, d))
            .collect();
        let place = Tensor::from_vec(place, (r, d), model.device())?;
        let patched = self.manifest.decoder.patched_layers;
        let patch = |block: usize, x: &Tensor| -> candle_core::Result<Option<Tensor>> {
            if block == 0 || block >= patched {
                return Ok(None);
            }
            Ok(Some(x.scatter(&place, &self.project(block, acts)?, 0)?))
        };
        let mut caches = vec![KvCache::default(); r];
        let lens = vec![m; r];
        let run = Run {
            patch: Some(&patch),
            ..Run::default()
        };
        let (h, _) = model.run_blocks(x, &lens, Some(&mut caches), 0..model.cfg.n_layers, run)?;
        let last: Vec<u32> = (0..r).map(|s| (s * m + m - 1) as u32).collect();
        let last = Tensor::from_vec(last, r, model.device())?;
        let mut logits = model.unembed(&model.final_norm(&h.index_select(&last, 0)?)?)?;
        let mut out = vec![Vec::with_capacity(self.manifest.t_text); r];
        for step in 0..self.manifest.t_text {
            let rows: Vec<Vec<f32>> = logits.to_dtype(DType::F32)?.to_vec2()?;
            let next: Vec<u32> = rows.iter().map(|l| sampler.sample(l)).collect();
            for (o, &t) in out.iter_mut().zip(&next) {
                o.push(t);
            }
            if step + 1 == self.manifest.t_text {
                break;
            }
            let x = model.embed(&next)?;
            let (h, _) = model.run_blocks(
                x,
                &vec![1; r],
                Some(&mut caches),
                0..model.cfg.n_layers,
                Run::default(),
            )?;
            logits = model.unembed(&model.final_norm(&h)?)?;
        }
        Ok(out)
    }

    /// The encoder's reconstructions `[R, d]` of explanations `expl` of tokens `current`.
    fn encode(&self, model: &Model, expl: &[Vec<u32>], current: &[u32]) -> Result<Tensor> {
        let mut rows = Vec::with_capacity(expl.len() * 4);
        let mut lens = Vec::with_capacity(expl.len());
        for (e, &tok) in expl.iter().zip(current) {
            // The whole sequence is in the embedding space (soft prompts, tokens and the
            // special vector alike) and takes the family's embedding scale at the end.
            let mut parts = vec![self.prefix.clone(), model.embed_unscaled(e)?];
            if let Some(p) = &self.postfix {
                parts.push(p.clone());
            }
            if self.manifest.add_current_token {
                parts.push(model.embed_unscaled(&[tok])?);
            }
            let seq = Tensor::cat(&parts, 0)?;
            let len = seq.dim(0)?;
            let special = Tensor::cat(
                &[
                    Tensor::zeros((len - 1, model.cfg.d_model), DType::F32, model.device())?,
                    self.special.unsqueeze(0)?,
                ],
                0,
            )?;
            rows.push(model.scale_embeddings(&(seq + special)?)?);
            lens.push(len);
        }
        let x = Tensor::cat(&rows, 0)?;
        let (h, _) = model.run_blocks(
            x,
            &lens,
            None,
            0..self.manifest.encoder.output_layer + 1,
            Run::default(),
        )?;
        let mut last = Vec::with_capacity(lens.len());
        let mut at = 0;
        for l in &lens {
            at += l;
            last.push((at - 1) as u32);
        }
        let last = Tensor::from_vec(last, lens.len(), model.device())?;
        Ok(h.index_select(&last, 0)?
            .matmul(&self.enc_w_t)?
            .broadcast_add(&self.enc_b)?)
    }

    /// Mean squared error per row between activations and reconstructions.
    fn mse(acts: &Tensor, rec: &Tensor) -> Result<Vec<f32>> {
        Ok((acts - rec)?.sqr()?.mean(D::Minus1)?.to_vec1()?)
    }

    /// Scores fixed explanations of `positions` (the encoder alone): `(mse, relative_rmse)`.
    pub fn score(
        &self,
        model: &Model,
        ids: &[u32],
        donor: Option<Donor>,
        positions: &[usize],
        explanations: &[Vec<u32>],
    ) -> Result<Vec<(f32, f32)>> {
        self.check_with(&model.cfg, donor)?;
        let (acts, _, _) = self.activations(Donor::resolve(donor, model), ids, false)?;
        let idx = Tensor::from_vec(
            positions.iter().map(|&p| p as u32).collect::<Vec<_>>(),
            positions.len(),
            model.device(),
        )?;
        let a = acts.index_select(&idx, 0)?;
        let current: Vec<u32> = positions.iter().map(|&p| ids[p]).collect();
        let rec = self.encode(model, explanations, &current)?;
        let mse = Self::mse(&a, &rec)?;
        let ms: Vec<f32> = a.sqr()?.mean(D::Minus1)?.to_vec1()?;
        Ok(mse
            .iter()
            .zip(&ms)
            .map(|(&e, &s)| (e, (e / s).sqrt()))
            .collect())
    }

    /// The activations `[s, d]` of the whole text in `model` with `adapter` (the donor), and
    /// (for KL) its final-normed states and cache.
    fn activations(
        &self,
        (model, adapter): (&Model, Option<&Adapter>),
        ids: &[u32],
        keep: bool,
    ) -> Result<(Tensor, Option<Tensor>, Option<KvCache>)> {
        if ids.is_empty() {
            return Err(EngineError::Input("the text has no tokens".into()));
        }
        let x = model.embed(ids)?;
        let taps = [self.tap()];
        let run = Run {
            taps: &taps,
            adapter,
            ..Run::default()
        };
        if !keep {
            let (_, tapped) = model.run_blocks(x, &[ids.len()], None, 0..self.tap(), run)?;
            return Ok((tapped[0].1.clone(), None, None));
        }
        let mut cache = [KvCache::default()];
        let (h, tapped) = model.run_blocks(
            x,
            &[ids.len()],
            Some(&mut cache),
            0..model.cfg.n_layers,
            run,
        )?;
        let [cache] = cache;
        Ok((
            tapped[0].1.clone(),
            Some(model.final_norm(&h)?),
            Some(cache),
        ))
    }

    /// Explains `positions` of `ids` (docs/talkative.md, "The algorithm"). `donor` gives the
    /// activations and the KL (a LoRA adapter on the base, or a full model). `space` is the id that replaces a token for salience.
    /// `progress` sees each finished sub-batch's rows and returns false to stop.
    #[allow(clippy::too_many_arguments)]
    pub fn explain(
        &self,
        model: &Model,
        ids: &[u32],
        positions: &[usize],
        donor: Option<Donor>,
        space: u32,
        opts: &ExplainOptions,
        progress: &mut dyn FnMut(&[ExplainedRow]) -> bool,
    ) -> Result<Vec<ExplainedRow>> {
        opts.validate()?;
        self.check_with(&model.cfg, donor)?;
        if let Some(&p) = positions.iter().find(|&&p| p >= ids.len()) {
            return Err(EngineError::Input(format!(
                "position {p} is outside the text's {} tokens",
                ids.len()
            )));
        }
        let acting = Donor::resolve(donor, model);
        let (acts, normed, cache) = self.activations(acting, ids, opts.kl)?;
        let mut sampler = Sampler::new(SamplingParams {
            temperature: opts.temperature,
            seed: opts.seed,
            ..SamplingParams::default()
        });
        let k = opts.best_of_k;
        let mut out = Vec::with_capacity(positions.len());
        for chunk in positions.chunks(opts.batch_positions) {
            let idx: Vec<u32> = chunk
                .iter()
                .flat_map(|&p| std::iter::repeat_n(p as u32, k))
                .collect();
            let idx = Tensor::from_vec(idx, chunk.len() * k, model.device())?;
            let a = acts.index_select(&idx, 0)?;
            // Every candidate of every position of the chunk, decoded and scored as one batch.
            let cands = self.decode(model, &a, &mut sampler)?;
            let current: Vec<u32> = chunk
                .iter()
                .flat_map(|&p| std::iter::repeat_n(ids[p], k))
                .collect();
            let mse = Self::mse(&a, &self.encode(model, &cands, &current)?)?;
            let mut rows = Vec::with_capacity(chunk.len());
            for (c, &p) in chunk.iter().enumerate() {
                let scores = &mse[c * k..(c + 1) * k];
                let mut best = 0;
                for (j, &e) in scores.iter().enumerate() {
                    if e < scores[best] {
                        best = j;
                    }
                }
                let act = acts.i(p)?;
                let ms: f32 = act.sqr()?.mean_all()?.to_scalar()?;
                let e = scores[best];
                rows.push(ExplainedRow {
                    position: p,
                    token: ids[p],
                    explanation_ids: cands[c * k + best].clone(),
                    mse: e,
                    relative_rmse: (e / ms).sqrt(),
                    token_salience: Vec::new(),
                    kl_divergence: None,
                });
            }
            if opts.salience {
                self.salience(model, &acts, space, &mut rows)?;
            }
            if let (Some(normed), Some(cache)) = (&normed, &cache) {
                self.kl(model, acting, normed, cache, &mut rows)?;
            }
            let go_on = progress(&rows);
            out.extend(rows);
            if !go_on {
                return Err(EngineError::Cancelled);
            }
        }
        Ok(out)
    }

    /// `token_salience` of each row's explanation: every token replaced by `space` in turn,
    /// all variants of the chunk scored as one batch.
    fn salience(
        &self,
        model: &Model,
        acts: &Tensor,
        space: u32,
        rows: &mut [ExplainedRow],
    ) -> Result<()> {
        let t = self.manifest.t_text;
        let mut variants = Vec::with_capacity(rows.len() * t);
        let mut current = Vec::with_capacity(rows.len() * t);
        let mut at = Vec::with_capacity(rows.len() * t);
        for r in rows.iter() {
            for j in 0..t {
                let mut e = r.explanation_ids.clone();
                e[j] = space;
                variants.push(e);
                current.push(r.token);
                at.push(r.position as u32);
            }
        }
        let n = at.len();
        let a = acts.index_select(&Tensor::from_vec(at, n, model.device())?, 0)?;
        let mse = Self::mse(&a, &self.encode(model, &variants, &current)?)?;
        for (r, m) in rows.iter_mut().zip(mse.chunks(t)) {
            let base = r.mse.max(1e-12);
            r.token_salience = m.iter().map(|&e| (e - r.mse) / base).collect();
        }
        Ok(())
    }

    /// `kl_divergence` of each row: the model's next-token distribution with the activation
    /// against the one with the reconstruction patched in at that position only.
    fn kl(
        &self,
        model: &Model,
        (acting, adapter): (&Model, Option<&Adapter>),
        normed: &Tensor,
        cache: &KvCache,
        rows: &mut [ExplainedRow],
    ) -> Result<()> {
        let after = self.tap()..model.cfg.n_layers;
        let explanations: Vec<Vec<u32>> = rows.iter().map(|r| r.explanation_ids.clone()).collect();
        let current: Vec<u32> = rows.iter().map(|r| r.token).collect();
        let rec = self.encode(model, &explanations, &current)?;
        let mut caches = rows
            .iter()
            .map(|r| cache.prefix(r.position, after.clone()))
            .collect::<Result<Vec<_>>>()?;
        // The continuation after the patched position runs in the donor, whose states the
        // lens explained; the reconstruction came from the base's encoder.
        let (h, _) = if after.is_empty() {
            (rec, Vec::new())
        } else {
            acting.run_blocks(
                rec,
                &vec![1; rows.len()],
                Some(&mut caches),
                after,
                Run {
                    adapter,
                    ..Run::default()
                },
            )?
        };
        let q = candle_nn::ops::log_softmax(&acting.unembed(&acting.final_norm(&h)?)?, D::Minus1)?;
        let at: Vec<u32> = rows.iter().map(|r| r.position as u32).collect();
        let n = at.len();
        let orig = normed.index_select(&Tensor::from_vec(at, n, model.device())?, 0)?;
        let p = candle_nn::ops::log_softmax(&acting.unembed(&orig)?, D::Minus1)?;
        let kl: Vec<f32> = (p.exp()? * (&p - &q)?)?.sum(D::Minus1)?.to_vec1()?;
        for (r, k) in rows.iter_mut().zip(kl) {
            r.kl_divergence = Some(k.max(0.0));
        }
        Ok(())
    }
}
