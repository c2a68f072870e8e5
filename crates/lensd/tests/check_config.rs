//! `lensd check-config` end to end on the tiny checkpoint and its tuned lens: a sound file
//! passes and is summarised, broken ones fail with every problem at its JSON path.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

mod common;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tiny() -> PathBuf {
    root().join("testdata/tiny-llama")
}

/// Runs from `/`, so that relative paths can only resolve against the config's folder.
fn check_config(file: &Path, format: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lensd"))
        .args(["check-config", file.to_str().unwrap(), "--format", format])
        .current_dir("/")
        .output()
        .expect("lensd runs")
}

fn write_config(dir: &Path, doc: &Value) -> PathBuf {
    let path = dir.join("model_groups.json");
    fs::write(&path, serde_json::to_string_pretty(doc).unwrap()).unwrap();
    path
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Copies the tiny base and its tuned lens to `dir/tiny` and `dir/tiny/tuned-lens`.
fn copy_tiny(dir: &Path) {
    fs::create_dir_all(dir.join("tiny/tuned-lens")).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        fs::copy(tiny().join(f), dir.join("tiny").join(f)).unwrap();
    }
    for f in ["config.json", "params.pt"] {
        let rel = Path::new("tuned-lens").join(f);
        fs::copy(tiny().join(&rel), dir.join("tiny").join(&rel)).unwrap();
    }
}

