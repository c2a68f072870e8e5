//! The original site's clients against `lensd serve` with the demo model: the messages its web
//! page sends (written from its `app.js` and `model-switcher-grouped.js` at commit `7de72fe`)
//! and the REST and slim-API requests its clients make, checking every field those clients
//! read.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::client::{connect, connect_to, http_json, send, Ws};
use common::server::Server;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// An untrained talkative lens for the demo model reading block `layer`.
fn talkative(dir: &Path, layer: usize) -> PathBuf {
    let out = dir.join("talkative");
    let status = Command::new(env!("CARGO_BIN_EXE_lensd"))
        .current_dir(common::root())
        .args([
            "init-talkative",
            "--layer",
            &layer.to_string(),
            "--t-text",
            "4",
            "--out",
        ])
        .arg(&out)
        .output()
        .expect("lensd runs");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    out
}

/// Two groups on the demo model: `demo` with a talkative, a tuned and a logit lens (the
/// default group), and `other` with a logit lens.
fn config(dir: &Path) -> PathBuf {
    let model = common::demo_model();
    let tuned = common::fit(dir, "tuned", "1e-3");
    let talk = talkative(dir, 15);
    let cfg = dir.join("model_groups.json");
    let doc = json!({"model_groups": [
        {"group_id": "demo", "group_name": "SmolLM2", "base_model_path": model, "description": "The demo",
         "models": [
            {"id": "talk", "name": "Talkative L15", "lens": "talkative", "layer": 15,
             "lens_checkpoint_path": talk, "auto_batch_size_max": 64},
            {"id": "tuned", "name": "Tuned", "lens": "tuned", "lens_checkpoint_path": tuned},
            {"id": "logit", "name": "Logit", "lens": "logit", "layer": 20}]},
        {"group_id": "other", "group_name": "SmolLM2 again", "base_model_path": model,
         "models": [{"id": "logit-2", "name": "Logit again", "lens": "logit"}]}],
        "settings": {"default_group": "demo", "device_budget": "2GiB", "host_budget": "1GiB"}});
    std::fs::write(&cfg, doc.to_string()).unwrap();
    cfg
}

/// The next frame of type `kind`, skipping the periodic `queue_update`s, lensd's greeting and
/// residency notices; panics on any other frame.
async fn expect(ws: &mut Ws, kind: &str) -> Value {
    loop {
        let v = next(ws).await;
        if v["type"] == kind {
            return v;
        }
        let passing = [
            "queue_update",
            "connection_established",
            "model_groups_list",
            "status",
            "progress",
            "queued",
            "processing",
        ];
        assert!(
            passing.contains(&v["type"].as_str().unwrap_or("")),
            "expected `{kind}`, got {v}"
        );
    }
}

