//! The WebSocket protocol over a real socket, against the fake engine: the session survives
//! malformed messages, work streams its events in order, cancellation, rights, chaining,
//! disconnects, the connection limit and shutdown.

mod common;

use std::time::Duration;

use common::{server, server_with, ADMIN, SECRET};
use futures_util::{SinkExt, StreamExt};
use lensd_sched::fake::FakeEngine;
use lensd_sched::queue::QueueConfig;
use lensd_server::limits::Limits;
use lensd_server::Shared;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn listen(state: Shared) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(lensd_server::serve(state, listener, async move {
        let _ = stopped.await;
    }));
    (format!("ws://{addr}/ws"), stop)
}

async fn connect(url: &str, key: Option<&str>) -> Ws {
    let mut req = url.into_client_request().unwrap();
    if let Some(k) = key {
        req.headers_mut()
            .insert("authorization", format!("Bearer {k}").parse().unwrap());
    }
    let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    ws
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

async fn recv(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s")
            .unwrap()
            .unwrap();
        if let Message::Text(t) = msg {
            assert!(!t.contains(SECRET), "a frame leaked a server path: {t}");
            return serde_json::from_str(&t).unwrap();
        }
    }
}

/// Frames until one of type `kind` (returned last).
async fn until(ws: &mut Ws, kind: &str) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let v = recv(ws).await;
        let done = v["type"] == kind;
        out.push(v);
        if done {
            return out;
        }
    }
}

