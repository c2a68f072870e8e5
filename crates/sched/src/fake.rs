//! An engine that holds no weights: loads and transfers take a configurable (tokio) time,
//! chosen files or devices fail, a device can be lost, and every call is logged with the place
//! it concerns, so that scheduler and server tests read as stories and run under paused time.
//!
//! [`FakeEngine::new`] has one device, named `device` like the tier; [`FakeEngine::with_devices`]
//! has several separate ones, `cuda:0`, `cuda:1`, ..., each with its own memory.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lensd_core::analysis::{Analysis, Cell, LayerRow, RowsChunk, TokenInfo, TopToken};
use lensd_core::engine::{
    BoxFuture, ComputeSink, DeviceInfo, DriverMemory, Engine, EngineFailure, Progress, Source,
};
use lensd_core::registry::{BaseKey, ResourceKey};
use lensd_core::residency::{DeviceId, Place};
use lensd_core::work::{ComputeEvent, Job, JobFailure, JobOutput, Prompt, Remaining};

/// Layers the fake's models have (0..=FAKE_LAYERS).
pub const FAKE_LAYERS: usize = 4;

#[derive(Default)]
struct Inner {
    load_latency: Duration,
    transfer_latency: Duration,
    /// Time per analysis row (one layer at one position for one lens).
    row_cost: Duration,
    /// Time per generated token.
    token_cost: Duration,
    /// Positions per analysis sub-batch; 0 means 4.
    chunk_positions: usize,
    /// What analysis rows say of the time left.
    remaining: Remaining,
    running: usize,
    max_running: usize,
    /// Jobs running on each device now, and the most ever at once on one device.
    running_on: BTreeMap<DeviceId, usize>,
    max_running_on_one: usize,
    failing: BTreeSet<String>,
    /// Devices whose loads and incoming copies fail (as when out of memory).
    failing_devices: BTreeSet<DeviceId>,
    /// Devices lost, with why: everything on them fails from then on.
    lost: BTreeMap<DeviceId, String>,
    /// Loads of files whose path contains one of these panic, once each.
    panicking: BTreeSet<String>,
    /// What the next job does after so many sub-batches.
    job_fault: Option<(JobFault, usize)>,
    log: Vec<String>,
    held: BTreeSet<(ResourceKey, Place)>,
    /// Copies that running jobs read, with how many jobs read each.
    in_use: BTreeMap<(ResourceKey, Place), usize>,
    /// Copies freed while a job read them: a lease was broken.
    violations: Vec<String>,
    /// Bytes of every resource loaded so far, for the driver's count.
    sizes: BTreeMap<ResourceKey, u64>,
}

/// A fault the next job meets part-way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobFault {
    /// The engine returns an error, as a failing device would.
    Fail,
    /// The engine panics, as a bug would.
    Panic,
}

#[derive(Clone)]
pub struct FakeEngine {
    shared_memory: bool,
    devices: Arc<Vec<DeviceInfo>>,
    inner: Arc<Mutex<Inner>>,
}

impl FakeEngine {
    /// One device, named `device`. `shared_memory`: a CPU-like engine where device and host
    /// are one memory.
    pub fn new(shared_memory: bool) -> Self {
        let device = DeviceInfo {
            id: DeviceId(0),
            name: "device".into(),
            total_bytes: None,
            free_bytes: None,
        };
        FakeEngine {
            shared_memory,
            devices: Arc::new(vec![device]),
            inner: Arc::default(),
        }
    }

    /// `n` separate devices `cuda:0` ... of `bytes` each, all free, as a GPU machine has.
    pub fn with_devices(n: u16, bytes: u64) -> Self {
        let devices = (0..n)
            .map(|i| DeviceInfo {
                id: DeviceId(i),
                name: format!("cuda:{i}"),
                total_bytes: Some(bytes),
                free_bytes: Some(bytes),
            })
            .collect();
        FakeEngine {
            shared_memory: false,
            devices: Arc::new(devices),
            inner: Arc::default(),
        }
    }

    fn name(&self, place: Place) -> String {
        match place {
            Place::Host => "host".into(),
            Place::Device(d) => self
                .devices
                .iter()
                .find(|i| i.id == d)
                .map_or_else(|| d.to_string(), |i| i.name.clone()),
        }
    }

