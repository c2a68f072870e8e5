//! Helpers shared by the binary's integration tests: paths, the demo model, small lens fits.

#![allow(dead_code)]

pub mod server;

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A file or folder under `testdata/`.
pub fn testdata(rel: &str) -> PathBuf {
    root().join("testdata").join(rel)
}

pub fn demo_model() -> PathBuf {
    let p = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.is_file(),
        "{} is missing: run scripts/fetch-demo-model.sh first",
        p.display()
    );
    p
}

/// Fits a small tuned lens for the demo model with the CLI; different ridges give different
/// files.
pub fn fit(dir: &Path, name: &str, ridge: &str) -> PathBuf {
    let corpus = root().join("data/demo-corpus.txt");
    assert!(
        corpus.is_file(),
        "{} is missing: run scripts/prepare-demo-corpus.sh first",
        corpus.display()
    );
    let out = dir.join(name);
    let status = Command::new(env!("CARGO_BIN_EXE_lensd"))
        .current_dir(root())
        .args([
            "fit-lens",
            "--corpus",
            corpus.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .args([
            "--max-tokens",
            "2560",
            "--holdout-tokens",
            "128",
            "--ridge",
            ridge,
            "--format",
            "json",
        ])
        .output()
        .expect("lensd runs");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    out
}
