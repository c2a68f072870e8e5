//! The narrow interface through which the scheduler drives a compute engine, so that the
//! scheduler and the server are tested against a fake and never link the tensor library.

use std::future::Future;
use std::pin::Pin;

use crate::registry::{BaseSpec, LensSpec, ResourceKey};
use crate::residency::Tier;
use crate::work::{ComputeEvent, Job, JobFailure, JobOutput};

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Called with (bytes done, bytes total) while a resource loads: first with
/// zero bytes done when reading starts, then as bytes arrive.
pub type Progress = Box<dyn FnMut(u64, u64) + Send>;

/// What to load.
#[derive(Debug, Clone)]
pub enum Source {
    Base(BaseSpec),
    Lens(LensSpec),
}

/// Why the engine could not do what it was asked; the message names the file and the cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EngineFailure(pub String);

pub trait Engine: Send + Sync + 'static {
    /// True when the device and host tiers are one memory (computing on CPU): moving between
    /// them is then bookkeeping only, and [`Engine::transfer`] is never called.
    fn shared_memory(&self) -> bool;

    /// Reads `source` from disk into `tier` under `key`.
    fn load(
        &self,
        key: ResourceKey,
        source: Source,
        tier: Tier,
        progress: Progress,
    ) -> BoxFuture<Result<(), EngineFailure>>;

    /// Moves a loaded resource between the device and host tiers (separate memories only).
    fn transfer(
        &self,
        key: ResourceKey,
        from: Tier,
        to: Tier,
    ) -> BoxFuture<Result<(), EngineFailure>>;

    /// Frees a resource's memory and returns it to the operating system.
    fn release(&self, key: &ResourceKey);

    /// Runs a job on the device's compute worker, one at a time. The caller holds a lease on
    /// the job's base and lenses. `events` sees each sub-batch and may stop the job.
    fn run(&self, job: Job, events: ComputeSink) -> BoxFuture<Result<JobOutput, JobFailure>>;
}

/// Receives a running job's events; `Break` stops the job at the next sub-batch.
pub type ComputeSink = Box<dyn FnMut(ComputeEvent) -> std::ops::ControlFlow<()> + Send>;

/// Reads the process's resident memory, so that accounted bytes can be compared with reality.
pub trait MemoryProbe: Send + Sync + 'static {
    fn resident_bytes(&self) -> Option<u64>;

    /// The heap allocator's own count, where it offers one.
    fn heap(&self) -> Option<HeapUsage> {
        None
    }
}

/// What the heap allocator holds. Bytes in use grow only with what the program keeps; a leak
/// shows here. Free bytes are held for reuse and count in resident memory while their pages
/// are touched, so resident memory can climb through fragmentation with no leak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct HeapUsage {
    /// Bytes handed out and not yet freed, with the allocator's per-block headers.
    pub in_use_bytes: u64,
    /// Bytes freed by the program that the allocator keeps for later allocations.
    pub free_bytes: u64,
}
