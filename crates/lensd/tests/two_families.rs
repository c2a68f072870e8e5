//! `lensd serve` with two families side by side: a Gemma-3-270M group next to the SmolLM2 demo
//! group. Over one WebSocket a user analyses Gemma with the logit lens, a tuned lens and an
//! (untrained) talkative lens, generates with it, analyses SmolLM2 in between, and the memory
//! report shows both bases with the bytes their headers promise.

mod common;

use std::path::Path;
use std::process::Command;

use common::client::{connect, http_get, recv, send, Ws};
use common::server::Server;
use serde_json::{json, Value};

/// A tuned lens for `base` whose translators are all zero: the identity map, so it must give
/// the logit lens's numbers in every cell. The lens's quality on Gemma is the engine's test
/// (crates/engine/tests/gemma3_model.rs); here it checks that a tuned lens is served on Gemma.
fn identity_tuned_lens(dir: &Path, d: usize, layers: usize) -> std::path::PathBuf {
    let out = dir.join("gemma-identity-lens");
    std::fs::create_dir_all(&out).unwrap();
    let config = json!({"d_model": d, "num_hidden_layers": layers, "bias": true,
        "base_model_name_or_path": "gemma-3-270m", "lens_type": "linear_tuned_lens"});
    std::fs::write(out.join("config.json"), config.to_string()).unwrap();
    // safetensors by hand: a JSON header, then every tensor's f32 zeros.
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for i in 0..layers {
        for (name, shape) in [
            (format!("{i}.weight"), vec![d, d]),
            (format!("{i}.bias"), vec![d]),
        ] {
            let bytes = shape.iter().product::<usize>() * 4;
            header.insert(
                name,
                json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + bytes]}),
            );
            offset += bytes;
        }
    }
    let header = Value::Object(header).to_string();
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend(header.as_bytes());
    file.resize(file.len() + offset, 0);
    std::fs::write(out.join("params.safetensors"), file).unwrap();
    out
}

/// Runs one request to its end; its `completed` event.
async fn complete(ws: &mut Ws, request: Value) -> Value {
    send(ws, request).await;
    let id = loop {
        let v = recv(ws).await;
        if let Some(id) = v["request_id"].as_str() {
            break id.to_string();
        }
        assert_ne!(v["type"], "error", "{v}");
    };
    loop {
        let v = recv(ws).await;
        if v["request_id"] == id.as_str() {
            match v["type"].as_str().unwrap() {
                "completed" => return v,
                "error" | "cancelled" => panic!("request ended with {v}"),
                _ => {}
            }
        }
    }
}

