//! `lensd serve` end to end with the demo model: a WebSocket client lists groups, analyses
//! with a tuned lens and gets correct numbers, cancels a request, survives a malformed frame;
//! a result outlives a restart and is served at /share/{id}; and a bounded load check of 200
//! clients.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::client::{connect, http, http_get, recv, send};
use common::server::Server;
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

fn config(dir: &Path) -> std::path::PathBuf {
    let lens = common::fit(dir, "lens", "1e-3");
    write_config(dir, &lens, true)
}

fn write_config(dir: &Path, lens: &Path, second_group: bool) -> std::path::PathBuf {
    let model = common::demo_model();
    let cfg = dir.join("model_groups.json");
    let mut groups = vec![
        json!({"group_id": "demo", "group_name": "SmolLM2", "base_model_path": model,
        "models": [{"id": "logit", "name": "Logit", "lens": "logit"}, {"id": "tuned", "name": "Tuned", "lens": "tuned", "lens_checkpoint_path": lens}]}),
    ];
    if second_group {
        groups.push(
            json!({"group_id": "demo-2", "group_name": "SmolLM2 again", "base_model_path": model,
            "models": [{"id": "logit-2", "name": "Logit", "lens": "logit"}]}),
        );
    }
    let doc = json!({"model_groups": groups, "settings": {"default_group": "demo", "device_budget": "2GiB", "host_budget": "1GiB"}});
    std::fs::write(&cfg, doc.to_string()).unwrap();
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_analyses_cancels_and_its_result_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let data = dir.path().join("data");
    let server = Server::start(&cfg, &data);
    let mut ws = connect(&server.addr).await;
    assert_eq!(recv(&mut ws).await["type"], "connection_established");
    send(&mut ws, json!({"type": "list_model_groups"})).await;
    let groups = recv(&mut ws).await;
    let ids: Vec<&str> = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["group_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["demo", "demo-2"]);

    send(&mut ws, json!({"type": "analyze", "model_id": "tuned", "text": "The capital of France is", "options": {"layers": "20-30:5", "top_k": 3}})).await;
    let id = recv(&mut ws).await["request_id"]
        .as_str()
        .unwrap()
        .to_string();
    // A malformed frame in between changes nothing.
    ws.send(Message::Text("{broken".into())).await.unwrap();
    let mut kinds = Vec::new();
    let mut got_error_frame = false;
    let completed = loop {
        let v = recv(&mut ws).await;
        if v["type"] == "error" && v["request_id"].is_null() {
            got_error_frame = true;
            continue;
        }
        kinds.push(v["type"].as_str().unwrap().to_string());
        if v["type"] == "completed" {
            break v;
        }
    };
    assert!(got_error_frame);
    assert_eq!(kinds.first().map(String::as_str), Some("queued"));
    for k in ["started", "tokens", "rows", "progress"] {
        assert!(kinds.iter().any(|x| x == k), "no {k} in {kinds:?}");
    }
    let layers = &completed["output"]["analyses"][0]["layers"];
    let last = layers.as_array().unwrap().last().unwrap();
    assert_eq!(last["layer"], 30);
    let cell = last["positions"].as_array().unwrap().last().unwrap();
    assert_eq!(cell["top"][0]["token"], " Paris");
    assert!(
        (cell["top"][0]["prob"].as_f64().unwrap() - 0.7725).abs() < 0.01,
        "{cell}"
    );
    assert!(cell["kl_to_final"].as_f64().unwrap().abs() < 1e-4);

    // A second, long request is cancelled once it runs.
    let long = "The keeper wrote down the wind and the swell. ".repeat(40);
    send(
        &mut ws,
        json!({"type": "analyze", "model_id": "tuned", "text": long}),
    )
    .await;
    let second = recv(&mut ws).await["request_id"]
        .as_str()
        .unwrap()
        .to_string();
    loop {
        let v = recv(&mut ws).await;
        if v["request_id"] == second && v["type"] == "rows" {
            break;
        }
    }
    send(
        &mut ws,
        json!({"type": "cancel_request", "request_id": second}),
    )
    .await;
    loop {
        let v = recv(&mut ws).await;
        if v["request_id"] == second
            && ["completed", "error", "cancelled"].contains(&v["type"].as_str().unwrap())
        {
            assert_eq!(v["type"], "cancelled");
            break;
        }
    }
    drop(ws);
    server.stop();

    // After a restart the result is still there, and shared.
    let server = Server::start(&cfg, &data);
    let (status, body) = http_get(&server.addr, &format!("/api/v2/requests/{id}")).await;
    assert_eq!(status, 200, "{body}");
    let r: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(r["status"]["state"], "completed");
    assert_eq!(r["result"]["analyses"][0]["layers"][2]["layer"], 30);
    let (status, page) = http_get(&server.addr, &format!("/share/{id}")).await;
    assert_eq!(status, 200);
    assert!(
        page.contains("Paris") && page.contains(&id),
        "the share page shows the result"
    );
    let (status, _) = http_get(&server.addr, &format!("/api/v2/requests/{second}")).await;
    assert_eq!(status, 200, "the cancelled request is stored too");
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_each_get_exactly_one_terminal_event() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let server = Server::start(&cfg, &dir.path().join("data"));
    let addr = server.addr.clone();
    let memory = |body: String| -> u64 {
        serde_json::from_str::<Value>(&body).unwrap()["process_resident_bytes"]
            .as_u64()
            .unwrap()
    };
    // Warm up: every model once, so that the base and lens are loaded before measuring.
    let mut ws = connect(&addr).await;
    recv(&mut ws).await;
    for model in ["logit", "tuned", "logit-2"] {
        send(&mut ws, json!({"type": "analyze", "model_id": model, "text": "warm up", "options": {"layers": "30", "top_k": 1}})).await;
        loop {
            let v = recv(&mut ws).await;
            if ["completed", "error", "cancelled"].contains(&v["type"].as_str().unwrap())
                && !v["request_id"].is_null()
            {
                assert_eq!(v["type"], "completed");
                break;
            }
        }
    }
    drop(ws);
    let before = memory(http_get(&addr, "/api/v2/memory").await.1);
    let t = std::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move {
            let mut ws = connect(&addr).await;
            recv(&mut ws).await;
            send(&mut ws, json!({"type": "list_model_groups"})).await;
            assert_eq!(recv(&mut ws).await["type"], "model_groups_list");
            let model = ["logit", "tuned", "logit-2"][i % 3];
            send(&mut ws, json!({"type": "analyze", "model_id": model, "text": format!("Client {i} says hello"), "options": {"layers": "30", "top_k": 1}})).await;
            let id = recv(&mut ws).await["request_id"].as_str().unwrap().to_string();
            let mut terminals = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
            while terminals.is_empty() {
                let v = tokio::time::timeout_at(deadline, recv(&mut ws)).await.expect("ends");
                if v["request_id"] == id && ["completed", "error", "cancelled"].contains(&v["type"].as_str().unwrap()) {
                    terminals.push(v["type"].as_str().unwrap().to_string());
                }
            }
            // Nothing else arrives for this request after its terminal event.
            send(&mut ws, json!({"type": "status"})).await;
            loop {
                let v = recv(&mut ws).await;
                assert!(v["request_id"] != id, "an event after the terminal one: {v}");
                if v["type"] == "queue_update" {
                    assert_eq!(v["requests"], json!([]));
                    break;
                }
            }
            terminals
        }));
    }
    let mut completed = 0;
    for task in tasks {
        let terminals = task.await.unwrap();
        assert_eq!(terminals.len(), 1);
        completed += (terminals[0] == "completed") as usize;
    }
    let elapsed = t.elapsed();
    let after = memory(http_get(&addr, "/api/v2/memory").await.1);
    eprintln!(
        "200 clients: {completed} completed in {:.1} s; server resident memory {:.0} MiB before, {:.0} MiB after",
        elapsed.as_secs_f64(),
        before as f64 / 1048576.0,
        after as f64 / 1048576.0
    );
    assert_eq!(completed, 200);
    // Bounded: 200 connections and their results add little beside the loaded weights.
    assert!(
        after < before + 128 * 1024 * 1024,
        "memory grew from {before} to {after} bytes"
    );
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_reloads_the_configuration_of_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let keys = dir.path().join("keys.json");
    std::fs::write(
        &keys,
        r#"{"keys": [{"key": "admin-key-for-the-e2e-test", "role": "admin", "name": "ops"}]}"#,
    )
    .unwrap();
    let server = Server::start_with(
        &cfg,
        &dir.path().join("data"),
        &["--keys", keys.to_str().unwrap()],
    );
    write_config(dir.path(), &dir.path().join("lens"), false);
    let (status, body) = http(&server.addr, "POST", "/api/v2/admin/reload", None).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = http(
        &server.addr,
        "POST",
        "/api/v2/admin/reload",
        Some("admin-key-for-the-e2e-test"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let diff: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(diff["removed_models"], json!(["logit-2"]));
    let (_, body) = http_get(&server.addr, "/api/v2/groups").await;
    let groups: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(groups["groups"].as_array().unwrap().len(), 1);
    std::fs::write(&cfg, "{ broken").unwrap();
    let (status, body) = http(
        &server.addr,
        "POST",
        "/api/v2/admin/reload",
        Some("admin-key-for-the-e2e-test"),
    )
    .await;
    assert_eq!(status, 400, "a broken file is refused: {body}");
    assert!(
        !body.contains(dir.path().to_str().unwrap()),
        "no server path in {body}"
    );
    let (_, body) = http_get(&server.addr, "/api/v2/groups").await;
    let kept: Value = serde_json::from_str(&body).unwrap();
    let models = |v: &Value| -> Vec<String> {
        v["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["models"].as_array().unwrap().iter())
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        models(&kept),
        models(&groups),
        "the configuration it had stays"
    );
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_generator_sees_every_request_end_once_and_connections_released() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("model_groups.json");
    let doc = json!({"model_groups": [{"group_id": "demo", "group_name": "SmolLM2",
        "base_model_path": common::demo_model(),
        "models": [{"id": "logit", "name": "Logit", "lens": "logit"}]}],
        "settings": {"device_budget": "2GiB", "host_budget": "1GiB"}});
    std::fs::write(&cfg, doc.to_string()).unwrap();
    let server = Server::start(&cfg, &dir.path().join("data"));
    let out = tokio::task::spawn_blocking({
        let url = format!("ws://{}/ws", server.addr);
        let pid = server.child.id().to_string();
        move || {
            Command::new(env!("CARGO_BIN_EXE_lensd"))
                .args(["bench-ws", "--url", &url, "--pid", &pid, "--clients", "40"])
                .args(["--messages", "3", "--submits", "2", "--model-id", "logit"])
                .args(["--timeout", "120", "--format", "json"])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (r["messages"].as_u64(), r["submitted"].as_u64()),
        (Some(120), Some(80))
    );
    let refused: u64 = r["refused"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    let ended = ["cancelled", "completed", "failed"]
        .iter()
        .map(|k| r[k].as_u64().unwrap())
        .sum::<u64>();
    assert_eq!(
        ended + refused,
        80,
        "every submission is accounted for: {r}"
    );
    assert_eq!(r["without_one_terminal"], 0, "{r}");
    assert_eq!(r["submit_to_queued"]["count"].as_u64(), Some(80 - refused));
    // The server sampled while the clients were connected holds one descriptor per client
    // more, and gives them all back once they close.
    let fds = |k: &str| r[k]["open_fds"].as_u64().unwrap();
    assert!(fds("server_connected") >= fds("server_before") + 40, "{r}");
    assert!(fds("server_after_close") <= fds("server_before"), "{r}");
    assert!(r["bytes_per_connection"].as_f64().unwrap() > 0.0);
    server.stop();
}
