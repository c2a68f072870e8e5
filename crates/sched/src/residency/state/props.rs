//! Property tests of the residency state: random sequences of acquires (on a named device or
//! wherever placement puts them), releases, preloads, unloads, engine jobs that succeed or
//! fail, keep-alive expiry, lost devices and time passing, under random budgets, with one
//! memory (CPU) or separate ones (one to three devices, a group sometimes pinned to one).
//! After every step the budgets hold and every lease's copies stay ready where they were
//! leased, counted exactly; at the end every acquire and preload has had exactly one answer.
//! One model's full donor is the other group's base.

use std::path::PathBuf;
use std::time::Duration;

use lensd_core::config::Placement;
use lensd_core::registry::{BaseKey, BaseSpec, LensKey, LensSpec, ModelRef, Policy};
use lensd_core::{ComputeDtype, LensKind};
use proptest::prelude::*;
use tokio::sync::mpsc::{self, UnboundedReceiver};

use super::*;
use crate::residency::actor::Internal;

/// (model, group, base, lens and its bytes)
type ModelRow = (
    &'static str,
    &'static str,
    &'static str,
    Option<(&'static str, u64)>,
);
const MODELS: [ModelRow; 5] = [
    ("x0", "gx", "bx", None),
    ("x1", "gx", "bx", Some(("l1", 20))),
    ("x2", "gx", "bx", Some(("l2", 30))),
    ("y0", "gy", "by", None),
    ("y1", "gy", "by", Some(("l3", 25))),
];
const BASES: [(&str, u64); 2] = [("bx", 100), ("by", 120)];

fn registry(keep_alive_ms: Option<u64>, pin_by: bool) -> Registry {
    let mut r = Registry::default();
    for (b, bytes) in BASES {
        r.bases.insert(
            BaseKey(b.into()),
            BaseSpec {
                path: PathBuf::from(format!("{b}.gguf")),
                dtype: ComputeDtype::F32,
                bytes,
                n_layers: 2,
                d_model: 8,
            },
        );
        r.policies.insert(
            ResourceKey::Base(BaseKey(b.into())),
            Policy {
                pinned: pin_by && b == "by",
                keep_alive: keep_alive_ms.map(Duration::from_millis),
            },
        );
    }
    for (m, g, b, lens) in MODELS {
        let lens = lens.map(|(l, bytes)| {
            r.lenses.insert(
                LensKey(l.into()),
                LensSpec {
                    kind: LensKind::Tuned,
                    path: PathBuf::from(l),
                    bytes,
                    donor: None,
                },
            );
            LensKey(l.into())
        });
        r.models.insert(
            m.into(),
            ModelRef {
                group: g.into(),
                base: BaseKey(b.into()),
                lens,
                donor: None,
            },
        );
        r.groups.entry(g.into()).or_default().push(m.into());
    }
    // x2's full donor is the other group's base: one resource with two roles.
    r.models.get_mut("x2").expect("listed").donor = Some(BaseKey("by".into()));
    r
}

#[derive(Debug, Clone)]
enum Op {
    /// Models of one group, by a bit mask over its models.
    Acquire {
        group: bool,
        mask: u8,
        /// A device by number (modulo the devices), or wherever placement puts it.
        device: Option<u16>,
    },
    Release {
        pick: usize,
    },
    Preload {
        group: bool,
        device: bool,
    },
    Unload {
        group: bool,
        disk: bool,
    },
    Job {
        pick: usize,
        ok: bool,
    },
    Expire,
    Wait {
        ms: u64,
    },
    Lose {
        device: u16,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<bool>(), 1u8..8, proptest::option::of(0u16..3))
            .prop_map(|(group, mask, device)| Op::Acquire { group, mask, device }),
        3 => any::<usize>().prop_map(|pick| Op::Release { pick }),
        1 => (any::<bool>(), any::<bool>()).prop_map(|(group, device)| Op::Preload { group, device }),
        1 => (any::<bool>(), any::<bool>()).prop_map(|(group, disk)| Op::Unload { group, disk }),
        5 => (any::<usize>(), prop::bool::weighted(0.85)).prop_map(|(pick, ok)| Op::Job { pick, ok }),
        1 => Just(Op::Expire),
        1 => (0u64..20_000).prop_map(|ms| Op::Wait { ms }),
        1 => (0u16..3).prop_map(|device| Op::Lose { device }),
    ]
}

