//! Whether a waiting request can ever be met within its tier's budget.

use lensd_core::registry::ResourceKey;
use lensd_core::residency::Tier;
use lensd_core::ByteSize;

use super::State;
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
}
