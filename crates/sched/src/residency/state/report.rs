//! What the state tells about itself: the memory report, the layout the queue places work by,
//! and the bookkeeping rules.

use std::collections::{BTreeMap, BTreeSet};

use lensd_core::engine::DriverMemory;
use lensd_core::registry::ResourceKey;
use lensd_core::residency::{DeviceId, Place, Tier};

use super::{Job, State};
use crate::residency::types::{
    CopyLayout, DeviceLayout, DeviceUsage, EntryReport, EntryState, Layout, MemoryReport, TierUsage,
};

impl State {
    /// The bookkeeping rules; an empty list when they all hold.
    pub fn violations(&self) -> Vec<String> {
        let mut v = self.broken.clone();
        let mut sums: BTreeMap<Place, u64> = BTreeMap::new();
        for ((_, place), e) in &self.entries {
            *sums.entry(*place).or_default() += e.bytes;
        }
        let places: BTreeSet<Place> = sums.keys().chain(self.booked.keys()).copied().collect();
        for place in places {
            let (sum, booked) = (sums.get(&place).copied().unwrap_or(0), self.used(place));
            if sum != booked {
                v.push(format!(
                    "{place} books {booked} bytes but its entries hold {sum}"
                ));
            }
            if booked > self.budget(place) {
                v.push(format!(
                    "{place} uses {booked} of a {} budget",
                    self.budget(place)
                ));
            }
        }
        for ((k, place), e) in &self.entries {
            if e.leases > 0 && (place.device().is_none() || !e.ready()) {
                v.push(format!("{k} is leased but not ready on {place}"));
            }
            if place.device().is_some_and(|d| self.failed.contains_key(&d)) {
                v.push(format!("{k} is counted on {place}, which has failed"));
            }
            if let Some(job) = e.job {
                let ends = self.find_job(job.id()).len();
                let want = if matches!(job, Job::Loading(_)) { 1 } else { 2 };
                if ends != want {
                    v.push(format!("{k} on {place}: job {job:?} has {ends} ends"));
                }
            }
        }
        if self.shared_memory {
            let mut seen = BTreeSet::new();
            for (k, _) in self.entries.keys() {
                if !seen.insert(k) {
                    v.push(format!("{k} has two copies in one memory"));
                }
            }
        }
        v
    }

    pub fn report(
        &self,
        now: u64,
        process_resident_bytes: Option<u64>,
        driver: &BTreeMap<DeviceId, DriverMemory>,
    ) -> crate::residency::MemoryReport {
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
            let line = |place: Option<Place>| {
                let e = place.and_then(|p| self.entry(&key, p));
                EntryReport {
                    resource: key.clone(),
                    path: path.clone(),
                    tier: place.map_or(Tier::Disk, |p| p.tier()),
                    device: place.and_then(|p| p.device()),
                    state: match e.and_then(|e| e.job) {
                        None | Some(Job::Lending(..)) => EntryState::Ready,
                        Some(Job::Loading(_)) => EntryState::Loading,
                        Some(Job::Arriving(..) | Job::Leaving(..)) => EntryState::Moving,
                    },
                    bytes: e.map_or_else(|| self.registry.bytes(&key).unwrap_or(0), |e| e.bytes),
                    idle_ms: e
                        .filter(|e| e.job.is_none())
                        .map(|e| now.saturating_sub(e.last_use)),
                    leases: e.map_or(0, |e| e.leases),
                    pinned: self.pinned(&key),
                    models: models.clone(),
                    donor_for: donor_for.clone(),
                }
            };
            let places: Vec<Place> = self.copies(&key).iter().map(|(p, _)| *p).collect();
            if places.is_empty() {
                entries.push(line(None));
            }
            entries.extend(places.into_iter().map(|p| line(Some(p))));
        }
        let devices = self
            .devices
            .iter()
            .map(|d| {
                let place = Place::Device(d.id);
                let driver = driver.get(&d.id);
                DeviceUsage {
                    id: d.id,
                    name: d.name.clone(),
                    used: self.used(place),
                    budget: self.budget(place),
                    driver_used: driver.map(|m| m.used_bytes),
                    driver_total: driver.map(|m| m.total_bytes),
                    failed: self.failed.contains_key(&d.id),
                    failure: self.failed.get(&d.id).cloned(),
                }
            })
            .collect();
        MemoryReport {
            shared_memory: self.shared_memory,
            tiers: [Tier::Device, Tier::Host]
                .into_iter()
                .map(|t| {
                    let (used, budget) = self.tier_usage(t);
                    TierUsage {
                        tier: t,
                        used,
                        budget,
                    }
                })
                .collect(),
            devices,
            accounted_bytes: self.entries.values().map(|e| e.bytes).sum(),
            entries,
            process_resident_bytes,
            process_heap: None,
            process_mapped_weight_bytes: None,
            invariant_violations: self.violations(),
        }
    }

    /// Where things are on each device, for the queue.
    pub fn layout(&self) -> Layout {
        let devices = self
            .devices
            .iter()
            .map(|d| {
                let place = Place::Device(d.id);
                DeviceLayout {
                    id: d.id,
                    name: d.name.clone(),
                    failed: self.failed.contains_key(&d.id),
                    used: self.used(place),
                    budget: self.budget(place),
                    copies: self
                        .entries
                        .iter()
                        .filter(|((_, p), _)| *p == place)
                        .map(|((k, _), e)| CopyLayout {
                            resource: k.clone(),
                            bytes: e.bytes,
                            last_use: e.last_use,
                            leases: e.leases,
                            pinned: self.pinned(k),
                            ready: e.ready(),
                            busy: e.job.is_some(),
                        })
                        .collect(),
                }
            })
            .collect();
        Layout {
            devices,
            pins: self.placement.pins.clone(),
            shared_memory: self.shared_memory,
        }
    }
}
