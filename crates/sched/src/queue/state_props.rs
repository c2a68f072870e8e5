//! Property tests of the queue's state: random sequences of submissions (analyses,
//! generations and analyses of generations, some with deadlines), starts on two devices,
//! endings, cancellations, disconnections, expiry and time passing. After every step the
//! bookkeeping rules hold, a device runs one request at a time, and a free device is given
//! work whenever some request could start; at the end every accepted request has ended
//! exactly once.

use std::collections::{BTreeMap, BTreeSet};

use lensd_core::layers::LayerSpec;
use lensd_core::registry::{BaseKey, ModelRef, Registry, ResourceKey};
use lensd_core::residency::DeviceId;
use lensd_core::work::{
    AnalyzeWork, ClientId, GenerateWork, Prompt, RequestEvent, RequestId, Sampling, Text, Work,
};
use proptest::prelude::*;
use tokio::sync::mpsc::UnboundedReceiver;

use super::{Finished, State};
use crate::queue::{PolicyKind, QueueConfig};
use crate::residency::{CopyLayout, DeviceLayout, Layout};

const CLIENTS: u8 = 4;
/// Models m0 and m1 read base b0, m2 reads b1.
const MODELS: [(&str, &str); 3] = [("m0", "b0"), ("m1", "b0"), ("m2", "b1")];

#[derive(Debug, Clone)]
enum Op {
    Submit {
        client: u8,
        model: usize,
        kind: Kind,
        deadline_ms: Option<u64>,
    },
    /// Free devices ask for work; device 0 holds base b0 or b1, device 1 nothing.
    Start {
        b0_on_device: bool,
    },
    Finish {
        outcome: u8,
    },
    Cancel {
        pick: usize,
    },
    Disconnect {
        client: u8,
    },
    Expire,
    Wait {
        ms: u64,
    },
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Analyze,
    Generate,
    /// An analysis of the client's latest generation.
    Chained,
}

fn op() -> impl Strategy<Value = Op> {
    let kind = prop_oneof![
        Just(Kind::Analyze),
        Just(Kind::Generate),
        Just(Kind::Chained)
    ];
    prop_oneof![
        4 => (0..CLIENTS, 0..MODELS.len(), kind, proptest::option::of(1u64..5_000)).prop_map(
            |(client, model, kind, deadline_ms)| Op::Submit { client, model, kind, deadline_ms }
        ),
        3 => any::<bool>().prop_map(|b0_on_device| Op::Start { b0_on_device }),
        2 => (0u8..3).prop_map(|outcome| Op::Finish { outcome }),
        1 => any::<usize>().prop_map(|pick| Op::Cancel { pick }),
        1 => (0..CLIENTS).prop_map(|client| Op::Disconnect { client }),
        1 => Just(Op::Expire),
        2 => (0u64..40_000).prop_map(|ms| Op::Wait { ms }),
    ]
}

fn registry() -> Registry {
    let mut reg = Registry::default();
    for (model, base) in MODELS {
        reg.models.insert(
            model.into(),
            ModelRef {
                group: base.into(),
                base: BaseKey(base.into()),
                lens: None,
                donor: None,
            },
        );
    }
    reg
}

fn work(model: &str, kind: Kind, generation: Option<RequestId>) -> Option<Work> {
    let analyze = |text| {
        Work::Analyze(AnalyzeWork {
            models: vec![model.into()],
            text,
            layers: LayerSpec::All,
            top_k: 1,
            explain: Default::default(),
        })
    };
    Some(match kind {
        Kind::Analyze => analyze(Text::Given(Prompt::plain("a text"))),
        Kind::Generate => Work::Generate(GenerateWork {
            model: model.into(),
            prompt: Prompt::plain("say"),
            sampling: Sampling::default(),
        }),
        Kind::Chained => analyze(Text::Generated {
            request: generation?,
        }),
    })
}

