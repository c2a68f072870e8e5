//! `lensd bench`: prefill and decode speed of the base in both compute dtypes, and the speed of
//! a full logit-lens analysis, on one fixed text. `bench/run.sh` runs it beside llama.cpp.

use std::ops::ControlFlow;
use std::path::Path;
use std::time::Instant;

use anyhow::{ensure, Result};
use lensd_engine::generate::argmax;
use lensd_engine::lens::analyze::{analyze, AnalyzeOptions};
use lensd_engine::lens::Lens;
use lensd_engine::model::{KvCache, Logits};
use lensd_engine::{Base, ComputeDtype, LoadOptions};
use serde::Serialize;

/// Text the benchmark reads, repeated as needed.
const TEXT: &str = "A lighthouse keeper kept a logbook of every ship that passed the point. \
Most nights were quiet, but in the autumn storms the beam swept across the water every ten \
seconds and the keeper climbed the spiral stairs to trim the wick, wipe the glass and write down \
the wind, the swell and the names of the vessels that signalled back. Years later the logbooks \
were found in a trunk, and they told the history of the harbour better than any newspaper did.";

#[derive(Debug, Clone, Copy)]
pub struct BenchOptions {
    pub prompt_tokens: usize,
    pub decode_tokens: usize,
    pub lens_tokens: usize,
    pub reps: usize,
}

#[derive(Debug, Serialize)]
pub struct DtypeResult {
    pub dtype: &'static str,
    pub load_seconds: f64,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
    /// (layer, position) cells of a full logit-lens analysis per second, top-5 and statistics.
    pub lens_cells_per_s: f64,
    pub lens_cells: usize,
    pub weight_bytes_owned: u64,
    pub weight_bytes_mapped: u64,
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub threads: usize,
    pub prompt_tokens: usize,
    pub decode_tokens: usize,
    pub lens_tokens: usize,
    pub reps: usize,
    /// The token ids read (prompt and lens text are prefixes), so that peers can read the same.
    pub ids: Vec<u32>,
    pub results: Vec<DtypeResult>,
}

pub fn prompt_ids(base: &Base, n: usize) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    while ids.len() < n {
        ids.extend(base.tokenizer.encode(TEXT, false)?);
        ids.extend(base.tokenizer.encode(" ", false)?);
    }
    ids.truncate(n);
    Ok(ids)
}

fn best_of<T>(reps: usize, mut f: impl FnMut() -> Result<T>) -> Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// Seconds to decode `n` greedy tokens (end-of-turn ignored) after `prompt`, prefill excluded.
fn decode_seconds(base: &Base, prompt: &[u32], n: usize) -> Result<f64> {
    let m = &base.model;
    let mut cache = [KvCache::default()];
    let step = |ids: &[u32], cache: &mut [KvCache]| -> Result<u32> {
        let out = m.forward(&[ids], Some(cache), &[], Logits::Last)?;
        Ok(argmax(
            &out.logits
                .expect("requested")
                .squeeze(0)?
                .to_vec1::<f32>()?,
        ))
    };
    let mut next = step(prompt, &mut cache)?;
    let t = Instant::now();
    for _ in 0..n {
        next = step(&[next], &mut cache)?;
    }
    Ok(t.elapsed().as_secs_f64())
}

fn one_dtype(model: &Path, compute: ComputeDtype, o: &BenchOptions) -> Result<DtypeResult> {
    let t = Instant::now();
    let base = Base::load(model, LoadOptions { compute })?;
    let load_seconds = t.elapsed().as_secs_f64();
    let m = &base.model;
    let prompt = prompt_ids(&base, o.prompt_tokens)?;
    let prefill = best_of(o.reps, || {
        Ok(m.forward(&[&prompt], None, &[], Logits::Last)?)
    })?;
    let mut decode = f64::INFINITY;
    for _ in 0..o.reps {
        decode = decode.min(decode_seconds(&base, &prompt, o.decode_tokens)?);
    }
    let lens_ids = prompt_ids(&base, o.lens_tokens)?;
    let layers: Vec<usize> = (0..=m.cfg.n_layers).collect();
    let cells = layers.len() * lens_ids.len();
    let opts = AnalyzeOptions::new(layers, 5);
    let lens = best_of(o.reps, || {
        Ok(analyze(
            &base,
            &[&Lens::Logit],
            &lens_ids,
            &opts,
            &mut |_| ControlFlow::Continue(()),
        )?)
    })?;
    Ok(DtypeResult {
        dtype: match compute {
            ComputeDtype::Stored => "stored",
            ComputeDtype::F32 => "f32",
        },
        load_seconds,
        prefill_tokens_per_s: o.prompt_tokens as f64 / prefill,
        decode_tokens_per_s: o.decode_tokens as f64 / decode,
        lens_cells_per_s: cells as f64 / lens,
        lens_cells: cells,
        weight_bytes_owned: base.bytes().owned,
        weight_bytes_mapped: base.bytes().mapped,
    })
}

pub fn run(model: &Path, o: &BenchOptions) -> Result<BenchReport> {
    ensure!(
        o.reps > 0 && o.prompt_tokens > 0 && o.decode_tokens > 0 && o.lens_tokens > 0,
        "every count must be at least 1"
    );
    let results = vec![
        one_dtype(model, ComputeDtype::Stored, o)?,
        one_dtype(model, ComputeDtype::F32, o)?,
    ];
    let base = Base::load(model, LoadOptions::default())?;
    let ids = prompt_ids(&base, o.prompt_tokens.max(o.lens_tokens))?;
    Ok(BenchReport {
        model: model.display().to_string(),
        threads: lensd_engine::compute_threads(),
        prompt_tokens: o.prompt_tokens,
        decode_tokens: o.decode_tokens,
        lens_tokens: o.lens_tokens,
        reps: o.reps,
        ids,
        results,
    })
}
