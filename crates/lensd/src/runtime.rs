//! The real engine behind the scheduler's `Engine` trait, for computing on CPU: bases and
//! lenses loaded with `lensd_engine`, kept by content key, and freed back to the system.
//!
//! On CPU there is one device, `cpu`, whose memory is the host's RAM, so a loaded resource is
//! loaded once and the residency manager only relabels which budget it counts against;
//! `transfer` is never called, and the place named by `load` and `release` does not matter.
//!
//! A model's full donor (a fine-tune of its base) is loaded as a base like any other; a job
//! names it beside the base, and the talkative lens reads its activations and generates with
//! it while the lens's decoder and encoder run on the group's base.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use lensd_core::analysis::{Analysis, Explanation, RowsChunk, TokenInfo};
use lensd_core::engine::{
    BoxFuture, ComputeSink, DeviceInfo, Engine, EngineFailure, HeapUsage, MemoryProbe, Progress,
    Source,
};
use lensd_core::registry::{BaseKey, LensKey, ResourceKey};
use lensd_core::residency::{DeviceId, Place};
use lensd_core::work::{ComputeEvent, Job, JobFailure, JobOutput, Remaining};
use lensd_core::LensKind;
use lensd_engine::donor::Donor;
use lensd_engine::generate::{generate_with, SamplingParams, StopReason, TextStream};
use lensd_engine::lens::analyze::{analyze, AnalyzeOptions};
use lensd_engine::lens::talkative::{ExplainOptions, TalkativeLens};
use lensd_engine::lens::{Lens, TunedLens};
use lensd_engine::lora::Adapter;
use lensd_engine::{Base, LoadOptions};

/// Most tokens of the logit lens named beside an explanation, as the original named them.
const LOGIT_LENS_TOP: usize = 10;

/// A loaded lens: one that fills layers × positions, or a talkative lens with its donor.
pub enum Held {
    Cells(Lens),
    Talkative(Box<(TalkativeLens, Option<Adapter>)>),
}

#[derive(Default)]
struct Loaded {
    bases: HashMap<BaseKey, Arc<Base>>,
    lenses: HashMap<LensKey, Arc<Held>>,
    /// Bases loaded from disk since start.
    base_loads: usize,
}

/// Work for the compute thread.
type Task = Box<dyn FnOnce() + Send>;

#[derive(Clone)]
pub struct CpuEngine {
    loaded: Arc<Mutex<Loaded>>,
    /// The device's one compute thread: candle's thread pool spins while it waits, so two
    /// computations at once on a small machine are slower than one after the other.
    compute: std::sync::mpsc::Sender<Task>,
    /// Most tokens an analysed text or a prompt may have.
    max_input_tokens: Arc<std::sync::atomic::AtomicUsize>,
}

impl Default for CpuEngine {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuEngine {
    pub fn new() -> Self {
        let (compute, tasks) = std::sync::mpsc::channel::<Task>();
        std::thread::Builder::new()
            .name("lensd-compute".into())
            .spawn(move || {
                for task in tasks {
                    task();
                }
            })
            .expect("the compute thread starts");
        CpuEngine {
            loaded: Arc::default(),
            compute,
            max_input_tokens: Arc::new(std::sync::atomic::AtomicUsize::new(usize::MAX)),
        }
    }

