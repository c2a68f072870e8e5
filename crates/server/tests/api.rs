//! Every REST endpoint in process, over the fake engine: listings by role, switching, groups,
//! preload and unload rights, submitting and following work, and the bad-input matrix. No
//! response may contain a server file path (checked by `call`).

mod common;

use axum::http::StatusCode;
use common::{call, events, server, server_with, ADMIN, USER};
use lensd_sched::fake::FakeEngine;
use lensd_sched::queue::QueueConfig;
use lensd_server::limits::Limits;
use serde_json::json;

fn ids(v: &serde_json::Value) -> Vec<String> {
    v["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn health_and_readiness() {
    let s = server();
    assert_eq!(
        call(&s.state, "GET", "/healthz", None, None).await,
        (StatusCode::OK, json!({"status": "ok"}))
    );
    assert_eq!(
        call(&s.state, "GET", "/readyz", None, None).await,
        (StatusCode::OK, json!({"status": "ready"}))
    );
}

#[tokio::test]
async fn the_flat_list_shows_each_role_what_it_may_use() {
    let s = server();
    let (st, anon) = call(&s.state, "GET", "/api/v1/models", None, None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(ids(&anon), ["pub-logit", "pub-tuned"]);
    let (_, user) = call(&s.state, "GET", "/api/v1/models", Some(USER), None).await;
    assert_eq!(ids(&user), ["pub-logit", "pub-tuned", "be"]);
    let (_, admin) = call(&s.state, "GET", "/api/v1/models", Some(ADMIN), None).await;
    assert_eq!(ids(&admin), ["pub-logit", "pub-tuned", "be", "hid"]);
    let m = &anon["models"][0];
    assert_eq!(
        (
            m["group_id"].as_str(),
            m["layer"].as_u64(),
            m["residency"]["base_tier"].as_str()
        ),
        (Some("public"), Some(4), Some("disk"))
    );
    let (st, e) = call(&s.state, "GET", "/api/v1/models", Some("wrong-key"), None).await;
    assert_eq!(
        (st, e["error_type"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized"))
    );
    assert!(
        !e["message"].as_str().unwrap().contains("wrong-key"),
        "never echo a key"
    );
}

#[tokio::test]
async fn switching_sets_the_callers_model_and_groups_report_fast_switches() {
    let s = server();
    let (st, r) = call(
        &s.state,
        "POST",
        "/api/v1/models/switch",
        Some(USER),
        Some(r#"{"model_id": "pub-tuned"}"#),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{r}");
    assert_eq!(
        (r["group_id"].as_str(), r["preloading"].as_bool()),
        (Some("public"), Some(false))
    );
    let (_, g) = call(&s.state, "GET", "/api/v2/groups", Some(USER), None).await;
    assert_eq!(g["current_model"], "pub-tuned");
    let fast: Vec<(String, bool)> = g["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["group_id"].as_str().unwrap().into(),
                g["fast_switch"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        fast,
        [("public".to_string(), true), ("backend".to_string(), true)],
        "both name the same base"
    );
    let (st, e) = call(
        &s.state,
        "POST",
        "/api/v1/models/switch",
        None,
        Some(r#"{"model_id": "hid"}"#),
    )
    .await;
    assert_eq!(
        (st, e["error_type"].as_str()),
        (StatusCode::NOT_FOUND, Some("unknown_model")),
        "hidden looks unknown"
    );
    let (st, e) = call(
        &s.state,
        "POST",
        "/api/v1/models/switch",
        None,
        Some(r#"{"model": "x"}"#),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(
        e["message"].as_str().unwrap().contains("model_id")
            || e["message"].as_str().unwrap().contains("model"),
        "{e}"
    );
}

#[tokio::test]
async fn groups_models_and_memory() {
    let s = server();
    let (st, g) = call(&s.state, "GET", "/api/v2/groups/public", None, None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        (g["layers"].as_u64(), g["base_bytes"].as_u64()),
        (Some(4), Some(1 << 30))
    );
    assert!(
        g["estimated_switch_ms"].as_u64().unwrap() > 0,
        "a base on disk takes time"
    );
    assert_eq!(
        call(&s.state, "GET", "/api/v2/groups/hidden", None, None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(&s.state, "GET", "/api/v2/groups/hidden", Some(ADMIN), None)
            .await
            .0,
        StatusCode::OK
    );
    let (st, m) = call(&s.state, "GET", "/api/v2/models/pub-tuned", None, None).await;
    assert_eq!(
        (
            st,
            m["lens"].as_str(),
            m["residency"]["lens_bytes"].as_u64()
        ),
        (StatusCode::OK, Some("tuned"), Some(8 << 20))
    );
    let ready = m["residency"]["estimated_ready_ms"].as_u64().unwrap();
    let base_ms = g["estimated_switch_ms"].as_u64().unwrap();
    assert!(
        ready > base_ms,
        "a model on disk needs its base ({base_ms} ms) and its lens: {ready} ms"
    );
    assert_eq!(
        call(&s.state, "GET", "/api/v2/models/be", None, None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    let (st, mem) = call(&s.state, "GET", "/api/v2/memory", None, None).await;
    assert_eq!(st, StatusCode::OK);
    let kinds: Vec<&str> = mem["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["base", "lens"],
        "anonymous sees only what public models use"
    );
    assert_eq!(mem["tiers"][0]["budget"], 3u64 << 30);
}

#[tokio::test]
async fn preload_and_unload_need_an_admin() {
    let s = server();
    let (st, e) = call(
        &s.state,
        "POST",
        "/api/v2/groups/public/preload",
        None,
        None,
    )
    .await;
    assert_eq!(
        (st, e["error_type"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized"))
    );
    let (st, e) = call(
        &s.state,
        "POST",
        "/api/v2/groups/public/preload",
        Some(USER),
        None,
    )
    .await;
    assert_eq!(
        (st, e["error_type"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );
    let (st, r) = call(
        &s.state,
        "POST",
        "/api/v2/groups/public/preload?tier=host",
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(
        (st, r["status"].as_str(), r["tier"].as_str()),
        (StatusCode::ACCEPTED, Some("preloading"), Some("host"))
    );
    let (st, _) = call(
        &s.state,
        "POST",
        "/api/v2/groups/public/preload?tier=moon",
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, r) = call(
        &s.state,
        "POST",
        "/api/v2/groups/public/unload?tier=disk",
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{r}");
    let (st, _) = call(
        &s.state,
        "POST",
        "/api/v2/groups/public/unload",
        Some(USER),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, e) = call(&s.state, "POST", "/api/v2/admin/reload", Some(ADMIN), None).await;
    assert_eq!(
        (st, e["error_type"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable"))
    );
    assert_eq!(
        call(&s.state, "POST", "/api/v2/admin/reload", Some(USER), None)
            .await
            .0,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn an_analysis_is_accepted_streamed_and_stored() {
    let s = server();
    let (st, a) = call(&s.state, "POST", "/api/v2/analyze", None, Some(r#"{"model_id": "pub-tuned", "text": "one two three", "options": {"layers": "0-4:2", "top_k": 2}}"#)).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{a}");
    let id = a["request_id"].as_str().unwrap().to_string();
    assert_eq!(a["events_url"], format!("/api/v2/requests/{id}/events"));
    let evs = events(&s.state, &id, None).await;
    let kinds: Vec<&str> = evs.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"queued"));
    assert_eq!(kinds.last(), Some(&"completed"));
    assert!(
        kinds.contains(&"rows") && kinds.contains(&"progress") && kinds.contains(&"loading"),
        "{kinds:?}"
    );
    let (_, r) = call(
        &s.state,
        "GET",
        &format!("/api/v2/requests/{id}"),
        None,
        None,
    )
    .await;
    assert_eq!(r["status"]["state"], "completed");
    // The record's numbers read exactly as the streamed ones.
    let completed = evs.iter().find(|e| e["type"] == "completed").unwrap();
    assert_eq!(r["result"], completed["output"]);
    assert_eq!(
        r["result"]["analyses"][0]["layers"][0]["positions"][0]["entropy"].to_string(),
        "1.1"
    );
    let layers: Vec<u64> = r["result"]["analyses"][0]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["layer"].as_u64().unwrap())
        .collect();
    assert_eq!(layers, [0, 2, 4]);
    assert_eq!(r["share_url"], format!("/share/{id}"));
    let (st, page) = call(&s.state, "GET", &format!("/share/{id}"), None, None).await;
    assert_eq!(st, StatusCode::OK);
    assert!(
        page.as_str().unwrap().contains("one"),
        "the shared page shows the text"
    );
    // Someone else's request is invisible.
    assert_eq!(
        call(
            &s.state,
            "GET",
            &format!("/api/v2/requests/{id}"),
            Some(USER),
            None
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(&s.state, "GET", "/share/r-0000000000000000", None, None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_generation_streams_tokens_and_can_be_analysed_after_it_finishes() {
    let s = server();
    let (st, g) = call(
        &s.state,
        "POST",
        "/api/v2/generate",
        Some(USER),
        Some(r#"{"model_id": "pub-logit", "prompt": "say", "max_tokens": 4}"#),
    )
    .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{g}");
    let gid = g["request_id"].as_str().unwrap().to_string();
    let body = format!(r#"{{"model_id": "pub-tuned", "after": "{gid}"}}"#);
    let (st, a) = call(&s.state, "POST", "/api/v2/analyze", Some(USER), Some(&body)).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{a}");
    let gen_events = events(&s.state, &gid, Some(USER)).await;
    assert_eq!(
        gen_events.iter().filter(|e| e["type"] == "token").count(),
        4
    );
    let aid = a["request_id"].as_str().unwrap().to_string();
    let evs = events(&s.state, &aid, Some(USER)).await;
    assert_eq!(evs.last().unwrap()["type"], "completed");
    let tokens = evs.iter().find(|e| e["type"] == "tokens").unwrap()["tokens"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(
        tokens, 6,
        "the prompt as the fake engine renders a chat (`user: say`) and the four generated words"
    );
    let (st, e) = call(&s.state, "POST", "/api/v2/analyze", None, Some(&body)).await;
    assert_eq!(
        st,
        StatusCode::BAD_REQUEST,
        "someone else's generation: {e}"
    );
}

#[tokio::test]
async fn a_conversation_is_read_with_the_models_chat_template() {
    let s = server();
    let body = r#"{"model_id": "pub-logit", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}]}"#;
    let (st, a) = call(&s.state, "POST", "/api/v2/analyze", None, Some(body)).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{a}");
    let evs = events(&s.state, a["request_id"].as_str().unwrap(), None).await;
    let tokens: Vec<&str> = evs.iter().find(|e| e["type"] == "tokens").unwrap()["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["text"].as_str().unwrap())
        .collect();
    // The fake engine's template writes one `role: content` line per turn.
    assert_eq!(tokens, ["user:", "Hi", "assistant:", "Hello", "there"]);
}

#[tokio::test]
async fn bad_input_gets_structured_errors_that_name_the_problem() {
    let limits = Limits {
        max_text_chars: 50,
        max_lenses: 2,
        requests_per_minute: 60,
        burst: 100,
        max_message_bytes: 4096,
        ..Limits::default()
    };
    let s = server_with(limits, QueueConfig::default(), FakeEngine::new(true));
    let cases: Vec<(&str, &str, StatusCode, &str, &str)> = vec![
        (
            "/api/v2/analyze",
            r#"{"model_id": "pub-logit"}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
            "text",
        ),
        (
            "/api/v2/analyze",
            r#"{"model_id": "pub-logit", "text": "x", "messages": [{"role": "user", "content": "x"}]}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
            "not both",
        ),
        (
            "/api/v2/analyze",
            r#"{"model_id": "pub-logit", "messages": []}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
            "at least one message",
        ),
        (
            "/api/v2/generate",
            r#"{"model_id": "pub-logit", "messages": [{"role": "user", "content": "x"}, {"role": "robot", "content": "y"}]}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
            "messages[1].role",
        ),
        (
            "/api/v2/analyze",
            r#"{"model_id": "pub-logit", "messages": [{"role": "user", "content": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}, {"role": "assistant", "content": "yyyyyyyyyyyyyyyyyyyyyy"}]}"#,
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "limit is 50",
        ),
        (
            "/api/v2/analyze",
            r#"{"model_id": "pub-logit", "text": 7}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
            "string",
        ),
        (
            "/api/v2/analyze",
            r#"{"model_id": "nope", "text": "x"}"#,
            StatusCode::NOT_FOUND,
            "unknown_model",
            "nope",
        ),
        (
            "/api/v2/analyze",
            r#"{"model_id": "hid", "text": "x"}"#,
            StatusCode::NOT_FOUND,
            "unknown_model",
            "hid",
        ),
        (
            "/api/v2/analyze",
            r#"{"model_id": "pub-logit", "text": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#,
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "limit is 50",
        ),
        (
            "/api/v2/analyze",
            r#"{"models": ["pub-logit", "pub-tuned", "be"], "text": "x"}"#,
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "limit is 2",
        ),
        (
            "/api/v2/analyze",
            r#"{"model_id": "pub-logit", "text": "x", "options": {"layers": "9-1"}}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
            "backwards",
        ),
        (
            "/api/v2/analyze",
            r#"{"model_id": "pub-logit", "text": "x", "options": {"top_k": 0}}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
            "top_k",
        ),
        (
            "/api/v2/analyze",
            r#"{"model_id": "pub-logit", "text": "x", "options": {"best_of_k": 65}}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
            "`options.best_of_k` must be from 1 to 64, got 65",
        ),
        (
            "/api/v2/analyze",
            r#"{"model_id": "pub-logit", "text": "x", "options": {"temperature": -1}}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
            "`options.temperature` must be from 0 to 5",
        ),
        (
            "/api/v2/analyze",
            r#"{"model_id": "pub-logit", "text": "x", "options": {"salience": "yes"}}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
            "at `options.salience`: invalid type",
        ),
        (
            "/api/v2/analyze",
            r#"{"text": "x"}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
            "name a model",
        ),
        (
            "/api/v2/analyze",
            r#"{"model_id": "pub-logit", "text": "x", "colour": "red"}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
            "colour",
        ),
        (
            "/api/v2/analyze",
            "{not json",
            StatusCode::BAD_REQUEST,
            "bad_request",
            "",
        ),
        (
            "/api/v2/generate",
            r#"{"model_id": "pub-logit", "prompt": "x", "temperature": -1}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
            "temperature",
        ),
        (
            "/api/v2/generate",
            r#"{"model_id": "pub-logit", "prompt": "x", "max_tokens": 100000}"#,
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "max_tokens",
        ),
    ];
    for (path, body, status, kind, needle) in cases {
        let (st, e) = call(&s.state, "POST", path, None, Some(body)).await;
        assert_eq!(
            (st, e["error_type"].as_str()),
            (status, Some(kind)),
            "{path} {body}: {e}"
        );
        assert!(
            e["message"].as_str().unwrap().contains(needle),
            "{body}: {e}"
        );
    }
    let big = format!(
        r#"{{"model_id": "pub-logit", "text": "{}"}}"#,
        "y".repeat(5000)
    );
    let (st, e) = call(&s.state, "POST", "/api/v2/analyze", None, Some(&big)).await;
    assert_eq!(
        (st, e["error_type"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large")),
        "{e}"
    );
    assert!(e["message"].as_str().unwrap().contains("4096"), "{e}");
}

#[tokio::test]
async fn rate_limits_and_a_full_queue_answer_429_with_the_limit() {
    let limits = Limits {
        requests_per_minute: 2,
        burst: 2,
        ..Limits::default()
    };
    let s = server_with(limits, QueueConfig::default(), FakeEngine::new(true));
    let body = r#"{"model_id": "pub-logit", "text": "a b"}"#;
    for _ in 0..2 {
        assert_eq!(
            call(&s.state, "POST", "/api/v2/analyze", None, Some(body))
                .await
                .0,
            StatusCode::ACCEPTED
        );
    }
    let (st, e) = call(&s.state, "POST", "/api/v2/analyze", None, Some(body)).await;
    assert_eq!(
        (st, e["error_type"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited"))
    );
    assert!(
        e["message"].as_str().unwrap().contains("2 per minute"),
        "{e}"
    );
    assert_eq!(
        call(&s.state, "POST", "/api/v2/analyze", Some(USER), Some(body))
            .await
            .0,
        StatusCode::ACCEPTED,
        "limits are per client"
    );

    let engine = FakeEngine::new(true);
    engine.set_compute_costs(
        std::time::Duration::from_millis(50),
        std::time::Duration::ZERO,
    );
    let s = server_with(
        Limits::default(),
        QueueConfig {
            capacity: 1,
            ..QueueConfig::default()
        },
        engine,
    );
    let long = r#"{"model_id": "pub-logit", "text": "a b c d e f g h i j k l m n o p"}"#;
    let (_, first) = call(&s.state, "POST", "/api/v2/analyze", None, Some(long)).await;
    let first = first["request_id"].as_str().unwrap().to_string();
    // Wait until it runs, so that the next one waits in the queue.
    let evs_state = s.state.clone();
    let started = tokio::spawn(async move { events(&evs_state, &first, None).await });
    loop {
        let (_, st) = call(&s.state, "GET", "/api/v2/memory", None, None).await;
        if st["entries"][0]["leases"].as_u64() == Some(1) {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(
        call(&s.state, "POST", "/api/v2/analyze", Some(USER), Some(body))
            .await
            .0,
        StatusCode::ACCEPTED
    );
    let (st, e) = call(&s.state, "POST", "/api/v2/analyze", Some(ADMIN), Some(body)).await;
    assert_eq!(
        (st, e["error_type"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("queue_full")),
        "{e}"
    );
    assert!(e["message"].as_str().unwrap().contains("1 requests"), "{e}");
    started.await.unwrap();
}

#[tokio::test]
async fn engine_errors_never_reveal_file_paths_and_cancel_works() {
    let engine = FakeEngine::new(true);
    engine.fail_loads_of("lenses/tuned");
    let s = server_with(Limits::default(), QueueConfig::default(), engine);
    let (_, a) = call(
        &s.state,
        "POST",
        "/api/v2/analyze",
        None,
        Some(r#"{"model_id": "pub-tuned", "text": "a"}"#),
    )
    .await;
    let id = a["request_id"].as_str().unwrap().to_string();
    let evs = events(&s.state, &id, None).await;
    let last = evs.last().unwrap();
    assert_eq!(last["type"], "error");
    assert!(
        last["message"].as_str().unwrap().contains("[file]"),
        "{last}"
    );
    let (_, r) = call(
        &s.state,
        "GET",
        &format!("/api/v2/requests/{id}"),
        None,
        None,
    )
    .await;
    assert_eq!(r["status"]["state"], "error");

    let (_, a) = call(
        &s.state,
        "POST",
        "/api/v2/analyze",
        None,
        Some(r#"{"model_id": "pub-logit", "text": "a b"}"#),
    )
    .await;
    let id = a["request_id"].as_str().unwrap().to_string();
    let (st, c) = call(
        &s.state,
        "POST",
        &format!("/api/v2/requests/{id}/cancel"),
        None,
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let evs = events(&s.state, &id, None).await;
    let last = evs.last().unwrap()["type"].as_str().unwrap().to_string();
    assert!(
        c["cancelled"] == true && last == "cancelled"
            || c["cancelled"] == false && last == "completed",
        "{c} then {last}"
    );
    assert_eq!(
        call(
            &s.state,
            "POST",
            "/api/v2/requests/r-nope/cancel",
            None,
            None
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
}
