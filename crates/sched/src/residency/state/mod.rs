//! The residency manager's state and its rules, as synchronous methods over plain data, so that
//! they are tested without a runtime. The actor feeds it commands and engine results and
//! carries out the effects it returns.
//!
//! How tiers map onto memory: with a separate device (a GPU), `Device` and `Host` are two
//! memories and moving between them copies bytes (an engine transfer job). Computing on CPU,
//! both tiers are the process's RAM: an entry's tier then only says which budget its bytes
//! count against, and promotion or demotion relabels the entry without copying anything.

use std::collections::{BTreeMap, BTreeSet};

use lensd_core::config::Budgets;
use lensd_core::engine::Source;
use lensd_core::registry::{Registry, ResourceKey};
use lensd_core::residency::Tier;
use lensd_core::ByteSize;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;

use super::actor::Internal;
use super::types::{Lease, PreloadEvent, ResidencyError, UnloadReport};

mod fit;
mod report;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Job {
    /// Reading from disk into the entry's tier.
    Loading(u64),
    /// Copying from `from` into the entry's tier; the bytes count in both until done.
    Moving(u64, Tier),
}

#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// Where the bytes are, or are going.
    pub tier: Tier,
    pub bytes: u64,
    pub last_use: u64,
    pub leases: u32,
    pub job: Option<Job>,
    /// Gone from the configuration; freed once the last lease ends.
    pub orphan: bool,
}

/// Something the actor must do after a state change.
#[derive(Debug)]
pub(crate) enum Effect {
    Load {
        job: u64,
        key: ResourceKey,
        source: Source,
        tier: Tier,
    },
    Transfer {
        job: u64,
        key: ResourceKey,
        from: Tier,
        to: Tier,
    },
    Release {
        key: ResourceKey,
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
    target: Tier,
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
    shared_memory: bool,
    entries: BTreeMap<ResourceKey, Entry>,
    waiters: Vec<Waiter>,
    next_job: u64,
    release: UnboundedSender<Internal>,
}

impl State {
    pub fn new(
        registry: Registry,
        budgets: Budgets,
        shared_memory: bool,
        release: UnboundedSender<Internal>,
    ) -> Self {
        State {
            registry,
            budgets,
            shared_memory,
            entries: BTreeMap::new(),
            waiters: Vec::new(),
            next_job: 0,
            release,
        }
    }

    /// Where every known resource is, and whether it is being loaded or moved: what clients
    /// are told about when it changes.
    pub fn placement(&self) -> Vec<(ResourceKey, Tier, bool)> {
        self.entries
            .iter()
            .map(|(k, e)| (k.clone(), e.tier, e.job.is_some()))
            .collect()
    }

    fn budget(&self, tier: Tier) -> u64 {
        match tier {
            Tier::Device => self.budgets.device,
            Tier::Host => self.budgets.host,
            Tier::Disk => u64::MAX,
        }
    }

    /// Bytes counted against `tier`, including loads in flight and both ends of transfers.
    pub fn used(&self, tier: Tier) -> u64 {
        self.entries
            .values()
            .filter(|e| {
                e.tier == tier || matches!(e.job, Some(Job::Moving(_, from)) if from == tier)
            })
            .map(|e| e.bytes)
            .sum()
    }

    fn pinned(&self, key: &ResourceKey) -> bool {
        self.registry.policy(key).pinned
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

    // ---- commands ---------------------------------------------------------------------------

    /// Queues a request for every resource of `models`; the lease is sent once all are on the
    /// device. Loads it waits for are reported on `progress`.
    pub fn acquire(
        &mut self,
        models: Vec<String>,
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
        self.waiters.push(Waiter {
            keys,
            target: Tier::Device,
            want: Want::Acquire {
                models,
                reply,
                progress,
            },
        });
        self.step(now)
    }

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
        let target = if tier == Tier::Disk { Tier::Host } else { tier };
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

    /// Demotes the group's idle resources to `to` (host, or disk to free them). Resources in use,
    /// pinned, or moving stay where they are.
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
            let Some(e) = self.entries.get(&key) else {
                continue;
            };
            let reason = if e.leases > 0 {
                Some("in use")
            } else if self.pinned(&key) {
                Some("pinned")
            } else if e.job.is_some() {
                Some("loading or moving")
            } else if protected.contains(&key) {
                Some("wanted by a waiting request")
            } else {
                None
            };
            if let Some(r) = reason {
                report.kept.push((key, r.to_string()));
                continue;
            }
            if to == Tier::Host && e.tier == Tier::Device {
                self.demote(&key, &protected, &mut effects);
            } else if to == Tier::Disk || e.tier == Tier::Host {
                self.drop_entry(&key, &mut effects);
            }
            let tier = self.entries.get(&key).map_or(Tier::Disk, |e| e.tier);
            report.moved.push((key, tier));
        }
        effects.extend(self.step(now));
        Ok((report, effects))
    }

