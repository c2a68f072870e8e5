//! `lensd bench`: prefill and decode speed of the base in both compute dtypes, and the speed of
//! full logit-lens and tuned-lens analyses, on one fixed text. `bench/run.sh` runs it beside
//! llama.cpp and the tuned-lens package. Every figure is the median of `reps` runs.

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use lensd_engine::generate::argmax;
use lensd_engine::lens::analyze::{analyze, AnalyzeOptions, Unembed};
use lensd_engine::lens::tuned::TunedLens;
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
    /// The unembedding of `--only analysis` (the full run times f32 and, where the CPU has
    /// AVX-512 BF16, bf16 as well).
    pub unembed: Unembed,
}

/// Timings of repeated runs, in seconds.
#[derive(Debug, Clone, Serialize)]
pub struct Timings {
    pub seconds: Vec<f64>,
    pub median_seconds: f64,
    /// For a mixture of experts: the fraction of the timed runs spent in the experts (the
    /// router included).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expert_share: Option<f64>,
}

impl Timings {
    fn new(seconds: Vec<f64>) -> Timings {
        Timings {
            median_seconds: median(&seconds),
            seconds,
            expert_share: None,
        }
    }
}

/// Seconds the model has spent in its experts so far.
fn expert_seconds(base: &Base) -> f64 {
    base.model.counters.expert_nanos.load(Ordering::Relaxed) as f64 / 1e9
}

/// The median of measurements (the mean of the middle two for an even count).
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[derive(Debug, Serialize)]
pub struct DtypeResult {
    pub dtype: &'static str,
    pub load_seconds: f64,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
    pub prefill: Timings,
    pub decode: Timings,
    /// The greedy tokens decoded after the prompt, for peers to check.
    pub decode_ids: Vec<u32>,
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
    /// The level of lensd's quantized-block kernels this CPU runs (`avx512vnni`, `avx2`,
    /// `portable`).
    pub cpu_kernels: &'static str,
    /// The physical limit: f32 multiply-adds a second on `threads` threads doing nothing else
    /// (a micro-benchmark of independent fused multiply-adds, measured in this run).
    pub fma_peak_macs_per_s: f64,
    /// The same for bf16 multiply-adds (`VDPBF16PS`), where the CPU has AVX-512 BF16.
    pub bf16_peak_macs_per_s: Option<f64>,
    /// Multiply-adds of one prefill (last position's logits) and of one logit-lens analysis
    /// (every layer × position unembedded), from the model's shapes.
    pub prefill_macs: f64,
    pub analysis_macs: f64,
    pub prompt_tokens: usize,
    pub decode_tokens: usize,
    pub lens_tokens: usize,
    pub reps: usize,
    /// The token ids read (prompt and lens text are prefixes), so that peers can read the same.
    pub ids: Vec<u32>,
    pub results: Vec<DtypeResult>,
    /// Full analyses in f32 (the dtype analyses run in), with their top-1 grids so that a peer
    /// can check it computed the same.
    pub analysis: LensAnalysis,
    /// The same analyses with the unembedding in bf16, where the CPU has AVX-512 BF16.
    pub analysis_bf16: Option<LensAnalysis>,
}

#[derive(Debug, Serialize)]
pub struct LensAnalysis {
    pub dtype: &'static str,
    /// What the unembedding multiplied in: `f32` or `bf16` (f32 accumulation).
    pub unembed: &'static str,
    pub tokens: usize,
    pub layers: Vec<usize>,
    pub top_k: usize,
    pub reps: usize,
    pub lenses: Vec<LensRun>,
}

/// One lens read at every layer and position: forward pass, lens, top-k and statistics.
#[derive(Debug, Serialize)]
pub struct LensRun {
    pub lens: &'static str,
    #[serde(flatten)]
    pub timings: Timings,
    pub tokens_per_s: f64,
    pub cells_per_s: f64,
    /// Layers × positions.
    pub top1: Vec<Vec<u32>>,
    pub top1_prob: Vec<Vec<f32>>,
    pub entropy: Vec<Vec<f32>>,
}

/// The first `n` ids of [`TEXT`] repeated, as one sequence: BOS first when the model asks for
/// one (Gemma does, and its outputs without it are not the model's), and only there.
pub fn prompt_ids(base: &Base, n: usize) -> Result<Vec<u32>> {
    let mut ids = base.tokenizer.encode_prompt(TEXT, false)?;
    ids.extend(base.tokenizer.encode(" ", false)?);
    while ids.len() < n {
        ids.extend(base.tokenizer.encode(TEXT, false)?);
        ids.extend(base.tokenizer.encode(" ", false)?);
    }
    ids.truncate(n);
    Ok(ids)
}

/// Like [`timed`] for runs that time themselves.
fn timed_with(reps: usize, mut f: impl FnMut() -> Result<f64>) -> Result<Timings> {
    Ok(Timings::new((0..reps).map(|_| f()).collect::<Result<_>>()?))
}

