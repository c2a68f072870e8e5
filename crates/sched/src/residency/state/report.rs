//! What the state tells about itself: the memory report and the bookkeeping rules.

use lensd_core::registry::ResourceKey;
use lensd_core::residency::Tier;

use super::{Job, State};
use crate::residency::types::{EntryReport, EntryState, MemoryReport, TierUsage};

impl State {
    // ---- reporting --------------------------------------------------------------------------

    /// The bookkeeping rules; an empty list when they all hold.
    pub fn violations(&self) -> Vec<String> {
        let mut v = Vec::new();
        for tier in [Tier::Device, Tier::Host] {
            if self.used(tier) > self.budget(tier) {
                v.push(format!(
                    "{} uses {} of a {} budget",
                    tier.as_str(),
                    self.used(tier),
                    self.budget(tier)
                ));
            }
        }
        for (k, e) in &self.entries {
            if e.tier == Tier::Disk {
                v.push(format!("{k} is an entry on disk"));
            }
            if e.leases > 0 && (e.tier != Tier::Device || e.job.is_some()) {
                v.push(format!("{k} is leased but not ready on the device"));
            }
        }
        v
    }

    pub fn report(&self, now: u64, process_resident_bytes: Option<u64>) -> MemoryReport {
        let mut entries = Vec::new();
        for key in self.registry.resources() {
            let models = self.registry.users(&key);
            let donor_for = match &key {
                ResourceKey::Base(b) => self.registry.donor_of(b),
                ResourceKey::Lens(_) => Vec::new(),
            };
            let path = match &key {
                ResourceKey::Base(b) => self.registry.bases[b].path.display().to_string(),
                ResourceKey::Lens(l) => self.registry.lenses[l].path.display().to_string(),
            };
            let e = self.entries.get(&key);
            entries.push(EntryReport {
                pinned: self.pinned(&key),
                path,
                tier: e.map_or(Tier::Disk, |e| e.tier),
                state: match e.and_then(|e| e.job) {
                    None => EntryState::Ready,
                    Some(Job::Loading(_)) => EntryState::Loading,
                    Some(Job::Moving(..)) => EntryState::Moving,
                },
                bytes: e.map_or_else(|| self.registry.bytes(&key).unwrap_or(0), |e| e.bytes),
                idle_ms: e
                    .filter(|e| e.job.is_none())
                    .map(|e| now.saturating_sub(e.last_use)),
                leases: e.map_or(0, |e| e.leases),
                models,
                donor_for,
                resource: key,
            });
        }
        MemoryReport {
            shared_memory: self.shared_memory,
            tiers: [Tier::Device, Tier::Host]
                .into_iter()
                .map(|t| TierUsage {
                    tier: t,
                    used: self.used(t),
                    budget: self.budget(t),
                })
                .collect(),
            accounted_bytes: self.entries.values().map(|e| e.bytes).sum(),
            entries,
            process_resident_bytes,
            process_heap: None,
            invariant_violations: self.violations(),
        }
    }
}
