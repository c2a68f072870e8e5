//! Work cancelled by a server shutdown says so, to its client and in the stored result, instead
//! of blaming the client.

mod common;

use std::time::Duration;

use common::{call, server_with};
use lensd_core::work::RequestEvent;
use lensd_sched::fake::FakeEngine;
use lensd_sched::queue::QueueConfig;
use lensd_server::limits::Limits;

async fn analyze(s: &common::TestServer) -> String {
    let text = (0..200)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ");
    let body = serde_json::json!({"model_id": "pub-logit", "text": text}).to_string();
    let (status, a) = call(&s.state, "POST", "/api/v2/analyze", None, Some(&body)).await;
    assert!(status.is_success(), "{a}");
    a["request_id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_cancelled_by_a_shutdown_says_the_server_was_shutting_down() {
    // issue 17 item 10: a shutdown's cancellations said "cancelled by the client".
    let engine = FakeEngine::new(true);
    engine.set_compute_costs(Duration::from_millis(20), Duration::ZERO);
    let s = server_with(
        Limits {
            shutdown_grace: Duration::from_millis(100),
            ..Limits::default()
        },
        QueueConfig::default(),
        engine,
    );
    let running = analyze(&s).await;
    let queued = analyze(&s).await;
    let (_, mut run_rx) = s.state.requests.get(&running).unwrap().subscribe();
    let (_, mut queued_rx) = s.state.requests.get(&queued).unwrap().subscribe();
    // The first has sent rows when the shutdown begins; the second still waits behind it.
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(ev) = run_rx.recv().await {
            if matches!(ev, RequestEvent::Rows { .. }) {
                break;
            }
        }
    })
    .await
    .expect("rows within 10 s");

    lensd_server::drain(&s.state).await;

    for (id, rx, partial) in [
        (&running, &mut run_rx, true),
        (&queued, &mut queued_rx, false),
    ] {
        let mut last = None;
        while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            last = Some(ev);
        }
        match last {
            Some(RequestEvent::Cancelled { partial: p, reason }) => {
                assert_eq!(p, partial, "{id}");
                assert!(reason.contains("server is shutting down"), "{id}: {reason}");
                assert!(!reason.contains("client"), "{id}: {reason}");
            }
            other => panic!("{id} ended with {other:?}"),
        }
        let stored = s.state.store.as_ref().unwrap().get(id).unwrap().unwrap();
        assert_eq!(stored.outcome, "cancelled");
        let message = stored.error.unwrap_or_default();
        assert!(
            message.contains("server is shutting down"),
            "the stored result says why: {message:?}"
        );
    }
}