fn timed<T>(reps: usize, mut f: impl FnMut() -> Result<T>) -> Result<Timings> {
    let mut seconds = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        seconds.push(t.elapsed().as_secs_f64());
    }
    Ok(Timings::new(seconds))
}

/// A timed greedy decode.
struct Decoded {
    seconds: f64,
    /// Of those, the seconds spent in the experts of a mixture of experts.
    expert_seconds: f64,
    ids: Vec<u32>,
}

/// Seconds to decode `n` greedy tokens (end-of-turn ignored) after `prompt`, prefill excluded,
/// and the tokens.
fn decode(base: &Base, prompt: &[u32], n: usize) -> Result<Decoded> {
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
    let mut ids = Vec::with_capacity(n);
    let e0 = expert_seconds(base);
    let t = Instant::now();
    for _ in 0..n {
        ids.push(next);
        next = step(&[next], &mut cache)?;
    }
    Ok(Decoded {
        seconds: t.elapsed().as_secs_f64(),
        expert_seconds: expert_seconds(base) - e0,
        ids,
    })
}

fn one_dtype(model: &Path, compute: ComputeDtype, o: &BenchOptions) -> Result<DtypeResult> {
    let t = Instant::now();
    let base = Base::load(model, LoadOptions { compute })?;
    let load_seconds = t.elapsed().as_secs_f64();
    let m = &base.model;
    let prompt = prompt_ids(&base, o.prompt_tokens)?;
    let prefill = timed(o.reps, || {
        Ok(m.forward(&[&prompt], None, &[], Logits::Last)?)
    })?;
    let mut decode_ids = Vec::new();
    let decode = timed_with(o.reps, || {
        let run = decode(&base, &prompt, o.decode_tokens)?;
        decode_ids = run.ids;
        Ok(run.seconds)
    })?;
    let logit = lens_run(&base, "logit", &Lens::Logit, Unembed::F32, o)?;
    Ok(DtypeResult {
        dtype: compute.as_str(),
        load_seconds,
        prefill_tokens_per_s: o.prompt_tokens as f64 / prefill.median_seconds,
        decode_tokens_per_s: o.decode_tokens as f64 / decode.median_seconds,
        prefill,
        decode,
        decode_ids,
        lens_cells_per_s: logit.cells_per_s,
        lens_cells: logit.top1.len() * o.lens_tokens,
        weight_bytes_owned: base.bytes().owned,
        weight_bytes_mapped: base.bytes().mapped,
    })
}

const TOP_K: usize = 5;

/// Times a full analysis of the lens text through one lens at every layer, and keeps the
/// top-1 grid of the last run.
fn lens_run(
    base: &Base,
    name: &'static str,
    lens: &Lens,
    unembed: Unembed,
    o: &BenchOptions,
) -> Result<LensRun> {
    let ids = prompt_ids(base, o.lens_tokens)?;
    let layers: Vec<usize> = (0..=base.model.cfg.n_layers).collect();
    let cells = layers.len() * ids.len();
    let opts = AnalyzeOptions {
        unembed,
        ..AnalyzeOptions::new(layers, TOP_K)
    };
    let mut last = None;
    let timings = timed(o.reps, || {
        let out = analyze(base, &[lens], &ids, &opts, &mut |_| {
            ControlFlow::Continue(())
        })?;
        last = out.into_iter().next();
        Ok(())
    })?;
    let analysis = last.context("the analysis returned nothing")?;
    let grid = |f: &dyn Fn(&lensd_core::analysis::Cell) -> f32| -> Vec<Vec<f32>> {
        analysis
            .layers
            .iter()
            .map(|row| row.positions.iter().map(f).collect())
            .collect()
    };
    Ok(LensRun {
        lens: name,
        tokens_per_s: ids.len() as f64 / timings.median_seconds,
        cells_per_s: cells as f64 / timings.median_seconds,
        timings,
        top1: analysis
            .layers
            .iter()
            .map(|row| row.positions.iter().map(|c| c.top[0].id).collect())
            .collect(),
        top1_prob: grid(&|c| c.top[0].prob),
        entropy: grid(&|c| c.entropy),
    })
}

/// Full analyses through the logit lens and, when given, a tuned lens, in f32 with the
/// unembedding in f32 and, where the CPU multiplies bf16 in hardware, in bf16.
fn analyses(
    model: &Path,
    tuned: Option<&Path>,
    o: &BenchOptions,
) -> Result<(LensAnalysis, Option<LensAnalysis>)> {
    let base = Base::load(
        model,
        LoadOptions {
            compute: ComputeDtype::F32,
        },
    )?;
    let mut lenses = vec![("logit", Lens::Logit)];
    if let Some(dir) = tuned {
        let lens = TunedLens::load(dir, &base.model.cfg)
            .with_context(|| format!("cannot load the tuned lens {}", dir.display()))?;
        lenses.push(("tuned", Lens::Tuned(lens)));
    }
    let run = |unembed: Unembed| -> Result<LensAnalysis> {
        Ok(LensAnalysis {
            dtype: "f32",
            unembed: unembed.name(),
            tokens: o.lens_tokens,
            layers: (0..=base.model.cfg.n_layers).collect(),
            top_k: TOP_K,
            reps: o.reps,
            lenses: lenses
                .iter()
                .map(|(name, lens)| lens_run(&base, name, lens, unembed, o))
                .collect::<Result<_>>()?,
        })
    };
    let bf16 = match Unembed::Bf16.effective() {
        Unembed::Bf16 => Some(run(Unembed::Bf16)?),
        Unembed::F32 => None,
    };
    Ok((run(Unembed::F32)?, bf16))
}

