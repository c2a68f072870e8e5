//! The queue stories' world: two groups on the fake engine, requests to submit, and checks of
//! every request's events.

use std::sync::Arc;
use std::time::Duration;

use lensd_core::config::{Budgets, Placement};
use lensd_core::layers::LayerSpec;
use lensd_core::registry::Registry;
use lensd_core::work::{
    AnalyzeWork, ClientId, GenerateWork, Prompt, RequestEvent, Sampling, Text, Work,
};
use lensd_sched::fake::FakeEngine;
use lensd_sched::queue::{QueueConfig, Scheduler};
use lensd_sched::residency::{Options, Residency};
use tokio::sync::mpsc::UnboundedReceiver;

use super::{registry, G, GB, MB};

pub fn client(name: &str) -> ClientId {
    ClientId(name.into())
}

pub fn analyze(model: &str, words: usize) -> Work {
    let text = (0..words)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ");
    Work::Analyze(AnalyzeWork {
        models: vec![model.into()],
        text: Text::Given(Prompt::plain(text)),
        layers: LayerSpec::All,
        top_k: 1,
        explain: Default::default(),
    })
}

pub fn generate(model: &str, tokens: usize) -> Work {
    Work::Generate(GenerateWork {
        model: model.into(),
        prompt: Prompt::plain("say"),
        sampling: Sampling {
            max_tokens: tokens,
            ..Sampling::default()
        },
    })
}

/// Two groups on two bases, each with two lens models; the device holds one base at a time.
pub fn two_groups() -> Registry {
    registry(&[
        G(
            "one",
            "one.gguf",
            GB,
            &[("a1", Some(("lens-a1", 10 * MB))), ("a2", None)],
        ),
        G(
            "two",
            "two.gguf",
            GB,
            &[("b1", Some(("lens-b1", 10 * MB))), ("b2", None)],
        ),
    ])
}

pub struct World {
    pub engine: FakeEngine,
    pub residency: Residency,
    pub scheduler: Scheduler,
}

pub fn world(reg: Registry, config: QueueConfig) -> World {
    let engine = FakeEngine::new(true);
    engine.set_load_latency(Duration::from_millis(800));
    // 5 layers × words × lenses rows at 2 ms each.
    engine.set_compute_costs(Duration::from_millis(2), Duration::from_millis(20));
    let residency = Residency::start(
        reg.clone(),
        Budgets {
            device: GB + 100 * MB,
            host: 4 * GB,
        },
        Arc::new(engine.clone()),
        Options {
            sweep: Duration::from_secs(3600),
            ..Options::default()
        },
    );
    let scheduler = Scheduler::start(config, reg, residency.clone(), Arc::new(engine.clone()));
    World {
        engine,
        residency,
        scheduler,
    }
}

/// `engine` (of any number of devices) with `device` bytes of budget on each and `host` bytes
/// of host tier, the groups' pins in `placement`, and the queue over them.
pub fn world_on(
    engine: FakeEngine,
    reg: Registry,
    device: u64,
    host: u64,
    placement: Placement,
    config: QueueConfig,
) -> World {
    let residency = Residency::start(
        reg.clone(),
        Budgets { device, host },
        Arc::new(engine.clone()),
        Options {
            sweep: Duration::from_secs(3600),
            placement,
            ..Options::default()
        },
    );
    let scheduler = Scheduler::start(config, reg, residency.clone(), Arc::new(engine.clone()));
    World {
        engine,
        residency,
        scheduler,
    }
}

/// Every event of a request up to its terminal one.
pub async fn drain(rx: &mut UnboundedReceiver<RequestEvent>) -> Vec<RequestEvent> {
    let mut out = Vec::new();
    while let Some(ev) = rx.recv().await {
        let end = ev.is_terminal();
        out.push(ev);
        if end {
            break;
        }
    }
    out
}

/// The stated order: `queued`, positions, `started`, loading, tokens/rows/progress, then one
/// terminal event and nothing after.
pub fn assert_grammar(events: &[RequestEvent]) {
    assert!(
        matches!(events.first(), Some(RequestEvent::Queued { .. })),
        "{events:?}"
    );
    let terminals = events.iter().filter(|e| e.is_terminal()).count();
    assert_eq!(terminals, 1, "exactly one terminal event: {events:?}");
    assert!(events.last().unwrap().is_terminal());
    let started = events
        .iter()
        .position(|e| matches!(e, RequestEvent::Started));
    for (i, e) in events.iter().enumerate() {
        match e {
            RequestEvent::Position { .. } => assert!(
                started.is_none_or(|s| i < s),
                "position after start: {events:?}"
            ),
            RequestEvent::Loading { .. }
            | RequestEvent::Tokens { .. }
            | RequestEvent::Rows { .. }
            | RequestEvent::Token { .. }
            | RequestEvent::Progress { .. } => {
                assert!(
                    started.is_some_and(|s| i > s),
                    "work before start: {events:?}"
                )
            }
            _ => {}
        }
    }
    let first_work = events.iter().position(|e| {
        matches!(
            e,
            RequestEvent::Rows { .. } | RequestEvent::Token { .. } | RequestEvent::Tokens { .. }
        )
    });
    let last_loading = events
        .iter()
        .rposition(|e| matches!(e, RequestEvent::Loading { .. }));
    if let (Some(w), Some(l)) = (first_work, last_loading) {
        assert!(l < w, "loading comes before results: {events:?}");
    }
}

/// An event's name, for messages (events can be large).
pub fn kind(ev: &RequestEvent) -> String {
    let json = serde_json::to_value(ev).unwrap();
    let name = json["type"].as_str().unwrap_or("?").to_string();
    match ev {
        RequestEvent::Error {
            error_type,
            message,
        } => format!("{name} {error_type}: {message}"),
        _ => name,
    }
}