/// Two devices: device 0 holds `base`, ready; device 1 is empty.
fn layout(base: &str) -> Layout {
    let device = |id: u16, copies: Vec<CopyLayout>| DeviceLayout {
        id: DeviceId(id),
        name: format!("cuda:{id}"),
        failed: false,
        used: copies.iter().map(|c| c.bytes).sum(),
        budget: 1_000,
        copies,
    };
    let copy = CopyLayout {
        resource: ResourceKey::Base(BaseKey(base.into())),
        bytes: 100,
        last_use: 0,
        leases: 0,
        pinned: false,
        ready: true,
        busy: false,
    };
    Layout {
        devices: vec![device(0, vec![copy]), device(1, Vec::new())],
        pins: BTreeMap::new(),
        shared_memory: false,
    }
}

/// What the test knows of one accepted request.
struct Request {
    client: u8,
    /// The base its model reads.
    base: &'static str,
    generate: bool,
    events: UnboundedReceiver<RequestEvent>,
    seen: Vec<RequestEvent>,
    started: bool,
    /// Ended by the worker (this test) after it started.
    finished_by_worker: bool,
}

impl Request {
    fn drain(&mut self) {
        while let Ok(ev) = self.events.try_recv() {
            self.seen.push(ev);
        }
    }

    fn terminals(&self) -> usize {
        self.seen.iter().filter(|e| e.is_terminal()).count()
    }

    fn last_position(&self) -> Option<usize> {
        self.seen.iter().rev().find_map(|e| match e {
            RequestEvent::Queued { position } | RequestEvent::Position { position } => {
                Some(*position)
            }
            _ => None,
        })
    }
}

struct World {
    state: State,
    requests: BTreeMap<RequestId, Request>,
    running: BTreeMap<DeviceId, RequestId>,
    latest_generation: BTreeMap<u8, RequestId>,
    now: u64,
    config: QueueConfig,
}

