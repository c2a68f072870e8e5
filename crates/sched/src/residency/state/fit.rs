//! Room in a tier: whether a waiting request can ever be met within its budget, and making
//! room by evicting idle entries.

use std::collections::BTreeSet;

use lensd_core::registry::ResourceKey;
use lensd_core::residency::{fits, pick_victims, Candidate, Tier};
use lensd_core::ByteSize;

use super::{Effect, Room, State};
use crate::residency::types::ResidencyError;

impl State {
    /// A request whose resources together exceed its target tier's budget, less what others
    /// pin there, can never be met: each may fit alone, but it keeps the earlier ones it loaded.
    /// Checked before anything moves, also for one resource that arrives from the host tier,
    /// whose relabelling on shared memory needs no new room.
    pub(super) fn never_fits(&self, i: usize) -> Option<ResidencyError> {
        let w = &self.waiters[i];
        let target = w.target;
        let bytes = |k: &ResourceKey| {
            self.entries
                .get(k)
                .map_or_else(|| self.registry.bytes(k).unwrap_or(0), |e| e.bytes)
        };
        let need: u64 = w
            .keys
            .iter()
            .filter(|k| {
                // On the device counts as placed for a host preload.
                !(target == Tier::Host
                    && self.entries.get(*k).is_some_and(|e| e.tier == Tier::Device))
            })
            .map(bytes)
            .sum();
        let pinned: u64 = self
            .entries
            .iter()
            .filter(|(k, e)| e.tier == target && self.pinned(k) && !w.keys.contains(*k))
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
            tier: target.as_str(),
            budget: ByteSize(budget),
            why: if pinned > 0 {
                format!(" and {} of it is pinned", ByteSize(pinned))
            } else {
                String::new()
            },
        })
    }

    /// Frees room for `need` bytes in `tier` by evicting idle entries least recently used first:
    /// device entries are demoted to the host when it has room, host entries are freed.
    pub(super) fn make_room(
        &mut self,
        tier: Tier,
        need: u64,
        protected: &BTreeSet<ResourceKey>,
        effects: &mut Vec<Effect>,
    ) -> Room {
        let budget = self.budget(tier);
        let pinned: u64 = self
            .entries
            .iter()
            .filter(|(k, e)| e.tier == tier && self.pinned(k))
            .map(|(_, e)| e.bytes)
            .sum();
        if need > budget.saturating_sub(pinned) {
            let why = if pinned > 0 {
                format!(" and {} of it is pinned", ByteSize(pinned))
            } else {
                String::new()
            };
            return Room::Never(ResidencyError::DoesNotFit {
                resource: String::new(),
                needed: ByteSize(need),
                tier: tier.as_str(),
                budget: ByteSize(budget),
                why,
            });
        }
        let keys: Vec<ResourceKey> = self
            .entries
            .iter()
            .filter(|(k, e)| e.tier == tier && !protected.contains(*k))
            .map(|(k, _)| k.clone())
            .collect();
        let candidates: Vec<Candidate> = keys
            .iter()
            .map(|k| {
                let e = &self.entries[k];
                Candidate {
                    bytes: e.bytes,
                    last_use: e.last_use,
                    leases: e.leases,
                    pinned: self.pinned(k),
                    busy: e.job.is_some(),
                }
            })
            .collect();
        let Some(victims) = pick_victims(&candidates, self.used(tier), budget, need) else {
            return Room::Later;
        };
        for v in victims {
            let key = keys[v].clone();
            if tier == Tier::Device {
                self.demote(&key, protected, effects);
            } else {
                self.drop_entry(&key, effects);
            }
        }
        if fits(self.used(tier), budget, need) {
            Room::Ready
        } else {
            Room::Later
        }
    }
}
