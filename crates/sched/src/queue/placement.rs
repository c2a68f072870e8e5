//! Which free device takes which waiting request, with the placement and replication rules of
//! `docs/scheduler.md`:
//!
//! - Each free device's candidates are the waiting requests its groups' pins allow there whose
//!   base is on that device (ready or on its way), whose base is on no device (and that
//!   placement gives to this device), or whose base is only on busy devices when a second copy
//!   pays. Among its candidates the device takes what the policy picks (see [`policy`]), so
//!   work on its own base goes first and aging keeps anything from starving.
//! - Placement: a base on no device goes to a free device where it fits without evicting
//!   anything, the emptiest first; else to the one whose evictions are least recently used
//!   ([`choose_device`]). A base is moved only when its device needs the room for other work.
//! - Replication: a base whose copies are all busy gets a copy on a free device when the
//!   requests waiting for it beyond what its free copies start now, times its measured mean
//!   compute time, exceed the estimated copy time, and the device has room without evicting
//!   anything leased ([`worth_a_copy`]).

use lensd_core::registry::{BaseKey, ResourceKey};
use lensd_core::residency::{
    choose_device, pick_victims, worth_a_copy, Candidate, CopyCase, DeviceId, DeviceRoom,
};
use lensd_core::work::RequestId;

use super::policy;
use super::state::{Running, State, Task};

impl State {
    /// A device that exists and has not been lost.
    fn working(&self, d: DeviceId) -> bool {
        !self.lost.contains(&d) && self.layout.devices.iter().any(|x| x.id == d && !x.failed)
    }

    /// The working devices that every model of `task` may run on.
    fn allowed(&self, task: &Task) -> Vec<DeviceId> {
        self.layout
            .devices
            .iter()
            .map(|d| d.id)
            .filter(|&d| self.working(d))
            .filter(|&d| {
                task.models.iter().all(|m| {
                    self.registry
                        .models
                        .get(m)
                        .is_none_or(|r| self.layout.allows(&r.group, d))
                })
            })
            .collect()
    }

    /// Ends the waiting requests that no working device may run (their groups are pinned to
    /// devices that failed), naming the pins.
    pub fn fail_stranded(&mut self) {
        if self.layout.devices.is_empty() {
            return;
        }
        let mut i = 0;
        while i < self.queued.len() {
            if !self.allowed(&self.queued[i].task).is_empty() {
                i += 1;
                continue;
            }
            let why: Vec<String> = self.queued[i]
                .task
                .models
                .iter()
                .filter_map(|m| self.registry.models.get(m))
                .filter_map(|r| {
                    let pins = self.layout.pins.get(&r.group)?;
                    let names: Vec<String> = pins
                        .iter()
                        .map(|d| {
                            self.layout
                                .devices
                                .iter()
                                .find(|x| x.id == *d)
                                .map_or_else(|| d.to_string(), |x| x.name.clone())
                        })
                        .collect();
                    Some(format!(
                        "group {} is pinned to {}, which failed",
                        r.group,
                        names.join(", ")
                    ))
                })
                .collect();
            let message = if why.is_empty() {
                "every device has failed; nothing can run".to_string()
            } else {
                format!("no device may run this request: {}", why.join("; "))
            };
            self.fail_queued(i, "unavailable", message);
        }
    }

    /// The next request for one of the `idle` devices, and which device takes it.
    pub fn next(&mut self, idle: &[DeviceId], now: u64) -> Option<(DeviceId, Task)> {
        let idle: Vec<DeviceId> = idle
            .iter()
            .copied()
            .filter(|&d| self.working(d) && !self.running.iter().any(|r| r.device == d))
            .collect();
        let waiting = self.waiting();
        let allowed: Vec<Vec<DeviceId>> =
            self.queued.iter().map(|q| self.allowed(&q.task)).collect();
        for &d in &idle {
            let candidates: Vec<usize> = (0..self.queued.len())
                .filter(|&i| waiting[i].eligible && self.candidate(i, d, &idle, &allowed))
                .collect();
            if candidates.is_empty() {
                continue;
            }
            let sub: Vec<policy::Waiting> =
                candidates.iter().map(|&i| waiting[i].clone()).collect();
            let mut view = self.view(now);
            view.on_device = self.ready_bases(d);
            let Some(k) = policy::pick(self.config.policy, &sub, &view) else {
                continue;
            };
            let mut q = self.queued.remove(candidates[k]);
            q.task.resident = view.on_device.contains(&q.task.base);
            self.last_start.insert(q.task.client.clone(), now);
            self.running.push(Running {
                id: q.task.id,
                client: q.task.client.clone(),
                cancel: q.task.cancel.clone(),
                deadline_ms: q.task.deadline_ms,
                device: d,
                base: q.task.base.clone(),
            });
            self.update_positions(now);
            return Some((d, q.task));
        }
        None
    }

