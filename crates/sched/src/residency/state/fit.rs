//! Room in a place: whether a waiting request can ever be met within its budget, making room
//! by evicting idle entries, and which device a request without one goes to.

use std::collections::BTreeSet;

use lensd_core::registry::ResourceKey;
use lensd_core::residency::{
    choose_device, fits, pick_victims, Candidate, DeviceId, DeviceRoom, Place, Tier,
};
use lensd_core::ByteSize;

use super::{CopyKey, Effect, Room, State};
use crate::residency::types::ResidencyError;

impl State {
    /// A request whose resources together exceed its place's budget, less what others pin
    /// there, can never be met: each may fit alone, but it keeps the earlier ones it loaded.
    /// Checked before anything moves, also for one resource that arrives from the host tier,
    /// whose relabelling on shared memory needs no new room.
    pub(super) fn never_fits(&self, i: usize) -> Option<ResidencyError> {
        let w = &self.waiters[i];
        let target = w.target;
        let bytes = |k: &ResourceKey| {
            self.copies(k)
                .first()
                .map_or_else(|| self.registry.bytes(k).unwrap_or(0), |(_, e)| e.bytes)
        };
        let need: u64 = w
            .keys
            .iter()
            .filter(|k| {
                // On a device counts as placed for a host preload.
                !(target == Place::Host && self.copies(k).iter().any(|(p, _)| p.device().is_some()))
            })
            .map(bytes)
            .sum();
        let pinned: u64 = self
            .entries
            .iter()
            .filter(|((k, p), _)| *p == target && self.pinned(k) && !w.keys.contains(k))
            .map(|(_, e)| e.bytes)
            .sum();
        let budget = self.budget(target);
        if need <= budget.saturating_sub(pinned) {
            return None;
        }
        let names: Vec<String> = w.keys.iter().map(|k| self.describe(k)).collect();
        let resource = match names.split_last() {
            Some((last, rest)) if !rest.is_empty() => {
                format!("the set of {} and {last}", rest.join(", "))
            }
            _ => names.concat(),
        };
        Some(ResidencyError::DoesNotFit {
            resource,
            needed: ByteSize(need),
            tier: target.tier().as_str(),
            budget: ByteSize(budget),
            why: self.pinned_why(target, pinned),
        })
    }

    /// The tail of a "does not fit" message: the device's name when there are several, and
    /// what is pinned there.
    fn pinned_why(&self, place: Place, pinned: u64) -> String {
        let mut why = String::new();
        if let (Place::Device(d), true) = (place, self.devices.len() > 1) {
            why.push_str(&format!(" (on {})", self.device_name(d)));
        }
        if pinned > 0 {
            why.push_str(&format!(" and {} of it is pinned", ByteSize(pinned)));
        }
        why
    }

    /// Entries of `place` as eviction sees them, with their keys; protected ones left out.
    fn candidates(
        &self,
        place: Place,
        protected: &BTreeSet<CopyKey>,
    ) -> (Vec<ResourceKey>, Vec<Candidate>) {
        self.entries
            .iter()
            .filter(|((k, p), _)| *p == place && !protected.contains(&(k.clone(), *p)))
            .map(|((k, _), e)| {
                (
                    k.clone(),
                    Candidate {
                        bytes: e.bytes,
                        last_use: e.last_use,
                        leases: e.leases,
                        pinned: self.pinned(k),
                        busy: e.job.is_some(),
                    },
                )
            })
            .unzip()
    }

    /// Frees room for `need` bytes at `place` by evicting idle entries least recently used
    /// first: device copies are demoted (see [`State::demote`]), host copies are freed.
    pub(super) fn make_room(
        &mut self,
        place: Place,
        need: u64,
        protected: &BTreeSet<CopyKey>,
        effects: &mut Vec<Effect>,
    ) -> Room {
        let budget = self.budget(place);
        let pinned: u64 = self
            .entries
            .iter()
            .filter(|((k, p), _)| *p == place && self.pinned(k))
            .map(|(_, e)| e.bytes)
            .sum();
        if need > budget.saturating_sub(pinned) {
            return Room::Never(ResidencyError::DoesNotFit {
                resource: String::new(),
                needed: ByteSize(need),
                tier: place.tier().as_str(),
                budget: ByteSize(budget),
                why: self.pinned_why(place, pinned),
            });
        }
        let (keys, candidates) = self.candidates(place, protected);
        let Some(victims) = pick_victims(&candidates, self.used(place), budget, need) else {
            return Room::Later;
        };
        for v in victims {
            match place {
                Place::Device(d) => self.demote(&keys[v], d, protected, effects),
                Place::Host => self.drop_entry(&keys[v], place, effects),
            }
        }
        if fits(self.used(place), budget, need) {
            Room::Ready
        } else {
            Room::Later
        }
    }

    /// The device for a request of `keys` among `usable`, by placement's rule
    /// ([`choose_device`]); when none can make room now, the first usable device, where it
    /// waits. `None` when nothing is usable.
    pub(super) fn choose(&self, keys: &[ResourceKey], usable: &[DeviceId]) -> Option<DeviceId> {
        let base = keys.iter().find(|k| matches!(k, ResourceKey::Base(_)));
        let rooms: Vec<DeviceRoom> = usable
            .iter()
            .map(|&d| {
                let place = Place::Device(d);
                let need = keys
                    .iter()
                    .filter(|k| self.entry(k, place).is_none())
                    .map(|k| self.registry.bytes(k).unwrap_or(0))
                    .sum();
                DeviceRoom {
                    id: d,
                    holds_base: base.is_some_and(|b| self.entry(b, place).is_some()),
                    need,
                    used: self.used(place),
                    budget: self.budget(place),
                    entries: self.candidates(place, &BTreeSet::new()).1,
                }
            })
            .collect();
        choose_device(&rooms).or_else(|| usable.first().copied())
    }

    /// The device tier's use: every working device together.
    pub(super) fn device_tier(&self) -> (u64, u64) {
        self.devices
            .iter()
            .filter(|d| !self.failed.contains_key(&d.id))
            .map(|d| Place::Device(d.id))
            .fold((0, 0), |(u, b), p| (u + self.used(p), b + self.budget(p)))
    }

    pub(super) fn tier_usage(&self, tier: Tier) -> (u64, u64) {
        match tier {
            Tier::Device => self.device_tier(),
            _ => (self.used(Place::Host), self.budget(Place::Host)),
        }
    }
}
