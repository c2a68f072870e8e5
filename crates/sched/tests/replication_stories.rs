//! Stories of a busy base on a machine of four devices, against the fake engine under paused
//! time: a long queue for one base earns it copies on the free devices, a short one does not,
//! and the copies leave by least recent use when other work needs the room. After every step
//! the books hold and no copy a job reads is ever moved or freed.

mod common;

use std::time::Duration;

use common::queue::{analyze, assert_grammar, client, drain, kind, world_on, World};
use common::sound::assert_sound;
use common::{base, registry, G, GB, MB};
use lensd_core::config::Placement;
use lensd_core::work::RequestEvent;
use lensd_sched::fake::FakeEngine;
use lensd_sched::queue::QueueConfig;
use tokio::sync::mpsc::UnboundedReceiver;

/// Four devices that each hold one base; a hot group and a cold one. A base takes 2 s to load
/// and 0.2 s to copy between devices; a request of 10 words computes for 0.5 s.
fn four_gpus() -> World {
    let engine = FakeEngine::with_devices(4, 2 * GB);
    engine.set_load_latency(Duration::from_secs(2));
    engine.set_transfer_latency(Duration::from_millis(200));
    engine.set_compute_costs(Duration::from_millis(10), Duration::from_millis(20));
    let reg = registry(&[
        G("hot", "hot.gguf", GB, &[("h", None)]),
        G("cold", "cold.gguf", GB, &[("c", None)]),
    ]);
    world_on(
        engine,
        reg,
        GB + 100 * MB,
        0,
        Placement::default(),
        QueueConfig {
            per_client: 64,
            ..QueueConfig::default()
        },
    )
}

async fn submit(w: &World, who: &str, model: &str) -> UnboundedReceiver<RequestEvent> {
    w.scheduler
        .submit(&client(who), analyze(model, 10), None)
        .await
        .unwrap()
        .1
}

async fn finish(rx: &mut UnboundedReceiver<RequestEvent>) {
    let evs = drain(rx).await;
    assert_grammar(&evs);
    assert!(
        matches!(evs.last(), Some(RequestEvent::Completed { .. })),
        "{:?}",
        evs.iter().map(kind).collect::<Vec<_>>()
    );
}

/// The devices holding a copy of `path`, by number.
async fn copies_of(w: &World, path: &str) -> Vec<u16> {
    let rep = assert_sound(&w.residency, &w.engine).await;
    rep.copies(&base(path))
        .map(|e| e.device.expect("a device copy").0)
        .collect()
}

/// Runs one request of the hot group so that its compute time and load rate are measured.
async fn warm_up(w: &World) {
    let mut rx = submit(w, "warm", "h").await;
    finish(&mut rx).await;
    assert_eq!(copies_of(w, "hot.gguf").await, [0]);
}

#[tokio::test(start_paused = true)]
async fn a_long_queue_for_one_base_earns_it_copies_on_the_free_devices() {
    let w = four_gpus();
    warm_up(&w).await;
    w.engine.clear_log();
    let t = tokio::time::Instant::now();
    // 12 requests of 0.5 s: 6 s on one device, against 2 s to load a copy.
    let mut rxs = Vec::new();
    for i in 0..12 {
        rxs.push(submit(&w, &format!("c{}", i % 4), "h").await);
    }
    // While they run, the books stay sound and every lease stays where it was granted.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_sound(&w.residency, &w.engine).await;
    }
    for rx in &mut rxs {
        finish(rx).await;
    }
    let elapsed = t.elapsed();
    let copies = copies_of(&w, "hot.gguf").await;
    assert_eq!(copies, [0, 1, 2, 3], "{:?}", w.engine.log());
    assert_eq!(w.engine.max_concurrent_jobs(), 4);
    assert_eq!(w.engine.max_concurrent_jobs_on_one_device(), 1);
    // Copies come from a device that holds the base, not from disk.
    let log = w.engine.log();
    assert!(!log.iter().any(|l| l.starts_with("load ")), "{log:?}");
    assert_eq!(
        log.iter()
            .filter(|l| l.starts_with("move base hot.gguf"))
            .count(),
        3,
        "{log:?}"
    );
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    assert_eq!(w.engine.violations(), Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn a_short_queue_waits_for_its_base_rather_than_copy_it() {
    let w = four_gpus();
    warm_up(&w).await;
    w.engine.clear_log();
    // One runs and three wait: 1.5 s of work, less than the 2 s a copy would take.
    let mut rxs = Vec::new();
    for i in 0..4 {
        rxs.push(submit(&w, &format!("c{i}"), "h").await);
    }
    for rx in &mut rxs {
        finish(rx).await;
    }
    assert_eq!(copies_of(&w, "hot.gguf").await, [0]);
    let log = w.engine.log();
    assert_eq!(
        log,
        vec!["analyze hot.gguf [h] on cuda:0".to_string(); 4],
        "one device, nothing loaded or copied"
    );
}

#[tokio::test(start_paused = true)]
async fn copies_leave_by_least_recent_use_when_other_work_needs_the_room() {
    let w = four_gpus();
    warm_up(&w).await;
    let mut rxs = Vec::new();
    for i in 0..12 {
        rxs.push(submit(&w, &format!("c{i}"), "h").await);
    }
    for rx in &mut rxs {
        finish(rx).await;
    }
    assert_eq!(copies_of(&w, "hot.gguf").await, [0, 1, 2, 3]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Every device is full of an idle copy; the least recently used one makes room.
    let rep = assert_sound(&w.residency, &w.engine).await;
    let lru = rep
        .copies(&base("hot.gguf"))
        .max_by_key(|e| (e.idle_ms, std::cmp::Reverse(e.device)))
        .and_then(|e| e.device)
        .expect("copies");
    let name = format!("cuda:{}", lru.0);
    w.engine.clear_log();
    let mut cold = submit(&w, "x", "c").await;
    finish(&mut cold).await;
    assert_eq!(
        w.engine.log(),
        [
            format!("free base hot.gguf on {name}"),
            format!("load base cold.gguf -> {name}"),
            format!("analyze cold.gguf [c] on {name}"),
        ],
        "another copy remains, so the evicted one is freed, not kept on the host"
    );
    let mut left = copies_of(&w, "hot.gguf").await;
    left.push(lru.0);
    left.sort_unstable();
    assert_eq!(left, [0, 1, 2, 3]);
    assert_eq!(copies_of(&w, "cold.gguf").await, [lru.0], "cold on {lru}");
}
