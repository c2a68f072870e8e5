//! Faults met while serving, against the fake engine under paused time: a device error in the
//! middle of a batch, a panic inside the engine while computing or loading, and a load that
//! takes minutes. Each fails (or delays) the one request concerned; every other accepted
//! request still ends with its own single terminal event, and no lease is left behind.

mod common;

use std::time::Duration;

use common::queue::{analyze, assert_grammar, client, drain, generate, kind, two_groups, world};
use lensd_core::work::RequestEvent;
use lensd_sched::fake::JobFault;
use lensd_sched::queue::QueueConfig;
use lensd_sched::residency::Residency;

fn completed(evs: &[RequestEvent]) -> bool {
    matches!(evs.last(), Some(RequestEvent::Completed { .. }))
}

fn rows(evs: &[RequestEvent]) -> usize {
    evs.iter()
        .filter(|e| matches!(e, RequestEvent::Rows { .. } | RequestEvent::Token { .. }))
        .count()
}

/// The last event's error type and message, or a panic naming the events.
fn error_of(evs: &[RequestEvent]) -> (String, String) {
    match evs.last() {
        Some(RequestEvent::Error {
            error_type,
            message,
        }) => (error_type.clone(), message.clone()),
        _ => panic!(
            "expected an error, got {:?}",
            evs.iter().map(kind).collect::<Vec<_>>()
        ),
    }
}

async fn no_lease_held(residency: &Residency) {
    let rep = residency.report().await.unwrap();
    assert!(
        rep.entries.iter().all(|e| e.leases == 0),
        "no lease held: {:?}",
        rep.entries
    );
}

