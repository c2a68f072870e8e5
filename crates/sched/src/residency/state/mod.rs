//! The residency manager's state and its rules, as synchronous methods over plain data, so that
//! they are tested without a runtime. The actor feeds it commands and engine results and
//! carries out the effects it returns.
//!
//! Every copy of a resource is an entry keyed by the resource and its place: one of the
//! engine's devices, or the host. Each device has its own budget; the host tier is shared.
//!
//! How places map onto memory: with separate devices (GPUs), every device and the host are
//! memories of their own, and bringing a resource somewhere copies bytes (an engine transfer
//! job); a move is a copy whose source is then freed. Computing on CPU there is one device
//! whose memory is the host's: a resource then has one copy, its place only says which budget
//! its bytes count against, and promotion or demotion relabels the entry without copying.

use std::collections::{BTreeMap, BTreeSet};

use lensd_core::config::{Budgets, Placement};
use lensd_core::engine::{DeviceInfo, Source};
use lensd_core::registry::{Registry, ResourceKey};
use lensd_core::residency::{DeviceId, Place, Tier};
use lensd_core::ByteSize;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;

use super::actor::Internal;
use super::types::{Lease, PreloadEvent, ResidencyError, UnloadReport};

mod events;
mod fit;
mod report;
mod step;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Job {
    /// Being read from disk into this place.
    Loading(u64),
    /// Being copied here from another place.
    Arriving(u64, Place),
    /// Being copied to another place, then freed (a move).
    Leaving(u64, Place),
    /// Being copied to another place, and staying (the source of a second copy). Work may
    /// lease it meanwhile.
    Lending(u64, Place),
}

