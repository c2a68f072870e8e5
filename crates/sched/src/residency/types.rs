//! What the residency manager hands out and reports: leases, preload events, errors, reports.

use std::collections::BTreeMap;

use lensd_core::engine::HeapUsage;
use lensd_core::registry::{BaseKey, LensKey, ResourceKey};
use lensd_core::residency::{DeviceId, Place, Tier};
use lensd_core::ByteSize;
use serde::Serialize;
use tokio::sync::mpsc::UnboundedSender;

use super::actor::Internal;

/// Running work's hold on a model's base, full donor and lens on one device: while it lives
/// those copies stay there and are never moved or evicted. Dropping it ends the hold.
#[derive(Debug)]
pub struct Lease {
    /// Where the leased copies are.
    pub device: DeviceId,
    /// The models leased, all on one base.
    pub models: Vec<String>,
    pub base: BaseKey,
    /// Each model's lens, in the order of `models` (`None` for the logit lens).
    pub lenses: Vec<Option<LensKey>>,
    /// Each model's full donor, in the order of `models`: leased like the base.
    pub donors: Vec<Option<BaseKey>>,
    pub(crate) keys: Vec<(ResourceKey, Place)>,
    pub(crate) release: UnboundedSender<Internal>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let keys = std::mem::take(&mut self.keys);
        // If the manager has stopped there is nothing left to release.
        let _ = self.release.send(Internal::Released(keys));
    }
}

/// Sent whenever where resources live changes (a load starts or ends, a transfer, an eviction,
/// an unload, a keep-alive expiry), by whatever caused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlacementChanged {
    /// Resources being loaded or moved right now.
    pub in_flight: usize,
}

/// Progress of a preload, one event at a time, ending with `Done` or `Failed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PreloadEvent {
    Loading {
        resource: ResourceKey,
        bytes_done: u64,
        bytes_total: u64,
    },
    Ready {
        resource: ResourceKey,
        tier: Tier,
    },
    Done {
        group: String,
    },
    Failed {
        group: String,
        error: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResidencyError {
    #[error("unknown model `{0}`")]
    UnknownModel(String),
    #[error("unknown group `{0}`")]
    UnknownGroup(String),
    #[error("{resource} needs {needed} on the {tier} tier, whose budget is {budget}{why}")]
    DoesNotFit {
        resource: String,
        needed: ByteSize,
        tier: &'static str,
        budget: ByteSize,
        why: String,
    },
    #[error("loading {resource} on {place} failed: {cause}")]
    LoadFailed {
        resource: String,
        /// The device's name (`cuda:1`), or `host`.
        place: String,
        cause: String,
    },
    #[error("{device} has failed and takes no more work: {why}")]
    DeviceFailed { device: String, why: String },
    #[error("{0}")]
    Pinned(String),
    #[error("{0}")]
    UnknownDevice(String),
    #[error("{0} is no longer in the configuration")]
    Removed(String),
    #[error("the new budgets cannot hold what is pinned or in use: {0}")]
    BudgetTooSmall(String),
    #[error("the residency manager has stopped")]
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TierUsage {
    pub tier: Tier,
    pub used: u64,
    pub budget: u64,
}

/// One device's memory: what the residency manager counts on it against its budget, and what
/// the driver reports beside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceUsage {
    pub id: DeviceId,
    /// `cpu`, `cuda:0`, ...
    pub name: String,
    /// Bytes of the copies on it, including loads and copies in flight.
    pub used: u64,
    pub budget: u64,
    /// The driver's count now, where it has one.
    pub driver_used: Option<u64>,
    pub driver_total: Option<u64>,
    /// The device was lost: its worker takes no work and nothing is placed on it.
    pub failed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryState {
    Ready,
    Loading,
    Moving,
}

/// One copy of a resource, or a resource not loaded anywhere (tier `disk`). A resource with
/// copies on two devices appears once per copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EntryReport {
    pub resource: ResourceKey,
    pub path: String,
    pub tier: Tier,
    /// The device the copy is on, for tier `device`.
    pub device: Option<DeviceId>,
    pub state: EntryState,
    pub bytes: u64,
    /// Milliseconds since last use; absent for resources never loaded.
    pub idle_ms: Option<u64>,
    pub leases: u32,
    pub pinned: bool,
    /// Models that use this resource (as their base, their lens or their full donor).
    pub models: Vec<String>,
    /// Of `models`, those whose full donor this base is.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub donor_for: Vec<String>,
}

/// Every resource of the registry with its copies, the tiers' and each device's use against
/// their budgets, and the process's resident memory beside the accounted bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemoryReport {
    /// Device and host are one memory (CPU): bytes count against one tier at a time.
    pub shared_memory: bool,
    /// The device tier is every working device together.
    pub tiers: Vec<TierUsage>,
    pub devices: Vec<DeviceUsage>,
    pub entries: Vec<EntryReport>,
    pub accounted_bytes: u64,
    pub process_resident_bytes: Option<u64>,
    /// The heap allocator's count, where the probe reads one.
    pub process_heap: Option<HeapUsage>,
    /// Accounted weights that are mapped rather than in the heap (a GGUF file's blocks mapped
    /// from the page cache), where the probe knows.
    pub process_mapped_weight_bytes: Option<u64>,
    /// Broken bookkeeping rules, if any; always empty unless there is a bug.
    pub invariant_violations: Vec<String>,
}

