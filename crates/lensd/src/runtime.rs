//! The real engine behind the scheduler's `Engine` trait, for computing on CPU: bases and
//! lenses loaded with `lensd_engine`, kept by content key, and freed back to the system.
//!
//! On CPU the device and host tiers are the same RAM, so a loaded resource is loaded once and
//! the residency manager only relabels which budget it counts against; `transfer` is never
//! called.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use lensd_core::engine::{BoxFuture, Engine, EngineFailure, MemoryProbe, Progress, Source};
use lensd_core::registry::{BaseKey, LensKey, ResourceKey};
use lensd_core::residency::Tier;
use lensd_core::LensKind;
use lensd_engine::lens::{Lens, TunedLens};
use lensd_engine::{Base, LoadOptions};

#[derive(Default)]
struct Loaded {
    bases: HashMap<BaseKey, Arc<Base>>,
    lenses: HashMap<LensKey, Arc<Lens>>,
}

#[derive(Clone, Default)]
pub struct CpuEngine {
    loaded: Arc<Mutex<Loaded>>,
}

impl CpuEngine {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Loaded> {
        self.loaded.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A loaded base, for the compute worker.
    pub fn base(&self, key: &BaseKey) -> Option<Arc<Base>> {
        self.lock().bases.get(key).cloned()
    }

    /// A loaded lens, for the compute worker.
    pub fn lens(&self, key: &LensKey) -> Option<Arc<Lens>> {
        self.lock().lenses.get(key).cloned()
    }

    fn load_blocking(&self, key: ResourceKey, source: Source) -> Result<(), EngineFailure> {
        let fail = |e: lensd_engine::EngineError| EngineFailure(e.to_string());
        match (key, source) {
            (ResourceKey::Base(k), Source::Base(spec)) => {
                let base = Base::load(
                    &spec.path,
                    LoadOptions {
                        compute: spec.dtype,
                    },
                )
                .map_err(fail)?;
                self.lock().bases.insert(k, Arc::new(base));
            }
            (ResourceKey::Lens(k), Source::Lens(spec)) => {
                let lens = match spec.kind {
                    LensKind::Tuned => Lens::Tuned(TunedLens::open(&spec.path).map_err(fail)?),
                    LensKind::Logit => Lens::Logit,
                    LensKind::Talkative => {
                        return Err(EngineFailure(format!(
                            "{}: talkative lenses cannot be loaded by this version of lensd",
                            spec.path.display()
                        )))
                    }
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

    fn load(
        &self,
        key: ResourceKey,
        source: Source,
        _tier: Tier,
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
            let result = tokio::task::spawn_blocking(move || me.load_blocking(key, source))
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
        from: Tier,
        to: Tier,
    ) -> BoxFuture<Result<(), EngineFailure>> {
        // Device and host are one memory here; the residency manager never asks for a copy.
        Box::pin(async move {
            Err(EngineFailure(format!(
                "{key}: no transfer from {} to {} on a CPU engine, whose tiers share one memory",
                from.as_str(),
                to.as_str()
            )))
        })
    }

    fn release(&self, key: &ResourceKey) {
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

/// Returns freed heap memory to the operating system. glibc keeps freed blocks in its arenas,
/// so without this an unloaded base would stay in the process's resident memory.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Resident memory from `/proc/self/statm`.
pub struct ProcMemory;

impl MemoryProbe for ProcMemory {
    fn resident_bytes(&self) -> Option<u64> {
        resident_bytes()
    }
}

pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string(Path::new("/proc/self/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * page.max(4096) as u64)
}
