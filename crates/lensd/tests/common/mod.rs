//! Helpers shared by the binary's integration tests: paths, the demo model, small lens fits.

#![allow(dead_code)]

pub mod client;
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

/// Gemma-3-270M, or `None` when it is absent: its tests then skip, saying so, unless
/// `LENSD_REQUIRE_GEMMA` is set (as `scripts/test.sh` sets it), where its absence fails them.
pub fn gemma3_model() -> Option<PathBuf> {
    let p = root().join("models/gemma-3-270m-q4_k_m.gguf");
    if p.is_file() {
        return Some(p);
    }
    assert!(
        std::env::var_os("LENSD_REQUIRE_GEMMA").is_none(),
        "LENSD_REQUIRE_GEMMA is set but {} is missing: run scripts/fetch-gemma3.sh first",
        p.display()
    );
    eprintln!(
        "SKIPPED: {} is missing (run scripts/fetch-gemma3.sh)",
        p.display()
    );
    None
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

/// Writes a copy of the tiny checkpoint to `dir` in which every weight `pick` selects by name is
/// moved by up to a tenth of its tensor's RMS, drawn from `seed`: a fine-tune of the same
/// architecture and shapes.
pub fn fine_tune(dir: &Path, seed: u64, pick: impl Fn(&str) -> bool) {
    std::fs::create_dir_all(dir).unwrap();
    let tiny = testdata("tiny-llama");
    for f in ["config.json", "generation_config.json", "tokenizer.json"] {
        std::fs::copy(tiny.join(f), dir.join(f)).unwrap();
    }
    let weights =
        candle_core::safetensors::load(tiny.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let moved: std::collections::HashMap<String, candle_core::Tensor> = weights
        .into_iter()
        .map(|(name, t)| {
            if !pick(&name) {
                return (name, t);
            }
            let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            let rms = (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
            let mut state = seed ^ fnv(&name);
            let v: Vec<f32> = v
                .iter()
                .map(|x| x + 0.1 * rms * (2.0 * uniform(&mut state) - 1.0))
                .collect();
            let t = candle_core::Tensor::from_vec(v, t.shape(), &candle_core::Device::Cpu).unwrap();
            (name, t)
        })
        .collect();
    candle_core::safetensors::save(&moved, dir.join("model.safetensors")).unwrap();
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// splitmix64, as a float in [0, 1).
fn uniform(state: &mut u64) -> f32 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
}

/// Submits `work` as the client `tester` and returns the first analysis of its result; any
/// other end fails the test, naming `what`.
pub async fn analysis_of(
    service: &lensd::service::Service,
    work: lensd_core::work::Work,
    what: &str,
) -> lensd_core::analysis::Analysis {
    use lensd_core::work::{ClientId, JobOutput, RequestEvent};
    let (_, mut rx) = service
        .scheduler
        .submit(&ClientId("tester".into()), work, None)
        .await
        .unwrap();
    while let Some(ev) = rx.recv().await {
        match ev {
            RequestEvent::Completed {
                output: JobOutput::Analysis { mut analyses },
                ..
            } => return analyses.remove(0),
            ev if ev.is_terminal() => panic!("{what}: {ev:?}"),
            _ => {}
        }
    }
    panic!("{what}: the events ended without a result")
}