impl Job {
    fn id(&self) -> u64 {
        match *self {
            Job::Loading(j) | Job::Arriving(j, _) | Job::Leaving(j, _) | Job::Lending(j, _) => j,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub bytes: u64,
    pub last_use: u64,
    pub leases: u32,
    pub job: Option<Job>,
    /// Gone from the configuration; freed once the last lease ends.
    pub orphan: bool,
}

impl Entry {
    /// Usable by work now.
    pub fn ready(&self) -> bool {
        matches!(self.job, None | Some(Job::Lending(..)))
    }
}

/// One copy: a resource at a place.
pub(crate) type CopyKey = (ResourceKey, Place);

/// Something the actor must do after a state change.
#[derive(Debug)]
pub(crate) enum Effect {
    Load {
        job: u64,
        key: ResourceKey,
        source: Source,
        place: Place,
    },
    Transfer {
        job: u64,
        key: ResourceKey,
        from: Place,
        to: Place,
    },
    Release {
        key: ResourceKey,
        place: Place,
    },
}

pub(crate) enum Want {
    Acquire {
        models: Vec<String>,
        reply: oneshot::Sender<Result<Lease, ResidencyError>>,
        /// Where to report loads this request waits for.
        progress: Option<UnboundedSender<PreloadEvent>>,
    },
    Preload {
        group: String,
        events: UnboundedSender<PreloadEvent>,
        /// Resources already reported ready.
        announced: BTreeSet<ResourceKey>,
    },
}

/// A request waiting for its resources to reach `target`, in arrival order.
pub(crate) struct Waiter {
    keys: Vec<ResourceKey>,
    target: Place,
    want: Want,
}

enum Outcome {
    Done,
    Waiting,
    Failed(ResidencyError),
}

enum Room {
    Ready,
    /// Possible once running work ends or transfers finish.
    Later,
    Never(ResidencyError),
}

pub(crate) struct State {
    registry: Registry,
    budgets: Budgets,
    placement: Placement,
    shared_memory: bool,
    devices: Vec<DeviceInfo>,
    /// Devices lost, with why.
    failed: BTreeMap<DeviceId, String>,
    entries: BTreeMap<CopyKey, Entry>,
    /// Bytes booked against each place as entries come and go; checked against the entries.
    booked: BTreeMap<Place, u64>,
    /// Bookkeeping rules broken at some moment (a leased copy dropped), for the report.
    broken: Vec<String>,
    waiters: Vec<Waiter>,
    next_job: u64,
    release: UnboundedSender<Internal>,
}

impl State {
    pub fn new(
        registry: Registry,
        budgets: Budgets,
        placement: Placement,
        shared_memory: bool,
        devices: Vec<DeviceInfo>,
        release: UnboundedSender<Internal>,
    ) -> Self {
        let mut devices = devices;
        if devices.is_empty() {
            // An engine must have a device; one that lists none computes somewhere unnamed.
            devices.push(DeviceInfo {
                id: DeviceId(0),
                name: "device".into(),
                total_bytes: None,
                free_bytes: None,
            });
        }
        let mut state = State {
            registry,
            budgets,
            placement: Placement::default(),
            shared_memory,
            devices,
            failed: BTreeMap::new(),
            entries: BTreeMap::new(),
            booked: BTreeMap::new(),
            broken: Vec::new(),
            waiters: Vec::new(),
            next_job: 0,
            release,
        };
        match state.check_placement(&placement) {
            Ok(()) => state.placement = placement,
            Err(e) => {
                // Start-up checks the pins first (`Placement::resolve`); these are dropped.
                tracing::error!(%e, "device pins ignored");
                state.placement = Placement {
                    pins: BTreeMap::new(),
                    ..placement
                };
            }
        }
        state
    }

    /// Where every copy is, and whether it is being loaded or moved: what clients are told
    /// about when it changes.
    pub fn placement(&self) -> Vec<(ResourceKey, Place, bool)> {
        self.entries
            .iter()
            .map(|((k, p), e)| (k.clone(), *p, e.job.is_some()))
            .collect()
    }

    fn budget(&self, place: Place) -> u64 {
        match place {
            Place::Host => self.budgets.host,
            Place::Device(d) => self
                .placement
                .device_budgets
                .get(&d)
                .copied()
                .unwrap_or(self.budgets.device),
        }
    }

    /// Bytes counted against `place`, including loads in flight and both ends of copies.
    pub fn used(&self, place: Place) -> u64 {
        self.booked.get(&place).copied().unwrap_or(0)
    }

    fn pinned(&self, key: &ResourceKey) -> bool {
        self.registry.policy(key).pinned
    }

    fn device_name(&self, d: DeviceId) -> String {
        self.devices
            .iter()
            .find(|i| i.id == d)
            .map_or_else(|| d.to_string(), |i| i.name.clone())
    }

    fn place_name(&self, place: Place) -> String {
        match place {
            Place::Host => "host".into(),
            Place::Device(d) => self.device_name(d),
        }
    }

    /// The devices that work and that the groups of `models` may all run on.
    fn usable_devices(&self, models: &[String]) -> Vec<DeviceId> {
        self.devices
            .iter()
            .map(|d| d.id)
            .filter(|d| !self.failed.contains_key(d))
            .filter(|d| {
                models.iter().all(|m| {
                    self.registry
                        .models
                        .get(m)
                        .is_none_or(|r| self.placement.allows(&r.group, *d))
                })
            })
            .collect()
    }

    /// Why none of `models` can run anywhere, or on `device`.
    fn no_device(&self, models: &[String], device: Option<DeviceId>) -> ResidencyError {
        if let Some(d) = device.filter(|d| self.failed.contains_key(d)) {
            return ResidencyError::DeviceFailed {
                device: self.device_name(d),
                why: self.failed[&d].clone(),
            };
        }
        let pins: Vec<String> = models
            .iter()
            .filter_map(|m| self.registry.models.get(m))
            .filter_map(|r| {
                self.placement.pins.get(&r.group).map(|p| {
                    let names: Vec<String> = p
                        .iter()
                        .map(|d| match self.failed.get(d) {
                            Some(why) => format!("{} (failed: {why})", self.device_name(*d)),
                            None => self.device_name(*d),
                        })
                        .collect();
                    format!("group {} is pinned to {}", r.group, names.join(", "))
                })
            })
            .collect();
        let wanted = device.map_or_else(String::new, |d| format!(" on {}", self.device_name(d)));
        ResidencyError::Pinned(format!(
            "{} cannot run{wanted}: {}",
            models.join(", "),
            if pins.is_empty() {
                "every device has failed".to_string()
            } else {
                pins.join("; ")
            }
        ))
    }

    fn describe(&self, key: &ResourceKey) -> String {
        let path = match key {
            ResourceKey::Base(b) => self
                .registry
                .bases
                .get(b)
                .map(|s| s.path.display().to_string()),
            ResourceKey::Lens(l) => self
                .registry
                .lenses
                .get(l)
                .map(|s| s.path.display().to_string()),
        };
        // A full donor says whose it is: a base no group names would puzzle the reader.
        let donor_of = match key {
            ResourceKey::Base(b) => self.registry.donor_of(b),
            ResourceKey::Lens(_) => Vec::new(),
        };
        let role = if donor_of.is_empty() {
            String::new()
        } else {
            format!(", the donor of {}", donor_of.join(", "))
        };
        match path {
            Some(p) => format!("{key} ({p}{role})"),
            None => key.to_string(),
        }
    }

    /// A group pinned to a device the engine does not have.
    fn check_placement(&self, placement: &Placement) -> Result<(), ResidencyError> {
        for (group, pins) in &placement.pins {
            if let Some(d) = pins
                .iter()
                .find(|d| !self.devices.iter().any(|i| i.id == **d))
            {
                let have: Vec<String> = self
                    .devices
                    .iter()
                    .map(|i| format!("{} ({})", i.id.0, i.name))
                    .collect();
                return Err(ResidencyError::UnknownDevice(format!(
                    "group {group} is pinned to {d}, which does not exist; the devices are {}",
                    have.join(", ")
                )));
            }
        }
        Ok(())
    }

    // ---- entries ----------------------------------------------------------------------------

    fn insert(&mut self, key: ResourceKey, place: Place, entry: Entry) {
        *self.booked.entry(place).or_default() += entry.bytes;
        if let Some(old) = self.entries.insert((key, place), entry) {
            *self.booked.entry(place).or_default() -= old.bytes;
        }
    }

    /// Takes a copy out of the books. A leased copy never leaves, but with its lost device.
    fn remove(&mut self, key: &ResourceKey, place: Place) -> Option<Entry> {
        let e = self.entries.remove(&(key.clone(), place))?;
        let booked = self.booked.entry(place).or_default();
        *booked = booked.saturating_sub(e.bytes);
        let lost = place.device().is_some_and(|d| self.failed.contains_key(&d));
        if e.leases > 0 && !lost {
            self.broken
                .push(format!("{key} on {place} was dropped while leased"));
        }
        Some(e)
    }

    /// Moves an entry's label from one place to another (one memory: nothing is copied).
    fn relabel(&mut self, key: &ResourceKey, from: Place, to: Place) {
        if let Some(e) = self.remove(key, from) {
            self.insert(key.clone(), to, e);
        }
    }

    fn entry(&self, key: &ResourceKey, place: Place) -> Option<&Entry> {
        self.entries.get(&(key.clone(), place))
    }

    fn entry_mut(&mut self, key: &ResourceKey, place: Place) -> Option<&mut Entry> {
        self.entries.get_mut(&(key.clone(), place))
    }

    /// Every copy of `key`, devices first.
    fn copies(&self, key: &ResourceKey) -> Vec<(Place, &Entry)> {
        self.entries
            .range((key.clone(), Place::Device(DeviceId(0)))..=(key.clone(), Place::Host))
            .map(|((_, p), e)| (*p, e))
            .collect()
    }

    /// Where the copy a job concerns is, and the other end of the job if it is a copy.
    fn find_job(&self, job: u64) -> Vec<(CopyKey, Job)> {
        self.entries
            .iter()
            .filter_map(|(k, e)| e.job.filter(|j| j.id() == job).map(|j| (k.clone(), j)))
            .collect()
    }

    // ---- commands ---------------------------------------------------------------------------

    /// Queues a request for every resource of `models` on `device` (or, when `None`, the
    /// device placement picks); the lease is sent once all are there. Loads it waits for are
    /// reported on `progress`.
    pub fn acquire(
        &mut self,
        models: Vec<String>,
        device: Option<DeviceId>,
        progress: Option<UnboundedSender<PreloadEvent>>,
        reply: oneshot::Sender<Result<Lease, ResidencyError>>,
        now: u64,
    ) -> Vec<Effect> {
        let mut keys: Vec<ResourceKey> = Vec::new();
        for m in &models {
            match self.registry.needs(m) {
                Some(needs) => {
                    for k in needs {
                        if !keys.contains(&k) {
                            keys.push(k);
                        }
                    }
                }
                None => {
                    let _ = reply.send(Err(ResidencyError::UnknownModel(m.clone())));
                    return self.step(now);
                }
            }
        }
        if models.is_empty() {
            let _ = reply.send(Err(ResidencyError::UnknownModel(String::new())));
            return self.step(now);
        }
        // Bases before lenses, so that a model's base is in place before its lens loads.
        keys.sort_by_key(|k| matches!(k, ResourceKey::Lens(_)));
        let usable = self.usable_devices(&models);
        let device = match device {
            Some(d) if usable.contains(&d) => d,
            Some(d) => {
                let _ = reply.send(Err(self.no_device(&models, Some(d))));
                return self.step(now);
            }
            None => match self.choose(&keys, &usable) {
                Some(d) => d,
                None => {
                    let _ = reply.send(Err(self.no_device(&models, None)));
                    return self.step(now);
                }
            },
        };
        self.waiters.push(Waiter {
            keys,
            target: Place::Device(device),
            want: Want::Acquire {
                models,
                reply,
                progress,
            },
        });
        self.step(now)
    }

    /// Starts bringing every resource of `group` to the host, or to a device placement picks
    /// (its pins respected).
    pub fn preload(
        &mut self,
        group: String,
        tier: Tier,
        events: UnboundedSender<PreloadEvent>,
        now: u64,
    ) -> Result<Vec<Effect>, ResidencyError> {
        let keys = self
            .registry
            .group_needs(&group)
            .ok_or_else(|| ResidencyError::UnknownGroup(group.clone()))?;
        let target = if tier == Tier::Device {
            let models = self.registry.groups[&group].clone();
            let usable = self.usable_devices(&models);
            match self.choose(&keys, &usable) {
                Some(d) => Place::Device(d),
                None => return Err(self.no_device(&models, None)),
            }
        } else {
            Place::Host
        };
        self.waiters.push(Waiter {
            keys,
            target,
            want: Want::Preload {
                group,
                events,
                announced: BTreeSet::new(),
            },
        });
        Ok(self.step(now))
    }

    /// Takes the group's idle copies down: device copies are demoted to the host (`to` host)
    /// or freed (`to` disk), host copies are freed. Copies in use, pinned, moving or wanted by
    /// a waiting request stay.
    pub fn unload(
        &mut self,
        group: &str,
        to: Tier,
        now: u64,
    ) -> Result<(UnloadReport, Vec<Effect>), ResidencyError> {
        let keys = self
            .registry
            .group_needs(group)
            .ok_or_else(|| ResidencyError::UnknownGroup(group.into()))?;
        let protected = self.protected(self.waiters.len());
        let mut report = UnloadReport {
            moved: Vec::new(),
            kept: Vec::new(),
        };
        let mut effects = Vec::new();
        for key in keys {
            let places: Vec<(Place, Option<&'static str>)> = self
                .copies(&key)
                .into_iter()
                .map(|(place, e)| {
                    let reason = if e.leases > 0 {
                        Some("in use")
                    } else if self.pinned(&key) {
                        Some("pinned")
                    } else if e.job.is_some() {
                        Some("loading or moving")
                    } else if protected.contains(&(key.clone(), place)) {
                        Some("wanted by a waiting request")
                    } else {
                        None
                    };
                    (place, reason)
                })
                .collect();
            if places.is_empty() {
                continue;
            }
            let mut changed = false;
            for (place, reason) in places {
                if let Some(r) = reason {
                    let kept = (key.clone(), r.to_string());
                    if !report.kept.contains(&kept) {
                        report.kept.push(kept);
                    }
                    continue;
                }
                match (place, to) {
                    (Place::Device(d), Tier::Host) => {
                        self.demote(&key, d, &protected, &mut effects)
                    }
                    (_, Tier::Disk) | (Place::Host, _) => {
                        self.drop_entry(&key, place, &mut effects)
                    }
                    (Place::Device(_), Tier::Device) => {}
                }
                changed = true;
            }
            if changed {
                report.moved.push((key.clone(), self.best_tier(&key)));
            }
        }
        effects.extend(self.step(now));
        Ok((report, effects))
    }

    /// Device if any copy is on a device, else host if one is there, else disk.
    fn best_tier(&self, key: &ResourceKey) -> Tier {
        self.copies(key)
            .first()
            .map_or(Tier::Disk, |(place, _)| place.tier())
    }

    /// Replaces the registry and budgets, and the placement when one is given. Resources still
    /// named keep their copies; those no longer named are freed, or when in use, freed as their
    /// last lease ends.
    pub fn reload(
        &mut self,
        registry: Registry,
        budgets: Budgets,
        placement: Option<Placement>,
        now: u64,
    ) -> Result<Vec<Effect>, ResidencyError> {
        if let Some(p) = &placement {
            self.check_placement(p)?;
        }
        let next_budget = |place: Place| match place {
            Place::Host => budgets.host,
            Place::Device(d) => placement
                .as_ref()
                .unwrap_or(&self.placement)
                .device_budgets
                .get(&d)
                .copied()
                .unwrap_or(budgets.device),
        };
        let mut held: BTreeMap<Place, u64> = BTreeMap::new();
        for ((k, place), e) in &self.entries {
            if e.leases > 0 || e.job.is_some() || registry.policy(k).pinned {
                *held.entry(*place).or_default() += e.bytes;
            }
        }
        for (place, bytes) in held {
            if bytes > next_budget(place) {
                return Err(ResidencyError::BudgetTooSmall(format!(
                    "{} holds {} but the new budget is {}",
                    self.place_name(place),
                    ByteSize(bytes),
                    ByteSize(next_budget(place))
                )));
            }
        }
        self.registry = registry;
        self.budgets = budgets;
        if let Some(p) = placement {
            self.placement = p;
        }
        let mut effects = Vec::new();
        let gone: Vec<CopyKey> = self
            .entries
            .keys()
            .filter(|(k, _)| self.registry.bytes(k).is_none())
            .cloned()
            .collect();
        for (key, place) in gone {
            let e = self.entry_mut(&key, place).expect("listed");
            if e.leases == 0 && e.job.is_none() {
                self.drop_entry(&key, place, &mut effects);
            } else {
                e.orphan = true;
            }
        }
        let mut i = 0;
        while i < self.waiters.len() {
            match self.waiters[i]
                .keys
                .iter()
                .find(|k| self.registry.bytes(k).is_none())
            {
                Some(k) => {
                    let err = ResidencyError::Removed(k.to_string());
                    let w = self.waiters.remove(i);
                    self.fail(w, err);
                }
                None => i += 1,
            }
        }
        // Tighter budgets may leave a place over: demote or free idle entries until it fits.
        let places: Vec<Place> = self
            .devices
            .iter()
            .map(|d| Place::Device(d.id))
            .chain([Place::Host])
            .collect();
        for place in places {
            let protected = self.protected(self.waiters.len());
            let _ = self.make_room(place, 0, &protected, &mut effects);
        }
        effects.extend(self.step(now));
        Ok(effects)
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod props;