    /// The devices this engine computes on: the CPU alone.
    pub fn device_list() -> Vec<DeviceInfo> {
        vec![DeviceInfo {
            id: DeviceId(0),
            name: "cpu".into(),
            total_bytes: None,
            free_bytes: None,
        }]
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Loaded> {
        self.loaded.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A loaded base, for the compute worker.
    pub fn base(&self, key: &BaseKey) -> Option<Arc<Base>> {
        self.lock().bases.get(key).cloned()
    }

    /// Refuses texts and prompts of more tokens than `n`.
    pub fn set_max_input_tokens(&self, n: usize) {
        self.max_input_tokens
            .store(n, std::sync::atomic::Ordering::Relaxed);
    }

    fn check_tokens(&self, n: usize) -> Result<(), JobFailure> {
        let max = self
            .max_input_tokens
            .load(std::sync::atomic::Ordering::Relaxed);
        if n > max {
            return Err(JobFailure::Limit(format!(
                "the text has {n} tokens; the limit is {max}"
            )));
        }
        Ok(())
    }

    /// How many bases were loaded from disk since start.
    pub fn base_loads(&self) -> usize {
        self.lock().base_loads
    }

    /// A loaded lens, for the compute worker.
    pub fn lens(&self, key: &LensKey) -> Option<Arc<Held>> {
        self.lock().lenses.get(key).cloned()
    }

    fn load_blocking(
        &self,
        key: ResourceKey,
        source: Source,
        progress: &mut Progress,
    ) -> Result<(), EngineFailure> {
        let fail = |e: lensd_engine::EngineError| EngineFailure(e.to_string());
        match (key, source) {
            (ResourceKey::Base(k), Source::Base(spec)) => {
                // Reading the files is most of a load: report its share of the base's bytes.
                let base = Base::load_with_progress(
                    &spec.path,
                    LoadOptions {
                        compute: spec.dtype,
                    },
                    &mut |done, total| {
                        let share = done as f64 / total.max(1) as f64;
                        progress((share * spec.bytes as f64) as u64, spec.bytes)
                    },
                )
                .map_err(fail)?;
                let mut loaded = self.lock();
                loaded.bases.insert(k, Arc::new(base));
                loaded.base_loads += 1;
            }
            (ResourceKey::Lens(k), Source::Lens(spec)) => {
                let lens = match spec.kind {
                    LensKind::Tuned => {
                        Held::Cells(Lens::Tuned(TunedLens::open(&spec.path).map_err(fail)?))
                    }
                    LensKind::Logit => Held::Cells(Lens::Logit),
                    LensKind::Talkative => Held::Talkative(Box::new((
                        TalkativeLens::open(&spec.path).map_err(fail)?,
                        spec.donor
                            .as_deref()
                            .map(Adapter::open)
                            .transpose()
                            .map_err(fail)?,
                    ))),
                };
                self.lock().lenses.insert(k, Arc::new(lens));
            }
            (key, _) => {
                return Err(EngineFailure(format!(
                    "{key}: the source is of another kind"
                )))
            }
        }
        // Loading reads files through temporary buffers; give them back.
        trim_heap();
        Ok(())
    }
}

impl Engine for CpuEngine {
    fn shared_memory(&self) -> bool {
        true
    }

    fn devices(&self) -> Vec<DeviceInfo> {
        Self::device_list()
    }

    fn load(
        &self,
        key: ResourceKey,
        source: Source,
        _place: Place,
        mut progress: Progress,
    ) -> BoxFuture<Result<(), EngineFailure>> {
        let me = self.clone();
        Box::pin(async move {
            let total = match &source {
                Source::Base(b) => b.bytes,
                Source::Lens(l) => l.bytes,
            };
            progress(0, total);
            // Loading dequantizes and reads files: blocking work, kept off the async runtime.
            let (result, mut progress) = tokio::task::spawn_blocking(move || {
                let result = me.load_blocking(key, source, &mut progress);
                (result, progress)
            })
            .await
            .map_err(|e| EngineFailure(format!("the load stopped: {e}")))?;
            if result.is_ok() {
                progress(total, total);
            }
            result
        })
    }

    fn transfer(
        &self,
        key: ResourceKey,
        from: Place,
        to: Place,
    ) -> BoxFuture<Result<(), EngineFailure>> {
        // Device and host are one memory here; the residency manager never asks for a copy.
        Box::pin(async move {
            Err(EngineFailure(format!(
                "{key}: no transfer from {from} to {to} on a CPU engine, whose tiers share one \
                 memory"
            )))
        })
    }

    fn run(
        &self,
        _device: DeviceId,
        job: Job,
        events: ComputeSink,
    ) -> BoxFuture<Result<JobOutput, JobFailure>> {
        let me = self.clone();
        self.on_compute_thread(move || me.run_blocking(job, events))
    }

    fn release(&self, key: &ResourceKey, _place: Place) {
        let dropped = {
            let mut loaded = self.lock();
            match key {
                ResourceKey::Base(k) => loaded.bases.remove(k).is_some(),
                ResourceKey::Lens(k) => loaded.lenses.remove(k).is_some(),
            }
        };
        if dropped {
            trim_heap();
        }
    }
}

impl CpuEngine {
    /// Runs `work` on the compute thread after the work before it. A panic fails this work
    /// alone; the thread goes on with the next.
    fn on_compute_thread<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, JobFailure> + Send + 'static,
    ) -> BoxFuture<Result<T, JobFailure>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent = self.compute.send(Box::new(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work))
                .unwrap_or_else(|payload| Err(JobFailure::from_panic(payload.as_ref())));
            let _ = tx.send(result);
        }));
        Box::pin(async move {
            if sent.is_err() {
                return Err(JobFailure::Engine("the compute thread has stopped".into()));
            }
            rx.await.unwrap_or_else(|_| {
                Err(JobFailure::Engine(
                    "the compute thread stopped mid-job".into(),
                ))
            })
        })
    }

    /// A loaded base (a group's or a full donor's), which the job's lease keeps.
    fn loaded_base(&self, key: &BaseKey) -> Result<Arc<Base>, JobFailure> {
        self.base(key).ok_or_else(|| {
            JobFailure::Engine(format!(
                "base {} is not loaded; the job ran without its lease",
                key.0
            ))
        })
    }

    /// Runs a job on the compute thread.
    fn run_blocking(&self, job: Job, mut events: ComputeSink) -> Result<JobOutput, JobFailure> {
        match job {
            Job::Analyze {
                base,
                lenses,
                text,
                layers,
                top_k,
                explain,
            } => {
                let base = self.loaded_base(&base)?;
                let mut held = Vec::with_capacity(lenses.len());
                let mut donors = Vec::with_capacity(lenses.len());
                for l in &lenses {
                    held.push(match &l.lens {
                        Some(k) => self.lens(k).ok_or_else(|| {
                            JobFailure::Engine(format!("lens {} is not loaded", k.0))
                        })?,
                        None => Arc::new(Held::Cells(Lens::Logit)),
                    });
                    donors.push(l.donor.as_ref().map(|d| self.loaded_base(d)).transpose()?);
                }
                let (rendered, special) = base.render(&text, false).map_err(failure)?;
                let ids = base
                    .tokenizer
                    .encode_prompt(&rendered, special)
                    .map_err(failure)?;
                self.check_tokens(ids.len())?;
                // Talkative lenses explain every position, or those of the last turns asked for.
                let first = match explain.last_messages {
                    Some(n) => base.last_turns_start(&text, &ids, n).map_err(failure)?,
                    None => 0,
                };
                let positions: Vec<usize> = (first..ids.len()).collect();
                let layers = layers
                    .resolve(base.config().n_layers)
                    .map_err(JobFailure::Invalid)?;
                let tokens: Vec<TokenInfo> = ids
                    .iter()
                    .map(|&id| TokenInfo {
                        id,
                        text: base.tokenizer.token_text(id),
                    })
                    .collect();
                if events(ComputeEvent::Tokens(tokens.clone())).is_break() {
                    return Err(JobFailure::Cancelled);
                }
                // Lenses that fill layers × positions share one forward pass; each talkative
                // lens then explains every position. Progress counts cells and explained
                // positions together; the time left is estimated per kind, since a position
                // costs far more than a cell.
                let cell_lenses: Vec<(usize, &Lens)> = held
                    .iter()
                    .enumerate()
                    .filter_map(|(i, h)| match h.as_ref() {
                        Held::Cells(l) => Some((i, l)),
                        Held::Talkative(..) => None,
                    })
                    .collect();
                let talkative = held.len() - cell_lenses.len();
                let cells_total = (cell_lenses.len() * layers.len() * ids.len()) as u64;
                let total = cells_total + (talkative * positions.len()) as u64;
                let mut analyses: Vec<Option<Analysis>> = vec![None; held.len()];
                let positions_total = (talkative * positions.len()) as u64;
                if !cell_lenses.is_empty() {
                    let refs: Vec<&Lens> = cell_lenses.iter().map(|(_, l)| *l).collect();
                    let opts = AnalyzeOptions::new(layers, top_k);
                    let found = analyze(&base, &refs, &ids, &opts, &mut |p| {
                        let mut chunk = p.chunk.clone();
                        chunk.lens = cell_lenses[chunk.lens].0;
                        // Cells cost alike; explanations still to come have no rate yet.
                        let remaining = if positions_total > 0 {
                            Remaining::Unknown
                        } else {
                            Remaining::AtRate
                        };
                        events(ComputeEvent::Rows {
                            chunk,
                            done: p.rows_done as u64,
                            total,
                            remaining,
                        })
                    })
                    .map_err(failure)?;
                    for ((i, _), a) in cell_lenses.iter().zip(found) {
                        analyses[*i] = Some(a);
                    }
                }
                let mut done = cells_total;
                let mut explained = 0u64;
                let explaining = std::time::Instant::now();
                let space = base.space_id().map_err(failure)?;
                let opts = ExplainOptions {
                    best_of_k: explain.best_of_k,
                    temperature: explain.temperature,
                    seed: explain.seed,
                    salience: explain.salience,
                    kl: explain.kl,
                    batch_positions: explain
                        .batch_positions
                        .unwrap_or(32 / explain.best_of_k)
                        .max(1),
                };
                for (i, h) in held.iter().enumerate() {
                    let Held::Talkative(talkative) = h.as_ref() else {
                        continue;
                    };
                    let (lens, adapter) = talkative.as_ref();
                    let donor = donor_of(donors[i].as_deref(), adapter.as_ref());
                    // The logit lens's top tokens at the lens's layer, per position.
                    let logit_tops: Vec<Vec<String>> = if explain.logit_lens_top {
                        let opts = AnalyzeOptions::new(vec![lens.tap()], LOGIT_LENS_TOP);
                        let found = analyze(&base, &[&Lens::Logit], &ids, &opts, &mut |_| {
                            std::ops::ControlFlow::Continue(())
                        })
                        .map_err(failure)?;
                        found
                            .into_iter()
                            .next()
                            .and_then(|a| a.layers.into_iter().next())
                            .map(|row| {
                                row.positions
                                    .into_iter()
                                    .map(|c| c.top.into_iter().map(|t| t.token).collect())
                                    .collect()
                            })
                            .unwrap_or_default()
                    } else {
                        Vec::new()
                    };
                    let mut explanations = Vec::with_capacity(positions.len());
                    lens.explain(
                        &base.model,
                        &ids,
                        &positions,
                        donor,
                        space,
                        &opts,
                        &mut |rows| {
                            let named: Vec<Explanation> = base
                                .describe(lens, rows.to_vec())
                                .into_iter()
                                .map(|e| {
                                    let mut e = Explanation::from(e);
                                    // As many tokens as the explanation has, at most ten.
                                    let n = e.explanation_ids.len().clamp(1, LOGIT_LENS_TOP);
                                    e.logit_lens_top = logit_tops.get(e.position).map(|top| {
                                        top.iter().take(n).cloned().collect::<Vec<_>>().join(" ")
                                    });
                                    e
                                })
                                .collect();
                            done += rows.len() as u64;
                            explained += rows.len() as u64;
                            // Positions so far tell the rate of those left.
                            let per = explaining.elapsed().as_secs_f64() / explained as f64;
                            let left = (positions_total - explained) as f64 * per * 1e3;
                            let chunk = RowsChunk {
                                lens: i,
                                first_position: rows.first().map_or(0, |r| r.position),
                                layers: Vec::new(),
                                explanations: named.clone(),
                            };
                            explanations.extend(named);
                            events(ComputeEvent::Rows {
                                chunk,
                                done,
                                total,
                                remaining: Remaining::Ms(left as u64),
                            })
                            .is_continue()
                        },
                    )
                    .map_err(failure)?;
                    analyses[i] = Some(Analysis {
                        lens: String::new(),
                        tokens: tokens.clone(),
                        layers: Vec::new(),
                        explanations,
                    });
                }
                // Results name the models the request named.
                let analyses = analyses
                    .into_iter()
                    .zip(&lenses)
                    .map(|(a, l)| {
                        let mut a = a.expect("every lens ran");
                        a.lens = l.model.clone();
                        a
                    })
                    .collect();
                Ok(JobOutput::Analysis { analyses })
            }
            Job::Generate {
                base,
                lens,
                donor,
                prompt,
                sampling,
            } => {
                let base = self.loaded_base(&base)?;
                // A talkative lens's donor generates: the model the lens explains.
                let held = match &lens {
                    Some(k) => Some(self.lens(k).ok_or_else(|| {
                        JobFailure::Engine(format!("lens {} is not loaded", k.0))
                    })?),
                    None => None,
                };
                let full = donor.as_ref().map(|d| self.loaded_base(d)).transpose()?;
                let adapter = held.as_deref().and_then(|h| match h {
                    Held::Talkative(t) => t.1.as_ref(),
                    Held::Cells(_) => None,
                });
                let donor = donor_of(full.as_deref(), adapter);
                let (prompt, special) = base.render(&prompt, true).map_err(failure)?;
                let ids = base
                    .tokenizer
                    .encode_prompt(&prompt, special)
                    .map_err(failure)?;
                self.check_tokens(ids.len())?;
                let params = SamplingParams {
                    max_tokens: sampling.max_tokens,
                    temperature: sampling.temperature,
                    top_k: sampling.top_k,
                    top_p: sampling.top_p,
                    seed: sampling.seed,
                };
                let mut stream = TextStream::new(&base);
                let mut done = 0u64;
                let total = sampling.max_tokens as u64;
                let g = generate_with(&base, &ids, &params, donor, &mut |id| {
                    done += 1;
                    let text = stream.push(id).unwrap_or_default();
                    events(ComputeEvent::Token {
                        id,
                        text,
                        done,
                        total,
                    })
                })
                .map_err(failure)?;
                if g.stop == StopReason::Cancelled {
                    return Err(JobFailure::Cancelled);
                }
                let stop = match g.stop {
                    StopReason::Stop => "stop",
                    StopReason::MaxTokens => "max_tokens",
                    StopReason::Cancelled => "cancelled",
                };
                Ok(JobOutput::Generation {
                    prompt,
                    ids: g.ids,
                    text: g.text,
                    stop: stop.into(),
                })
            }
        }
    }
}