async fn next(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(180), ws.next())
            .await
            .expect("a frame")
            .unwrap()
            .unwrap();
        if let Message::Text(t) = m {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

/// The page's `analyze` message (app.js builds it so) with best-of-`k` and `batch` positions.
fn page_analyze(text: &str, model: &str, k: usize, batch: usize, client: &str) -> Value {
    json!({"type": "analyze", "text": text, "client_request_id": client, "model_id": model,
        "options": {"batch_size": batch, "temperature": 1.0,
            "optimize_explanations_config": {"best_of_k": k, "n_groups_per_rollout": batch,
                "use_batched": true, "temperature": 1.0, "rollout_batch_size": batch},
            "calculate_salience": true, "use_tuned_lens": true, "logit_lens_analysis": true,
            "no_eval": false, "no_kl": true, "do_hard_tokens": false, "seed": 7}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_page_lists_switches_analyses_and_generates() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&config(dir.path()), &dir.path().join("data"));
    let mut ws = connect(&server.addr).await;

    // Connect: the page asks for the groups; the default group is current.
    send(
        &mut ws,
        json!({"type": "list_model_groups", "refresh": false}),
    )
    .await;
    let list = expect(&mut ws, "model_groups_list").await;
    assert_eq!(list["current_group"], "demo");
    let groups = list["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2);
    let demo = &groups[0];
    assert_eq!(demo["group_id"], "demo");
    assert_eq!(demo["group_name"], "SmolLM2");
    assert_eq!(demo["description"], "The demo");
    let base = demo["base_model"].as_str().unwrap();
    assert!(base.ends_with(".gguf") && !base.contains('/'), "{base}");
    for m in demo["models"].as_array().unwrap() {
        assert!(m["name"].is_string() && m["id"].is_string(), "{m}");
        for flag in [
            "is_loaded",
            "is_gpu_loaded",
            "is_cpu_cached",
            "is_current",
            "visible",
            "backend_only",
        ] {
            assert!(m[flag].is_boolean(), "{flag} of {m}");
        }
        assert!(
            m.get("checkpoint_filename").is_none(),
            "file names are for admins: {m}"
        );
    }
    assert_eq!(demo["models"][0]["layer"], 15);
    assert!(list["model_status"]["cache_info"]["groups_loaded"].is_array());

    // The switcher selects the first model and asks for its info.
    send(
        &mut ws,
        json!({"type": "get_model_info", "model_id": "talk"}),
    )
    .await;
    let info = expect(&mut ws, "model_info").await;
    assert_eq!(info["model_id"], "talk");
    assert_eq!(info["display_name"], "Talkative L15");
    assert_eq!(info["auto_batch_size_max"], 64);
    assert!(info["generation_config"]["temperature"].is_number());
    assert!(info["loaded"].is_boolean());

    // An analysis with the talkative lens, as the page sends it.
    send(
        &mut ws,
        page_analyze("The cat sat", "talk", 2, 4, "client_1_a"),
    )
    .await;
    let queued = expect(&mut ws, "queued").await;
    assert_eq!(queued["context"], "analysis");
    assert_eq!(queued["client_request_id"], "client_1_a");
    assert!(queued["queue_position"].as_u64().unwrap() >= 1);
    assert!(queued["queue_size"].as_u64().unwrap() >= 1);
    let id = queued["request_id"].as_str().unwrap().to_string();
    let processing = expect(&mut ws, "processing").await;
    assert_eq!(processing["request_id"], id.as_str());
    let mut progress = 0;
    let done = loop {
        let v = next(&mut ws).await;
        match v["type"].as_str().unwrap() {
            "progress" => {
                assert!(
                    v["current"].as_u64().unwrap() <= v["total"].as_u64().unwrap(),
                    "{v}"
                );
                assert!(v["message"].is_string());
                progress += 1;
            }
            "completed" => break v,
            "queue_update" | "status" | "model_groups_list" => {}
            other => panic!("unexpected {other}: {v}"),
        }
    };
    assert!(
        progress > 0,
        "the page's progress bar needs `progress` frames"
    );
    assert_eq!(done["request_id"], id.as_str());
    assert_eq!(done["client_request_id"], "client_1_a");
    let rows = done["result"]["data"].as_array().unwrap();
    assert!(rows.len() >= 3, "{rows:?}");
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["position"], i);
        assert!(row["token"].is_string());
        let words = row["explanation_structured"].as_array().unwrap();
        assert!(!words.is_empty());
        assert!(row["explanation"].as_str().is_some_and(|e| !e.is_empty()));
        assert!(row["mse"].as_f64().unwrap() >= 0.0);
        assert!(row["relative_rmse"].as_f64().unwrap() >= 0.0);
        assert_eq!(row["kl_divergence"], -1.0, "no_kl gives the original's -1");
        assert!(row["token_salience"]
            .as_array()
            .is_some_and(|s| !s.is_empty()));
        assert!(
            row["logit_lens_top"]
                .as_str()
                .is_some_and(|t| !t.is_empty()),
            "{row}"
        );
        assert!(row["tuned_lens_top"].as_str().is_some(), "{row}");
    }
    let meta = &done["result"]["metadata"];
    assert_eq!(meta["model_id"], "talk");
    assert_eq!(meta["encoder_decoder_model"], "Talkative L15");
    assert_eq!(meta["layer"], 15);
    assert_eq!(meta["best_of_k"], 2);
    assert_eq!(meta["batch_size"], 4);
    assert!(meta.get("checkpoint_path").is_none());
    assert!(meta["timings"]["processing_seconds"].as_f64().unwrap() > 0.0);

    // Generation with three continuations: one request, three full texts.
    send(
        &mut ws,
        json!({"type": "generate", "text": "Once upon a time", "model_id": "talk",
        "options": {"num_tokens": 4, "num_completions": 3, "temperature": 1.0, "is_chat": false,
            "return_full_text": true}}),
    )
    .await;
    let queued = expect(&mut ws, "queued").await;
    assert_eq!(queued["context"], "generation");
    let gen = queued["request_id"].as_str().unwrap().to_string();
    // Each completion waits its turn, told under the one id the page knows.
    let done = loop {
        let v = next(&mut ws).await;
        match v["type"].as_str().unwrap() {
            "generation_complete" => break v,
            "queued" | "processing" => {
                assert_eq!(v["request_id"], gen.as_str(), "{v}");
                assert_eq!(v["context"], "generation");
            }
            "queue_update" | "model_groups_list" | "status" => {}
            other => panic!("unexpected {other}: {v}"),
        }
    };
    assert_eq!(done["request_id"], gen.as_str());
    let completions = done["result"]["completions"].as_array().unwrap();
    assert_eq!(completions.len(), 3);
    for c in completions {
        assert!(c.as_str().unwrap().starts_with("Once upon a time"), "{c}");
    }
    assert_eq!(done["result"]["metadata"]["num_completions"], 3);

    // A switch within the group changes only the model.
    send(
        &mut ws,
        json!({"type": "switch_model_grouped", "model_id": "tuned", "group_id": "demo"}),
    )
    .await;
    let switched = expect(&mut ws, "model_switch_complete").await;
    assert_eq!(switched["model_id"], "tuned");
    assert_eq!(switched["group_id"], "demo");
    // Between groups: the stages the switcher waits for, then the model.
    send(
        &mut ws,
        json!({"type": "switch_model_grouped", "model_id": "logit-2", "group_id": "other"}),
    )
    .await;
    let starting = expect(&mut ws, "group_switch_status").await;
    assert_eq!(
        (starting["status"].as_str(), starting["group_id"].as_str()),
        (Some("starting"), Some("other"))
    );
    assert_eq!(starting["source_group_id"], "demo");
    let completed = expect(&mut ws, "group_switch_status").await;
    assert_eq!(completed["status"], "completed");
    let switched = expect(&mut ws, "model_switch_complete").await;
    assert_eq!(switched["model_id"], "logit-2");
    send(
        &mut ws,
        json!({"type": "list_model_groups", "refresh": false}),
    )
    .await;
    let list = expect(&mut ws, "model_groups_list").await;
    assert_eq!(list["current_group"], "other");
    assert_eq!(list["groups"][1]["models"][0]["is_current"], true);
    // A request without a model reads the session's current one, a logit lens here.
    send(
        &mut ws,
        json!({"type": "analyze", "text": "Hello there", "client_request_id": "c2"}),
    )
    .await;
    expect(&mut ws, "queued").await;
    expect(&mut ws, "processing").await;
    let done = expect(&mut ws, "completed").await;
    assert_eq!(done["result"]["metadata"]["model_id"], "logit-2");
    assert!(done["result"]["data"][0]["logit_lens_top"].is_string());

    // Unknown models: the analysis fails with its ids, the generation and switch with theirs.
    send(
        &mut ws,
        json!({"type": "analyze", "text": "x", "model_id": "nope", "client_request_id": "c3"}),
    )
    .await;
    let err = expect(&mut ws, "error").await;
    assert_eq!(err["client_request_id"], "c3");
    assert!(err["error"].as_str().unwrap().contains("nope"), "{err}");
    send(
        &mut ws,
        json!({"type": "generate", "text": "x", "model_id": "nope", "options": {}}),
    )
    .await;
    let err = expect(&mut ws, "generation_error").await;
    assert!(err["error"].as_str().unwrap().contains("nope"), "{err}");
    send(
        &mut ws,
        json!({"type": "switch_model_grouped", "model_id": "nope", "group_id": "demo"}),
    )
    .await;
    let err = expect(&mut ws, "model_switch_error").await;
    assert_eq!(err["model_id"], "nope");
    assert!(err["error"].is_string());
    // An option the original never had is refused, naming it.
    send(
        &mut ws,
        json!({"type": "analyze", "text": "x", "options": {"bogus": 1}}),
    )
    .await;
    let err = expect(&mut ws, "error").await;
    assert!(err["error"].as_str().unwrap().contains("bogus"), "{err}");
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupt_stops_only_the_named_request_and_cancel_a_queued_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&config(dir.path()), &dir.path().join("data"));
    let mut ws = connect_to(&server.addr, "/ws?dialect=original").await;
    let long = "The quick brown fox jumps over the lazy dog near the river bank today.";
    send(&mut ws, page_analyze(long, "talk", 8, 1, "a")).await;
    send(&mut ws, page_analyze("Hi there", "talk", 1, 4, "b")).await;
    send(&mut ws, page_analyze("Third one", "talk", 1, 4, "c")).await;
    let mut ids = std::collections::HashMap::new();
    let mut running = None;
    while ids.len() < 3 || running.is_none() {
        let v = next(&mut ws).await;
        let id = v["request_id"].as_str().unwrap_or("").to_string();
        match v["type"].as_str().unwrap() {
            "queued" => {
                ids.insert(v["client_request_id"].as_str().unwrap().to_string(), id);
            }
            "processing" => running = Some(id),
            _ => {}
        }
    }
    // The first starts; interrupt it once it runs, and cancel the third while it waits.
    assert_eq!(running.as_deref(), Some(ids["a"].as_str()));
    send(
        &mut ws,
        json!({"type": "interrupt", "request_id": ids["a"], "context": "analysis"}),
    )
    .await;
    send(
        &mut ws,
        json!({"type": "cancel_request", "request_id": ids["c"]}),
    )
    .await;
    let (mut interrupted, mut cancelled, mut completed) = (None, None, None);
    while completed.is_none() || interrupted.is_none() || cancelled.is_none() {
        let v = next(&mut ws).await;
        match v["type"].as_str().unwrap() {
            "interrupted" => interrupted = Some(v),
            "request_cancelled" => cancelled = Some(v),
            "completed" => completed = Some(v),
            "processing" | "progress" | "queue_update" | "queued" | "status"
            | "model_groups_list" => {}
            other => panic!("unexpected {other}: {v}"),
        }
    }
    let interrupted = interrupted.unwrap();
    assert_eq!(interrupted["request_id"], ids["a"].as_str());
    assert_eq!(interrupted["client_request_id"], "a");
    assert_eq!(interrupted["context"], "analysis");
    assert_eq!(cancelled.unwrap()["request_id"], ids["c"].as_str());
    let completed = completed.unwrap();
    assert_eq!(
        completed["request_id"],
        ids["b"].as_str(),
        "the other request goes on"
    );
    // A finished request cannot be cancelled; an unknown one is named.
    send(
        &mut ws,
        json!({"type": "cancel_request", "request_id": ids["b"]}),
    )
    .await;
    let err = expect(&mut ws, "error").await;
    assert!(
        err["error"].as_str().unwrap().contains("already finished"),
        "{err}"
    );
    send(
        &mut ws,
        json!({"type": "interrupt", "request_id": "r-none"}),
    )
    .await;
    let err = expect(&mut ws, "error").await;
    assert!(err["error"].as_str().unwrap().contains("r-none"), "{err}");
    // The periodic queue update has the fields the page's pill reads.
    let update = expect(&mut ws, "queue_update").await;
    assert!(update["queue_size"].is_u64() && update["processing_requests"].is_u64());
    assert!(update["queued_ids"].is_array());
    server.stop();
}