/// Frames of one request until its terminal event.
async fn request_events(ws: &mut Ws, id: &str) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let v = recv(ws).await;
        if v["request_id"] == id && v.get("type").is_some() {
            let end = ["completed", "error", "cancelled"].contains(&v["type"].as_str().unwrap());
            out.push(v);
            if end {
                return out;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_lists_groups_and_survives_malformed_messages() {
    let s = server();
    let (url, _stop) = listen(s.state.clone()).await;
    let mut ws = connect(&url, None).await;
    let hello = recv(&mut ws).await;
    assert_eq!(
        (
            hello["type"].as_str(),
            hello["role"].as_str(),
            hello["protocol_version"].as_u64()
        ),
        (Some("connection_established"), Some("anonymous"), Some(1))
    );
    send(&mut ws, json!({"type": "list_model_groups"})).await;
    let list = recv(&mut ws).await;
    assert_eq!(list["type"], "model_groups_list");
    let groups: Vec<&str> = list["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["group_id"].as_str().unwrap())
        .collect();
    assert_eq!(groups, ["public"], "anonymous sees only public groups");
    // The same shape as REST v2.
    let (_, rest) = common::call(&s.state, "GET", "/api/v2/groups", None, None).await;
    assert_eq!(list["groups"], rest["groups"]);

    for (frame, needle) in [
        ("{oops", "not a protocol message"),
        (r#"{"type": "dance"}"#, "dance"),
        (r#"{"type": "analyze", "model_id": "pub-logit"}"#, "text"),
        (
            r#"{"type": "analyze", "text": "x", "model_id": "pub-logit", "extra": 1}"#,
            "extra",
        ),
        (r#"[1, 2]"#, "not a protocol message"),
    ] {
        ws.send(Message::Text(frame.into())).await.unwrap();
        let e = recv(&mut ws).await;
        assert_eq!(
            (e["type"].as_str(), e["error_type"].as_str()),
            (Some("error"), Some("bad_request")),
            "{frame}"
        );
        assert!(
            e["message"].as_str().unwrap().contains(needle),
            "{frame}: {e}"
        );
    }
    ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(recv(&mut ws).await["error_type"], "bad_request");
    send(
        &mut ws,
        json!({"type": "get_model_info", "model_id": "pub-tuned"}),
    )
    .await;
    let info = recv(&mut ws).await;
    assert_eq!(
        (info["type"].as_str(), info["model"]["lens"].as_str()),
        (Some("model_info"), Some("tuned")),
        "the session still works"
    );
    send(
        &mut ws,
        json!({"type": "get_model_info", "model_id": "hid"}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["error_type"], "unknown_model");
    // A message many times the server's read buffer still arrives whole: the error quotes
    // the length of its text.
    let long = "a".repeat(100_000);
    send(
        &mut ws,
        json!({"type": "analyze", "model_id": "pub-logit", "text": long}),
    )
    .await;
    let e = recv(&mut ws).await;
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("`text` has 100000 characters"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_analysis_streams_in_order_and_cancels_end_with_cancelled() {
    let engine = FakeEngine::new(true);
    engine.set_compute_costs(Duration::from_millis(5), Duration::from_millis(5));
    let s = server_with(Limits::default(), QueueConfig::default(), engine);
    let (url, _stop) = listen(s.state.clone()).await;
    let mut ws = connect(&url, None).await;
    recv(&mut ws).await;
    send(&mut ws, json!({"type": "analyze", "model_id": "pub-tuned", "text": "one two three", "client_tag": "t1"})).await;
    let acc = recv(&mut ws).await;
    assert_eq!(
        (acc["type"].as_str(), acc["client_tag"].as_str()),
        (Some("accepted"), Some("t1"))
    );
    let id = acc["request_id"].as_str().unwrap().to_string();
    let evs = request_events(&mut ws, &id).await;
    let kinds: Vec<&str> = evs.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds[..2], ["queued", "started"]);
    let first_rows = kinds.iter().position(|k| *k == "rows").unwrap();
    assert!(
        kinds[..first_rows].contains(&"loading") && kinds[..first_rows].contains(&"tokens"),
        "{kinds:?}"
    );
    assert_eq!(kinds.last(), Some(&"completed"));
    assert_eq!(
        kinds
            .iter()
            .filter(|k| ["completed", "error", "cancelled"].contains(k))
            .count(),
        1
    );

    // A long request, cancelled once it runs; an unknown id is an error frame.
    let text = (0..80)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ");
    send(
        &mut ws,
        json!({"type": "analyze", "model_id": "pub-logit", "text": text}),
    )
    .await;
    let id = until(&mut ws, "accepted").await.pop().unwrap()["request_id"]
        .as_str()
        .unwrap()
        .to_string();
    loop {
        let v = recv(&mut ws).await;
        if v["type"] == "rows" {
            break;
        }
    }
    send(&mut ws, json!({"type": "cancel_request", "request_id": id})).await;
    let evs = request_events(&mut ws, &id).await;
    assert_eq!(evs.last().unwrap()["type"], "cancelled");
    assert_eq!(evs.last().unwrap()["partial"], true);
    send(
        &mut ws,
        json!({"type": "cancel_request", "request_id": "r-nope"}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["error_type"], "not_found");

    // Interrupt cancels everything of this connection.
    for _ in 0..2 {
        send(
            &mut ws,
            json!({"type": "analyze", "model_id": "pub-logit", "text": text}),
        )
        .await;
    }
    let a = until(&mut ws, "accepted").await.pop().unwrap()["request_id"]
        .as_str()
        .unwrap()
        .to_string();
    let b = until(&mut ws, "accepted").await.pop().unwrap()["request_id"]
        .as_str()
        .unwrap()
        .to_string();
    send(&mut ws, json!({"type": "status"})).await;
    let q = until(&mut ws, "queue_update").await.pop().unwrap();
    let listed: Vec<&str> = q["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["request_id"].as_str().unwrap())
        .collect();
    assert!(
        listed.contains(&a.as_str()) && listed.contains(&b.as_str()),
        "{q}"
    );
    send(&mut ws, json!({"type": "interrupt"})).await;
    let mut ended = std::collections::HashSet::new();
    while ended.len() < 2 {
        let v = recv(&mut ws).await;
        if v["type"] == "cancelled" {
            ended.insert(v["request_id"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(ended, [a, b].into_iter().collect());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_preloading_and_chaining() {
    let s = server();
    let (url, _stop) = listen(s.state.clone()).await;
    let mut ws = connect(&url, None).await;
    recv(&mut ws).await;
    send(
        &mut ws,
        json!({"type": "switch_model_grouped", "model_id": "pub-tuned", "group_id": "backend"}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["error_type"], "bad_request");
    send(&mut ws, json!({"type": "switch_model_grouped", "model_id": "pub-tuned", "group_id": "public", "preload": true})).await;
    let sw = recv(&mut ws).await;
    assert_eq!(
        (sw["type"].as_str(), sw["preloading"].as_bool()),
        (Some("model_switched"), Some(false)),
        "anonymous may not preload"
    );
    send(
        &mut ws,
        json!({"type": "preload_group", "group_id": "public"}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["error_type"], "unauthorized");
    send(&mut ws, json!({"type": "auth", "key": ADMIN})).await;
    assert_eq!(recv(&mut ws).await["role"], "admin");
    send(
        &mut ws,
        json!({"type": "preload_group", "group_id": "public", "tier": "device"}),
    )
    .await;
    let statuses: Vec<Value> = until(&mut ws, "group_switch_status").await;
    assert_eq!(statuses.last().unwrap()["status"], "preloading");
    loop {
        let v = recv(&mut ws).await;
        if v["type"] == "group_switch_status" && v["status"] != "loading" {
            assert_eq!(v["status"], "preloaded", "{v}");
            break;
        }
    }
    // A request without a model uses the switched one; generate_and_analyze chains.
    send(&mut ws, json!({"type": "generate_and_analyze", "generate": {"prompt": "hello", "max_tokens": 3, "chat": false, "model_id": "pub-logit"}, "models": ["pub-tuned"]})).await;
    let gen = until(&mut ws, "accepted").await.pop().unwrap();
    let an = until(&mut ws, "accepted").await.pop().unwrap();
    assert_eq!(
        (gen["kind"].as_str(), an["kind"].as_str()),
        (Some("generation"), Some("analysis"))
    );
    let an_id = an["request_id"].as_str().unwrap().to_string();
    let evs = request_events(&mut ws, &an_id).await;
    assert_eq!(evs.last().unwrap()["type"], "completed");
    let tokens = evs.iter().find(|e| e["type"] == "tokens").unwrap()["tokens"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(tokens, 4, "prompt plus three generated words");
    send(
        &mut ws,
        json!({"type": "unload_group", "group_id": "public", "to": "disk"}),
    )
    .await;
    let u = until(&mut ws, "group_switch_status").await.pop().unwrap();
    assert_eq!(u["status"], "unloaded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_cancels_the_connections_work() {
    let engine = FakeEngine::new(true);
    engine.set_compute_costs(Duration::from_millis(20), Duration::ZERO);
    let s = server_with(Limits::default(), QueueConfig::default(), engine);
    let (url, _stop) = listen(s.state.clone()).await;
    let mut ws = connect(&url, None).await;
    recv(&mut ws).await;
    let text = (0..200)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ");
    send(
        &mut ws,
        json!({"type": "analyze", "model_id": "pub-logit", "text": text}),
    )
    .await;
    let id = until(&mut ws, "accepted").await.pop().unwrap()["request_id"]
        .as_str()
        .unwrap()
        .to_string();
    until(&mut ws, "rows").await;
    let tracked = s.state.requests.get(&id).unwrap();
    let (_, mut rx) = tracked.subscribe();
    drop(ws);
    let mut last = None;
    while let Some(ev) = rx.recv().await {
        last = Some(ev);
    }
    assert!(
        matches!(
            last,
            Some(lensd_core::work::RequestEvent::Cancelled { partial: true, .. })
        ),
        "{last:?}"
    );
    let rep = s.state.residency.report().await.unwrap();
    assert!(rep.entries.iter().all(|e| e.leases == 0), "no lease left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_and_shutdown() {
    let s = server_with(
        Limits {
            max_connections: 1,
            ..Limits::default()
        },
        QueueConfig::default(),
        FakeEngine::new(true),
    );
    let (url, stop) = listen(s.state.clone()).await;
    let mut ws = connect(&url, None).await;
    recv(&mut ws).await;
    match tokio_tungstenite::connect_async(url.as_str()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 429),
        other => panic!("a second connection must be refused, got {other:?}"),
    }
    stop.send(()).unwrap();
    let bye = recv(&mut ws).await;
    assert_eq!(bye["type"], "server_shutdown");
    // Then the server closes the connection.
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(m)) = ws.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the connection closes after the drain");
}

/// With no work to wait for, the drain passes both phases at once; `serve` still returns only
/// after the session has told its client and closed, so a process that ends when `serve`
/// returns does not cut the `server_shutdown` frame off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_returns_after_the_websocket_sessions_have_told_their_clients() {
    let s = server();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(lensd_server::serve(s.state.clone(), listener, async move {
        let _ = stopped.await;
    }));
    let mut ws = connect(&url, None).await;
    recv(&mut ws).await;
    assert_eq!(
        s.state
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("serve returns")
        .unwrap()
        .unwrap();
    assert_eq!(
        s.state
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        0,
        "serve returned with a WebSocket session still open"
    );
    let bye = recv(&mut ws).await;
    assert_eq!(bye["type"], "server_shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_hears_when_another_clients_request_loads_weights() {
    let s = server();
    let (url, _stop) = listen(s.state.clone()).await;
    let mut watcher = connect(&url, None).await;
    recv(&mut watcher).await;
    let mut worker = connect(&url, None).await;
    recv(&mut worker).await;
    send(
        &mut worker,
        json!({"type": "analyze", "model_id": "pub-tuned", "text": "a b"}),
    )
    .await;
    let first = until(&mut watcher, "residency_changed")
        .await
        .pop()
        .unwrap();
    assert_eq!(first["reason"], "loading");
    loop {
        let next = until(&mut watcher, "residency_changed")
            .await
            .pop()
            .unwrap();
        if next["reason"] == "settled" {
            break;
        }
        assert_eq!(next["reason"], "loading", "{next}");
    }
    // Now the list shows the weights on the device.
    send(&mut watcher, json!({"type": "list_model_groups"})).await;
    let list = until(&mut watcher, "model_groups_list")
        .await
        .pop()
        .unwrap();
    let public = list["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group_id"] == "public")
        .unwrap();
    assert_eq!(public["base_tier"], "device", "{public}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hidden_and_unknown_models_answer_alike_when_switching_by_group() {
    // issue 17 item 4: a hidden model of a public group answered `unknown_model`, a model that
    // does not exist `bad_request "… is not in group …"`.
    let s = server();
    let (url, _stop) = listen(s.state.clone()).await;
    let mut ws = connect(&url, None).await;
    recv(&mut ws).await;
    for (model, group) in [
        ("hid", "public"),
        ("hid", "hidden"),
        ("be", "public"),
        ("be", "backend"),
        ("does-not-exist", "public"),
        ("does-not-exist", "hidden"),
    ] {
        send(
            &mut ws,
            json!({"type": "switch_model_grouped", "model_id": model, "group_id": group}),
        )
        .await;
        let e = recv(&mut ws).await;
        assert_eq!(e["error_type"], "unknown_model", "{model} in {group}: {e}");
        assert_eq!(e["message"], format!("unknown model `{model}`"), "{e}");
    }
    // A visible model named with a group it is not in is the caller's mistake, said plainly.
    send(
        &mut ws,
        json!({"type": "switch_model_grouped", "model_id": "pub-logit", "group_id": "nope"}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["error_type"], "bad_request");
    // An admin sees the hidden model and switches to it.
    let mut admin = connect(&url, Some(ADMIN)).await;
    recv(&mut admin).await;
    send(
        &mut admin,
        json!({"type": "switch_model_grouped", "model_id": "hid", "group_id": "hidden"}),
    )
    .await;
    assert_eq!(recv(&mut admin).await["type"], "model_switched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn field_less_messages_refuse_unknown_fields_and_cancel_nothing() {
    // issue 17 item 6: `{"type": "interrupt", "request_id": …}` was accepted and cancelled all
    // of the connection's work.
    let engine = FakeEngine::new(true);
    engine.set_compute_costs(Duration::from_millis(5), Duration::ZERO);
    let s = server_with(Limits::default(), QueueConfig::default(), engine);
    let (url, _stop) = listen(s.state.clone()).await;
    let mut ws = connect(&url, None).await;
    recv(&mut ws).await;
    let text = (0..40)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ");
    send(
        &mut ws,
        json!({"type": "analyze", "model_id": "pub-logit", "text": text}),
    )
    .await;
    let accepted = until(&mut ws, "accepted").await.pop().unwrap();
    let id = accepted["request_id"].as_str().unwrap().to_string();
    for frame in [
        json!({"type": "interrupt", "request_id": id}),
        json!({"type": "status", "verbose": true}),
        json!({"type": "list_model_groups", "refresh": true}),
    ] {
        send(&mut ws, frame.clone()).await;
        let e = until(&mut ws, "error").await.pop().unwrap();
        assert_eq!(e["error_type"], "bad_request", "{frame}: {e}");
        let field = frame
            .as_object()
            .unwrap()
            .keys()
            .find(|k| *k != "type")
            .unwrap()
            .clone();
        assert!(
            e["message"].as_str().unwrap().contains(&field),
            "{frame}: {e}"
        );
    }
    // The analysis was not cancelled.
    let events = request_events(&mut ws, &id).await;
    assert_eq!(events.last().unwrap()["type"], "completed");
    // The plain forms still work.
    send(&mut ws, json!({"type": "status"})).await;
    until(&mut ws, "queue_update").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_size_limit_is_answered_payload_too_large() {
    // issue 17 item 9: the WebSocket library dropped the connection before lensd's own check.
    let s = server_with(
        Limits {
            max_message_bytes: 4096,
            ..Limits::default()
        },
        QueueConfig::default(),
        FakeEngine::new(true),
    );
    let (url, _stop) = listen(s.state.clone()).await;
    let mut ws = connect(&url, None).await;
    recv(&mut ws).await;
    let text = "a".repeat(5000);
    send(
        &mut ws,
        json!({"type": "analyze", "model_id": "pub-logit", "text": text}),
    )
    .await;
    let e = recv(&mut ws).await;
    assert_eq!(e["error_type"], "payload_too_large", "{e}");
    assert!(e["message"].as_str().unwrap().contains("4096"), "{e}");
    // The session goes on.
    send(&mut ws, json!({"type": "list_model_groups"})).await;
    assert_eq!(recv(&mut ws).await["type"], "model_groups_list");
    // Far past the limit the connection ends, and the client hears why first.
    let huge = "a".repeat(4096 * 4 + 100);
    let _ = ws.send(Message::Text(huge.into())).await;
    let e = recv(&mut ws).await;
    assert_eq!(e["error_type"], "payload_too_large", "{e}");
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(m)) = ws.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the connection closes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_never_reads_stops_being_read_and_is_closed() {
    // issue 17 item 2: one connection sending `list_model_groups` and never reading grew the
    // server's memory without bound (an unbounded output queue, and input read on regardless).
    let s = server_with(
        Limits {
            ws_output_timeout: Duration::from_secs(1),
            ..Limits::default()
        },
        QueueConfig::default(),
        FakeEngine::new(true),
    );
    let (url, _stop) = listen(s.state.clone()).await;
    let ws = connect(&url, None).await;
    let (mut sink, mut stream) = ws.split();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = sent.clone();
    let all = 200_000;
    let writer = tokio::spawn(async move {
        let frame = json!({"type": "list_model_groups"}).to_string();
        for _ in 0..all {
            if sink
                .send(Message::Text(frame.clone().into()))
                .await
                .is_err()
            {
                break;
            }
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    // The server stops reading once the session's output is full, so the client cannot send
    // everything; then it closes the session.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while s
        .state
        .connections
        .load(std::sync::atomic::Ordering::SeqCst)
        != 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the session was not closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), writer).await;
    let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        sent < all,
        "the server read all {all} messages of a client that never read"
    );
    // What reached the client ends with the reason, where it could still be sent.
    let mut closed_with = None;
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
        if let Message::Close(frame) = m {
            closed_with = frame.map(|f| f.reason.to_string());
            break;
        }
    }
    if let Some(reason) = closed_with {
        assert!(reason.contains("read none of its messages"), "{reason}");
    }
}
