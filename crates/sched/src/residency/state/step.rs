//! Moving waiting requests forward: bringing each resource to its request's place (from the
//! host, from another device's copy, or from disk), demoting and freeing, and answering.

use std::collections::BTreeSet;

use lensd_core::engine::Source;
use lensd_core::registry::ResourceKey;
use lensd_core::residency::{DeviceId, Place};

use super::{CopyKey, Effect, Entry, Job, Outcome, Room, State, Waiter, Want};
use crate::residency::types::{Lease, PreloadEvent, ResidencyError};

/// Where a copy comes from.
enum From {
    /// One memory: the host's entry is relabelled.
    Relabel,
    /// Copied from another place; the source is freed after (a move) or stays.
    Copy {
        from: Place,
        moving: bool,
    },
    Disk,
}

impl State {
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

    /// Copies wanted by the first `n + 1` waiters, at their place and on the host: an older
    /// request's needs are never evicted to serve a newer one, which keeps two requests from
    /// undoing each other's loads.
    pub(super) fn protected(&self, n: usize) -> BTreeSet<CopyKey> {
        self.waiters
            .iter()
            .take(n + 1)
            .flat_map(|w| {
                w.keys
                    .iter()
                    .flat_map(move |k| [(k.clone(), w.target), (k.clone(), Place::Host)])
            })
            .collect()
    }