fn top1(analysis: &Value, layer: usize, position: usize) -> (String, f64) {
    let row = analysis["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["layer"] == layer)
        .unwrap();
    let cell = &row["positions"][position]["top"][0];
    (
        cell["token"].as_str().unwrap().to_string(),
        cell["prob"].as_f64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemma_and_smollm_are_served_side_by_side() {
    let Some(gemma) = common::gemma3_model() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let lens = identity_tuned_lens(dir.path(), 640, 18);
    let talkative = dir.path().join("gemma-talkative");
    let status = Command::new(env!("CARGO_BIN_EXE_lensd"))
        .args(["init-talkative", "--layer", "9", "--model"])
        .arg(&gemma)
        .arg("--out")
        .arg(&talkative)
        .status()
        .unwrap();
    assert!(status.success());
    let cfg = dir.path().join("model_groups.json");
    let doc = json!({"model_groups": [
        {"group_id": "smollm2", "group_name": "SmolLM2", "base_model_path": common::demo_model(),
         "models": [{"id": "smollm2-logit", "name": "Logit", "lens": "logit"}]},
        {"group_id": "gemma3", "group_name": "Gemma 3 270M", "base_model_path": gemma,
         "models": [
            {"id": "gemma3-logit", "name": "Logit", "lens": "logit"},
            {"id": "gemma3-tuned", "name": "Tuned", "lens": "tuned", "lens_checkpoint_path": lens},
            {"id": "gemma3-talkative", "name": "Talkative", "lens": "talkative",
             "lens_checkpoint_path": talkative, "layer": 9}]}],
        "settings": {"default_group": "smollm2", "device_budget": "4GiB", "host_budget": "1GiB"}});
    std::fs::write(&cfg, doc.to_string()).unwrap();
    let server = Server::start(&cfg, &dir.path().join("data"));
    let mut ws = connect(&server.addr).await;
    assert_eq!(recv(&mut ws).await["type"], "connection_established");

    // Gemma: the logit lens and the (identity) tuned lens in one request.
    let text = "The Eiffel Tower is located in the city of";
    let done = complete(
        &mut ws,
        json!({"type": "analyze", "models": ["gemma3-logit", "gemma3-tuned"],
        "text": text, "options": {"layers": "0-18:6", "top_k": 3}}),
    )
    .await;
    let analyses = done["output"]["analyses"].as_array().unwrap();
    let tokens = analyses[0]["tokens"].as_array().unwrap();
    assert_eq!(
        tokens[0]["text"], "<bos>",
        "Gemma's prompt starts with its BOS"
    );
    let last = tokens.len() - 1;
    let (token, prob) = top1(&analyses[0], 18, last);
    assert_eq!(token, " Paris");
    assert!(prob > 0.5, "{prob}");
    for layer in [0, 6, 12, 18] {
        for p in 0..tokens.len() {
            let (a, pa) = top1(&analyses[0], layer, p);
            let (b, pb) = top1(&analyses[1], layer, p);
            assert_eq!(a, b, "layer {layer} position {p}");
            assert!(
                (pa - pb).abs() < 1e-5,
                "layer {layer} position {p}: {pa} vs {pb}"
            );
        }
    }

    // SmolLM2 in between: the other family answers from its own base.
    let done = complete(
        &mut ws,
        json!({"type": "analyze", "models": ["smollm2-logit"],
        "text": "The capital of France is", "options": {"layers": "30", "top_k": 1}}),
    )
    .await;
    let smol = &done["output"]["analyses"][0];
    let n = smol["tokens"].as_array().unwrap().len();
    assert_eq!(top1(smol, 30, n - 1).0, " Paris");

    // A generation on Gemma, in its chat format.
    let done = complete(
        &mut ws,
        json!({"type": "generate", "model_id": "gemma3-logit",
        "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 8}),
    )
    .await;
    let out = &done["output"];
    assert!(
        out["prompt"]
            .as_str()
            .unwrap()
            .starts_with("<bos><start_of_turn>user\n"),
        "{out}"
    );
    let ids = out["ids"].as_array().unwrap();
    assert!(!ids.is_empty() && ids.len() <= 8, "{out}");

    // The untrained talkative lens explains every position of a Gemma text.
    let done = complete(
        &mut ws,
        json!({"type": "analyze", "models": ["gemma3-talkative"],
        "text": "Paris in spring", "options": {"best_of_k": 1, "salience": true, "kl": true}}),
    )
    .await;
    let a = &done["output"]["analyses"][0];
    let explained = a["explanations"].as_array().unwrap();
    assert_eq!(explained.len(), a["tokens"].as_array().unwrap().len());
    for e in explained {
        assert!(e["mse"].as_f64().unwrap().is_finite());
        assert!(e["kl_divergence"].as_f64().unwrap() >= 0.0);
        assert!(!e["explanation_ids"].as_array().unwrap().is_empty());
    }

    // Both bases are resident, each with the bytes its header promised.
    let (status, body) = http_get(&server.addr, "/api/v2/memory").await;
    assert_eq!(status, 200, "{body}");
    let memory: Value = serde_json::from_str(&body).unwrap();
    let bases: Vec<&Value> = memory["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "base")
        .collect();
    let of = |model: &str| {
        bases
            .iter()
            .find(|e| e["models"].as_array().unwrap().iter().any(|m| m == model))
            .unwrap_or_else(|| panic!("no base of {model} in {memory}"))
    };
    for (model, path) in [
        ("smollm2-logit", common::demo_model()),
        ("gemma3-logit", gemma),
    ] {
        let entry = of(model);
        let inspect = Command::new(env!("CARGO_BIN_EXE_lensd"))
            .args(["inspect", "--format", "json"])
            .arg(&path)
            .output()
            .unwrap();
        let report: Value = serde_json::from_slice(&inspect.stdout).unwrap();
        assert_eq!(entry["bytes"], report["resident_f32"], "{model}");
        assert_eq!(entry["tier"], "device", "{model}");
    }
    drop(ws);
    server.stop();
}
