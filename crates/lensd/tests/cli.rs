//! The `lensd` binary end to end: each subcommand's output shape, and clear failures for bad
//! arguments. Uses the demo model and the tiny test checkpoint.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn demo_model() -> PathBuf {
    let p = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.is_file(),
        "{} is missing: run scripts/fetch-demo-model.sh first",
        p.display()
    );
    p
}

fn tiny() -> PathBuf {
    root().join("testdata/tiny-llama")
}

fn lensd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lensd"))
        .args(args)
        .env_remove("LENSD_MODEL")
        .current_dir(root())
        .output()
        .expect("lensd runs")
}

fn ok_json(args: &[&str]) -> Value {
    let out = lensd(args);
    assert!(
        out.status.success(),
        "lensd {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON document")
}

fn fails_with(args: &[&str], needles: &[&str]) {
    let out = lensd(args);
    assert!(!out.status.success(), "lensd {args:?} succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    for n in needles {
        assert!(err.contains(n), "stderr of {args:?} lacks `{n}`: {err}");
    }
}

#[test]
fn inspect_reads_the_header() {
    let m = demo_model();
    let v = ok_json(&["inspect", m.to_str().unwrap(), "--format", "json"]);
    assert_eq!(v["architecture"], "llama");
    assert_eq!(v["config"]["n_layers"], 30);
    assert_eq!(v["config"]["d_model"], 576);
    assert_eq!(v["tensor_count"], 272);
    assert_eq!(v["file_bytes"], 98_362_432);
    let kinds: Vec<&str> = v["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["embedding", "attention", "mlp", "norm"]);
    let out = lensd(&["inspect", tiny().to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("layers 3") && text.contains("head"),
        "{text}"
    );
}

#[test]
fn tokenize_lists_ids_and_tokens() {
    let v = ok_json(&[
        "tokenize",
        "--text",
        "<|im_start|>Hello world",
        "--special",
        "--format",
        "json",
    ]);
    assert_eq!(v["ids"], serde_json::json!([1, 19556, 905]));
    assert_eq!(
        v["tokens"],
        serde_json::json!(["<|im_start|>", "Hello", " world"])
    );
}

#[test]
fn generate_answers_a_chat_prompt() {
    let v = ok_json(&[
        "generate",
        "--prompt",
        "What is the capital of France?",
        "--chat",
        "--dtype",
        "f32",
        "--max-tokens",
        "20",
        "--format",
        "json",
    ]);
    assert_eq!(v["text"], "The capital of France is Paris.");
    assert_eq!(v["ids"].as_array().unwrap().first().unwrap(), 504);
}

#[test]
fn analyze_prints_the_grid_as_json_and_as_a_table() {
    let v = ok_json(&[
        "analyze",
        "--text",
        "The capital of France is",
        "--layers",
        "28-30",
        "--top-k",
        "3",
        "--format",
        "json",
    ]);
    let tokens = v["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 5);
    assert_eq!(tokens[0]["text"], "The");
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(
        layers
            .iter()
            .map(|l| l["layer"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [28, 29, 30]
    );
    let cell = &layers[2]["positions"][4];
    assert_eq!(cell["top"][0]["token"], " Paris");
    assert_eq!(cell["top"].as_array().unwrap().len(), 3);
    for key in ["entropy", "kl_to_final", "final_rank"] {
        assert!(cell[key].is_number(), "{key} in {cell}");
    }
    assert!(cell["next_token_ce"].is_null());
    assert!(layers[0]["positions"][0]["next_token_ce"].is_number());

    let out = lensd(&[
        "analyze",
        "--text",
        "The capital of France is",
        "--layers",
        "0-30:10",
    ]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        table.contains("␣Paris") && table.contains("␣capital"),
        "{table}"
    );
    assert_eq!(
        table
            .lines()
            .filter(|l| l.trim_start().starts_with("30 │"))
            .count(),
        1,
        "{table}"
    );
}

#[test]
fn fit_lens_writes_a_lens_that_analyze_reads() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.txt");
    let words = [
        "the", "keeper", "watched", "a", "lens", "beam", "over", "water", "and", "light", "read",
        "layers",
    ];
    let text: Vec<&str> = (0..3000)
        .map(|i| words[(i * 7 + i / 5) % words.len()])
        .collect();
    std::fs::write(&corpus, text.join(" ")).unwrap();
    let out_dir = dir.path().join("lens");
    let m = tiny();
    let report = ok_json(&[
        "fit-lens",
        "--model",
        m.to_str().unwrap(),
        "--corpus",
        corpus.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
        "--seq-len",
        "32",
        "--holdout-tokens",
        "128",
        "--format",
        "json",
    ]);
    assert_eq!(report["layers"].as_array().unwrap().len(), 3);
    assert_eq!(report["holdout_tokens"], 128);
    for f in ["config.json", "params.safetensors", "fit_report.json"] {
        assert!(out_dir.join(f).is_file(), "{f} written");
    }
    let v = ok_json(&[
        "analyze",
        "--model",
        m.to_str().unwrap(),
        "--lens",
        "logit",
        "--lens",
        out_dir.to_str().unwrap(),
        "--text",
        "the keeper",
        "--format",
        "json",
    ]);
    let both = v.as_array().expect("two lenses give two analyses");
    assert_eq!(both[0]["lens"], "logit");
    assert_eq!(both[1]["lens"], "lens");
    assert_eq!(both[1]["layers"].as_array().unwrap().len(), 4);
}

#[test]
fn bad_arguments_fail_with_a_reason() {
    fails_with(
        &["analyze", "--text", "x", "--layers", "31"],
        &["layer 31 does not exist", "0..=30"],
    );
    fails_with(
        &["analyze", "--text", "x", "--layers", "3-1"],
        &["backwards"],
    );
    fails_with(&["analyze", "--text", "x", "--top-k", "0"], &["top_k"]);
    fails_with(
        &[
            "analyze",
            "--text",
            "x",
            "--lens",
            "testdata/tiny-llama/tuned-lens",
        ],
        &["tuned-lens", "d_model is 64", "576"],
    );
    fails_with(
        &["analyze", "--text", "x", "--lens", "/no/such/lens"],
        &["/no/such/lens"],
    );
    fails_with(&["analyze"], &["--text or --text-file"]);
    fails_with(&["generate", "--prompt", "x", "--top-p", "2"], &["top_p"]);
    fails_with(&["generate", "--prompt", "x", "--dtype", "f64"], &["f64"]);
    fails_with(
        &["tokenize", "--model", "/no/such/model.gguf", "--text", "x"],
        &["/no/such/model.gguf"],
    );
    fails_with(
        &["inspect", "Cargo.toml"],
        &["Cargo.toml", "neither a GGUF file"],
    );
    fails_with(
        &["inspect", "no-such-file.gguf"],
        &["no-such-file.gguf: No such file"],
    );
    let out = lensd(&["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for cmd in ["inspect", "tokenize", "generate", "analyze", "fit-lens"] {
        assert!(help.contains(cmd), "--help lists {cmd}");
    }
}

#[test]
fn explain_and_init_talkative() {
    let golden: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("testdata/talkative/golden.json")).unwrap(),
    )
    .unwrap();
    let text = golden["text"].as_str().unwrap();
    let tiny = tiny();
    let rows = ok_json(&[
        "explain",
        "--model",
        tiny.to_str().unwrap(),
        "--lens",
        "testdata/talkative/lens",
        "--donor",
        "testdata/talkative/donor",
        "--text",
        text,
        "--best-of-k",
        "1",
        "--temperature",
        "0",
        "--format",
        "json",
    ]);
    let rows = rows.as_array().unwrap();
    let want = golden["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "donor")
        .unwrap()["rows"]
        .as_array()
        .unwrap();
    assert_eq!(rows.len(), want.len());
    let same = rows
        .iter()
        .zip(want)
        .filter(|(g, w)| g["explanation_ids"] == w["explanation_ids"])
        .count();
    assert!(
        same + 1 >= want.len(),
        "{same} of {} as the reference",
        want.len()
    );

    // An untrained lens for the tiny base, written and then used.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("untrained");
    let made = lensd(&[
        "init-talkative",
        "--model",
        tiny.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--layer",
        "1",
        "--t-text",
        "3",
    ]);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let table = lensd(&[
        "explain",
        "--model",
        tiny.to_str().unwrap(),
        "--lens",
        out.to_str().unwrap(),
        "--text",
        "a b c",
        "--best-of-k",
        "2",
    ]);
    assert!(
        table.status.success(),
        "{}",
        String::from_utf8_lossy(&table.stderr)
    );
    let stdout = String::from_utf8_lossy(&table.stdout);
    assert!(stdout.starts_with(" pos  token"), "{stdout}");
    assert_eq!(stdout.lines().count(), 1 + 3, "{stdout}");

    // An original checkpoint folder names the converter.
    let bad = lensd(&[
        "explain",
        "--model",
        tiny.to_str().unwrap(),
        "--lens",
        "testdata/talkative/original",
        "--text",
        "a",
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("tools/convert_talkative.py"));
}