#[tokio::test(start_paused = true)]
async fn an_engine_error_mid_batch_fails_that_request_alone() {
    let w = world(two_groups(), QueueConfig::default());
    w.engine.set_chunk_positions(2);
    w.engine.fault_next_job(JobFault::Fail, 3);
    let (_, mut failing) = w
        .scheduler
        .submit(&client("x"), analyze("a1", 20), None)
        .await
        .unwrap();
    let (_, mut behind) = w
        .scheduler
        .submit(&client("y"), analyze("a2", 6), None)
        .await
        .unwrap();
    let (_, mut generation) = w
        .scheduler
        .submit(&client("z"), generate("a1", 5), None)
        .await
        .unwrap();

    let evs = drain(&mut failing).await;
    assert_grammar(&evs);
    assert_eq!(rows(&evs), 3, "the sub-batches before the fault arrived");
    let (error_type, message) = error_of(&evs);
    assert_eq!(error_type, "engine_error");
    assert!(message.contains("failed after 3 sub-batches"), "{message}");

    for rx in [&mut behind, &mut generation] {
        let evs = drain(rx).await;
        assert_grammar(&evs);
        assert!(
            completed(&evs),
            "{:?}",
            evs.iter().map(kind).collect::<Vec<_>>()
        );
    }
    no_lease_held(&w.residency).await;
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_the_engine_fails_that_request_and_the_worker_goes_on() {
    let w = world(two_groups(), QueueConfig::default());
    w.engine.fault_next_job(JobFault::Panic, 2);
    let (_, mut panicking) = w
        .scheduler
        .submit(&client("x"), generate("b1", 10), None)
        .await
        .unwrap();
    let (_, mut queued) = w
        .scheduler
        .submit(&client("y"), analyze("b2", 6), None)
        .await
        .unwrap();

    let evs = drain(&mut panicking).await;
    assert_grammar(&evs);
    assert_eq!(rows(&evs), 2, "the tokens before the panic arrived");
    let (error_type, message) = error_of(&evs);
    assert_eq!(error_type, "internal");
    assert!(
        message.contains("panicked after 2 sub-batches")
            && message.contains("other requests go on"),
        "{message}"
    );

    // The request accepted before the panic, and one submitted after it, both run.
    let evs = drain(&mut queued).await;
    assert_grammar(&evs);
    assert!(
        completed(&evs),
        "{:?}",
        evs.iter().map(kind).collect::<Vec<_>>()
    );
    let (_, mut after) = w
        .scheduler
        .submit(&client("x"), analyze("a1", 4), None)
        .await
        .unwrap();
    let evs = drain(&mut after).await;
    assert_grammar(&evs);
    assert!(completed(&evs));
    assert_eq!(w.engine.max_concurrent_jobs(), 1, "still one job at a time");
    no_lease_held(&w.residency).await;
}

#[tokio::test(start_paused = true)]
async fn a_panicking_load_fails_its_request_and_the_next_request_loads_again() {
    let w = world(two_groups(), QueueConfig::default());
    w.engine.panic_next_load_of("two.gguf");
    let (_, mut first) = w
        .scheduler
        .submit(&client("x"), analyze("b1", 4), None)
        .await
        .unwrap();
    let (_, mut other_group) = w
        .scheduler
        .submit(&client("y"), analyze("a1", 4), None)
        .await
        .unwrap();

    let evs = drain(&mut first).await;
    assert_grammar(&evs);
    let (error_type, message) = error_of(&evs);
    assert_eq!(error_type, "unavailable");
    assert!(
        message.contains("two.gguf") && message.contains("failed unexpectedly inside the engine"),
        "{message}"
    );
    let evs = drain(&mut other_group).await;
    assert!(
        completed(&evs),
        "{:?}",
        evs.iter().map(kind).collect::<Vec<_>>()
    );

    // The failed load left nothing half-done: the base loads on the next request.
    let (_, mut again) = w
        .scheduler
        .submit(&client("x"), analyze("b1", 4), None)
        .await
        .unwrap();
    let evs = drain(&mut again).await;
    assert_grammar(&evs);
    assert!(
        completed(&evs),
        "{:?}",
        evs.iter().map(kind).collect::<Vec<_>>()
    );
    assert_eq!(w.engine.loads_of(&common::base("two.gguf")), 1);
    no_lease_held(&w.residency).await;
}

#[tokio::test(start_paused = true)]
async fn a_load_that_takes_minutes_reports_its_progress_and_gives_way_when_cancelled() {
    let w = world(two_groups(), QueueConfig::default());
    // Base one is on the device before the slow disk.
    let (_, mut warm) = w
        .scheduler
        .submit(&client("x"), analyze("a1", 4), None)
        .await
        .unwrap();
    assert!(completed(&drain(&mut warm).await));
    w.engine.set_load_latency(Duration::from_secs(400));

    let (slow_id, mut slow) = w
        .scheduler
        .submit(&client("x"), analyze("b1", 4), None)
        .await
        .unwrap();
    let (_, mut waiting) = w
        .scheduler
        .submit(&client("y"), analyze("a2", 4), None)
        .await
        .unwrap();

    // The load reports bytes as they come, minutes apart.
    let mut seen = Vec::new();
    let mut done = Vec::new();
    while done.len() < 3 {
        let ev = slow.recv().await.expect("the request is still open");
        if let RequestEvent::Loading { bytes_done, .. } = &ev {
            done.push(*bytes_done);
        }
        seen.push(ev);
    }
    assert!(done.windows(2).all(|d| d[0] < d[1]), "{done:?}");

    // Cancelling gives way at once, mid-load.
    let t = tokio::time::Instant::now();
    assert!(w.scheduler.cancel(slow_id).await);
    let rest = drain(&mut slow).await;
    assert_eq!(
        t.elapsed(),
        Duration::ZERO,
        "cancelled without waiting for the disk"
    );
    assert!(matches!(
        rest.last(),
        Some(RequestEvent::Cancelled { partial: false, .. })
    ));
    seen.extend(rest);
    assert_grammar(&seen);

    // The request queued behind the slow load is served, whatever the disk does.
    let evs = drain(&mut waiting).await;
    assert_grammar(&evs);
    assert!(
        completed(&evs),
        "{:?}",
        evs.iter().map(kind).collect::<Vec<_>>()
    );
    no_lease_held(&w.residency).await;
}
