//! `lensd inspect` and `lensd check-config` given a named pipe (FIFO) where a weights file or
//! folder, a lens or the config file is expected: each is refused at once, naming the path and
//! what it is, instead of waiting for ever for a writer. And a settings error no longer hides
//! the problems of the files the same config names.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;

fn tiny() -> PathBuf {
    common::testdata("tiny-llama")
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo runs");
    assert!(status.success(), "mkfifo {}", path.display());
}

/// Runs lensd with `args`, failing the test (and killing lensd) if it has not ended within
/// 20 seconds: a read that waits for a pipe's writer never would.
fn lensd(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lensd"))
        .args(args)
        .current_dir("/")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("lensd runs");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(20) {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("lensd {args:?} still ran after 20 s: it waits on the pipe");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn check_config(file: &Path) -> (Output, Value) {
    let out = lensd(&["check-config", file.to_str().unwrap(), "--format", "json"]);
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out, v)
}

/// The message of the issue at `path`, if there is one.
fn issue<'a>(v: &'a Value, path: &str) -> Option<&'a str> {
    v["issues"]
        .as_array()?
        .iter()
        .find(|i| i["path"] == path)
        .and_then(|i| i["message"].as_str())
}

fn write_config(dir: &Path, doc: &Value) -> PathBuf {
    let path = dir.join("model_groups.json");
    fs::write(&path, serde_json::to_string_pretty(doc).unwrap()).unwrap();
    path
}

/// A copy of the tiny checkpoint's folder at `dir`, with `config.json` a pipe.
fn checkpoint_with_a_piped_config(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        fs::copy(tiny().join(f), dir.join(f)).unwrap();
    }
    mkfifo(&dir.join("config.json"));
}

#[test]
fn inspect_refuses_a_pipe_naming_it() {
    // issue 17 item 10: `lensd inspect` on a FIFO waited for ever.
    let tmp = tempfile::tempdir().unwrap();
    let pipe = tmp.path().join("model.gguf");
    mkfifo(&pipe);
    let out = lensd(&["inspect", pipe.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(pipe.to_str().unwrap()) && stderr.contains("named pipe"),
        "{stderr}"
    );

    // A checkpoint folder whose config.json is a pipe.
    let folder = tmp.path().join("checkpoint");
    checkpoint_with_a_piped_config(&folder);
    let out = lensd(&["inspect", folder.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    let config = folder.join("config.json");
    assert!(
        stderr.contains(config.to_str().unwrap()) && stderr.contains("named pipe"),
        "{stderr}"
    );
}

#[test]
fn check_config_refuses_a_piped_config_file_naming_it() {
    // issue 17 item 10: `lensd check-config` on a FIFO waited for ever.
    let tmp = tempfile::tempdir().unwrap();
    let pipe = tmp.path().join("model_groups.json");
    mkfifo(&pipe);
    let (out, _) = check_config(&pipe);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(pipe.to_str().unwrap()) && stderr.contains("named pipe"),
        "{stderr}"
    );
}

#[test]
fn check_config_reports_piped_bases_and_lenses_where_they_are_named() {
    // issue 17 item 10: a FIFO as a base or a lens made `lensd check-config` wait for ever, or
    // was refused without saying what it was.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    mkfifo(&dir.join("base.gguf"));
    mkfifo(&dir.join("tuned-pipe"));
    mkfifo(&dir.join("talkative-pipe"));
    checkpoint_with_a_piped_config(&dir.join("folder"));
    fs::create_dir_all(dir.join("lens-folder")).unwrap();
    fs::copy(
        tiny().join("tuned-lens/params.pt"),
        dir.join("lens-folder/params.pt"),
    )
    .unwrap();
    mkfifo(&dir.join("lens-folder/config.json"));
    let doc = json!({
        "model_groups": [
            {"group_id": "piped", "group_name": "Piped", "base_model_path": "base.gguf",
             "models": [{"id": "p", "name": "P"}]},
            {"group_id": "folder", "group_name": "Folder", "base_model_path": "folder",
             "models": [{"id": "f", "name": "F"}]},
            {"group_id": "tiny", "group_name": "Tiny", "base_model_path": tiny(), "models": [
                {"id": "t1", "name": "T1", "lens": "tuned", "lens_checkpoint_path": "tuned-pipe"},
                {"id": "t2", "name": "T2", "lens": "talkative",
                 "lens_checkpoint_path": "talkative-pipe"},
                {"id": "t3", "name": "T3", "lens": "tuned", "lens_checkpoint_path": "lens-folder"}
            ]}
        ],
        "settings": {"device_budget": "1GiB", "host_budget": "1GiB"}
    });
    let file = write_config(dir, &doc);
    let (out, v) = check_config(&file);
    assert!(!out.status.success());
    for (at, named) in [
        ("model_groups[0].base_model_path", dir.join("base.gguf")),
        (
            "model_groups[1].base_model_path",
            dir.join("folder/config.json"),
        ),
        (
            "model_groups[2].models[0].lens_checkpoint_path",
            dir.join("tuned-pipe"),
        ),
        (
            "model_groups[2].models[1].lens_checkpoint_path",
            dir.join("talkative-pipe"),
        ),
        (
            "model_groups[2].models[2].lens_checkpoint_path",
            dir.join("lens-folder/config.json"),
        ),
    ] {
        let message = issue(&v, at).unwrap_or_else(|| panic!("no issue at {at}: {v}"));
        assert!(
            message.contains(named.to_str().unwrap()) && message.contains("named pipe"),
            "{at}: {message}"
        );
    }
    assert_eq!(v["errors"].as_u64(), Some(5), "{v}");
}

#[test]
fn a_settings_error_does_not_hide_the_files_problems() {
    // issue 17 item 10: with an error in the settings, check-config listed it alone.
    let tmp = tempfile::tempdir().unwrap();
    let doc = json!({
        "model_groups": [
            {"group_id": "g", "group_name": "G", "base_model_path": "no-such-base", "models": [
                {"id": "m", "name": "M", "lens": "tuned", "lens_checkpoint_path": "no-such-lens"}
            ]},
            {"group_id": "t", "group_name": "T", "base_model_path": tiny(), "models": [
                {"id": "deep", "name": "Deep", "layer": 7}
            ]}
        ],
        "settings": {"device_budget": "lots", "keep_alive": "a while", "default_group": "nope"}
    });
    let file = write_config(tmp.path(), &doc);
    let (out, v) = check_config(&file);
    assert!(!out.status.success());
    for at in [
        "settings.device_budget",
        "settings.keep_alive",
        "settings.default_group",
        "model_groups[0].base_model_path",
        "model_groups[0].models[0].lens_checkpoint_path",
        "model_groups[1].models[0].layer",
    ] {
        assert!(issue(&v, at).is_some(), "no issue at {at}: {v}");
    }
    assert_eq!(v["errors"].as_u64(), Some(6), "{v}");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("has 6 errors"), "{stderr}");
}
