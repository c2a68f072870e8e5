//! What the residency manager hands out and reports: leases, preload events, errors, reports.

use lensd_core::engine::HeapUsage;
use lensd_core::registry::{BaseKey, LensKey, ResourceKey};
use lensd_core::residency::Tier;
use lensd_core::ByteSize;
use serde::Serialize;
use tokio::sync::mpsc::UnboundedSender;

use super::actor::Internal;

/// Running work's hold on a model's base, full donor and lens: while it lives they stay on the
/// device and are never moved or evicted. Dropping it ends the hold.
#[derive(Debug)]
pub struct Lease {
    /// The models leased, all on one base.
    pub models: Vec<String>,
    pub base: BaseKey,
    /// Each model's lens, in the order of `models` (`None` for the logit lens).
    pub lenses: Vec<Option<LensKey>>,
    /// Each model's full donor, in the order of `models`: leased like the base.
    pub donors: Vec<Option<BaseKey>>,
    pub(crate) keys: Vec<ResourceKey>,
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
    #[error("loading {resource} failed: {cause}")]
    LoadFailed { resource: String, cause: String },
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryState {
    Ready,
    Loading,
    Moving,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EntryReport {
    pub resource: ResourceKey,
    pub path: String,
    pub tier: Tier,
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

/// Every resource of the registry with its tier and bytes, the tiers' use against their
/// budgets, and the process's resident memory beside the accounted bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemoryReport {
    /// Device and host are one memory (CPU): bytes count against one tier at a time.
    pub shared_memory: bool,
    pub tiers: Vec<TierUsage>,
    pub entries: Vec<EntryReport>,
    pub accounted_bytes: u64,
    pub process_resident_bytes: Option<u64>,
    /// The heap allocator's count, where the probe reads one.
    pub process_heap: Option<HeapUsage>,
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

    pub fn entry(&self, key: &ResourceKey) -> Option<&EntryReport> {
        self.entries.iter().find(|e| &e.resource == key)
    }
}

/// What an unload did to each of the group's resources.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnloadReport {
    pub moved: Vec<(ResourceKey, Tier)>,
    /// Left in place, with the reason (in use, pinned, loading).
    pub kept: Vec<(ResourceKey, String)>,
}