struct World {
    state: State,
    devices: u16,
    released: UnboundedReceiver<Internal>,
    jobs: Vec<u64>,
    leases: Vec<Lease>,
    replies: Vec<(oneshot::Receiver<Result<Lease, ResidencyError>>, bool)>,
    preloads: Vec<(UnboundedReceiver<PreloadEvent>, usize)>,
    now: u64,
}

impl World {
    fn new(
        budgets: Budgets,
        devices: u16,
        keep_alive_ms: Option<u64>,
        pin_by: bool,
        pin_gy: bool,
    ) -> World {
        let (tx, released) = mpsc::unbounded_channel();
        // No devices means one memory (CPU), with its one device.
        let shared = devices == 0;
        let devices = devices.max(1);
        let mut placement = Placement::default();
        if pin_gy {
            placement
                .pins
                .insert("gy".into(), vec![DeviceId(devices - 1)]);
        }
        let state = State::new(
            registry(keep_alive_ms, pin_by),
            budgets,
            placement,
            shared,
            super::tests::devices(devices),
            tx,
        );
        World {
            state,
            devices,
            released,
            jobs: Vec::new(),
            leases: Vec::new(),
            replies: Vec::new(),
            preloads: Vec::new(),
            now: 0,
        }
    }

    fn effects(&mut self, effects: Vec<Effect>) {
        for e in effects {
            match e {
                Effect::Load { job, .. } | Effect::Transfer { job, .. } => self.jobs.push(job),
                Effect::Release { .. } => {}
            }
        }
    }

    fn apply(&mut self, op: &Op) {
        let now = self.now;
        match *op {
            Op::Acquire {
                group,
                mask,
                device,
            } => {
                let g = if group { "gy" } else { "gx" };
                let models: Vec<String> = MODELS
                    .iter()
                    .filter(|m| m.1 == g)
                    .enumerate()
                    .filter(|(i, _)| mask & (1 << i) != 0)
                    .map(|(_, m)| m.0.to_string())
                    .collect();
                if models.is_empty() {
                    return;
                }
                let (reply, rx) = oneshot::channel();
                let device = device.map(|d| DeviceId(d % self.devices));
                let fx = self.state.acquire(models, device, None, reply, now);
                self.replies.push((rx, false));
                self.effects(fx);
            }
            Op::Release { pick } => {
                if !self.leases.is_empty() {
                    let n = self.leases.len();
                    drop(self.leases.remove(pick % n));
                }
            }
            Op::Preload { group, device } => {
                let (tx, rx) = mpsc::unbounded_channel();
                let tier = if device { Tier::Device } else { Tier::Host };
                let g = if group { "gy" } else { "gx" };
                match self.state.preload(g.into(), tier, tx, now) {
                    Ok(fx) => {
                        self.preloads.push((rx, 0));
                        self.effects(fx);
                    }
                    // Pinned to a device that was lost.
                    Err(ResidencyError::Pinned(_)) => {}
                    Err(e) => panic!("{e}"),
                }
            }
            Op::Unload { group, disk } => {
                let to = if disk { Tier::Disk } else { Tier::Host };
                let g = if group { "gy" } else { "gx" };
                let (_, fx) = self.state.unload(g, to, now).expect("known group");
                self.effects(fx);
            }
            Op::Job { pick, ok } => {
                if !self.jobs.is_empty() {
                    let n = self.jobs.len();
                    let job = self.jobs.remove(pick % n);
                    let result = if ok { Ok(()) } else { Err("injected".into()) };
                    let fx = self.state.job_done(job, result, now);
                    self.effects(fx);
                }
            }
            Op::Expire => {
                let fx = self.state.expire(now);
                self.effects(fx);
            }
            Op::Wait { ms } => self.now += ms,
            Op::Lose { device } => {
                // One device at most is lost, and never the only one.
                if self.devices > 1 && self.state.failed.is_empty() {
                    let d = DeviceId(device % self.devices);
                    let fx = self.state.device_failed(d, "lost".into(), now);
                    self.effects(fx);
                    // Its leases' work fails; they end.
                    self.leases.retain(|l| l.device != d);
                }
            }
        }
        self.deliver();
    }