impl World {
    fn new(policy: PolicyKind) -> World {
        let config = QueueConfig {
            capacity: 6,
            per_client: 3,
            policy,
            ..QueueConfig::default()
        };
        World {
            state: State::new(config.clone(), registry()),
            requests: BTreeMap::new(),
            running: BTreeMap::new(),
            latest_generation: BTreeMap::new(),
            now: 0,
            config,
        }
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Submit {
                client,
                model,
                kind,
                deadline_ms,
            } => {
                let generation = self.latest_generation.get(&client).copied();
                let Some(work) = work(MODELS[model].0, kind, generation) else {
                    return;
                };
                let generate = matches!(kind, Kind::Generate);
                let deadline = deadline_ms.map(|d| self.now + d);
                let name = ClientId(format!("c{client}"));
                if let Ok((id, events)) = self.state.submit(name, work, deadline, self.now) {
                    if generate {
                        self.latest_generation.insert(client, id);
                    }
                    self.requests.insert(
                        id,
                        Request {
                            client,
                            base: MODELS[model].1,
                            generate,
                            events,
                            seen: Vec::new(),
                            started: false,
                            finished_by_worker: false,
                        },
                    );
                }
            }
            Op::Start { b0_on_device } => {
                let base = if b0_on_device { "b0" } else { "b1" };
                self.state.set_layout(layout(base));
                loop {
                    let idle: Vec<DeviceId> = [DeviceId(0), DeviceId(1)]
                        .into_iter()
                        .filter(|d| !self.running.contains_key(d))
                        .collect();
                    // A base whose every home (a device holding it, or running it) is busy
                    // waits for one (no copy pays before anything was measured).
                    let blocked = |b: &str| {
                        let mut homes: Vec<DeviceId> = self
                            .running
                            .iter()
                            .filter(|(_, id)| self.requests[*id].base == b)
                            .map(|(d, _)| *d)
                            .collect();
                        if b == base {
                            homes.push(DeviceId(0));
                        }
                        !homes.is_empty() && homes.iter().all(|d| self.running.contains_key(d))
                    };
                    let startable = self
                        .state
                        .queued
                        .iter()
                        .any(|q| q.after.is_none() && !blocked(q.task.base.0.as_str()));
                    let Some((device, task)) = self.state.next(&idle, self.now) else {
                        assert!(
                            idle.is_empty() || !startable,
                            "a free device was given nothing while a request could run"
                        );
                        break;
                    };
                    assert!(idle.contains(&device), "a busy device was given work");
                    assert!(
                        !matches!(&task.work, Work::Analyze(a) if matches!(a.text, Text::Generated { .. }))
                            || task.generated.is_some(),
                        "an analysis of a generation started before the generation's reply"
                    );
                    let r = self.requests.get_mut(&task.id).expect("a known request");
                    assert!(!r.started, "request {} started twice", task.id);
                    r.started = true;
                    self.running.insert(device, task.id);
                }
            }
            Op::Finish { outcome } => {
                if let Some((_, id)) = self.running.pop_first() {
                    let r = self.requests.get_mut(&id).expect("a known request");
                    r.finished_by_worker = true;
                    let outcome = match outcome {
                        0 if r.generate => Finished::Generated("the reply".into()),
                        0 | 1 => Finished::Done,
                        _ => Finished::Failed,
                    };
                    self.state.finished(id, outcome, Some(500), self.now);
                }
            }
            Op::Cancel { pick } => {
                if !self.requests.is_empty() {
                    let id = *self
                        .requests
                        .keys()
                        .nth(pick % self.requests.len())
                        .expect("in range");
                    self.state.cancel(id, "test", self.now);
                }
            }
            Op::Disconnect { client } => {
                self.state
                    .cancel_client(&ClientId(format!("c{client}")), self.now);
            }
            Op::Expire => self.state.expire(self.now),
            Op::Wait { ms } => self.now += ms,
        }
    }

    /// The bookkeeping rules, checked after every step.
    fn check(&mut self) {
        let queued: Vec<RequestId> = self.state.queued.iter().map(|q| q.task.id).collect();
        assert!(queued.len() <= self.config.capacity, "over capacity");
        let mut per_client: BTreeMap<&ClientId, usize> = BTreeMap::new();
        for q in &self.state.queued {
            *per_client.entry(&q.task.client).or_default() += 1;
        }
        assert!(
            per_client.values().all(|&n| n <= self.config.per_client),
            "a client over its limit"
        );
        let running: BTreeSet<RequestId> = self.state.running.iter().map(|r| r.id).collect();
        assert_eq!(
            running,
            self.running.values().copied().collect(),
            "the state and the workers disagree on what runs"
        );
        let mut positions = Vec::new();
        for (id, r) in self.requests.iter_mut() {
            r.drain();
            let in_queue = queued.contains(id);
            assert!(r.terminals() <= 1, "request {id} ended twice: {:?}", r.seen);
            if in_queue {
                assert_eq!(r.terminals(), 0, "queued request {id} already ended");
                assert!(
                    matches!(r.seen.first(), Some(RequestEvent::Queued { .. })),
                    "request {id} first heard something other than `queued`: {:?}",
                    r.seen
                );
                positions.push(r.last_position().expect("queued has a position"));
            } else if r.started {
                assert_eq!(
                    r.terminals(),
                    0,
                    "the state ended started request {id}; that is the worker's"
                );
            } else {
                assert_eq!(
                    r.terminals(),
                    1,
                    "request {id} left the queue without its one end: {:?}",
                    r.seen
                );
            }
        }
        positions.sort_unstable();
        assert_eq!(
            positions,
            (0..queued.len()).collect::<Vec<_>>(),
            "queue positions are not 0..n"
        );
    }

    /// Runs everything left to its end, as a worker would.
    fn settle(&mut self) {
        for _ in 0..100 {
            self.apply(&Op::Finish { outcome: 0 });
            self.apply(&Op::Start { b0_on_device: true });
            self.check();
            if self.running.is_empty() && self.state.queued.is_empty() {
                break;
            }
        }
        for (id, r) in &self.requests {
            let ends = r.terminals() + r.finished_by_worker as usize;
            assert_eq!(
                ends, 1,
                "request {id} of client {} ended {ends} times",
                r.client
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn every_request_ends_once_and_positions_stay_consistent(
        ops in proptest::collection::vec(op(), 1..80),
        fifo in any::<bool>(),
    ) {
        let mut world = World::new(if fifo { PolicyKind::Fifo } else { PolicyKind::GroupAware });
        for op in &ops {
            world.apply(op);
            world.check();
        }
        world.settle();
    }
}
