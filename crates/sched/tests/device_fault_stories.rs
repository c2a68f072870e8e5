//! Faults of one device among several, against the fake engine under paused time: a device
//! whose loads fail fails the request that needed it, naming the device and the resource,
//! while the other device keeps serving; a device that is lost leaves service, its copies
//! leave the books, its queued work runs on another device, and work pinned only to it fails
//! with a clear error. After every step the books hold and no copy a job reads is freed.

mod common;

use std::time::Duration;

use common::queue::{analyze, assert_grammar, client, drain, kind, world_on, World};
use common::sound::assert_sound;
use common::{base, registry, G, GB, MB};
use lensd_core::config::Placement;
use lensd_core::residency::{DeviceId, Tier};
use lensd_core::work::RequestEvent;
use lensd_sched::fake::FakeEngine;
use lensd_sched::queue::QueueConfig;
use tokio::sync::mpsc::UnboundedReceiver;

/// Two devices that each hold one base and a lens; groups `one` and `two` on any device and
/// `three` pinned to device 1.
fn two_gpus() -> World {
    let engine = FakeEngine::with_devices(2, 2 * GB);
    engine.set_load_latency(Duration::from_millis(800));
    // 5 layers × words rows at 10 ms each.
    engine.set_compute_costs(Duration::from_millis(10), Duration::from_millis(20));
    let reg = registry(&[
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
        G("three", "three.gguf", GB, &[("t1", None)]),
    ]);
    let mut placement = Placement::default();
    placement.pins.insert("three".into(), vec![DeviceId(1)]);
    world_on(
        engine,
        reg,
        GB + 100 * MB,
        4 * GB,
        placement,
        QueueConfig::default(),
    )
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

fn names(evs: &[RequestEvent]) -> Vec<String> {
    evs.iter().map(kind).collect()
}

async fn completes(rx: &mut UnboundedReceiver<RequestEvent>) -> Vec<RequestEvent> {
    let evs = drain(rx).await;
    assert_grammar(&evs);
    assert!(
        matches!(evs.last(), Some(RequestEvent::Completed { .. })),
        "{:?}",
        names(&evs)
    );
    evs
}

/// The request's error type and message.
async fn fails(rx: &mut UnboundedReceiver<RequestEvent>) -> (String, String) {
    let evs = drain(rx).await;
    assert_grammar(&evs);
    match evs.last() {
        Some(RequestEvent::Error {
            error_type,
            message,
        }) => (error_type.clone(), message.clone()),
        _ => panic!("expected an error, got {:?}", names(&evs)),
    }
}

#[tokio::test(start_paused = true)]
async fn a_device_whose_load_fails_fails_that_request_and_the_other_device_serves_on() {
    let w = two_gpus();
    w.engine.fail_loads_on(DeviceId(1));
    completes(&mut submit(&w, "x", "a1", 6).await).await;

    // Device 0 computes a long request; the other group goes to device 1, whose load fails.
    let mut long = submit(&w, "x", "a1", 40).await;
    let mut other = submit(&w, "y", "b1", 6).await;
    let (error_type, message) = fails(&mut other).await;
    assert_eq!(error_type, "unavailable");
    assert!(
        message.contains("cuda:1")
            && message.contains("two.gguf")
            && message.contains("out of memory"),
        "{message}"
    );
    let rep = assert_sound(&w.residency, &w.engine).await;
    assert_eq!(rep.entry(&base("two.gguf")).unwrap().tier, Tier::Disk);
    assert!(
        !rep.device(DeviceId(1)).unwrap().failed,
        "a failed load is not a lost device"
    );
    assert_eq!(rep.device(DeviceId(1)).unwrap().used, 0);

    completes(&mut long).await;
    completes(&mut submit(&w, "z", "a2", 6).await).await;
    assert!(w
        .engine
        .log()
        .iter()
        .filter(|l| l.starts_with("analyze"))
        .all(|l| l.ends_with("on cuda:0")));
    assert_sound(&w.residency, &w.engine).await;
}

#[tokio::test(start_paused = true)]
async fn a_lost_device_leaves_service_and_its_queued_work_runs_on_the_other() {
    let w = two_gpus();
    // Each group's base on its own device.
    let mut a = submit(&w, "x", "a2", 2).await;
    let mut b = submit(&w, "y", "b2", 2).await;
    completes(&mut a).await;
    completes(&mut b).await;
    let rep = assert_sound(&w.residency, &w.engine).await;
    assert_eq!(
        rep.entry(&base("two.gguf")).unwrap().device,
        Some(DeviceId(1))
    );

    // A long request computes on device 1; more of its group wait for it, and work pinned to
    // device 1 waits too.
    let mut running = submit(&w, "y", "b1", 40).await;
    let mut seen = Vec::new();
    while !seen.iter().any(|e| matches!(e, RequestEvent::Rows { .. })) {
        seen.push(running.recv().await.unwrap());
    }
    let mut queued = Vec::new();
    for c in ["p", "q", "r"] {
        queued.push(submit(&w, c, "b2", 2).await);
    }
    let mut pinned = submit(&w, "s", "t1", 2).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_sound(&w.residency, &w.engine).await;

    w.engine.lose_device(DeviceId(1));
    seen.extend(drain(&mut running).await);
    assert_grammar(&seen);
    match seen.last() {
        Some(RequestEvent::Error {
            error_type,
            message,
        }) => {
            assert_eq!(error_type, "engine_error");
            assert!(message.contains("cuda:1 fell off the bus"), "{message}");
        }
        _ => panic!("{:?}", names(&seen)),
    }
    let (error_type, message) = fails(&mut pinned).await;
    assert_eq!(error_type, "unavailable");
    assert!(
        message.contains("group three is pinned to cuda:1, which failed"),
        "{message}"
    );
    for rx in &mut queued {
        completes(rx).await;
    }
    let log = w.engine.log();
    let after: Vec<&String> = log
        .iter()
        .skip_while(|l| !l.starts_with("analyze two.gguf [b1]"))
        .skip(1)
        .filter(|l| l.starts_with("analyze"))
        .collect();
    assert_eq!(after.len(), 3, "{log:?}");
    assert!(after.iter().all(|l| l.ends_with("on cuda:0")), "{log:?}");

    let rep = assert_sound(&w.residency, &w.engine).await;
    let lost = rep.device(DeviceId(1)).unwrap();
    assert!(lost.failed);
    assert!(
        lost.failure
            .as_deref()
            .unwrap_or("")
            .contains("fell off the bus"),
        "{lost:?}"
    );
    assert_eq!(lost.used, 0);
    assert!(rep.entries.iter().all(|e| e.device != Some(DeviceId(1))));
    assert_eq!(
        rep.entry(&base("two.gguf")).unwrap().device,
        Some(DeviceId(0))
    );
    assert_eq!(
        rep.tier(Tier::Device).budget,
        GB + 100 * MB,
        "the device tier is the working devices"
    );
    // Later work goes to the device that works.
    completes(&mut submit(&w, "x", "a1", 2).await).await;
    assert_eq!(w.engine.max_concurrent_jobs_on_one_device(), 1);
    assert_sound(&w.residency, &w.engine).await;
}