/// A model's donor: its full donor model when it has one, else its lens's LoRA adapter.
fn donor_of<'a>(full: Option<&'a Base>, adapter: Option<&'a Adapter>) -> Option<Donor<'a>> {
    match (full, adapter) {
        (Some(b), _) => Some(Donor::Model(&b.model)),
        (None, a) => a.map(Donor::Adapter),
    }
}

fn failure(e: lensd_engine::EngineError) -> JobFailure {
    match e {
        lensd_engine::EngineError::Cancelled => JobFailure::Cancelled,
        lensd_engine::EngineError::Input(m) => JobFailure::Invalid(m),
        other => JobFailure::Engine(other.to_string()),
    }
}

/// Returns freed heap memory to the operating system. glibc keeps freed blocks in its arenas,
/// so without this an unloaded base would stay in the process's resident memory.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Blocks of 1 MiB and more (activations, logits, tensors) are mapped on their own and
/// unmapped when freed. glibc by default raises that threshold, up to 32 MiB, each time such a
/// block is freed; blocks under it then come from arenas that keep them once freed, and under
/// a long mixed load the freed bytes they keep grow with nothing leaked
/// (`docs/reliability.md`). A threshold set in `GLIBC_TUNABLES` is left as it is.
pub fn map_large_blocks() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if !std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("mmap_threshold")) {
        // SAFETY: mallopt sets one of the allocator's parameters under its own lock.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        }
    }
}

