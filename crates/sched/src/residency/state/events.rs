//! What happens to the state on its own: leases ending, engine jobs finishing or failing,
//! keep-alives running out, and devices being lost.

use lensd_core::registry::ResourceKey;
use lensd_core::residency::{DeviceId, Place};

use super::{CopyKey, Effect, Job, State};
use crate::residency::types::{PreloadEvent, ResidencyError};

impl State {
    pub fn released(&mut self, keys: Vec<CopyKey>, now: u64) -> Vec<Effect> {
        let mut effects = Vec::new();
        for (key, place) in keys {
            // Gone with a lost device.
            let Some(e) = self.entry_mut(&key, place) else {
                continue;
            };
            e.leases = e.leases.saturating_sub(1);
            e.last_use = now;
            if e.orphan && e.leases == 0 && e.job.is_none() {
                self.drop_entry(&key, place, &mut effects);
            }
        }
        effects.extend(self.step(now));
        effects
    }

    pub fn job_done(&mut self, job: u64, result: Result<(), String>, now: u64) -> Vec<Effect> {
        let mut effects = Vec::new();
        let ends = self.find_job(job);
        let arrival = ends
            .iter()
            .find(|(_, j)| matches!(j, Job::Loading(_) | Job::Arriving(..)))
            .cloned();
        let Some(((key, place), _)) = arrival else {
            // Its copy went with a lost device; a source left behind is idle again.
            for ((k, p), _) in ends {
                if let Some(e) = self.entry_mut(&k, p) {
                    e.job = None;
                }
            }
            return self.step(now);
        };
        let source = ends
            .iter()
            .find(|(_, j)| matches!(j, Job::Leaving(..) | Job::Lending(..)))
            .cloned();
        match result {
            Ok(()) => {
                let e = self.entry_mut(&key, place).expect("found");
                e.job = None;
                e.last_use = now;
                let drop_it = e.orphan && e.leases == 0;
                match source {
                    Some(((k, from), Job::Leaving(..))) => self.drop_entry(&k, from, &mut effects),
                    Some(((k, from), _)) => {
                        let e = self.entry_mut(&k, from).expect("found");
                        e.job = None;
                        if e.orphan && e.leases == 0 {
                            self.drop_entry(&k, from, &mut effects);
                        }
                    }
                    None => {}
                }
                if drop_it {
                    self.drop_entry(&key, place, &mut effects);
                } else {
                    self.notify_preloads(
                        &key,
                        PreloadEvent::Ready {
                            resource: key.clone(),
                            tier: place.tier(),
                        },
                    );
                }
            }
            Err(cause) => {
                // A failed copy leaves its source where it was; a failed load leaves nothing.
                self.remove(&key, place);
                if let Some(((k, from), _)) = source {
                    tracing::warn!(resource = %k, %cause, "copy failed");
                    if let Some(e) = self.entry_mut(&k, from) {
                        e.job = None;
                    }
                }
                let err = ResidencyError::LoadFailed {
                    resource: self.describe(&key),
                    place: self.place_name(place),
                    cause,
                };
                // Requests for this copy fail; those for other places try their own way.
                self.fail_waiters(&key, place, err);
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
            .map(|((k, _), _)| k.clone());
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

    /// Demotes device copies idle for longer than their keep-alive.
    pub fn expire(&mut self, now: u64) -> Vec<Effect> {
        let protected = self.protected(self.waiters.len());
        let stale: Vec<(ResourceKey, DeviceId)> = self
            .entries
            .iter()
            .filter_map(|((k, place), e)| {
                let d = place.device()?;
                let p = self.registry.policy(k);
                let stale = e.leases == 0
                    && e.job.is_none()
                    && !p.pinned
                    && !protected.contains(&(k.clone(), *place))
                    && p.keep_alive
                        .is_some_and(|t| now.saturating_sub(e.last_use) >= t.as_millis() as u64);
                stale.then(|| (k.clone(), d))
            })
            .collect();
        let mut effects = Vec::new();
        for (key, d) in stale {
            self.demote(&key, d, &protected, &mut effects);
        }
        effects.extend(self.step(now));
        effects
    }

    /// `device` was lost: its copies leave the books (leased ones too: their work has failed),
    /// copies to or from it are abandoned, and requests waiting for it fail. Nothing is placed
    /// on it again.
    pub fn device_failed(&mut self, device: DeviceId, why: String, now: u64) -> Vec<Effect> {
        let mut effects = Vec::new();
        if self.failed.contains_key(&device) {
            return effects;
        }
        tracing::error!(device = %self.device_name(device), %why, "device lost");
        self.failed.insert(device, why.clone());
        let here = Place::Device(device);
        let on_it: Vec<CopyKey> = self
            .entries
            .keys()
            .filter(|(_, p)| *p == here)
            .cloned()
            .collect();
        for (key, place) in on_it {
            let Some(e) = self.remove(&key, place) else {
                continue;
            };
            effects.push(Effect::Release {
                key: key.clone(),
                place,
            });
            match e.job {
                // The other end of a copy from here is abandoned; the source of one to here is
                // idle again.
                Some(Job::Leaving(_, to) | Job::Lending(_, to)) => {
                    self.drop_entry(&key, to, &mut effects);
                }
                Some(Job::Arriving(_, from)) => {
                    if let Some(src) = self.entry_mut(&key, from) {
                        src.job = None;
                    }
                }
                Some(Job::Loading(_)) | None => {}
            }
        }
        let err = ResidencyError::DeviceFailed {
            device: self.device_name(device),
            why,
        };
        let mut i = 0;
        while i < self.waiters.len() {
            if self.waiters[i].target == here {
                let w = self.waiters.remove(i);
                self.fail(w, err.clone());
            } else {
                i += 1;
            }
        }
        effects.extend(self.step(now));
        effects
    }
}
