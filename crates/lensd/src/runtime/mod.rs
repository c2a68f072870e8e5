//! The real engine behind the scheduler's `Engine` trait: bases and lenses loaded with
//! `lensd_engine`, kept by content key and place, computed on the CPU or on CUDA GPUs, and
//! freed back to the system.
//!
//! On the CPU there is one device, `cpu`, whose memory is the host's RAM, so a loaded resource
//! is loaded once and the residency manager only relabels which budget it counts against;
//! `transfer` is never called, and the place named by `load` and `release` does not matter.
//! With GPUs each device holds its own copies: a load reads the files on the host and places
//! each tensor on the device as it is read; `transfer` copies a loaded resource between a
//! device and the host (or another device), tensor by tensor.
//!
//! A model's full donor (a fine-tune of its base) is loaded as a base like any other; a job
//! names it beside the base, and the talkative lens reads its activations and generates with
//! it while the lens's decoder and encoder run on the group's base.

mod devices;
mod job;
mod memory;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use lensd_core::engine::{
    BoxFuture, ComputeSink, DeviceInfo, DriverMemory, Engine, EngineFailure, Progress, Source,
};
use lensd_core::registry::{BaseKey, LensKey, ResourceKey};
use lensd_core::residency::{DeviceId, Place};
use lensd_core::work::{Job, JobFailure, JobOutput};
use lensd_core::LensKind;
use lensd_engine::device::{Device, DeviceSpec};
use lensd_engine::lens::analyze::Unembed;
use lensd_engine::lens::talkative::TalkativeLens;
use lensd_engine::lens::{Lens, TunedLens};
use lensd_engine::lora::Adapter;
use lensd_engine::{Base, LoadOptions};

use devices::Slot;
pub use memory::{heap_usage, map_large_blocks, resident_bytes, trim_heap, ProcMemory};

/// A loaded lens: one that fills layers × positions, or a talkative lens with its donor.
pub enum Held {
    Cells(Lens),
    Talkative(Box<(TalkativeLens, Option<Adapter>)>),
}

impl Held {
    /// The same lens with its tensors in `device`'s memory.
    fn to_device(&self, device: &Device) -> lensd_engine::Result<Held> {
        Ok(match self {
            Held::Cells(l) => Held::Cells(l.to_device(device)?),
            Held::Talkative(t) => Held::Talkative(Box::new((
                t.0.to_device(device)?,
                t.1.as_ref().map(|a| a.to_device(device)).transpose()?,
            ))),
        })
    }
}

/// What is loaded, by resource and place. On the CPU every place is device 0.
#[derive(Default)]
struct Loaded {
    bases: HashMap<(BaseKey, Place), Arc<Base>>,
    lenses: HashMap<(LensKey, Place), Arc<Held>>,
    /// Bases loaded from disk since start.
    base_loads: usize,
}

/// Something loaded, of either kind.
enum Copy {
    Base(Arc<Base>),
    Lens(Arc<Held>),
}

#[derive(Clone)]
pub struct LocalEngine {
    loaded: Arc<Mutex<Loaded>>,
    devices: Arc<Vec<Slot>>,
    /// Most tokens an analysed text or a prompt may have.
    max_input_tokens: Arc<std::sync::atomic::AtomicUsize>,
    /// Whether analyses multiply an f32 unembedding in bf16 (`lensd serve --unembed`).
    bf16_unembed: Arc<std::sync::atomic::AtomicBool>,
}

impl Default for LocalEngine {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalEngine {
    /// An engine computing on the CPU.
    pub fn new() -> Self {
        Self::on(&[DeviceSpec::Cpu]).expect("the CPU opens")
    }

    /// An engine computing on `devices` (the CPU alone, or GPUs), numbered in that order. The
    /// CPU named more than once acts as that many devices in one memory, each with its own
    /// compute thread and copies: how placement is tested with real weights on a machine
    /// without GPUs.
    pub fn on(devices: &[DeviceSpec]) -> lensd_engine::Result<Self> {
        if devices.is_empty() {
            return Err(lensd_engine::EngineError::Input(
                "no device to compute on".into(),
            ));
        }
        Ok(LocalEngine {
            loaded: Arc::default(),
            devices: devices::open_all(devices)?,
            max_input_tokens: Arc::new(std::sync::atomic::AtomicUsize::new(usize::MAX)),
            bf16_unembed: Arc::default(),
        })
    }

