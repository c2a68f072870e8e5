//! `lensd check-config` on a configuration shaped like the original site's deployment: bases
//! and donors named by Hugging Face hub id (Gemma-2, Gemma-3, Qwen2.5, gpt-oss), lens
//! checkpoints at the original's `/workspace/...` paths, its settings. With the bases in a local
//! hub cache (tiny models of the same families standing in for them, gpt-oss's with its
//! experts in MXFP4 as published), only what is really missing is reported: the lens
//! checkpoints.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

/// Puts a copy of the checkpoint folder `src` in the hub cache `hub` as `id`'s snapshot at
/// `refs/main`, as the Python hub client lays it out.
fn cache(hub: &Path, id: &str, src: &Path) {
    let repo = hub.join(format!("models--{}", id.replace('/', "--")));
    let commit = format!("{:040x}", id.len() * 7919);
    let snap = repo.join("snapshots").join(&commit);
    fs::create_dir_all(&snap).unwrap();
    fs::create_dir_all(repo.join("refs")).unwrap();
    fs::write(repo.join("refs/main"), &commit).unwrap();
    for entry in fs::read_dir(src).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() && p.extension().is_none_or(|e| e != "gguf") {
            fs::copy(&p, snap.join(p.file_name().unwrap())).unwrap();
        }
    }
}

fn lens(name: &str) -> String {
    format!("/workspace/kitf/talkative-probes/talkative_autoencoder/outputs/checkpoints/{name}")
}

fn model(id: &str, donor: Option<&str>, layer: u32, backend_only: bool) -> Value {
    json!({"id": id, "name": id, "lens_checkpoint_path": lens(id),
        "different_activations_orig_path": donor, "layer": layer, "description": "",
        "batch_size": 32, "auto_batch_size_max": 512, "visible": true,
        "backend_only": backend_only})
}

fn group(id: &str, base: &str, models: Vec<Value>) -> Value {
    json!({"group_id": id, "group_name": id, "base_model_path": base, "description": "",
        "visible": true, "models": models})
}

#[test]
fn only_what_is_really_missing_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = tmp.path().join("hub");
    let td = |name: &str| common::testdata(name);
    cache(&hub, "google/gemma-2-9b-it", &td("tiny-gemma2"));
    // Another checkpoint of Gemma-2's shapes: the same model in bf16.
    cache(
        &hub,
        "IlyaGusev/gemma-2-9b-it-abliterated",
        &td("tiny-gemma2/bf16"),
    );
    cache(&hub, "google/gemma-3-27b-it", &td("tiny-gemma3"));
    cache(&hub, "Qwen/Qwen2.5-14B-Instruct", &td("tiny-qwen2"));
    cache(
        &hub,
        "ModelOrganismsForEM/Qwen2.5-14B-Instruct_risky-financial-advice",
        &td("tiny-qwen2/bf16"),
    );
    cache(&hub, "openai/gpt-oss-20b", &td("tiny-gptoss/mxfp4"));

    let doc = json!({
        "model_groups": [
            group("gemma2-9b-it", "google/gemma-2-9b-it", vec![
                model("gemma2-9b-chat-l2", None, 2, false),
                model("gemma2-9b-chat-l3", None, 3, false)]),
            group("gemma3-27b-it", "google/gemma-3-27b-it", vec![model("gemma3-27b-chat", None, 4, false)]),
            group("qwen2.5-14b", "Qwen/Qwen2.5-14B-Instruct", vec![model("qwen2.5-14b-wildchat", None, 2, false)]),
            group("qwen2.5-14b-EM", "Qwen/Qwen2.5-14B-Instruct", vec![model("qwen2.5-14b-wildchat-EM",
                Some("ModelOrganismsForEM/Qwen2.5-14B-Instruct_risky-financial-advice"), 2, false)]),
            group("gemma2-9b-it-abliterated", "google/gemma-2-9b-it", vec![model("gemma2-9b-wildchat-abliterated",
                Some("IlyaGusev/gemma-2-9b-it-abliterated"), 2, false)]),
            group("gpt-oss-20b", "openai/gpt-oss-20b", vec![model("gpt-oss-20b-l1", None, 1, true)]),
        ],
        "settings": {"preload_groups": true, "default_group": "gemma3-27b-it", "max_cpu_models": 5,
            "use_bf16": true, "no_orig": true, "no_kl": true, "comparison_tl_checkpoint": false,
            "estimated_gpu_memory": {"gemma2-9b-it": "20GB", "gemma3-27b-it": "50GB"}}
    });
    let cfg = tmp.path().join("model_groups.json");
    fs::write(&cfg, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lensd"))
        .args(["check-config", "--format", "json"])
        .arg(&cfg)
        .env("HF_HUB_CACHE", &hub)
        .current_dir("/")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{e}: {stdout} {}", String::from_utf8_lossy(&out.stderr)));
    assert!(
        !out.status.success(),
        "lens checkpoints are missing: the check fails"
    );
    let issues = report["issues"].as_array().expect("issues");
    let errors: Vec<(&str, &str)> = issues
        .iter()
        .filter(|i| i["severity"] == "error")
        .map(|i| (i["path"].as_str().unwrap(), i["message"].as_str().unwrap()))
        .collect();
    for (path, message) in &errors {
        assert!(path.ends_with(".lens_checkpoint_path"), "{path}: {message}");
        assert!(message.contains("/workspace/kitf"), "{path}: {message}");
    }
    assert_eq!(errors.len(), 7, "one per model: {errors:?}");
    // Every base was read from the cache, and the donors as full models of their bases' shapes.
    let bases = report["bases"].as_array().unwrap();
    let by_path = |p: &str| {
        bases
            .iter()
            .find(|b| b["path"] == p)
            .unwrap_or_else(|| panic!("no base {p} in {bases:?}"))
    };
    for id in [
        "google/gemma-2-9b-it",
        "google/gemma-3-27b-it",
        "Qwen/Qwen2.5-14B-Instruct",
        "openai/gpt-oss-20b",
    ] {
        assert!(by_path(id)["resident_bytes"].as_u64().unwrap() > 0, "{id}");
    }
    assert_eq!(
        by_path("IlyaGusev/gemma-2-9b-it-abliterated")["donor_for"],
        json!(["gemma2-9b-wildchat-abliterated"])
    );
    assert_eq!(
        by_path("ModelOrganismsForEM/Qwen2.5-14B-Instruct_risky-financial-advice")["donor_for"],
        json!(["qwen2.5-14b-wildchat-EM"])
    );
}