    fn ready_bases(&self, d: DeviceId) -> std::collections::BTreeSet<BaseKey> {
        self.layout
            .devices
            .iter()
            .filter(|x| x.id == d)
            .flat_map(|x| x.copies.iter().filter(|c| c.ready))
            .filter_map(|c| match &c.resource {
                ResourceKey::Base(b) => Some(b.clone()),
                ResourceKey::Lens(_) => None,
            })
            .collect()
    }

    /// Whether free device `d` may take waiting request `i` (see the module's rules), given
    /// the devices each waiting request may run on.
    fn candidate(
        &self,
        i: usize,
        d: DeviceId,
        idle: &[DeviceId],
        allowed_all: &[Vec<DeviceId>],
    ) -> bool {
        let task = &self.queued[i].task;
        let allowed = &allowed_all[i];
        if !allowed.contains(&d) {
            return false;
        }
        let base = ResourceKey::Base(task.base.clone());
        let homes: Vec<DeviceId> = allowed
            .iter()
            .copied()
            .filter(|&h| {
                self.layout.holds(h, &base)
                    || self
                        .running
                        .iter()
                        .any(|r| r.device == h && r.base == task.base)
            })
            .collect();
        if homes.contains(&d) {
            return true;
        }
        if homes.is_empty() {
            let options: Vec<DeviceId> = idle
                .iter()
                .copied()
                .filter(|x| allowed.contains(x))
                .collect();
            return self.place(task, &options) == Some(d);
        }
        if homes.iter().any(|h| idle.contains(h)) {
            // A free device holds it: that one takes it.
            return false;
        }
        worth_a_copy(&self.copy_case(task, d, allowed_all))
    }

    /// Bytes of `task`'s resources not on `d`, and `d`'s entries as eviction sees them, with
    /// its use and budget.
    fn room_on(&self, task: &Task, d: DeviceId) -> DeviceRoom {
        let device = self.layout.devices.iter().find(|x| x.id == d);
        let mut keys: Vec<ResourceKey> = Vec::new();
        for m in &task.models {
            for k in self.registry.needs(m).unwrap_or_default() {
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
        }
        let need = keys
            .iter()
            .filter(|k| !self.layout.holds(d, k))
            .map(|k| self.registry.bytes(k).unwrap_or(0))
            .sum();
        DeviceRoom {
            id: d,
            holds_base: false,
            need,
            used: device.map_or(0, |x| x.used),
            budget: device.map_or(0, |x| x.budget),
            entries: device.map_or_else(Vec::new, |x| {
                x.copies
                    .iter()
                    .map(|c| Candidate {
                        bytes: c.bytes,
                        last_use: c.last_use,
                        leases: c.leases,
                        pinned: c.pinned,
                        busy: c.busy,
                    })
                    .collect()
            }),
        }
    }

    /// The free device among `options` that a request whose base is on no device goes to;
    /// the first of them when none can make room now (the request then waits there).
    fn place(&self, task: &Task, options: &[DeviceId]) -> Option<DeviceId> {
        let rooms: Vec<DeviceRoom> = options.iter().map(|&d| self.room_on(task, d)).collect();
        choose_device(&rooms).or_else(|| options.first().copied())
    }

    /// What the replication rule weighs for a copy of `task`'s base on free device `d`, whose
    /// copies are all on busy devices.
    fn copy_case(&self, task: &Task, d: DeviceId, allowed_all: &[Vec<DeviceId>]) -> CopyCase {
        let waiting = self
            .queued
            .iter()
            .zip(allowed_all)
            .filter(|(q, allowed)| {
                q.after.is_none() && q.task.base == task.base && allowed.contains(&d)
            })
            .count();
        let room = self.room_on(task, d);
        CopyCase {
            waiting,
            free_copies: 0,
            service_ms: self.service_ms.get(&task.base).copied(),
            bytes: room.need,
            load_bytes_per_ms: self
                .load_bytes_per_ms
                .unwrap_or(self.config.initial_load_bytes_per_ms),
            room: pick_victims(&room.entries, room.used, room.budget, room.need).is_some(),
        }
    }

    /// A device's worker stopped: the device was lost.
    pub fn device_lost(&mut self, device: DeviceId) {
        self.lost.insert(device);
    }

    /// Records how long a request's computation on `base` took, and how fast its loads went
    /// (bytes, milliseconds).
    pub fn measured(
        &mut self,
        base: &BaseKey,
        service_ms: Option<u64>,
        loaded: Option<(u64, u64)>,
    ) {
        // Moving averages, so that one slow request or load does not dominate.
        if let Some(ms) = service_ms {
            let mean = self.service_ms.entry(base.clone()).or_insert(ms);
            *mean = (*mean * 3 + ms) / 4;
        }
        if let Some((bytes, ms)) = loaded.filter(|&(b, ms)| b > 0 && ms > 0) {
            let rate = (bytes / ms).max(1);
            let mean = self.load_bytes_per_ms.get_or_insert(rate);
            *mean = (*mean * 3 + rate) / 4;
        }
    }

    /// The base of running request `id`.
    pub fn running_base(&self, id: RequestId) -> Option<BaseKey> {
        self.running
            .iter()
            .find(|r| r.id == id)
            .map(|r| r.base.clone())
    }
}
