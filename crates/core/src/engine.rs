//! The narrow interface through which the scheduler drives a compute engine, so that the
//! scheduler and the server are tested against a fake and never link the tensor library.

use std::future::Future;
use std::pin::Pin;

use serde::Serialize;

use crate::registry::{BaseSpec, LensSpec, ResourceKey};
use crate::residency::{DeviceId, Place};
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

/// A compute device as the engine sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceInfo {
    pub id: DeviceId,
    /// `cpu`, `cuda:0`, ...
    pub name: String,
    /// The driver's count of the device's memory at start, where it has one (`None` on CPU).
    pub total_bytes: Option<u64>,
    pub free_bytes: Option<u64>,
}

/// What the driver says of a device's memory now, beside what the engine counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DriverMemory {
    pub used_bytes: u64,
    pub total_bytes: u64,
}

/// A compute engine with one or more devices. Each device has its own memory and runs one job
/// at a time; the host tier (RAM) is shared by all. A resource may have a copy on several
/// devices at once, so the engine keeps what it holds by resource and place.
pub trait Engine: Send + Sync + 'static {
    /// True when the device and host tiers are one memory (computing on CPU): the engine then
    /// has exactly one device, moving between it and the host is bookkeeping only, and
    /// [`Engine::transfer`] is never called.
    fn shared_memory(&self) -> bool;

    /// The devices, numbered from 0; never empty.
    fn devices(&self) -> Vec<DeviceInfo>;

    /// The driver's count of `device`'s memory now; `None` where there is none (CPU).
    fn driver_memory(&self, _device: DeviceId) -> Option<DriverMemory> {
        None
    }

    /// Why `device` can no longer be used, once the engine knows it is lost (a load, copy or
    /// job on it failed because the device itself stopped working); `None` while it works.
    /// Asked after something on the device failed.
    fn device_lost(&self, _device: DeviceId) -> Option<String> {
        None
    }

    /// Reads `source` from disk into `place` under `key`.
    fn load(
        &self,
        key: ResourceKey,
        source: Source,
        place: Place,
        progress: Progress,
    ) -> BoxFuture<Result<(), EngineFailure>>;

    /// Copies a loaded resource from one place to another (separate memories only). The copy at
    /// `from` stays until it is released.
    fn transfer(
        &self,
        key: ResourceKey,
        from: Place,
        to: Place,
    ) -> BoxFuture<Result<(), EngineFailure>>;

    /// Frees the copy of a resource at `place` and returns its memory to the operating system.
    fn release(&self, key: &ResourceKey, place: Place);

    /// Runs a job on `device`'s compute worker, one at a time per device. The caller holds a
    /// lease on the job's base and lenses on that device. `events` sees each sub-batch and may
    /// stop the job.
    fn run(
        &self,
        device: DeviceId,
        job: Job,
        events: ComputeSink,
    ) -> BoxFuture<Result<JobOutput, JobFailure>>;
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

    /// Bytes of weights the process maps (from their files, or copies of them) instead of
    /// holding them in the heap, where it knows.
    fn mapped_weight_bytes(&self) -> Option<u64> {
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