    /// Hands released leases back to the state and collects answers, as the actor would.
    fn deliver(&mut self) {
        loop {
            let mut any = false;
            while let Ok(msg) = self.released.try_recv() {
                if let Internal::Released(keys) = msg {
                    let fx = self.state.released(keys, self.now);
                    self.effects(fx);
                    any = true;
                }
            }
            for (rx, answered) in self.replies.iter_mut() {
                match rx.try_recv() {
                    Ok(answer) => {
                        assert!(!*answered, "an acquire was answered twice");
                        *answered = true;
                        if let Ok(lease) = answer {
                            self.leases.push(lease);
                        }
                        any = true;
                    }
                    Err(oneshot::error::TryRecvError::Closed) => {
                        assert!(*answered, "an acquire was dropped without an answer");
                    }
                    Err(oneshot::error::TryRecvError::Empty) => {}
                }
            }
            for (rx, ends) in self.preloads.iter_mut() {
                while let Ok(ev) = rx.try_recv() {
                    if matches!(ev, PreloadEvent::Done { .. } | PreloadEvent::Failed { .. }) {
                        *ends += 1;
                    }
                }
                assert!(*ends <= 1, "a preload ended twice");
            }
            if !any {
                break;
            }
        }
    }

    /// The bookkeeping rules, checked after every step.
    fn check(&self) {
        assert_eq!(self.state.violations(), Vec::<String>::new());
        let mut held: BTreeMap<CopyKey, u32> = BTreeMap::new();
        for lease in &self.leases {
            for k in &lease.keys {
                assert_eq!(
                    k.1,
                    Place::Device(lease.device),
                    "leased where it was asked"
                );
                *held.entry(k.clone()).or_default() += 1;
            }
        }
        for (k, e) in &self.state.entries {
            assert_eq!(
                e.leases,
                held.get(k).copied().unwrap_or(0),
                "{k:?}: the state counts leases that are not held, or misses some"
            );
        }
        for (k, n) in &held {
            let e =
                self.state.entries.get(k).unwrap_or_else(|| {
                    panic!("{k:?} is leased {n} times but was moved or evicted")
                });
            assert!(e.ready(), "{k:?} is leased but not ready");
        }
    }

    /// Finishes every job and releases every lease until nothing is left to do.
    fn settle(&mut self) {
        for _ in 0..200 {
            // Releasing leases may grant waiting requests new ones.
            while !self.leases.is_empty() {
                self.leases.clear();
                self.deliver();
            }
            if self.jobs.is_empty() {
                break;
            }
            let job = self.jobs.remove(0);
            let fx = self.state.job_done(job, Ok(()), self.now);
            self.effects(fx);
            self.deliver();
            self.check();
        }
        self.leases.clear();
        self.deliver();
        self.check();
        assert!(self.jobs.is_empty(), "jobs left after settling");
        for (i, (_, answered)) in self.replies.iter().enumerate() {
            assert!(answered, "acquire {i} never got an answer");
        }
        for (i, (_, ends)) in self.preloads.iter().enumerate() {
            assert_eq!(*ends, 1, "preload {i} never ended");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn budgets_hold_leases_are_safe_and_every_request_is_answered(
        ops in proptest::collection::vec(op(), 1..60),
        device in prop::sample::select(vec![90u64, 130, 160, 300]),
        host in prop::sample::select(vec![0u64, 100, 250]),
        devices in 0u16..4,
        keep_alive_ms in proptest::option::of(1u64..10_000),
        pin_by in any::<bool>(),
        pin_gy in any::<bool>(),
    ) {
        let mut world = World::new(Budgets { device, host }, devices, keep_alive_ms, pin_by, pin_gy);
        for op in &ops {
            world.apply(op);
            world.check();
        }
        world.settle();
    }
}