/// Polls a status route until the request has ended.
async fn poll(addr: &str, path: &str) -> Value {
    for _ in 0..600 {
        let (code, body) = http_json(addr, "GET", path, None, &[]).await;
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        if !["queued", "processing"].contains(&v["status"].as_str().unwrap()) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{path} never ended");
}

async fn post(addr: &str, path: &str, body: Value) -> (u16, Value) {
    let (code, text) = http_json(addr, "POST", path, Some(&body), &[]).await;
    (code, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_originals_rest_routes_and_slim_api_answer_in_its_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&config(dir.path()), &dir.path().join("data"));
    let addr = server.addr.as_str();

    // The page polls these every two seconds.
    let (code, body) = http_json(addr, "GET", "/api/gpu_stats", None, &[]).await;
    assert_eq!(code, 200);
    let stats: Value = serde_json::from_str(&body).unwrap();
    for f in [
        "utilization",
        "peak_utilization",
        "memory_percent",
        "memory_used",
        "memory_total",
    ] {
        assert!(stats[f].is_number(), "{f}: {stats}");
    }
    let (code, body) = http_json(addr, "GET", "/health", None, &[]).await;
    assert_eq!(code, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["status"],
        "healthy"
    );

    // `/analyze` and `/status/{id}`.
    let (code, queued) = post(
        addr,
        "/analyze",
        json!({"text": "Paris is", "model_id": "talk",
        "options": {"optimize_explanations_config": {"best_of_k": 1}, "no_kl": true}}),
    )
    .await;
    assert_eq!(code, 200, "{queued}");
    assert_eq!(queued["status"], "queued");
    let id = queued["request_id"].as_str().unwrap();
    let status = poll(addr, &format!("/status/{id}")).await;
    assert_eq!(status["status"], "completed", "{status}");
    for f in ["created_at", "started_at", "completed_at"] {
        assert!(status[f].is_string(), "{f}: {status}");
    }
    assert!(status["processing_time"].as_f64().unwrap() >= 0.0);
    assert!(!status["result"]["data"].as_array().unwrap().is_empty());
    let (code, _) = http_json(addr, "GET", "/status/r-unknown", None, &[]).await;
    assert_eq!(code, 404);

    // The slim API: a chat reply, continuations, an analysis of the last turn.
    let convo = json!([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Name a colour."}]);
    let (code, q) = post(
        addr,
        "/api/slim/send_message",
        json!({"messages": convo,
        "model_group": "demo", "max_tokens": 6}),
    )
    .await;
    assert_eq!(code, 200, "{q}");
    assert!(q["message"].as_str().unwrap().contains("queued"));
    let s = poll(
        addr,
        &format!("/api/slim/status/{}", q["request_id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(s["status"], "completed", "{s}");
    assert!(s["result"]["response"].is_string());
    assert!(s["result"]["thinking"].is_null());
    assert_eq!(
        s["result"]["metadata"]["model_id"], "talk",
        "the group's first model"
    );
    assert!(s["error"].is_null());

    let (code, q) = post(
        addr,
        "/api/slim/generate",
        json!({"messages": convo,
        "model_group": "demo", "model_id": "tuned", "n_continuations": 2, "n_tokens": 3}),
    )
    .await;
    assert_eq!(code, 200, "{q}");
    let s = poll(
        addr,
        &format!("/api/slim/status/{}", q["request_id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(
        s["result"]["completions"].as_array().unwrap().len(),
        2,
        "{s}"
    );

    let (code, q) = post(
        addr,
        "/api/slim/analyze",
        json!({"messages": convo,
        "model_group": "demo", "best_of_k": 1, "last_n_messages": 1}),
    )
    .await;
    assert_eq!(code, 200, "{q}");
    let s = poll(
        addr,
        &format!("/api/slim/status/{}", q["request_id"].as_str().unwrap()),
    )
    .await;
    let rows = s["result"]["data"].as_array().unwrap();
    let first = rows[0]["position"].as_u64().unwrap();
    assert!(
        first > 5,
        "only the last turn is explained, from position {first}"
    );
    assert_eq!(
        rows.last().unwrap()["position"].as_u64().unwrap() + 1 - first,
        rows.len() as u64
    );

    // Bad input names what was wrong, with the original's `detail`.
    let (code, e) = post(
        addr,
        "/api/slim/send_message",
        json!({"messages": convo,
        "model_group": "nope"}),
    )
    .await;
    assert_eq!(code, 404);
    assert!(e["detail"].as_str().unwrap().contains("nope"), "{e}");
    let (code, e) = post(
        addr,
        "/api/slim/generate",
        json!({"messages": convo,
        "model_group": "demo", "n_continuations": 11}),
    )
    .await;
    assert_eq!(code, 400);
    assert!(
        e["detail"].as_str().unwrap().contains("n_continuations"),
        "{e}"
    );

    // Listing, and the unified routes.
    let (_, body) = http_json(addr, "GET", "/api/slim/models", None, &[]).await;
    let models: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(models["model_groups"][0]["id"], "demo");
    assert_eq!(models["model_groups"][0]["default_layer"], "talk");
    let (_, body) = http_json(addr, "GET", "/api/slim/models/tuned/layers", None, &[]).await;
    let layers: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(layers["group_id"], "demo");
    assert_eq!(layers["layers"].as_array().unwrap().len(), 3);
    let (_, body) = http_json(addr, "GET", "/api/v2/system/state", None, &[]).await;
    let state: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(state["num_devices"], 1);
    assert_eq!(state["groups"].as_array().unwrap().len(), 2);
    let (code, body) = post(addr, "/api/v2/models/load", json!({"model_id": "talk"})).await;
    assert_eq!(code, 401, "loading is for admins: {body}");
    let (code, body) = post(addr, "/api/v2/switch", json!({"model_id": "logit-2"})).await;
    assert_eq!((code, body["group_id"].as_str()), (200, Some("other")));

    // `/metrics` stays Prometheus's unless JSON is asked for.
    let (_, text) = http_json(addr, "GET", "/metrics", None, &[]).await;
    assert!(text.contains("# TYPE"), "{text}");
    let (_, body) = http_json(addr, "GET", "/metrics", None, &["Accept: application/json"]).await;
    let m: Value = serde_json::from_str(&body).unwrap();
    assert!(m["completed_requests"].as_u64().unwrap() >= 4, "{m}");

    // `/reset` without a key resets only the caller's own state.
    let (code, r) = post(addr, "/reset", Value::Null).await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["status"], "reset");
    server.stop();
}

const ADMIN: &str = "admin-key-0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_load_groups_and_see_lens_file_names() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.json");
    std::fs::write(
        &keys,
        json!({"keys": [{"key": ADMIN, "role": "admin", "name": "ops"}]}).to_string(),
    )
    .unwrap();
    let server = Server::start_with(
        &config(dir.path()),
        &dir.path().join("data"),
        &["--keys", keys.to_str().unwrap()],
    );
    let addr = server.addr.as_str();

    // Anonymous: no file names, no loading.
    let mut anon = connect_to(addr, "/ws?dialect=original").await;
    send(
        &mut anon,
        json!({"type": "preload_group", "group_id": "other"}),
    )
    .await;
    let err = expect(&mut anon, "error").await;
    assert!(err["error"].as_str().unwrap().contains("admin"), "{err}");

    // The page cannot set headers on a WebSocket; the key comes in the query.
    let mut ws = connect_to(addr, &format!("/ws?api_key={ADMIN}")).await;
    send(
        &mut ws,
        json!({"type": "list_model_groups", "refresh": true}),
    )
    .await;
    let list = expect(&mut ws, "model_groups_list").await;
    assert_eq!(
        list["groups"][0]["models"][0]["checkpoint_filename"],
        "talkative"
    );
    send(
        &mut ws,
        json!({"type": "preload_group", "group_id": "other"}),
    )
    .await;
    assert_eq!(
        expect(&mut ws, "group_switch_status").await["status"],
        "starting"
    );
    let done = loop {
        let v = next(&mut ws).await;
        match v["type"].as_str().unwrap() {
            "group_preload_complete" => break v,
            "group_switch_status" => assert!(
                ["progress", "completed"].contains(&v["status"].as_str().unwrap()),
                "{v}"
            ),
            _ => {}
        }
    };
    assert_eq!(done["group_id"], "other");
    let (code, body) = http_json(
        addr,
        "POST",
        "/api/v2/groups/load",
        Some(&json!({"group_id": "demo", "device_id": 0})),
        &[&format!("Authorization: Bearer {ADMIN}")],
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = http_json(
        addr,
        "POST",
        "/api/v2/groups/load",
        Some(&json!({"group_id": "demo", "device_id": 3})),
        &[&format!("Authorization: Bearer {ADMIN}")],
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("Unknown device"), "{body}");
    // A wrong key is refused at the upgrade.
    let refused = tokio_tungstenite::connect_async(format!("ws://{addr}/ws?api_key=wrong")).await;
    assert!(refused.is_err());
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chained_work_prefills_status_and_the_smaller_messages() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&config(dir.path()), &dir.path().join("data"));
    let mut ws = connect(&server.addr).await;
    send(&mut ws, json!({"type": "list_models", "refresh": false})).await;
    let models = expect(&mut ws, "models_list").await;
    assert_eq!(models["models"]["talk"]["display_name"], "Talkative L15");
    assert_eq!(models["models"]["talk"]["layer"], 15);
    send(&mut ws, json!({"type": "ping"})).await;
    expect(&mut ws, "pong").await;

    // Generate, then analyse the first completion, as the page's "Generate + Analyze" does.
    send(
        &mut ws,
        json!({"type": "generate_and_analyze", "client_request_id": "ga",
        "generation": {"text": "The sky is", "model_id": "talk",
            "options": {"num_tokens": 3, "num_completions": 1, "temperature": 0.0}},
        "analysis": {"text": "The sky is", "use_generated_completion": true,
            "options": {"optimize_explanations_config": {"best_of_k": 1}, "no_kl": true}}}),
    )
    .await;
    let (mut gen_id, mut ana_id, mut completion, mut rows) = (None, None, None, None);
    while completion.is_none() || rows.is_none() {
        let v = next(&mut ws).await;
        match v["type"].as_str().unwrap() {
            "queued" => match v["client_request_id"].as_str().unwrap() {
                "ga_gen" => gen_id = Some(v["request_id"].clone()),
                "ga" => ana_id = Some(v["request_id"].clone()),
                other => panic!("{other}"),
            },
            "generation_complete" => {
                assert_eq!(Some(&v["request_id"]), gen_id.as_ref());
                completion = Some(v["result"]["completions"][0].as_str().unwrap().to_string());
            }
            "completed" => {
                assert_eq!(Some(&v["request_id"]), ana_id.as_ref());
                assert_eq!(v["client_request_id"], "ga");
                rows = Some(v["result"]["data"].as_array().unwrap().clone());
            }
            "processing" | "progress" | "queue_update" | "model_groups_list" | "status" => {}
            other => panic!("unexpected {other}: {v}"),
        }
    }
    let rows = rows.unwrap();
    let completion = completion.unwrap();
    assert!(completion.starts_with("The sky is"), "{completion}");
    let text: String = rows.iter().map(|r| r["token"].as_str().unwrap()).collect();
    assert!(text.starts_with("The sky is"), "{text}");
    assert!(rows.len() > 3, "the reply's tokens are read too: {text}");

    // `status` of a finished request.
    send(
        &mut ws,
        json!({"type": "status", "request_id": ana_id.unwrap()}),
    )
    .await;
    let s = expect(&mut ws, "status_update").await;
    assert_eq!(s["status"], "completed");

    // An assistant prefill: the reply continues the assistant's words.
    let convo = json!([{"role": "user", "content": "Count to five."}, {"role": "assistant", "content": "One, two,"}]).to_string();
    send(
        &mut ws,
        json!({"type": "generate", "text": convo, "model_id": "talk",
        "options": {"num_tokens": 4, "num_completions": 1, "temperature": 0.0, "is_chat": true,
            "use_chat_format": true}}),
    )
    .await;
    let done = expect(&mut ws, "generation_complete").await;
    let full = done["result"]["completions"][0].as_str().unwrap();
    assert!(full.contains("<|im_start|>assistant\nOne, two,"), "{full}");
    assert!(
        !full.contains("One, two,<|im_end|>"),
        "the turn is continued, not closed: {full}"
    );

    // Special-token markup in plain text is read as the model's tokens, as the original did.
    send(
        &mut ws,
        json!({"type": "analyze", "model_id": "logit", "client_request_id": "sp",
        "text": "<|im_start|>user\nHi<|im_end|>"}),
    )
    .await;
    let done = expect(&mut ws, "completed").await;
    assert_eq!(done["result"]["data"][0]["token"], "<|im_start|>");
    server.stop();
}