#[test]
fn a_sound_config_passes_and_shares_one_base_and_one_lens() {
    let tmp = tempfile::tempdir().unwrap();
    copy_tiny(tmp.path());
    // Group `copy` names the copy by relative paths, group `original` the test data by
    // absolute ones: the same bytes, so one base and one lens file.
    let doc = json!({
        "model_groups": [
            {"group_id": "copy", "group_name": "Copy", "base_model_path": "tiny", "models": [
                {"id": "copy-logit", "name": "Logit", "layer": 3},
                {"id": "copy-tuned", "name": "Tuned", "lens": "tuned",
                 "lens_checkpoint_path": "tiny/tuned-lens", "layer": 2}
            ]},
            {"group_id": "original", "group_name": "Original", "base_model_path": tiny(),
             "models": [
                {"id": "original-logit", "name": "Logit"},
                {"id": "original-tuned", "name": "Tuned", "lens": "tuned",
                 "lens_checkpoint_path": tiny().join("tuned-lens")}
            ]}
        ],
        "settings": {"default_group": "copy", "device_budget": "64MiB", "host_budget": "32MiB"}
    });
    let file = write_config(tmp.path(), &doc);

    let out = check_config(&file, "json");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(v["issues"], json!([]));
    assert_eq!(
        (v["errors"].as_u64(), v["warnings"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(
        (v["groups"].as_u64(), v["models"].as_u64()),
        (Some(2), Some(4))
    );
    let bases = v["bases"].as_array().unwrap();
    assert_eq!(bases.len(), 1, "{v}");
    assert_eq!(bases[0]["groups"], json!(["copy", "original"]));
    assert_eq!(
        (bases[0]["n_layers"].as_u64(), bases[0]["d_model"].as_u64()),
        (Some(3), Some(64))
    );
    assert!(bases[0]["content_id"].as_str().unwrap().ends_with("-f32"));
    let lenses = v["lenses"].as_array().unwrap();
    assert_eq!(lenses.len(), 1, "{v}");
    assert_eq!(lenses[0]["models"], json!(["copy-tuned", "original-tuned"]));
    assert_eq!(lenses[0]["kind"], "tuned");
    assert_eq!(v["budgets"]["device"].as_u64(), Some(64 << 20));

    let out = check_config(&file, "table");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    for needle in [
        "2 groups, 4 models",
        "bases (1 distinct)",
        "(groups copy, original)",
        "lens files (1 distinct)",
        "budgets: device 64.0 MiB, host 32.0 MiB",
        "0 errors, 0 warnings",
    ] {
        assert!(table.contains(needle), "no `{needle}` in:\n{table}");
    }
}

#[test]
fn a_malformed_document_lists_every_problem_and_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let doc = json!({
        "model_groups": [
            {"group_id": "g", "group_name": "G", "base_model_path": "tiny", "models": [
                {"id": "m", "name": "M", "layer": "ten", "lense": "tuned"},
                {"id": "m", "name": "again", "lens": "logit", "lens_checkpoint_path": "x"}
            ]}
        ],
        "settings": {"device_budget": "lots", "OLDmax_cpu_models": 3}
    });
    let file = write_config(tmp.path(), &doc);
    let out = check_config(&file, "table");
    assert!(!out.status.success());
    let stdout = text(&out.stdout);
    for line in [
        "error: model_groups[0].models[0].layer: expected a non-negative integer, got \"ten\"",
        "error: model_groups[0].models[0].lense: unknown key `lense`",
        "error: model_groups[0].models[1].id: duplicate model id \"m\"",
        "error: model_groups[0].models[1].lens_checkpoint_path: a logit lens has no checkpoint",
        "error: settings.device_budget: expected a size",
        "warning: settings.OLDmax_cpu_models: ignored",
        "5 errors, 1 warning",
    ] {
        assert!(stdout.contains(line), "no `{line}` in:\n{stdout}");
    }
    let stderr = text(&out.stderr);
    assert!(stderr.contains("has 5 errors"), "{stderr}");
}

#[test]
fn files_that_do_not_fit_are_reported_where_they_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let doc = json!({
        "model_groups": [
            {"group_id": "g", "group_name": "G", "base_model_path": tiny(), "models": [
                {"id": "deep", "name": "Deep", "layer": 7},
                {"id": "lost", "name": "Lost", "lens": "tuned", "lens_checkpoint_path": "no-such-lens"}
            ]},
            {"group_id": "h", "group_name": "H", "base_model_path": "no-such-base", "models": []}
        ],
        "settings": {"device_budget": "100KiB", "host_budget": "1GiB"}
    });
    let file = write_config(tmp.path(), &doc);
    let out = check_config(&file, "json");
    assert!(!out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    let issues: Vec<(&str, &str)> = v["issues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["severity"].as_str().unwrap(), i["path"].as_str().unwrap()))
        .collect();
    assert_eq!(
        issues,
        [
            ("warning", "model_groups[1].models"),
            ("error", "model_groups[0].models[0].layer"),
            ("error", "model_groups[0].models[1].lens_checkpoint_path"),
            ("error", "model_groups[1].base_model_path"),
            ("error", "settings.device_budget"),
        ],
        "{v}"
    );
    let message = |i: usize| v["issues"][i]["message"].as_str().unwrap().to_string();
    // Relative paths were read against the config's folder, not lensd's working folder.
    let lens_dir = tmp.path().join("no-such-lens");
    assert!(
        message(2).contains(lens_dir.to_str().unwrap()),
        "{}",
        message(2)
    );
    assert!(message(4).contains("100.0 KiB"), "{}", message(4));
    assert_eq!(v["errors"].as_u64(), Some(4));
}

#[test]
fn an_unreadable_config_file_is_named() {
    let out = check_config(Path::new("/nonexistent/model_groups.json"), "table");
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("cannot read the config file /nonexistent/model_groups.json"),
        "{stderr}"
    );
}

#[test]
fn a_full_donor_of_the_bases_shapes_passes_and_is_listed_as_a_base() {
    let tmp = tempfile::tempdir().unwrap();
    copy_tiny(tmp.path());
    common::fine_tune(&tmp.path().join("tune"), 1, |_| true);
    let talk = common::testdata("talkative/lens");
    let doc = json!({
        "model_groups": [
            {"group_id": "g", "group_name": "G", "base_model_path": "tiny", "models": [
                {"id": "talk", "name": "Talk", "lens_checkpoint_path": talk,
                 "different_activations_orig_path": "tune"},
                {"id": "talk2", "name": "Talk too", "lens_checkpoint_path": talk,
                 "different_activations_orig_path": "tune"},
                {"id": "lora", "name": "LoRA", "lens_checkpoint_path": talk,
                 "different_activations_orig_path": common::testdata("talkative/donor")}
            ]},
            {"group_id": "t", "group_name": "The fine-tune", "base_model_path": "tune",
             "models": [{"id": "t-logit", "name": "Logit"}]}
        ],
        "settings": {"device_budget": "64MiB", "host_budget": "32MiB"}
    });
    let file = write_config(tmp.path(), &doc);
    let out = check_config(&file, "json");
    assert!(out.status.success(), "{}", text(&out.stdout));
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(v["issues"], json!([]));
    let bases = v["bases"].as_array().unwrap();
    assert_eq!(
        bases.len(),
        2,
        "the base, and the donor shared with group t: {v}"
    );
    assert_eq!(bases[0]["groups"], json!(["g"]));
    assert!(bases[0].get("donor_for").is_none(), "{v}");
    assert_eq!(bases[1]["donor_for"], json!(["talk", "talk2"]));
    assert_eq!(bases[1]["groups"], json!(["t"]));
    assert_eq!(bases[0]["resident_bytes"], bases[1]["resident_bytes"]);
    assert_ne!(bases[0]["content_id"], bases[1]["content_id"]);

    let out = check_config(&file, "table");
    let table = text(&out.stdout);
    assert!(
        table.contains("(groups t; donor of talk, talk2)"),
        "{table}"
    );
}

#[test]
fn a_donor_whose_shapes_differ_is_refused_naming_both() {
    let tmp = tempfile::tempdir().unwrap();
    let talk = common::testdata("talkative/lens");
    let gemma = common::testdata("tiny-gemma2");
    let llama3 = common::testdata("tiny-llama3/model.gguf");
    let doc = json!({
        "model_groups": [
            {"group_id": "g", "group_name": "G", "base_model_path": tiny(), "models": [
                {"id": "gemma", "name": "Gemma", "lens_checkpoint_path": talk,
                 "different_activations_orig_path": gemma},
                {"id": "llama3", "name": "Llama 3", "lens_checkpoint_path": talk,
                 "different_activations_orig_path": llama3},
                {"id": "gone", "name": "Gone", "lens_checkpoint_path": talk,
                 "different_activations_orig_path": "no-such-donor"}
            ]}
        ],
        "settings": {"device_budget": "64MiB", "host_budget": "32MiB"}
    });
    let file = write_config(tmp.path(), &doc);
    let out = check_config(&file, "json");
    assert!(!out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    let issues: Vec<(&str, &str)> = v["issues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["severity"].as_str().unwrap(), i["path"].as_str().unwrap()))
        .collect();
    let at = |i: usize| format!("model_groups[0].models[{i}].different_activations_orig_path");
    assert_eq!(
        issues,
        [
            ("error", at(0).as_str()),
            ("error", at(1).as_str()),
            ("error", at(2).as_str()),
        ],
        "{v}"
    );
    let message = |i: usize| v["issues"][i]["message"].as_str().unwrap().to_string();
    let m = message(0);
    for part in [
        gemma.to_str().unwrap(),
        tiny().to_str().unwrap(),
        "(donor vs base)",
        "architecture gemma2 vs llama",
        "layers 4 vs 3",
        "width (d_model) 48 vs 64",
        "feed-forward width 96 vs 128",
    ] {
        assert!(m.contains(part), "{part}: {m}");
    }
    let m = message(1);
    assert!(
        m.contains(llama3.to_str().unwrap()) && m.ends_with(
            "(donor vs base): feed-forward width 96 vs 128; name a fine-tune of the group's base"
        ),
        "a GGUF file is a full model too: {m}"
    );
    let m = message(2);
    assert!(
        m.contains("cannot read the donor")
            && m.contains(tmp.path().join("no-such-donor").to_str().unwrap())
            && m.contains("PEFT LoRA adapter folder"),
        "{m}"
    );
}
