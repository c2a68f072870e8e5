//! Text generation with a KV cache: greedy or sampled (temperature, top-k, top-p) from a
//! seeded generator, stopping at end-of-sequence/end-of-turn tokens or a token limit.

use std::ops::ControlFlow;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::base::Base;
use crate::donor::Donor;
use crate::error::{EngineError, Result};
use crate::model::{KvCache, Logits};

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub max_tokens: usize,
    /// 0 means greedy (argmax).
    pub temperature: f32,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            max_tokens: 128,
            temperature: 0.0,
            top_k: None,
            top_p: None,
            seed: 0,
        }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<()> {
        if self.max_tokens == 0 {
            return Err(EngineError::Input("max_tokens must be at least 1".into()));
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(EngineError::Input(format!(
                "temperature must be a finite number >= 0, got {}",
                self.temperature
            )));
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(EngineError::Input(format!(
                    "top_p must be in (0, 1], got {p}"
                )));
            }
        }
        if self.top_k == Some(0) {
            return Err(EngineError::Input("top_k must be at least 1".into()));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// An end-of-sequence or end-of-turn token was generated.
    Stop,
    MaxTokens,
    /// The per-token callback asked to stop.
    Cancelled,
}

#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    /// Generated ids only, the stop token included when one ended the generation.
    pub ids: Vec<u32>,
    /// Text of the generated ids, without the stop token.
    pub text: String,
    pub stop: StopReason,
    pub prompt_tokens: usize,
    pub prefill_seconds: f64,
    pub decode_seconds: f64,
}

/// Picks the next token from `logits` (one row of the vocabulary).
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = StdRng::seed_from_u64(params.seed);
        Sampler { params, rng }
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        if p.temperature == 0.0 || p.top_k == Some(1) {
            return argmax(logits);
        }
        // Candidates sorted by descending logit; ties keep the lower id first.
        let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
        let k = p.top_k.unwrap_or(logits.len()).min(logits.len());
        let by_logit = |a: &u32, b: &u32| {
            logits[*b as usize]
                .total_cmp(&logits[*a as usize])
                .then(a.cmp(b))
        };
        if k < idx.len() {
            idx.select_nth_unstable_by(k - 1, by_logit);
            idx.truncate(k);
        }
        idx.sort_unstable_by(by_logit);
        let max = logits[idx[0] as usize];
        let mut probs: Vec<f64> = idx
            .iter()
            .map(|&i| (((logits[i as usize] - max) / p.temperature) as f64).exp())
            .collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= total);
        if let Some(top_p) = p.top_p {
            let mut cum = 0.0;
            let mut keep = probs.len();
            for (i, &x) in probs.iter().enumerate() {
                cum += x;
                if cum >= top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep);
            idx.truncate(keep);
        }
        let total: f64 = probs.iter().sum();
        let mut r = self.rng.random::<f64>() * total;
        for (&i, &x) in idx.iter().zip(&probs) {
            r -= x;
            if r <= 0.0 {
                return i;
            }
        }
        *idx.last().expect("at least one candidate")
    }
}

/// Index of the largest logit; the lowest index wins ties.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Generates a continuation of `prompt`. `on_token` sees each new id as it is chosen and may
/// stop the generation by returning `Break`.
pub fn generate(
    base: &Base,
    prompt: &[u32],
    params: &SamplingParams,
    on_token: &mut dyn FnMut(u32) -> ControlFlow<()>,
) -> Result<Generation> {
    generate_with(base, prompt, params, None, on_token)
}

/// [`generate`] from the donor of a talkative lens: the base with a LoRA adapter applied, or a
/// full donor model (the base's tokenizer reads and writes the text).
pub fn generate_with(
    base: &Base,
    prompt: &[u32],
    params: &SamplingParams,
    donor: Option<Donor>,
    on_token: &mut dyn FnMut(u32) -> ControlFlow<()>,
) -> Result<Generation> {
    params.validate()?;
    if let Some(d) = donor {
        d.check(base.config())?;
    }
    if prompt.is_empty() {
        return Err(EngineError::Input("the prompt is empty".into()));
    }
    let (model, adapter) = Donor::resolve(donor, &base.model);
    let mut cache = [KvCache::default()];
    let mut sampler = Sampler::new(params.clone());
    let t0 = std::time::Instant::now();
    let out = model.forward_with(&[prompt], Some(&mut cache), &[], Logits::Last, adapter)?;
    let mut logits = out
        .logits
        .expect("requested")
        .squeeze(0)?
        .to_vec1::<f32>()?;
    let prefill_seconds = t0.elapsed().as_secs_f64();
    let t1 = std::time::Instant::now();
    let mut ids = Vec::new();
    let mut stop = StopReason::MaxTokens;
    while ids.len() < params.max_tokens {
        let next = sampler.sample(&logits);
        ids.push(next);
        if base.tokenizer.stop_ids.contains(&next) {
            stop = StopReason::Stop;
            break;
        }
        if on_token(next).is_break() {
            stop = StopReason::Cancelled;
            break;
        }
        if ids.len() == params.max_tokens {
            break;
        }
        let out = model.forward_with(&[&[next]], Some(&mut cache), &[], Logits::Last, adapter)?;
        logits = out
            .logits
            .expect("requested")
            .squeeze(0)?
            .to_vec1::<f32>()?;
    }
    let text_ids = if stop == StopReason::Stop {
        &ids[..ids.len() - 1]
    } else {
        &ids[..]
    };
    Ok(Generation {
        text: base.tokenizer.decode(text_ids)?,
        ids,
        stop,
        prompt_tokens: prompt.len(),
        prefill_seconds,
        decode_seconds: t1.elapsed().as_secs_f64(),
    })
}

/// Turns a stream of ids into a stream of text pieces, holding back bytes that do not yet form
/// whole characters.
pub struct TextStream<'a> {
    base: &'a Base,
    ids: Vec<u32>,
    emitted: usize,
}

impl<'a> TextStream<'a> {
    pub fn new(base: &'a Base) -> Self {
        TextStream {
            base,
            ids: Vec::new(),
            emitted: 0,
        }
    }

    pub fn push(&mut self, id: u32) -> Option<String> {
        self.ids.push(id);
        let text = self.base.tokenizer.decode(&self.ids).ok()?;
        if text.ends_with('\u{FFFD}') || text.len() <= self.emitted {
            return None;
        }
        let piece = text.get(self.emitted..)?.to_string();
        self.emitted = text.len();
        Some(piece)
    }
}