    /// Replaces the registry and budgets. Resources still named keep their state; those no
    /// longer named are freed, or when in use, freed as their last lease ends.
    pub fn reload(
        &mut self,
        registry: Registry,
        budgets: Budgets,
        now: u64,
    ) -> Result<Vec<Effect>, ResidencyError> {
        for tier in [Tier::Device, Tier::Host] {
            let held: u64 = self
                .entries
                .iter()
                .filter(|(k, e)| {
                    e.tier == tier && (e.leases > 0 || e.job.is_some() || registry.policy(k).pinned)
                })
                .map(|(_, e)| e.bytes)
                .sum();
            let budget = if tier == Tier::Device {
                budgets.device
            } else {
                budgets.host
            };
            if held > budget {
                return Err(ResidencyError::BudgetTooSmall(format!(
                    "{} holds {} but the new budget is {}",
                    tier.as_str(),
                    ByteSize(held),
                    ByteSize(budget)
                )));
            }
        }
        self.registry = registry;
        self.budgets = budgets;
        let mut effects = Vec::new();
        let gone: Vec<ResourceKey> = self
            .entries
            .keys()
            .filter(|k| self.registry.bytes(k).is_none())
            .cloned()
            .collect();
        for key in gone {
            let e = self.entries.get_mut(&key).expect("listed");
            if e.leases == 0 && e.job.is_none() {
                self.drop_entry(&key, &mut effects);
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
        // Tighter budgets may leave a tier over: demote or free idle entries until it fits.
        for tier in [Tier::Device, Tier::Host] {
            let protected = self.protected(self.waiters.len());
            let _ = self.make_room(tier, 0, &protected, &mut effects);
        }
        effects.extend(self.step(now));
        Ok(effects)
    }

    // ---- events -----------------------------------------------------------------------------

    pub fn released(&mut self, keys: Vec<ResourceKey>, now: u64) -> Vec<Effect> {
        let mut effects = Vec::new();
        for key in keys {
            let Some(e) = self.entries.get_mut(&key) else {
                continue;
            };
            e.leases = e.leases.saturating_sub(1);
            e.last_use = now;
            if e.orphan && e.leases == 0 && e.job.is_none() {
                self.drop_entry(&key, &mut effects);
            }
        }
        effects.extend(self.step(now));
        effects
    }

    pub fn job_done(&mut self, job: u64, result: Result<(), String>, now: u64) -> Vec<Effect> {
        let mut effects = Vec::new();
        let found = self
            .entries
            .iter()
            .find(|(_, e)| matches!(e.job, Some(Job::Loading(j)) | Some(Job::Moving(j, _)) if j == job))
            .map(|(k, e)| (k.clone(), e.job.expect("matched")));
        let Some((key, kind)) = found else {
            return self.step(now);
        };
        match (kind, result) {
            (Job::Loading(_), Ok(())) | (Job::Moving(..), Ok(())) => {
                let e = self.entries.get_mut(&key).expect("found");
                e.job = None;
                e.last_use = now;
                let tier = e.tier;
                if e.orphan && e.leases == 0 {
                    self.drop_entry(&key, &mut effects);
                } else {
                    self.notify_preloads(
                        &key,
                        PreloadEvent::Ready {
                            resource: key.clone(),
                            tier,
                        },
                    );
                }
            }
            (Job::Loading(_), Err(cause)) => {
                self.entries.remove(&key);
                let err = ResidencyError::LoadFailed {
                    resource: self.describe(&key),
                    cause,
                };
                let mut i = 0;
                while i < self.waiters.len() {
                    if self.waiters[i].keys.contains(&key) {
                        let w = self.waiters.remove(i);
                        self.fail(w, err.clone());
                    } else {
                        i += 1;
                    }
                }
            }
            (Job::Moving(_, from), Err(cause)) => {
                // The bytes never left: the entry stays where it was.
                tracing::warn!(resource = %key, %cause, "transfer failed");
                let e = self.entries.get_mut(&key).expect("found");
                e.tier = from;
                e.job = None;
            }
        }
        effects.extend(self.step(now));
        effects
    }

    pub fn progress(&mut self, job: u64, done: u64, total: u64) {
        let key = self
            .entries
            .iter()
            .find(|(_, e)| e.job == Some(Job::Loading(job)))
            .map(|(k, _)| k.clone());
        if let Some(key) = key {
            self.notify_preloads(
                &key,
                PreloadEvent::Loading {
                    resource: key.clone(),
                    bytes_done: done,
                    bytes_total: total,
                },
            );
        }
    }

    /// Demotes device entries idle for longer than their keep-alive.
    pub fn expire(&mut self, now: u64) -> Vec<Effect> {
        let protected = self.protected(self.waiters.len());
        let stale: Vec<ResourceKey> = self
            .entries
            .iter()
            .filter(|(k, e)| {
                let p = self.registry.policy(k);
                e.tier == Tier::Device
                    && e.leases == 0
                    && e.job.is_none()
                    && !p.pinned
                    && !protected.contains(*k)
                    && p.keep_alive
                        .is_some_and(|d| now.saturating_sub(e.last_use) >= d.as_millis() as u64)
            })
            .map(|(k, _)| k.clone())
            .collect();
        let mut effects = Vec::new();
        for key in stale {
            self.demote(&key, &protected, &mut effects);
        }
        effects.extend(self.step(now));
        effects
    }

    // ---- progress of waiting requests -------------------------------------------------------

    /// Advances every waiting request as far as it can, oldest first.
    pub fn step(&mut self, now: u64) -> Vec<Effect> {
        let mut effects = Vec::new();
        let mut i = 0;
        while i < self.waiters.len() {
            match self.advance(i, &mut effects) {
                Outcome::Waiting => i += 1,
                Outcome::Done => {
                    let w = self.waiters.remove(i);
                    self.complete(w, now);
                }
                Outcome::Failed(err) => {
                    let w = self.waiters.remove(i);
                    self.fail(w, err);
                }
            }
        }
        effects
    }

    /// Keys wanted by the first `n + 1` waiters: an older request's needs are never evicted to
    /// serve a newer one, which keeps two requests from undoing each other's loads.
    fn protected(&self, n: usize) -> BTreeSet<ResourceKey> {
        self.waiters
            .iter()
            .take(n + 1)
            .flat_map(|w| w.keys.iter().cloned())
            .collect()
    }

    fn advance(&mut self, i: usize, effects: &mut Vec<Effect>) -> Outcome {
        if let Some(err) = self.never_fits(i) {
            return Outcome::Failed(err);
        }
        let protected = self.protected(i);
        let target = self.waiters[i].target;
        for key in self.waiters[i].keys.clone() {
            let (tier, bytes, busy) = match self.entries.get(&key) {
                Some(e) => (e.tier, e.bytes, e.job.is_some()),
                None => (Tier::Disk, self.registry.bytes(&key).unwrap_or(0), false),
            };
            if busy {
                return Outcome::Waiting;
            }
            let placed = tier == target || (target == Tier::Host && tier == Tier::Device);
            if placed {
                continue;
            }
            if self.shared_memory && tier == Tier::Host {
                // One memory: the entry leaves the host budget first, so that what it displaces
                // from the device can take its place there; then the device is brought back
                // within budget. Both happen in this step, so no report sees the overshoot.
                self.entries.get_mut(&key).expect("present").tier = Tier::Device;
                match self.make_room(Tier::Device, 0, &protected, effects) {
                    Room::Ready => {
                        self.notify_preloads(
                            &key,
                            PreloadEvent::Ready {
                                resource: key.clone(),
                                tier: target,
                            },
                        );
                        continue;
                    }
                    other => {
                        self.entries.get_mut(&key).expect("present").tier = Tier::Host;
                        match other {
                            Room::Never(err) => return Outcome::Failed(self.name_in(err, &key)),
                            _ => return Outcome::Waiting,
                        }
                    }
                }
            }
            match self.make_room(target, bytes, &protected, effects) {
                Room::Ready => {}
                Room::Later => return Outcome::Waiting,
                Room::Never(err) => return Outcome::Failed(self.name_in(err, &key)),
            }
            if tier == Tier::Disk {
                let source = match &key {
                    ResourceKey::Base(b) => Source::Base(self.registry.bases[b].clone()),
                    ResourceKey::Lens(l) => Source::Lens(self.registry.lenses[l].clone()),
                };
                let job = self.job_id();
                self.entries.insert(
                    key.clone(),
                    Entry {
                        tier: target,
                        bytes,
                        last_use: 0,
                        leases: 0,
                        job: Some(Job::Loading(job)),
                        orphan: false,
                    },
                );
                effects.push(Effect::Load {
                    job,
                    key,
                    source,
                    tier: target,
                });
                return Outcome::Waiting;
            }
            // Host → device on a separate device: copy.
            let job = self.job_id();
            let e = self.entries.get_mut(&key).expect("present");
            e.job = Some(Job::Moving(job, tier));
            e.tier = target;
            effects.push(Effect::Transfer {
                job,
                key,
                from: tier,
                to: target,
            });
            return Outcome::Waiting;
        }
        Outcome::Done
    }

    fn name_in(&self, mut err: ResidencyError, key: &ResourceKey) -> ResidencyError {
        if let ResidencyError::DoesNotFit { resource, .. } = &mut err {
            *resource = self.describe(key);
        }
        err
    }

    /// Moves an idle device entry to the host if the host can make room, else frees it.
    fn demote(
        &mut self,
        key: &ResourceKey,
        protected: &BTreeSet<ResourceKey>,
        effects: &mut Vec<Effect>,
    ) {
        let bytes = self.entries[key].bytes;
        let mut host_room = Vec::new();
        let room = self.make_room(Tier::Host, bytes, protected, &mut host_room);
        effects.extend(host_room);
        if !matches!(room, Room::Ready) {
            self.drop_entry(key, effects);
            return;
        }
        if self.shared_memory {
            self.entries.get_mut(key).expect("present").tier = Tier::Host;
        } else {
            let job = self.job_id();
            let e = self.entries.get_mut(key).expect("present");
            e.job = Some(Job::Moving(job, Tier::Device));
            e.tier = Tier::Host;
            effects.push(Effect::Transfer {
                job,
                key: key.clone(),
                from: Tier::Device,
                to: Tier::Host,
            });
        }
    }

    fn drop_entry(&mut self, key: &ResourceKey, effects: &mut Vec<Effect>) {
        if self.entries.remove(key).is_some() {
            effects.push(Effect::Release { key: key.clone() });
        }
    }

    fn job_id(&mut self) -> u64 {
        self.next_job += 1;
        self.next_job
    }

    fn complete(&mut self, w: Waiter, now: u64) {
        match w.want {
            Want::Acquire { models, reply, .. } => {
                for k in &w.keys {
                    let e = self
                        .entries
                        .get_mut(k)
                        .expect("acquired resources are resident");
                    e.leases += 1;
                    e.last_use = now;
                }
                let refs: Vec<_> = models.iter().map(|m| &self.registry.models[m]).collect();
                let lease = Lease {
                    base: refs[0].base.clone(),
                    lenses: refs.iter().map(|m| m.lens.clone()).collect(),
                    donors: refs.iter().map(|m| m.donor.clone()).collect(),
                    models,
                    keys: w.keys,
                    release: self.release.clone(),
                };
                // A requester that went away drops the lease here, which releases it.
                let _ = reply.send(Ok(lease));
            }
            Want::Preload {
                group,
                events,
                announced,
            } => {
                for k in &w.keys {
                    if let Some(e) = self.entries.get_mut(k) {
                        e.last_use = now;
                        if !announced.contains(k) {
                            let _ = events.send(PreloadEvent::Ready {
                                resource: k.clone(),
                                tier: e.tier,
                            });
                        }
                    }
                }
                let _ = events.send(PreloadEvent::Done { group });
            }
        }
    }

    fn fail(&self, w: Waiter, err: ResidencyError) {
        match w.want {
            Want::Acquire { reply, .. } => {
                let _ = reply.send(Err(err));
            }
            Want::Preload { group, events, .. } => {
                let _ = events.send(PreloadEvent::Failed {
                    group,
                    error: err.to_string(),
                });
            }
        }
    }

    fn notify_preloads(&mut self, key: &ResourceKey, event: PreloadEvent) {
        for w in &mut self.waiters {
            if !w.keys.contains(key) {
                continue;
            }
            match &mut w.want {
                Want::Preload {
                    events, announced, ..
                } => {
                    if matches!(event, PreloadEvent::Ready { .. }) {
                        announced.insert(key.clone());
                    }
                    let _ = events.send(event.clone());
                }
                Want::Acquire {
                    progress: Some(p), ..
                } => {
                    let _ = p.send(event.clone());
                }
                Want::Acquire { .. } => {}
            }
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod props;