impl MemoryReport {
    pub fn tier(&self, tier: Tier) -> &TierUsage {
        self.tiers
            .iter()
            .find(|t| t.tier == tier)
            .expect("device and host are reported")
    }

    /// The first copy of `key`: on the lowest-numbered device that has one, else on the host,
    /// else its line as not loaded.
    pub fn entry(&self, key: &ResourceKey) -> Option<&EntryReport> {
        self.entries.iter().find(|e| &e.resource == key)
    }

    /// Every copy of `key`.
    pub fn copies(&self, key: &ResourceKey) -> impl Iterator<Item = &EntryReport> + '_ {
        let key = key.clone();
        self.entries
            .iter()
            .filter(move |e| e.resource == key && e.tier != Tier::Disk)
    }

    pub fn device(&self, id: DeviceId) -> Option<&DeviceUsage> {
        self.devices.iter().find(|d| d.id == id)
    }
}

/// Where things are on each device, for the queue's placement decisions; published after
/// every change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    pub devices: Vec<DeviceLayout>,
    /// Groups pinned to devices; a group not listed runs on any.
    pub pins: BTreeMap<String, Vec<DeviceId>>,
    pub shared_memory: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceLayout {
    pub id: DeviceId,
    pub name: String,
    pub failed: bool,
    pub used: u64,
    pub budget: u64,
    pub copies: Vec<CopyLayout>,
}

/// One copy on a device, as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyLayout {
    pub resource: ResourceKey,
    pub bytes: u64,
    pub last_use: u64,
    pub leases: u32,
    pub pinned: bool,
    /// Usable by work now (it may be lending itself to another device meanwhile).
    pub ready: bool,
    /// Being loaded, copied or moved: not evictable.
    pub busy: bool,
}

impl Layout {
    pub fn allows(&self, group: &str, device: DeviceId) -> bool {
        self.pins.get(group).is_none_or(|d| d.contains(&device))
    }

    /// Whether `device` holds a copy of `key`, ready or on its way.
    pub fn holds(&self, device: DeviceId, key: &ResourceKey) -> bool {
        self.devices
            .iter()
            .find(|d| d.id == device)
            .is_some_and(|d| d.copies.iter().any(|c| &c.resource == key))
    }

    /// Whether `device` holds a ready copy of `key`.
    pub fn ready(&self, device: DeviceId, key: &ResourceKey) -> bool {
        self.devices
            .iter()
            .find(|d| d.id == device)
            .is_some_and(|d| d.copies.iter().any(|c| &c.resource == key && c.ready))
    }
}

/// What an unload did to each of the group's resources.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnloadReport {
    pub moved: Vec<(ResourceKey, Tier)>,
    /// Left in place, with the reason (in use, pinned, loading).
    pub kept: Vec<(ResourceKey, String)>,
}
