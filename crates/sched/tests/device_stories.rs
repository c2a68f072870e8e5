//! Stories of a machine with several devices, against the fake engine under paused time: where
//! bases go, that two groups compute at once on two devices, that a base stays where it is
//! when there is room elsewhere, and that pins are kept. After every step the books hold and
//! no copy a job reads is ever moved or freed.

mod common;

use std::time::Duration;

use common::queue::{analyze, assert_grammar, client, drain, kind, two_groups, world_on, World};
use common::sound::assert_sound;
use common::{base, lens, GB, MB};
use lensd_core::config::{Budgets, Placement};
use lensd_core::registry::Registry;
use lensd_core::residency::DeviceId;
use lensd_core::work::RequestEvent;
use lensd_sched::fake::FakeEngine;
use lensd_sched::queue::QueueConfig;
use lensd_sched::residency::ResidencyError;
use tokio::sync::mpsc::UnboundedReceiver;

/// `n` devices that each hold one base and its lens, with the groups' `pins`.
fn gpus(n: u16, reg: Registry, pins: &[(&str, &[u16])]) -> World {
    let engine = FakeEngine::with_devices(n, 2 * GB);
    engine.set_load_latency(Duration::from_millis(800));
    // 5 layers × words rows at 10 ms each: 40 words compute for 2 s.
    engine.set_compute_costs(Duration::from_millis(10), Duration::from_millis(20));
    let mut placement = Placement::default();
    for (group, devices) in pins {
        placement.pins.insert(
            group.to_string(),
            devices.iter().map(|&d| DeviceId(d)).collect(),
        );
    }
    world_on(
        engine,
        reg,
        GB + 100 * MB,
        4 * GB,
        placement,
        QueueConfig::default(),
    )
}

fn completed(evs: &[RequestEvent]) -> bool {
    matches!(evs.last(), Some(RequestEvent::Completed { .. }))
}

async fn submit(
    w: &World,
    who: &str,
    model: &str,
    words: usize,
) -> UnboundedReceiver<RequestEvent> {
    w.scheduler
        .submit(&client(who), analyze(model, words), None)
        .await
        .unwrap()
        .1
}

/// Runs a request to its end and checks it completed.
async fn run(w: &World, who: &str, model: &str, words: usize) {
    let mut rx = submit(w, who, model, words).await;
    let evs = drain(&mut rx).await;
    assert_grammar(&evs);
    assert!(
        completed(&evs),
        "{:?}",
        evs.iter().map(kind).collect::<Vec<_>>()
    );
}

/// Waits for a request's first rows: it is computing.
async fn until_rows(rx: &mut UnboundedReceiver<RequestEvent>) -> Vec<RequestEvent> {
    let mut seen = Vec::new();
    while !seen.iter().any(|e| matches!(e, RequestEvent::Rows { .. })) {
        seen.push(rx.recv().await.expect("the request goes on"));
    }
    seen
}

