//! issue 17 item 11: each role's limits on work — the size of an analysis estimated before it
//! is queued, compute per request, the default deadline, and compute per client per minute —
//! each refusal naming the limit.

mod common;

use std::time::Duration;

use common::{call, events, server_with, USER};
use lensd_sched::fake::FakeEngine;
use lensd_sched::queue::QueueConfig;
use lensd_server::limits::Limits;
use lensd_server::roles::RoleTable;

fn words(n: usize) -> String {
    (0..n)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn analysis(text: &str) -> String {
    serde_json::json!({"model_id": "pub-logit", "text": text}).to_string()
}

fn with_roles(roles: &str, compute_per_position: Duration) -> common::TestServer {
    let engine = FakeEngine::new(true);
    engine.set_compute_costs(compute_per_position, Duration::ZERO);
    server_with(
        Limits {
            roles: RoleTable::parse(roles).unwrap(),
            ..Limits::default()
        },
        QueueConfig::default(),
        engine,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_analysis_too_large_for_the_role_is_refused_up_front_naming_the_limit() {
    let s = with_roles(
        r#"{"anonymous": {"max_analysis_cells": 1000}}"#,
        Duration::ZERO,
    );
    // 200 words are 889 bytes; the base has 4 layers, 5 rows with the embeddings.
    let text = words(200);
    let (status, body) = call(
        &s.state,
        "POST",
        "/api/v2/analyze",
        None,
        Some(&analysis(&text)),
    )
    .await;
    assert_eq!(status.as_u16(), 413, "{body}");
    assert_eq!(body["error_type"], "payload_too_large");
    let message = body["message"].as_str().unwrap();
    let cells = text.len() * 5;
    for needle in [
        format!("{cells} cells"),
        "`max_analysis_cells`".to_string(),
        "anonymous".to_string(),
        "1000".to_string(),
    ] {
        assert!(message.contains(&needle), "{needle}: {message}");
    }
    // Nothing was queued.
    assert!(s.state.requests.active().is_empty());
    // A key's holder has the user role's larger limit.
    let (status, body) = call(
        &s.state,
        "POST",
        "/api/v2/analyze",
        Some(USER),
        Some(&analysis(&text)),
    )
    .await;
    assert_eq!(status.as_u16(), 202, "{body}");
    // One layer instead of all fits the anonymous limit.
    let one = serde_json::json!({"model_id": "pub-logit", "text": words(20),
        "options": {"layers": "2"}})
    .to_string();
    let (status, body) = call(&s.state, "POST", "/api/v2/analyze", None, Some(&one)).await;
    assert_eq!(status.as_u16(), 202, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_the_roles_compute_limit_ends_with_compute_limit() {
    // 200 positions at 5 ms each are a second of compute against 0.3 s.
    let s = with_roles(
        r#"{"anonymous": {"compute_seconds": 0.3, "compute_seconds_per_minute": null}}"#,
        Duration::from_millis(5),
    );
    let (status, a) = call(
        &s.state,
        "POST",
        "/api/v2/analyze",
        None,
        Some(&analysis(&words(200))),
    )
    .await;
    assert_eq!(status.as_u16(), 202, "{a}");
    let evs = events(&s.state, a["request_id"].as_str().unwrap(), None).await;
    let last = evs.last().unwrap();
    assert_eq!(last["type"], "error", "{last}");
    assert_eq!(last["error_type"], "compute_limit", "{last}");
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .contains("0.3 s of compute"),
        "{last}"
    );
    // An admin has no compute limit by default.
    let (status, a) = call(
        &s.state,
        "POST",
        "/api/v2/analyze",
        Some(common::ADMIN),
        Some(&analysis(&words(200))),
    )
    .await;
    assert_eq!(status.as_u16(), 202, "{a}");
    let evs = events(
        &s.state,
        a["request_id"].as_str().unwrap(),
        Some(common::ADMIN),
    )
    .await;
    assert_eq!(evs.last().unwrap()["type"], "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_past_its_compute_of_the_minute_waits_while_others_want_the_worker() {
    let s = with_roles(
        r#"{"anonymous": {"compute_seconds_per_minute": 0.2}, "user": {"compute_seconds_per_minute": 0.2}}"#,
        Duration::from_millis(5),
    );
    // About half a second of compute for the anonymous caller.
    let (status, a) = call(
        &s.state,
        "POST",
        "/api/v2/analyze",
        None,
        Some(&analysis(&words(100))),
    )
    .await;
    assert_eq!(status.as_u16(), 202, "{a}");
    let evs = events(&s.state, a["request_id"].as_str().unwrap(), None).await;
    assert_eq!(evs.last().unwrap()["type"], "completed");
    // Alone on the server it is not held back.
    let (status, alone) = call(
        &s.state,
        "POST",
        "/api/v2/analyze",
        None,
        Some(&analysis("alone")),
    )
    .await;
    assert_eq!(status.as_u16(), 202, "{alone}");
    events(&s.state, alone["request_id"].as_str().unwrap(), None).await;
    // Another client's work arrives: its share is its own...
    let (status, theirs) = call(
        &s.state,
        "POST",
        "/api/v2/analyze",
        Some(USER),
        Some(&analysis(&words(200))),
    )
    .await;
    assert_eq!(status.as_u16(), 202, "{theirs}");
    // ...and while it waits or runs, the first client has had its share.
    let (status, body) = call(
        &s.state,
        "POST",
        "/api/v2/analyze",
        None,
        Some(&analysis("again")),
    )
    .await;
    assert_eq!(status.as_u16(), 429, "{body}");
    assert_eq!(body["error_type"], "rate_limited");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("while others wait"), "{message}");
    assert!(
        message.contains("`compute_seconds_per_minute`"),
        "{message}"
    );
    assert!(message.contains("try again in"), "{message}");
    let evs = events(&s.state, theirs["request_id"].as_str().unwrap(), Some(USER)).await;
    assert_eq!(evs.last().unwrap()["type"], "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_a_deadline_gets_the_roles_default() {
    // The queue holds the second request behind a long first one past its default deadline.
    let s = with_roles(
        r#"{"anonymous": {"default_deadline_seconds": 0.2, "compute_seconds_per_minute": null}}"#,
        Duration::from_millis(5),
    );
    let (_, first) = call(
        &s.state,
        "POST",
        "/api/v2/analyze",
        Some(USER),
        Some(&analysis(&words(100))),
    )
    .await;
    let (status, late) = call(
        &s.state,
        "POST",
        "/api/v2/analyze",
        None,
        Some(&analysis("late")),
    )
    .await;
    assert_eq!(status.as_u16(), 202, "{late}");
    let evs = events(&s.state, late["request_id"].as_str().unwrap(), None).await;
    assert_eq!(
        evs.last().unwrap()["error_type"],
        "deadline_exceeded",
        "{evs:?}"
    );
    let evs = events(&s.state, first["request_id"].as_str().unwrap(), Some(USER)).await;
    assert_eq!(evs.last().unwrap()["type"], "completed");
}