pub fn run(model: &Path, tuned: Option<&Path>, o: &BenchOptions) -> Result<BenchReport> {
    ensure!(
        o.reps > 0 && o.prompt_tokens > 0 && o.decode_tokens > 0 && o.lens_tokens > 0,
        "every count must be at least 1"
    );
    // The peaks are measured before and after the timed work, and the larger kept: a core
    // taken by something else for a moment halved one measurement of a run.
    let threads = lensd_engine::compute_threads();
    let peaks = || {
        (
            lensd_engine::fma_peak_macs_per_s(threads),
            lensd_engine::bf16_peak_macs_per_s(threads),
        )
    };
    let before = peaks();
    let results = vec![
        one_dtype(model, ComputeDtype::Stored, o)?,
        one_dtype(model, ComputeDtype::F32, o)?,
    ];
    let (analysis, analysis_bf16) = analyses(model, tuned, o)?;
    let base = Base::load(model, LoadOptions::default())?;
    let cfg = &base.model.cfg;
    let after = peaks();
    let fma_peak_macs_per_s = before.0.max(after.0);
    let bf16_peak_macs_per_s = before.1.into_iter().chain(after.1).reduce(f64::max);
    let ids = prompt_ids(&base, o.prompt_tokens.max(o.lens_tokens))?;
    Ok(BenchReport {
        model: model.display().to_string(),
        threads,
        cpu_kernels: lensd_engine::cpu_kernels(),
        fma_peak_macs_per_s,
        bf16_peak_macs_per_s,
        prefill_macs: forward_macs(cfg, o.prompt_tokens, 1),
        analysis_macs: forward_macs(cfg, o.lens_tokens, (cfg.n_layers + 1) * o.lens_tokens),
        prompt_tokens: o.prompt_tokens,
        decode_tokens: o.decode_tokens,
        lens_tokens: o.lens_tokens,
        reps: o.reps,
        ids,
        results,
        analysis,
        analysis_bf16,
    })
}

/// Multiply-adds of a forward pass over `tokens` positions from an empty cache with `logit_rows`
/// rows unembedded: every block's matrices for every position (a dense MLP; a mixture of
/// experts counts its chosen experts), causal attention, and the unembedding.
pub fn forward_macs(cfg: &lensd_engine::ModelConfig, tokens: usize, logit_rows: usize) -> f64 {
    let (d, hd) = (cfg.d_model as f64, cfg.head_dim as f64);
    let (q, kv) = (cfg.n_heads as f64 * hd, cfg.n_kv_heads as f64 * hd);
    let experts = cfg.moe.as_ref().map_or(1.0, |m| m.top_k as f64);
    let per_token = d * q + 2.0 * d * kv + q * d + experts * 3.0 * d * cfg.d_ff as f64;
    let t = tokens as f64;
    // Scores and weighted values: each position attends to itself and those before it.
    let attention = cfg.n_heads as f64 * hd * t * (t + 1.0);
    cfg.n_layers as f64 * (t * per_token + attention)
        + logit_rows as f64 * d * cfg.vocab_size as f64
}

/// One part of the benchmark, run alone (for a profiler).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    Prefill,
    Decode,
    Analysis,
}

/// Runs one part `reps` times in one compute dtype and returns its timings.
pub fn part(model: &Path, part: Part, compute: ComputeDtype, o: &BenchOptions) -> Result<Timings> {
    let base = Base::load(model, LoadOptions { compute })?;
    let prompt = prompt_ids(&base, o.prompt_tokens)?;
    // Expert time inside the timed parts (decoding times itself after its prefill).
    let mut in_experts = 0.0;
    let mut t = match part {
        Part::Prefill => timed(o.reps, || {
            let e0 = expert_seconds(&base);
            let out = base.model.forward(&[&prompt], None, &[], Logits::Last)?;
            in_experts += expert_seconds(&base) - e0;
            Ok(out)
        })?,
        Part::Decode => timed_with(o.reps, || {
            let run = decode(&base, &prompt, o.decode_tokens)?;
            in_experts += run.expert_seconds;
            Ok(run.seconds)
        })?,
        Part::Analysis => {
            let e0 = expert_seconds(&base);
            let t = lens_run(&base, "logit", &Lens::Logit, o.unembed, o)?.timings;
            in_experts += expert_seconds(&base) - e0;
            t
        }
    };
    if base.config().moe.is_some() {
        t.expert_share = Some(in_experts / t.seconds.iter().sum::<f64>());
    }
    Ok(t)
}