    /// The device's name when there are several, for the log of jobs.
    fn on(&self, device: DeviceId) -> String {
        if self.devices.len() > 1 {
            format!(" on {}", self.name(Place::Device(device)))
        } else {
            String::new()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_load_latency(&self, d: Duration) {
        self.lock().load_latency = d;
    }

    pub fn set_transfer_latency(&self, d: Duration) {
        self.lock().transfer_latency = d;
    }

    /// Costs of compute: per analysis row and per generated token.
    pub fn set_compute_costs(&self, row: Duration, token: Duration) {
        let mut inner = self.lock();
        inner.row_cost = row;
        inner.token_cost = token;
    }

    /// Positions per analysis sub-batch.
    pub fn set_chunk_positions(&self, n: usize) {
        self.lock().chunk_positions = n;
    }

    /// What every analysis sub-batch says of the time left (the rate so far by default).
    pub fn set_remaining(&self, r: Remaining) {
        self.lock().remaining = r;
    }

    /// The most jobs that ever ran at once, over all devices.
    pub fn max_concurrent_jobs(&self) -> usize {
        self.lock().max_running
    }

    /// The most jobs that ever ran at once on one device (its worker must keep it at 1).
    pub fn max_concurrent_jobs_on_one_device(&self) -> usize {
        self.lock().max_running_on_one
    }

    /// Loads into `device`, and copies to it, fail from now on (as when it is out of memory).
    pub fn fail_loads_on(&self, device: DeviceId) {
        self.lock().failing_devices.insert(device);
    }

    /// `device` stops working: its running job fails at its next sub-batch, and every later
    /// load, copy or job on it fails; [`Engine::device_lost`] says so.
    pub fn lose_device(&self, device: DeviceId) {
        let why = format!("{} fell off the bus", self.name(Place::Device(device)));
        self.lock().lost.insert(device, why);
    }

    /// Loads of files whose path contains `needle` fail as if the file were corrupt.
    pub fn fail_loads_of(&self, needle: &str) {
        self.lock().failing.insert(needle.to_string());
    }

    /// The next load of a file whose path contains `needle` panics inside the engine.
    pub fn panic_next_load_of(&self, needle: &str) {
        self.lock().panicking.insert(needle.to_string());
    }

    /// The next job meets `fault` after sending `batches` sub-batches (rows or tokens).
    pub fn fault_next_job(&self, fault: JobFault, batches: usize) {
        self.lock().job_fault = Some((fault, batches));
    }

    /// Every call so far, as `load <key> -> <place>`, `move <key> <from> -> <to>`, `fail <key>`,
    /// `free <key>` (`free <key> on <place>` with separate memories), and each job as
    /// `analyze <base> [<models>]` or `generate <base>` (with ` on <device>` when there are
    /// several). Places are named `host` and by the device's name.
    pub fn log(&self) -> Vec<String> {
        self.lock().log.clone()
    }

    pub fn clear_log(&self) {
        self.lock().log.clear();
    }

    /// What the engine holds now, and where.
    pub fn held(&self) -> BTreeSet<(ResourceKey, Place)> {
        self.lock().held.clone()
    }

    /// Copies freed while a running job read them; empty unless a lease was broken.
    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    /// Whether the engine holds a copy of `key` anywhere.
    pub fn holds(&self, key: &ResourceKey) -> bool {
        self.lock().held.iter().any(|(k, _)| k == key)
    }

    /// How many loads of `key` happened.
    pub fn loads_of(&self, key: &ResourceKey) -> usize {
        let prefix = format!("load {key} ");
        self.lock()
            .log
            .iter()
            .filter(|l| l.starts_with(&prefix))
            .count()
    }
}

impl Engine for FakeEngine {
    fn shared_memory(&self) -> bool {
        self.shared_memory
    }

    fn devices(&self) -> Vec<DeviceInfo> {
        self.devices.as_ref().clone()
    }

    fn driver_memory(&self, device: DeviceId) -> Option<DriverMemory> {
        let total = self.devices.iter().find(|d| d.id == device)?.total_bytes?;
        let inner = self.lock();
        let used = inner
            .held
            .iter()
            .filter(|(_, p)| *p == Place::Device(device))
            .map(|(k, _)| inner.sizes.get(k).copied().unwrap_or(0))
            .sum();
        Some(DriverMemory {
            used_bytes: used,
            total_bytes: total,
        })
    }

    fn device_lost(&self, device: DeviceId) -> Option<String> {
        self.lock().lost.get(&device).cloned()
    }

    fn load(
        &self,
        key: ResourceKey,
        source: Source,
        place: Place,
        mut progress: Progress,
    ) -> BoxFuture<Result<(), EngineFailure>> {
        let me = self.clone();
        Box::pin(async move {
            let (path, bytes) = match &source {
                Source::Base(b) => (b.path.display().to_string(), b.bytes),
                Source::Lens(l) => (l.path.display().to_string(), l.bytes),
            };
            let latency = me.lock().load_latency;
            progress(0, bytes);
            for step in 1..=4u64 {
                tokio::time::sleep(latency / 4).await;
                progress(bytes * step / 4, bytes);
            }
            let name = me.name(place);
            let mut inner = me.lock();
            let panics = inner
                .panicking
                .iter()
                .find(|n| path.contains(n.as_str()))
                .cloned();
            if let Some(needle) = panics {
                inner.panicking.remove(&needle);
                drop(inner);
                panic!("the fake engine panicked loading {path}");
            }
            if let Some(d) = place.device() {
                if let Some(why) = inner.lost.get(&d) {
                    let e = EngineFailure(format!("{name} is lost ({why}); {path} was not loaded"));
                    inner.log.push(format!("fail {key} -> {name}"));
                    return Err(e);
                }
                if inner.failing_devices.contains(&d) {
                    inner.log.push(format!("fail {key} -> {name}"));
                    return Err(EngineFailure(format!(
                        "{name}: out of memory loading {path}"
                    )));
                }
            }
            if inner.failing.iter().any(|n| path.contains(n.as_str())) {
                inner.log.push(format!("fail {key}"));
                return Err(EngineFailure(format!("{path}: corrupt file")));
            }
            inner.log.push(format!("load {key} -> {name}"));
            inner.sizes.insert(key.clone(), bytes);
            inner.held.insert((key, place));
            Ok(())
        })
    }

    fn transfer(
        &self,
        key: ResourceKey,
        from: Place,
        to: Place,
    ) -> BoxFuture<Result<(), EngineFailure>> {
        let me = self.clone();
        Box::pin(async move {
            let latency = me.lock().transfer_latency;
            tokio::time::sleep(latency).await;
            let (from_name, to_name) = (me.name(from), me.name(to));
            let mut inner = me.lock();
            for (p, name) in [(from, &from_name), (to, &to_name)] {
                if let Some(why) = p.device().and_then(|d| inner.lost.get(&d)) {
                    let e = EngineFailure(format!("{name} is lost ({why}); {key} was not copied"));
                    inner
                        .log
                        .push(format!("fail move {key} {from_name} -> {to_name}"));
                    return Err(e);
                }
            }
            if to
                .device()
                .is_some_and(|d| inner.failing_devices.contains(&d))
            {
                inner
                    .log
                    .push(format!("fail move {key} {from_name} -> {to_name}"));
                return Err(EngineFailure(format!(
                    "{to_name}: out of memory copying {key}"
                )));
            }
            if !inner.held.contains(&(key.clone(), from)) {
                return Err(EngineFailure(format!(
                    "{key} is not on {from_name}; nothing to copy"
                )));
            }
            inner
                .log
                .push(format!("move {key} {from_name} -> {to_name}"));
            inner.held.insert((key, to));
            Ok(())
        })
    }

    fn release(&self, key: &ResourceKey, place: Place) {
        let line = if self.shared_memory {
            format!("free {key}")
        } else {
            format!("free {key} on {}", self.name(place))
        };
        let mut inner = self.lock();
        let used = inner
            .in_use
            .iter()
            .any(|((k, p), n)| k == key && *n > 0 && (self.shared_memory || *p == place));
        if used {
            let v = format!("{line} while a job read it");
            inner.violations.push(v);
        }
        inner.log.push(line);
        if self.shared_memory {
            // One memory: the copy is the same whatever tier it was counted in.
            inner.held.retain(|(k, _)| k != key);
        } else {
            inner.held.remove(&(key.clone(), place));
        }
    }

    fn run(
        &self,
        device: DeviceId,
        job: Job,
        mut events: ComputeSink,
    ) -> BoxFuture<Result<JobOutput, JobFailure>> {
        let me = self.clone();
        Box::pin(async move {
            let donors: Vec<BaseKey> = match &job {
                Job::Analyze { lenses, .. } => {
                    lenses.iter().filter_map(|l| l.donor.clone()).collect()
                }
                Job::Generate { donor, .. } => donor.iter().cloned().collect(),
            };
            let place = Place::Device(device);
            let mut reads: Vec<(ResourceKey, Place)> = donors
                .iter()
                .map(|d| (ResourceKey::Base(d.clone()), place))
                .collect();
            match &job {
                Job::Analyze { base, lenses, .. } => {
                    reads.push((ResourceKey::Base(base.clone()), place));
                    reads.extend(
                        lenses
                            .iter()
                            .filter_map(|l| l.lens.clone())
                            .map(|l| (ResourceKey::Lens(l), place)),
                    );
                }
                Job::Generate { base, lens, .. } => {
                    reads.push((ResourceKey::Base(base.clone()), place));
                    reads.extend(lens.clone().map(|l| (ResourceKey::Lens(l), place)));
                }
            }
            let fault = {
                let mut inner = me.lock();
                for r in &reads {
                    *inner.in_use.entry(r.clone()).or_default() += 1;
                }
                inner.running += 1;
                inner.max_running = inner.max_running.max(inner.running);
                let on_device = inner.running_on.entry(device).or_default();
                *on_device += 1;
                let n = *on_device;
                inner.max_running_on_one = inner.max_running_on_one.max(n);
                let mut line = match &job {
                    Job::Analyze { base, lenses, .. } => {
                        let names: Vec<&str> = lenses.iter().map(|l| l.model.as_str()).collect();
                        format!("analyze {} [{}]", base.0, names.join(","))
                    }
                    Job::Generate { base, .. } => format!("generate {}", base.0),
                };
                if !donors.is_empty() {
                    let names: Vec<&str> = donors.iter().map(|d| d.0.as_str()).collect();
                    line.push_str(&format!(" donors [{}]", names.join(",")));
                }
                line.push_str(&me.on(device));
                inner.log.push(line);
                inner.job_fault.take()
            };
            /// Counts the job out even when it panics.
            struct Running(FakeEngine, DeviceId, Vec<(ResourceKey, Place)>);
            impl Drop for Running {
                fn drop(&mut self) {
                    let mut inner = self.0.lock();
                    inner.running -= 1;
                    *inner.running_on.entry(self.1).or_default() -= 1;
                    for r in &self.2 {
                        *inner.in_use.entry(r.clone()).or_default() -= 1;
                    }
                }
            }
            let _running = Running(me.clone(), device, reads);
            // As the real engine does, a job whose donor is not loaded on its device fails.
            let held = me.held();
            let here = |k: ResourceKey| {
                held.iter()
                    .any(|(h, p)| *h == k && (me.shared_memory || *p == Place::Device(device)))
            };
            if let Some(d) = donors
                .iter()
                .find(|d| !here(ResourceKey::Base((*d).clone())))
            {
                return Err(JobFailure::Engine(format!(
                    "the donor base {} is not loaded; the job ran without its lease",
                    d.0
                )));
            }
            if let Some(why) = me.device_lost(device) {
                return Err(JobFailure::Engine(format!(
                    "the device was lost ({why}); the job did not run"
                )));
            }
            me.compute(device, job, &mut events, fault).await
        })
    }
}

fn fake_cell(layer: usize, pos: usize) -> Cell {
    Cell {
        top: vec![TopToken {
            id: (layer * 1000 + pos) as u32,
            token: format!("L{layer}P{pos}"),
            prob: 0.5,
        }],
        // Not a binary fraction: JSON writers must keep its f32 digits.
        entropy: 1.1,
        kl_to_final: (FAKE_LAYERS - layer.min(FAKE_LAYERS)) as f32,
        final_rank: 1,
        next_token_ce: None,
    }
}

impl FakeEngine {
    async fn compute(
        &self,
        device: DeviceId,
        job: Job,
        events: &mut ComputeSink,
        fault: Option<(JobFault, usize)>,
    ) -> Result<JobOutput, JobFailure> {
        let mut batches = 0;
        // Meets the job's fault, if any, before its sub-batch number `batches`; and a lost
        // device before any sub-batch.
        let mut meet_fault = || {
            if let Some(why) = self.device_lost(device) {
                return Err(JobFailure::Engine(format!(
                    "the device was lost mid-job: {why}"
                )));
            }
            let hit = fault.filter(|&(_, n)| n == batches);
            batches += 1;
            match hit {
                Some((JobFault::Fail, n)) => Err(JobFailure::Engine(format!(
                    "the fake device failed after {n} sub-batches"
                ))),
                Some((JobFault::Panic, n)) => {
                    panic!("the fake engine panicked after {n} sub-batches")
                }
                None => Ok(()),
            }
        };
        let (row_cost, token_cost, chunk, remaining) = {
            let inner = self.lock();
            let chunk = if inner.chunk_positions == 0 {
                4
            } else {
                inner.chunk_positions
            };
            (inner.row_cost, inner.token_cost, chunk, inner.remaining)
        };
        match job {
            Job::Analyze {
                lenses,
                text,
                layers,
                ..
            } => {
                let text = render(&text);
                if text.contains("FAIL") {
                    return Err(JobFailure::Engine(
                        "the fake engine was asked to fail".into(),
                    ));
                }
                let words: Vec<&str> = text.split_whitespace().collect();
                if words.is_empty() {
                    return Err(JobFailure::Invalid("the text has no tokens".into()));
                }
                let layers = layers.resolve(FAKE_LAYERS).map_err(JobFailure::Invalid)?;
                let tokens: Vec<TokenInfo> = words
                    .iter()
                    .enumerate()
                    .map(|(i, w)| TokenInfo {
                        id: i as u32,
                        text: w.to_string(),
                    })
                    .collect();
                if events(ComputeEvent::Tokens(tokens.clone())).is_break() {
                    return Err(JobFailure::Cancelled);
                }
                let t = tokens.len();
                let total = (t * layers.len() * lenses.len()) as u64;
                let mut done = 0;
                let mut analyses: Vec<Analysis> = lenses
                    .iter()
                    .map(|l| Analysis {
                        lens: l.model.clone(),
                        tokens: tokens.clone(),
                        layers: layers
                            .iter()
                            .map(|&layer| LayerRow {
                                layer,
                                positions: Vec::new(),
                            })
                            .collect(),
                        explanations: Vec::new(),
                    })
                    .collect();
                for p0 in (0..t).step_by(chunk) {
                    let p = chunk.min(t - p0);
                    for (li, a) in analyses.iter_mut().enumerate() {
                        meet_fault()?;
                        tokio::time::sleep(row_cost * (p * layers.len()) as u32).await;
                        let rows: Vec<LayerRow> = layers
                            .iter()
                            .map(|&layer| LayerRow {
                                layer,
                                positions: (p0..p0 + p).map(|pos| fake_cell(layer, pos)).collect(),
                            })
                            .collect();
                        for (row, part) in a.layers.iter_mut().zip(&rows) {
                            row.positions.extend(part.positions.iter().cloned());
                        }
                        done += (p * layers.len()) as u64;
                        let chunk = RowsChunk {
                            lens: li,
                            first_position: p0,
                            layers: rows,
                            explanations: Vec::new(),
                        };
                        if events(ComputeEvent::Rows {
                            chunk,
                            done,
                            total,
                            remaining,
                        })
                        .is_break()
                        {
                            return Err(JobFailure::Cancelled);
                        }
                    }
                }
                Ok(JobOutput::Analysis { analyses })
            }
            Job::Generate {
                prompt, sampling, ..
            } => {
                let prompt = render(&prompt);
                if prompt.contains("FAIL") {
                    return Err(JobFailure::Engine(
                        "the fake engine was asked to fail".into(),
                    ));
                }
                let mut ids = Vec::new();
                let mut text = String::new();
                let total = sampling.max_tokens as u64;
                for i in 0..sampling.max_tokens {
                    meet_fault()?;
                    tokio::time::sleep(token_cost).await;
                    let piece = format!(" w{i}");
                    ids.push(i as u32);
                    text.push_str(&piece);
                    if events(ComputeEvent::Token {
                        id: i as u32,
                        text: piece,
                        done: i as u64 + 1,
                        total,
                    })
                    .is_break()
                    {
                        return Err(JobFailure::Cancelled);
                    }
                }
                Ok(JobOutput::Generation {
                    prompt,
                    ids,
                    text,
                    stop: "max_tokens".into(),
                    reply: None,
                    thinking: None,
                })
            }
        }
    }
}

/// The fake chat template: one line per turn, `role: content`.
fn render(p: &Prompt) -> String {
    match p {
        Prompt::Plain { text } | Prompt::Rendered { text } => text.clone(),
        Prompt::Chat { messages } | Prompt::Prefill { messages } => messages
            .iter()
            .map(|m| format!("{}: {}\n", m.role, m.content))
            .collect(),
    }
}