    /// The devices this engine computes on.
    pub fn device_list(&self) -> Vec<DeviceInfo> {
        self.devices.iter().map(Slot::info).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Loaded> {
        self.loaded.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_cpu(&self) -> bool {
        self.devices.len() == 1 && self.devices[0].spec == DeviceSpec::Cpu
    }

    /// Where a copy at `place` is kept: on the CPU, device and host are one memory.
    fn key_place(&self, place: Place) -> Place {
        if self.is_cpu() {
            Place::Device(DeviceId(0))
        } else {
            place
        }
    }

    fn slot(&self, device: DeviceId) -> Result<&Slot, String> {
        self.devices
            .get(device.0 as usize)
            .ok_or_else(|| format!("{device} does not exist"))
    }

    /// The memory a copy at `place` lives in.
    fn memory_of(&self, place: Place) -> Result<Device, String> {
        match place {
            Place::Host => Ok(Device::Cpu),
            Place::Device(d) => Ok(self.slot(d)?.device.clone()),
        }
    }

    /// A failure at `place`, judged by its device (out of memory, device lost).
    fn judged(&self, place: Place, what: &str, message: String) -> String {
        match place.device().and_then(|d| self.devices.get(d.0 as usize)) {
            Some(slot) => slot.judge(what, message),
            None => message,
        }
    }

    /// A loaded base at `place`, for the compute worker.
    pub fn base_at(&self, key: &BaseKey, place: Place) -> Option<Arc<Base>> {
        let place = self.key_place(place);
        self.lock().bases.get(&(key.clone(), place)).cloned()
    }

    /// A loaded lens at `place`, for the compute worker.
    pub fn lens_at(&self, key: &LensKey, place: Place) -> Option<Arc<Held>> {
        let place = self.key_place(place);
        self.lock().lenses.get(&(key.clone(), place)).cloned()
    }

    /// Refuses texts and prompts of more tokens than `n`.
    pub fn set_max_input_tokens(&self, n: usize) {
        self.max_input_tokens
            .store(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// How analyses multiply an f32 unembedding from now on; returns what they will run in
    /// (bf16 only where the CPU has AVX-512 BF16).
    pub fn set_unembed(&self, u: Unembed) -> Unembed {
        let u = u.effective();
        self.bf16_unembed
            .store(u == Unembed::Bf16, std::sync::atomic::Ordering::Relaxed);
        u
    }

    fn unembed(&self) -> Unembed {
        if self.bf16_unembed.load(std::sync::atomic::Ordering::Relaxed) {
            Unembed::Bf16
        } else {
            Unembed::F32
        }
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

    fn load_blocking(
        &self,
        key: ResourceKey,
        source: Source,
        place: Place,
        progress: &mut Progress,
    ) -> Result<(), String> {
        let at = self.key_place(place);
        let device = self.memory_of(at)?;
        let fail = |e: lensd_engine::EngineError| e.to_string();
        match (key, source) {
            (ResourceKey::Base(k), Source::Base(spec)) => {
                // Reading the files is most of a load: report its share of the base's bytes.
                let base = Base::load_onto(
                    &spec.path,
                    LoadOptions {
                        compute: spec.dtype,
                    },
                    &device,
                    &mut |done, total| {
                        let share = done as f64 / total.max(1) as f64;
                        progress((share * spec.bytes as f64) as u64, spec.bytes)
                    },
                )
                .map_err(fail)?;
                let mut loaded = self.lock();
                loaded.bases.insert((k, at), Arc::new(base));
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
                let lens = if device.is_cpu() {
                    lens
                } else {
                    lens.to_device(&device).map_err(fail)?
                };
                self.lock().lenses.insert((k, at), Arc::new(lens));
            }
            (key, _) => return Err(format!("{key}: the source is of another kind")),
        }
        // Loading reads files through temporary buffers; give them back.
        trim_heap();
        Ok(())
    }

    fn copy_blocking(&self, key: &ResourceKey, from: Place, to: Place) -> Result<(), String> {
        let target = self.memory_of(to)?;
        let fail = |e: lensd_engine::EngineError| e.to_string();
        let source = {
            let loaded = self.lock();
            match key {
                ResourceKey::Base(k) => loaded
                    .bases
                    .get(&(k.clone(), from))
                    .cloned()
                    .map(Copy::Base),
                ResourceKey::Lens(k) => loaded
                    .lenses
                    .get(&(k.clone(), from))
                    .cloned()
                    .map(Copy::Lens),
            }
        };
        let Some(source) = source else {
            return Err(format!("{key} has no copy at {from} to copy to {to}"));
        };
        match (key, source) {
            (ResourceKey::Base(k), Copy::Base(b)) => {
                let copy = b.to_device(&target).map_err(fail)?;
                self.lock().bases.insert((k.clone(), to), Arc::new(copy));
            }
            (ResourceKey::Lens(k), Copy::Lens(l)) => {
                let copy = l.to_device(&target).map_err(fail)?;
                self.lock().lenses.insert((k.clone(), to), Arc::new(copy));
            }
            _ => unreachable!("a copy is looked up by its own kind"),
        }
        Ok(())
    }
}

impl Engine for LocalEngine {
    fn shared_memory(&self) -> bool {
        self.is_cpu()
    }

    fn devices(&self) -> Vec<DeviceInfo> {
        self.device_list()
    }

    fn driver_memory(&self, device: DeviceId) -> Option<DriverMemory> {
        self.devices.get(device.0 as usize)?.driver_memory()
    }

    fn device_lost(&self, device: DeviceId) -> Option<String> {
        self.devices.get(device.0 as usize)?.lost()
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
            let total = match &source {
                Source::Base(b) => b.bytes,
                Source::Lens(l) => l.bytes,
            };
            progress(0, total);
            let what = format!("loading {key}");
            // Loading dequantizes and reads files: blocking work, kept off the async runtime.
            let (result, mut progress) = tokio::task::spawn_blocking(move || {
                let result = me.load_blocking(key, source, place, &mut progress);
                let result = result.map_err(|m| me.judged(place, &what, m));
                (result, progress)
            })
            .await
            .map_err(|e| EngineFailure(format!("the load stopped: {e}")))?;
            if result.is_ok() {
                progress(total, total);
            }
            result.map_err(EngineFailure)
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
            if me.is_cpu() {
                // Device and host are one memory; the residency manager never asks for a copy.
                return Err(EngineFailure(format!(
                    "{key}: no transfer from {from} to {to} on a CPU engine, whose tiers share \
                     one memory"
                )));
            }
            let what = format!("copying {key} from {from} to {to}");
            tokio::task::spawn_blocking(move || {
                me.copy_blocking(&key, from, to).map_err(|m| {
                    // A failed copy may be either side's fault; the device involved judges it.
                    let on = if to.device().is_some() { to } else { from };
                    EngineFailure(me.judged(on, &what, m))
                })
            })
            .await
            .map_err(|e| EngineFailure(format!("the copy stopped: {e}")))?
        })
    }

    fn run(
        &self,
        device: DeviceId,
        job: Job,
        events: ComputeSink,
    ) -> BoxFuture<Result<JobOutput, JobFailure>> {
        let slot = match self.slot(device) {
            Ok(s) => s,
            Err(m) => return Box::pin(async move { Err(JobFailure::Engine(m)) }),
        };
        let me = self.clone();
        let work = slot.run(move || me.run_blocking(device, job, events));
        let me = self.clone();
        Box::pin(async move {
            work.await.map_err(|f| match f {
                JobFailure::Engine(m) => {
                    JobFailure::Engine(me.judged(Place::Device(device), "computing", m))
                }
                other => other,
            })
        })
    }

    fn release(&self, key: &ResourceKey, place: Place) {
        let at = self.key_place(place);
        let dropped = {
            let mut loaded = self.lock();
            match key {
                ResourceKey::Base(k) => loaded.bases.remove(&(k.clone(), at)).is_some(),
                ResourceKey::Lens(k) => loaded.lenses.remove(&(k.clone(), at)).is_some(),
            }
        };
        // Freed host memory goes back to the system; a GPU's allocator keeps its own.
        if dropped && self.memory_of(at).is_ok_and(|d| d.is_cpu()) {
            trim_heap();
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_on_the_compute_thread_fails_that_work_alone() {
        let engine = LocalEngine::new();
        let failed = engine.devices[0]
            .run(|| -> Result<(), JobFailure> { panic!("a bug in a kernel") })
            .await;
        match failed {
            Err(JobFailure::Internal(m)) => assert!(m.contains("a bug in a kernel"), "{m}"),
            other => panic!("expected an internal failure, got {other:?}"),
        }
        // The thread is still there, and runs what comes next.
        assert_eq!(engine.devices[0].run(|| Ok(7)).await, Ok(7));
    }
}
