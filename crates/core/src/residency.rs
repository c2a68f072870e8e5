//! Pure rules of residency: tiers, whether bytes fit a budget, and which entries to evict.
//! The actor that applies them lives in the scheduler crate.

use serde::Serialize;

/// Where a resource's bytes are.
///
/// `Device` is where compute runs (GPU memory; on a CPU machine, the process's RAM), `Host` is
/// RAM holding idle weights so that they return quickly, `Disk` means not loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    Device,
    Host,
    Disk,
}

impl Tier {
    pub fn as_str(&self) -> &'static str {
        match self {
            Tier::Device => "device",
            Tier::Host => "host",
            Tier::Disk => "disk",
        }
    }
}

/// An entry of one tier, as eviction sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub bytes: u64,
    /// Monotonic time of last use; smaller is older.
    pub last_use: u64,
    pub leases: u32,
    pub pinned: bool,
    /// Being loaded or moved right now.
    pub busy: bool,
}

impl Candidate {
    pub fn evictable(&self) -> bool {
        self.leases == 0 && !self.pinned && !self.busy
    }
}

/// Whether `need` more bytes fit in a tier that holds `used` of `budget`.
pub fn fits(used: u64, budget: u64, need: u64) -> bool {
    used.checked_add(need).is_some_and(|total| total <= budget)
}

/// Rule: evict idle entries (no lease, not pinned, not busy), least recently used first, and
/// no more than needed for `need` bytes to fit. Returns their indices, or `None` if evicting
/// every idle entry would still not make room.
pub fn pick_victims(
    entries: &[Candidate],
    used: u64,
    budget: u64,
    need: u64,
) -> Option<Vec<usize>> {
    if fits(used, budget, need) {
        return Some(Vec::new());
    }
    let mut idle: Vec<usize> = (0..entries.len())
        .filter(|&i| entries[i].evictable())
        .collect();
    idle.sort_by_key(|&i| (entries[i].last_use, i));
    let mut freed = 0u64;
    let mut out = Vec::new();
    for i in idle {
        out.push(i);
        freed += entries[i].bytes;
        if fits(used.saturating_sub(freed), budget, need) {
            return Some(out);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(bytes: u64, last_use: u64) -> Candidate {
        Candidate {
            bytes,
            last_use,
            leases: 0,
            pinned: false,
            busy: false,
        }
    }

    #[test]
    fn nothing_is_evicted_when_the_bytes_fit() {
        assert_eq!(pick_victims(&[c(50, 1)], 50, 100, 50), Some(vec![]));
    }

    #[test]
    fn the_least_recently_used_go_first_and_only_as_many_as_needed() {
        // used 90 of 100, need 30: evicting the oldest (index 2, 20 bytes) is enough.
        let e = [c(40, 5), c(30, 9), c(20, 1)];
        assert_eq!(pick_victims(&e, 90, 100, 30), Some(vec![2]));
        // need 60: the oldest two.
        assert_eq!(pick_victims(&e, 90, 100, 60), Some(vec![2, 0]));
    }

    #[test]
    fn leased_pinned_and_busy_entries_are_never_chosen() {
        let mut leased = c(60, 0);
        leased.leases = 1;
        let mut pinned = c(20, 1);
        pinned.pinned = true;
        let mut busy = c(10, 2);
        busy.busy = true;
        let e = [leased, pinned, busy, c(10, 3)];
        assert_eq!(pick_victims(&e, 100, 100, 10), Some(vec![3]));
        assert_eq!(
            pick_victims(&e, 100, 100, 11),
            None,
            "only 10 idle bytes exist"
        );
    }

    #[test]
    fn a_need_larger_than_the_budget_never_fits() {
        assert_eq!(pick_victims(&[c(10, 0)], 10, 100, 101), None);
        assert!(!fits(0, 100, 101));
        assert!(!fits(u64::MAX, u64::MAX, 1), "no overflow");
    }

    #[test]
    fn ties_in_last_use_break_by_position() {
        let e = [c(10, 5), c(10, 5)];
        assert_eq!(pick_victims(&e, 20, 20, 10), Some(vec![0]));
    }
}