    fn advance(&mut self, i: usize, effects: &mut Vec<Effect>) -> Outcome {
        if let Some(err) = self.never_fits(i) {
            return Outcome::Failed(err);
        }
        let target = self.waiters[i].target;
        if let Some(d) = target.device().filter(|d| self.failed.contains_key(d)) {
            return Outcome::Failed(ResidencyError::DeviceFailed {
                device: self.device_name(d),
                why: self.failed[&d].clone(),
            });
        }
        let protected = self.protected(i);
        for key in self.waiters[i].keys.clone() {
            if let Some(e) = self.entry(&key, target) {
                if e.ready() {
                    continue;
                }
                return Outcome::Waiting;
            }
            let copies = self.copies(&key);
            // On a device counts as placed for a host preload.
            if target == Place::Host && copies.iter().any(|(_, e)| e.ready()) {
                continue;
            }
            // A copy on its way somewhere is waited for, then copied: disk is read once.
            if copies
                .iter()
                .any(|(_, e)| matches!(e.job, Some(Job::Loading(_) | Job::Arriving(..))))
            {
                return Outcome::Waiting;
            }
            let on_host = self
                .entry(&key, Place::Host)
                .is_some_and(|e| e.job.is_none());
            let on_device = copies
                .iter()
                .find(|(p, e)| p.device().is_some() && e.job.is_none())
                .map(|(p, _)| *p);
            let from = if self.shared_memory && on_host {
                From::Relabel
            } else if on_host {
                From::Copy {
                    from: Place::Host,
                    moving: true,
                }
            } else if let Some(from) = on_device {
                From::Copy {
                    from,
                    moving: false,
                }
            } else if copies.is_empty() {
                From::Disk
            } else {
                // Every copy is busy lending or leaving: try again when it is done.
                return Outcome::Waiting;
            };
            let bytes = self.registry.bytes(&key).unwrap_or(0);
            if let From::Relabel = from {
                // One memory: the entry leaves the host budget first, so that what it displaces
                // from the device can take its place there; then the device is brought back
                // within budget. Both happen in this step, so no report sees the overshoot.
                self.relabel(&key, Place::Host, target);
                match self.make_room(target, 0, &protected, effects) {
                    Room::Ready => {
                        self.notify_preloads(
                            &key,
                            PreloadEvent::Ready {
                                resource: key.clone(),
                                tier: target.tier(),
                            },
                        );
                        continue;
                    }
                    other => {
                        self.relabel(&key, target, Place::Host);
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
            let job = self.job_id();
            let arriving = |job| Entry {
                bytes,
                last_use: 0,
                leases: 0,
                job: Some(job),
                orphan: false,
            };
            match from {
                From::Disk => {
                    let source = match &key {
                        ResourceKey::Base(b) => Source::Base(self.registry.bases[b].clone()),
                        ResourceKey::Lens(l) => Source::Lens(self.registry.lenses[l].clone()),
                    };
                    self.insert(key.clone(), target, arriving(Job::Loading(job)));
                    effects.push(Effect::Load {
                        job,
                        key,
                        source,
                        place: target,
                    });
                }
                From::Copy { from, moving } => {
                    let source = self.entry_mut(&key, from).expect("a copy to copy from");
                    source.job = Some(if moving {
                        Job::Leaving(job, target)
                    } else {
                        Job::Lending(job, target)
                    });
                    self.insert(key.clone(), target, arriving(Job::Arriving(job, from)));
                    effects.push(Effect::Transfer {
                        job,
                        key,
                        from,
                        to: target,
                    });
                }
                From::Relabel => unreachable!("handled above"),
            }
            return Outcome::Waiting;
        }
        Outcome::Done
    }

    pub(super) fn name_in(&self, mut err: ResidencyError, key: &ResourceKey) -> ResidencyError {
        if let ResidencyError::DoesNotFit { resource, .. } = &mut err {
            *resource = self.describe(key);
        }
        err
    }

    /// Takes an idle copy off `device`: freed when another copy remains elsewhere, else moved
    /// to the host if the host can make room for it, else freed.
    pub(super) fn demote(
        &mut self,
        key: &ResourceKey,
        device: DeviceId,
        protected: &BTreeSet<CopyKey>,
        effects: &mut Vec<Effect>,
    ) {
        let here = Place::Device(device);
        let Some(bytes) = self.entry(key, here).map(|e| e.bytes) else {
            return;
        };
        let elsewhere = self.copies(key).iter().any(|(p, _)| *p != here);
        if elsewhere {
            self.drop_entry(key, here, effects);
            return;
        }
        let mut host_room = Vec::new();
        let room = self.make_room(Place::Host, bytes, protected, &mut host_room);
        effects.extend(host_room);
        if !matches!(room, Room::Ready) {
            self.drop_entry(key, here, effects);
            return;
        }
        if self.shared_memory {
            self.relabel(key, here, Place::Host);
        } else {
            let job = self.job_id();
            self.entry_mut(key, here).expect("present").job = Some(Job::Leaving(job, Place::Host));
            self.insert(
                key.clone(),
                Place::Host,
                Entry {
                    bytes,
                    last_use: 0,
                    leases: 0,
                    job: Some(Job::Arriving(job, here)),
                    orphan: false,
                },
            );
            effects.push(Effect::Transfer {
                job,
                key: key.clone(),
                from: here,
                to: Place::Host,
            });
        }
    }

    pub(super) fn drop_entry(
        &mut self,
        key: &ResourceKey,
        place: Place,
        effects: &mut Vec<Effect>,
    ) {
        if self.remove(key, place).is_some() {
            effects.push(Effect::Release {
                key: key.clone(),
                place,
            });
        }
    }

    pub(super) fn job_id(&mut self) -> u64 {
        self.next_job += 1;
        self.next_job
    }

    fn complete(&mut self, w: Waiter, now: u64) {
        match w.want {
            Want::Acquire { models, reply, .. } => {
                let device = w.target.device().expect("work is leased on a device");
                for k in &w.keys {
                    let e = self
                        .entry_mut(k, w.target)
                        .expect("acquired resources are resident");
                    e.leases += 1;
                    e.last_use = now;
                }
                let refs: Vec<_> = models.iter().map(|m| &self.registry.models[m]).collect();
                let lease = Lease {
                    device,
                    base: refs[0].base.clone(),
                    lenses: refs.iter().map(|m| m.lens.clone()).collect(),
                    donors: refs.iter().map(|m| m.donor.clone()).collect(),
                    models,
                    keys: w.keys.into_iter().map(|k| (k, w.target)).collect(),
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
                    let place = match self.entry(k, w.target) {
                        Some(_) => Some(w.target),
                        None => self.copies(k).first().map(|(p, _)| *p),
                    };
                    if let Some(place) = place {
                        self.entry_mut(k, place).expect("listed").last_use = now;
                        if !announced.contains(k) {
                            let _ = events.send(PreloadEvent::Ready {
                                resource: k.clone(),
                                tier: place.tier(),
                            });
                        }
                    }
                }
                let _ = events.send(PreloadEvent::Done { group });
            }
        }
    }

    pub(super) fn fail(&self, w: Waiter, err: ResidencyError) {
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

    /// Fails every waiter for `key` at `place` with `err`.
    pub(super) fn fail_waiters(&mut self, key: &ResourceKey, place: Place, err: ResidencyError) {
        let mut i = 0;
        while i < self.waiters.len() {
            if self.waiters[i].target == place && self.waiters[i].keys.contains(key) {
                let w = self.waiters.remove(i);
                self.fail(w, err.clone());
            } else {
                i += 1;
            }
        }
    }

    pub(super) fn notify_preloads(&mut self, key: &ResourceKey, event: PreloadEvent) {
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
