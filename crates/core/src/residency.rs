//! Pure rules of residency: tiers and places, whether bytes fit a budget, which entries to
//! evict, which device a base goes to, and when a busy base earns a second copy. The actor that
//! applies them lives in the scheduler crate.

use serde::{Deserialize, Serialize};

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

/// A compute device of the engine (a GPU, or the CPU), numbered from 0 in the order the engine
/// lists them.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct DeviceId(pub u16);

impl std::fmt::Display for DeviceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "device {}", self.0)
    }
}

/// Where one copy of a resource's bytes is: on a device, or in host RAM. A resource may have
/// copies in several places (one per device that computes with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Place {
    Device(DeviceId),
    Host,
}

impl Place {
    pub fn tier(&self) -> Tier {
        match self {
            Place::Device(_) => Tier::Device,
            Place::Host => Tier::Host,
        }
    }

    pub fn device(&self) -> Option<DeviceId> {
        match self {
            Place::Device(d) => Some(*d),
            Place::Host => None,
        }
    }
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Device(d) => d.fmt(f),
            Place::Host => f.write_str("host"),
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

/// A device as placement sees it, for one request's resources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRoom {
    pub id: DeviceId,
    /// The request's base is there already (ready, or on its way).
    pub holds_base: bool,
    /// Bytes of the request's resources not there yet.
    pub need: u64,
    pub used: u64,
    pub budget: u64,
    /// Its entries, as eviction sees them.
    pub entries: Vec<Candidate>,
}

impl DeviceRoom {
    /// `None` when the need fits without evicting anything; else the most recent use among
    /// the entries that would be evicted, or `u64::MAX` when evicting every idle entry would
    /// still not make room.
    fn eviction_age(&self) -> Option<u64> {
        if fits(self.used, self.budget, self.need) {
            return None;
        }
        Some(
            pick_victims(&self.entries, self.used, self.budget, self.need).map_or(u64::MAX, |v| {
                v.iter()
                    .map(|&i| self.entries[i].last_use)
                    .max()
                    .unwrap_or(0)
            }),
        )
    }
}

/// Rule: a device that holds the base already; else one where the rest fits without evicting
/// anything, the one with the most room left first; else the one whose evictions are least
/// recently used (the newest of the entries it would evict is the oldest). `None` when no
/// device can make room now. Ties go to the lowest id.
pub fn choose_device(rooms: &[DeviceRoom]) -> Option<DeviceId> {
    rooms
        .iter()
        .filter_map(|r| {
            let age = r.eviction_age();
            if age == Some(u64::MAX) && !r.holds_base {
                return None;
            }
            let left = r.budget.saturating_sub(r.used.saturating_add(r.need));
            // Smaller sorts first.
            Some((
                (!r.holds_base, age.is_some(), age, u64::MAX - left, r.id),
                r.id,
            ))
        })
        .min()
        .map(|(_, id)| id)
}

/// What the replication rule weighs for one base and one device whose worker is free.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyCase {
    /// Requests waiting for the base that the device may run (their groups' pins allow it).
    pub waiting: usize,
    /// Copies of the base on devices whose workers are free: each starts one request now.
    pub free_copies: usize,
    /// Measured mean compute time of one request on this base; `None` before one has run.
    pub service_ms: Option<u64>,
    /// Bytes the copy brings to the device (the base and what its requests need beside it).
    pub bytes: u64,
    /// Measured (or, before any load, configured) bytes loaded per millisecond.
    pub load_bytes_per_ms: u64,
    /// The device can make room for `bytes` by evicting idle entries only.
    pub room: bool,
}

impl CopyCase {
    /// Estimated time to bring the copy in.
    pub fn copy_ms(&self) -> u64 {
        self.bytes / self.load_bytes_per_ms.max(1)
    }
}

/// Rule: a busy base gets a copy on a free device when the requests waiting for it beyond those
/// its copies on free devices can start now, times its measured mean compute time, exceed the
/// estimated copy time (bytes ÷ load rate), and the device has room without evicting anything
/// leased.
pub fn worth_a_copy(c: &CopyCase) -> bool {
    let Some(service_ms) = c.service_ms else {
        return false;
    };
    let beyond = c.waiting.saturating_sub(c.free_copies) as u64;
    c.room && beyond.saturating_mul(service_ms) > c.copy_ms()
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

#[cfg(test)]
mod placement_tests {
    use super::*;

    fn room(id: u16, used: u64, entries: &[(u64, u64)]) -> DeviceRoom {
        DeviceRoom {
            id: DeviceId(id),
            holds_base: false,
            need: 40,
            used,
            budget: 100,
            entries: entries
                .iter()
                .map(|&(bytes, last_use)| Candidate {
                    bytes,
                    last_use,
                    leases: 0,
                    pinned: false,
                    busy: false,
                })
                .collect(),
        }
    }

    #[test]
    fn a_device_with_room_beats_one_that_must_evict() {
        let rooms = [room(0, 80, &[(80, 1)]), room(1, 50, &[(50, 9)])];
        assert_eq!(choose_device(&rooms), Some(DeviceId(1)));
    }

    #[test]
    fn among_devices_with_room_the_emptiest_then_the_lowest_id() {
        let rooms = [room(0, 30, &[]), room(1, 10, &[]), room(2, 10, &[])];
        assert_eq!(choose_device(&rooms), Some(DeviceId(1)));
    }

    #[test]
    fn when_all_must_evict_the_least_recently_used_evictions_win() {
        // Device 0 would evict an entry used at 7, device 1 one used at 3.
        let rooms = [room(0, 90, &[(90, 7)]), room(1, 90, &[(90, 3)])];
        assert_eq!(choose_device(&rooms), Some(DeviceId(1)));
        // Device 1 must evict two entries, the newer used at 8: device 0 wins.
        let rooms = [room(0, 90, &[(90, 7)]), room(1, 90, &[(20, 2), (70, 8)])];
        assert_eq!(choose_device(&rooms), Some(DeviceId(0)));
    }

    #[test]
    fn a_device_holding_the_base_comes_first_and_a_full_one_never() {
        let mut holder = room(1, 90, &[(90, 1)]);
        holder.holds_base = true;
        let rooms = [room(0, 0, &[]), holder];
        assert_eq!(choose_device(&rooms), Some(DeviceId(1)));
        let mut leased = room(0, 90, &[(90, 1)]);
        leased.entries[0].leases = 1;
        assert_eq!(choose_device(&[leased]), None, "nothing idle to evict");
    }

    fn case(waiting: usize, free_copies: usize, service_ms: Option<u64>) -> CopyCase {
        CopyCase {
            waiting,
            free_copies,
            service_ms,
            bytes: 1_000_000,
            load_bytes_per_ms: 1_000,
            room: true,
        }
    }

    #[test]
    fn a_copy_pays_when_the_waiting_work_beyond_free_copies_outlasts_the_copy() {
        // Copy time 1,000 ms; requests of 300 ms each.
        assert!(!worth_a_copy(&case(3, 0, Some(300))), "900 ms of work");
        assert!(worth_a_copy(&case(4, 0, Some(300))), "1,200 ms of work");
        assert!(
            !worth_a_copy(&case(4, 1, Some(300))),
            "one starts now on a free copy"
        );
        assert!(!worth_a_copy(&case(40, 0, None)), "nothing measured yet");
        let mut full = case(40, 0, Some(300));
        full.room = false;
        assert!(!worth_a_copy(&full), "no room without evicting a lease");
        assert_eq!(case(1, 0, None).copy_ms(), 1_000);
    }
}
