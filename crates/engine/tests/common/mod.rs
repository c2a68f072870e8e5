//! Helpers shared by the engine's integration tests: where test data lives, the demo model,
//! and a lock that keeps heavy computations from running at the same time (candle's thread
//! pool spin-waits, so two forwards at once on a small machine slow both to a crawl).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};

use candle_core::Tensor;
use lensd_engine::{Base, ComputeDtype, LoadOptions};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn testdata(rel: &str) -> PathBuf {
    root().join("testdata").join(rel)
}

/// The demo GGUF, from `LENSD_DEMO_MODEL` or `models/`. Its absence fails the test with the
/// command that fetches it.
pub fn demo_model() -> PathBuf {
    let p = std::env::var_os("LENSD_DEMO_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    assert!(
        p.is_file(),
        "the demo model {} is missing: run scripts/fetch-demo-model.sh first",
        p.display()
    );
    p
}

pub fn compute_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn demo(dtype: ComputeDtype) -> &'static Base {
    static STORED: OnceLock<Base> = OnceLock::new();
    static F32: OnceLock<Base> = OnceLock::new();
    let cell = match dtype {
        ComputeDtype::Stored => &STORED,
        ComputeDtype::F32 => &F32,
    };
    cell.get_or_init(|| {
        Base::load(&demo_model(), LoadOptions { compute: dtype }).expect("demo model loads")
    })
}

pub fn json(rel: &str) -> serde_json::Value {
    let p = testdata(rel);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

pub fn ids_of(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("an array of ids")
        .iter()
        .map(|x| x.as_u64().expect("an id") as u32)
        .collect()
}

/// Largest |a − b| over two tensors of the same shape, as f32.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}
