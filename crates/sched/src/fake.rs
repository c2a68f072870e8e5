//! An engine that holds no weights: loads and transfers take a configurable (tokio) time,
//! chosen files fail, and every call is logged, so that scheduler and server tests read as
//! stories and run under paused time.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lensd_core::engine::{BoxFuture, Engine, EngineFailure, Progress, Source};
use lensd_core::registry::ResourceKey;
use lensd_core::residency::Tier;

#[derive(Default)]
struct Inner {
    load_latency: Duration,
    transfer_latency: Duration,
    failing: BTreeSet<String>,
    log: Vec<String>,
    held: BTreeMap<ResourceKey, Tier>,
}

#[derive(Clone)]
pub struct FakeEngine {
    shared_memory: bool,
    inner: Arc<Mutex<Inner>>,
}

impl FakeEngine {
    /// `shared_memory`: a CPU-like engine where device and host are one memory.
    pub fn new(shared_memory: bool) -> Self {
        FakeEngine {
            shared_memory,
            inner: Arc::default(),
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

    /// Loads of files whose path contains `needle` fail as if the file were corrupt.
    pub fn fail_loads_of(&self, needle: &str) {
        self.lock().failing.insert(needle.to_string());
    }

    /// Every call so far, as `load <key> -> <tier>`, `move <key> <from> -> <to>`, `free <key>`.
    pub fn log(&self) -> Vec<String> {
        self.lock().log.clone()
    }

    pub fn clear_log(&self) {
        self.lock().log.clear();
    }

    /// What the engine holds now, and where.
    pub fn held(&self) -> BTreeMap<ResourceKey, Tier> {
        self.lock().held.clone()
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

    fn load(
        &self,
        key: ResourceKey,
        source: Source,
        tier: Tier,
        mut progress: Progress,
    ) -> BoxFuture<Result<(), EngineFailure>> {
        let me = self.clone();
        Box::pin(async move {
            let (path, bytes) = match &source {
                Source::Base(b) => (b.path.display().to_string(), b.bytes),
                Source::Lens(l) => (l.path.display().to_string(), l.bytes),
            };
            let latency = me.lock().load_latency;
            for step in 1..=4u64 {
                tokio::time::sleep(latency / 4).await;
                progress(bytes * step / 4, bytes);
            }
            let mut inner = me.lock();
            if inner.failing.iter().any(|n| path.contains(n.as_str())) {
                inner.log.push(format!("fail {key}"));
                return Err(EngineFailure(format!("{path}: corrupt file")));
            }
            inner.log.push(format!("load {key} -> {}", tier.as_str()));
            inner.held.insert(key, tier);
            Ok(())
        })
    }

    fn transfer(
        &self,
        key: ResourceKey,
        from: Tier,
        to: Tier,
    ) -> BoxFuture<Result<(), EngineFailure>> {
        let me = self.clone();
        Box::pin(async move {
            let latency = me.lock().transfer_latency;
            tokio::time::sleep(latency).await;
            let mut inner = me.lock();
            inner
                .log
                .push(format!("move {key} {} -> {}", from.as_str(), to.as_str()));
            inner.held.insert(key, to);
            Ok(())
        })
    }

    fn release(&self, key: &ResourceKey) {
        let mut inner = self.lock();
        inner.log.push(format!("free {key}"));
        inner.held.remove(key);
    }
}