/// The devices the jobs ran on, in order, from the log's `analyze <base> [..] on <device>`.
fn runs(engine: &FakeEngine) -> Vec<(String, String)> {
    engine
        .log()
        .iter()
        .filter(|l| l.starts_with("analyze ") || l.starts_with("generate "))
        .map(|l| {
            let base = l.split_whitespace().nth(1).unwrap().to_string();
            let device = l.rsplit(" on ").next().unwrap().to_string();
            (base, device)
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn two_groups_compute_at_once_on_two_devices() {
    let w = gpus(2, two_groups(), &[]);
    let t = tokio::time::Instant::now();
    let mut a = submit(&w, "x", "a1", 40).await;
    let mut b = submit(&w, "y", "b1", 40).await;
    let mut evs_a = until_rows(&mut a).await;
    let mut evs_b = until_rows(&mut b).await;

    // Both compute now, each base leased on its own device.
    let rep = assert_sound(&w.residency, &w.engine).await;
    let one: Vec<_> = rep.copies(&base("one.gguf")).collect();
    let two: Vec<_> = rep.copies(&base("two.gguf")).collect();
    assert_eq!(one.len(), 1);
    assert_eq!(two.len(), 1);
    assert_eq!((one[0].device, one[0].leases), (Some(DeviceId(0)), 1));
    assert_eq!((two[0].device, two[0].leases), (Some(DeviceId(1)), 1));
    assert_eq!(rep.device(DeviceId(0)).unwrap().used, GB + 10 * MB);
    assert_eq!(rep.device(DeviceId(1)).unwrap().used, GB + 10 * MB);

    evs_a.extend(drain(&mut a).await);
    evs_b.extend(drain(&mut b).await);
    for evs in [&evs_a, &evs_b] {
        assert_grammar(evs);
        assert!(completed(evs));
    }
    assert_eq!(w.engine.max_concurrent_jobs(), 2, "the two ran at once");
    assert_eq!(w.engine.max_concurrent_jobs_on_one_device(), 1);
    // A base and a lens load (0.8 s each), then 2 s of compute: 3.6 s. One after the other
    // would take twice as long.
    assert_eq!(t.elapsed(), Duration::from_millis(3600));
    let log = w.engine.log();
    for line in [
        "load base one.gguf -> cuda:0",
        "load lens lens-a1 -> cuda:0",
        "load base two.gguf -> cuda:1",
        "load lens lens-b1 -> cuda:1",
    ] {
        assert!(log.contains(&line.to_string()), "{line}: {log:?}");
    }
    assert_sound(&w.residency, &w.engine).await;
}

#[tokio::test(start_paused = true)]
async fn a_base_stays_where_it_is_when_another_arrives_and_there_is_room_elsewhere() {
    let w = gpus(2, two_groups(), &[]);
    run(&w, "x", "a1", 6).await;
    assert_eq!(runs(&w.engine), [("one.gguf".into(), "cuda:0".into())]);
    w.engine.clear_log();

    // Device 0 has no room left for the second base; device 1 has.
    run(&w, "y", "b1", 6).await;
    let log = w.engine.log();
    assert!(
        log.contains(&"load base two.gguf -> cuda:1".to_string()),
        "{log:?}"
    );
    assert!(
        !log.iter()
            .any(|l| l.contains("one.gguf") || l.contains("lens-a1")),
        "the first base was not touched: {log:?}"
    );
    assert_sound(&w.residency, &w.engine).await;

    // Back to the first group: it runs where its base is, loading nothing.
    w.engine.clear_log();
    run(&w, "x", "a1", 6).await;
    assert_eq!(
        w.engine.log(),
        ["analyze one.gguf [a1] on cuda:0"],
        "nothing loaded or moved"
    );
    let rep = assert_sound(&w.residency, &w.engine).await;
    assert_eq!(
        rep.entry(&base("one.gguf")).unwrap().device,
        Some(DeviceId(0))
    );
    assert_eq!(
        rep.entry(&base("two.gguf")).unwrap().device,
        Some(DeviceId(1))
    );
    assert_eq!(
        rep.entry(&lens("lens-b1")).unwrap().device,
        Some(DeviceId(1))
    );
}

#[tokio::test(start_paused = true)]
async fn a_group_pinned_to_a_device_runs_only_there() {
    // Group `one` may only use device 1; group `two` any device.
    let w = gpus(2, two_groups(), &[("one", &[1])]);
    let mut first = submit(&w, "x", "a1", 40).await;
    let mut first_evs = until_rows(&mut first).await;
    // Device 0 is free, but the group waits for its own device.
    let mut second = submit(&w, "y", "a2", 6).await;
    let mut other = submit(&w, "z", "b2", 6).await;
    let evs = drain(&mut other).await;
    assert!(completed(&evs));
    first_evs.extend(drain(&mut first).await);
    let second_evs = drain(&mut second).await;
    for evs in [&first_evs, &second_evs] {
        assert_grammar(evs);
        assert!(completed(evs));
    }
    let runs = runs(&w.engine);
    for (b, device) in &runs {
        match b.as_str() {
            "one.gguf" => assert_eq!(device, "cuda:1", "{runs:?}"),
            _ => assert_eq!(device, "cuda:0", "{runs:?}"),
        }
    }
    assert_eq!(
        runs.iter().filter(|(b, _)| b == "one.gguf").count(),
        2,
        "{runs:?}"
    );
    assert!(!w
        .engine
        .log()
        .iter()
        .any(|l| l.contains("one.gguf -> cuda:0")));
    assert_sound(&w.residency, &w.engine).await;

    // A pin naming a device the engine lacks is refused at reload, naming it.
    let mut bad = Placement::default();
    bad.pins.insert("two".into(), vec![DeviceId(7)]);
    let err = w
        .residency
        .reload_placed(
            two_groups(),
            Budgets {
                device: GB + 100 * MB,
                host: 4 * GB,
            },
            bad,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ResidencyError::UnknownDevice(m) if m.contains("device 7") && m.contains("1 (cuda:1)")),
        "{err}"
    );
    run(&w, "z", "b1", 6).await;
    assert_sound(&w.residency, &w.engine).await;
}

#[tokio::test(start_paused = true)]
async fn preload_places_a_group_on_a_device_with_room_and_keeps_its_pin() {
    let w = gpus(3, two_groups(), &[("two", &[2])]);
    let done = |mut rx: UnboundedReceiver<lensd_sched::residency::PreloadEvent>| async move {
        while let Some(ev) = rx.recv().await {
            match ev {
                lensd_sched::residency::PreloadEvent::Done { .. } => return,
                lensd_sched::residency::PreloadEvent::Failed { error, .. } => panic!("{error}"),
                _ => {}
            }
        }
    };
    let rx = w
        .residency
        .preload("one", lensd_core::residency::Tier::Device)
        .await
        .unwrap();
    done(rx).await;
    let rx = w
        .residency
        .preload("two", lensd_core::residency::Tier::Device)
        .await
        .unwrap();
    done(rx).await;
    let rep = assert_sound(&w.residency, &w.engine).await;
    assert_eq!(
        rep.entry(&base("one.gguf")).unwrap().device,
        Some(DeviceId(0))
    );
    assert_eq!(
        rep.entry(&base("two.gguf")).unwrap().device,
        Some(DeviceId(2))
    );
    // A second preload of a placed group finds it where it is.
    w.engine.clear_log();
    let rx = w
        .residency
        .preload("one", lensd_core::residency::Tier::Device)
        .await
        .unwrap();
    done(rx).await;
    assert_eq!(w.engine.log(), Vec::<String>::new());
    // Work on the preloaded groups starts where they are.
    run(&w, "x", "b1", 6).await;
    run(&w, "x", "a1", 6).await;
    assert_eq!(
        runs(&w.engine),
        [
            ("two.gguf".into(), "cuda:2".into()),
            ("one.gguf".into(), "cuda:0".into())
        ]
    );
    let rep = assert_sound(&w.residency, &w.engine).await;
    assert_eq!(rep.devices.len(), 3);
    assert_eq!(rep.device(DeviceId(1)).unwrap().used, 0);
    assert_eq!(rep.device(DeviceId(2)).unwrap().driver_total, Some(2 * GB));
}

#[tokio::test(start_paused = true)]
async fn a_long_mixed_workload_on_three_devices_ends_every_request_once_and_keeps_the_books() {
    // Three groups, one pinned to devices 1 and 2; device 2 is lost half-way.
    let reg = common::registry(&[
        common::G(
            "one",
            "one.gguf",
            GB,
            &[("a1", Some(("lens-a1", 40 * MB))), ("a2", None)],
        ),
        common::G(
            "two",
            "two.gguf",
            GB,
            &[("b1", Some(("lens-b1", 40 * MB))), ("b2", None)],
        ),
        common::G("three", "three.gguf", GB / 2, &[("c1", None)]),
    ]);
    let w = gpus(3, reg, &[("three", &[1, 2])]);
    w.engine.set_transfer_latency(Duration::from_millis(300));
    let models = ["a1", "a2", "b1", "b2", "c1"];
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rxs = Vec::new();
    for step in 0..80 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let model = models[(x % 5) as usize];
        let words = 2 + (x >> 8) % 12;
        let who = format!("c{}", (x >> 16) % 6);
        rxs.push(submit(&w, &who, model, words as usize).await);
        if step == 40 {
            w.engine.lose_device(DeviceId(2));
        }
        tokio::time::sleep(Duration::from_millis(50 + (x >> 24) % 300)).await;
        assert_sound(&w.residency, &w.engine).await;
    }
    let mut completed_n = 0;
    for rx in &mut rxs {
        let evs = drain(rx).await;
        assert_grammar(&evs);
        completed_n += usize::from(completed(&evs));
        if let Some(RequestEvent::Error { error_type, .. }) = evs.last() {
            // Only the job running on the lost device, or a load on it, may fail.
            assert!(
                ["engine_error", "unavailable"].contains(&error_type.as_str()),
                "{:?}",
                evs.iter().map(kind).collect::<Vec<_>>()
            );
        }
    }
    let copies = w
        .engine
        .log()
        .iter()
        .filter(|l| l.starts_with("move "))
        .count();
    eprintln!("{completed_n} of 80 completed, {copies} copies or moves");
    assert!(completed_n >= 78, "{completed_n} of 80 completed");
    assert_eq!(w.engine.max_concurrent_jobs_on_one_device(), 1);
    let rep = assert_sound(&w.residency, &w.engine).await;
    assert!(rep.entries.iter().all(|e| e.leases == 0));
    assert!(rep.entries.iter().all(|e| e.device != Some(DeviceId(2))));
}