/// Resident memory from `/proc/self/statm`.
pub struct ProcMemory;

impl MemoryProbe for ProcMemory {
    fn resident_bytes(&self) -> Option<u64> {
        resident_bytes()
    }

    fn heap(&self) -> Option<HeapUsage> {
        heap_usage()
    }
}

/// glibc's count over all its arenas: blocks in use (from the arenas and mapped on their own)
/// and free blocks it keeps. `None` on other C libraries.
pub fn heap_usage() -> Option<HeapUsage> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 reads the allocator's statistics under its own locks.
        let m = unsafe { libc::mallinfo2() };
        Some(HeapUsage {
            in_use_bytes: (m.uordblks + m.hblkhd) as u64,
            free_bytes: m.fordblks as u64,
        })
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
}

pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string(Path::new("/proc/self/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * page.max(4096) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_on_the_compute_thread_fails_that_work_alone() {
        let engine = CpuEngine::new();
        let failed = engine
            .on_compute_thread(|| -> Result<(), JobFailure> { panic!("a bug in a kernel") })
            .await;
        match failed {
            Err(JobFailure::Internal(m)) => assert!(m.contains("a bug in a kernel"), "{m}"),
            other => panic!("expected an internal failure, got {other:?}"),
        }
        // The thread is still there, and runs what comes next.
        assert_eq!(engine.on_compute_thread(|| Ok(7)).await, Ok(7));
    }
}
