//! Helpers shared by the engine's integration tests: where test data lives, the demo model,
//! and a lock that keeps heavy computations from running at the same time (candle's thread
//! pool spin-waits, so two forwards at once on a small machine slow both to a crawl).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};

use candle_core::quantized::gguf_file;
use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
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

/// Gemma-3-270M (`LENSD_GEMMA3_MODEL` or `models/gemma-3-270m-q4_k_m.gguf`), or `None` when it
/// is absent: unlike the demo model, its tests skip, saying so, unless `LENSD_REQUIRE_GEMMA`
/// is set (as `scripts/test.sh` and CI set it), where its absence fails them.
pub fn gemma3_model() -> Option<PathBuf> {
    let p = std::env::var_os("LENSD_GEMMA3_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("models/gemma-3-270m-q4_k_m.gguf"));
    if p.is_file() {
        return Some(p);
    }
    assert!(
        std::env::var_os("LENSD_REQUIRE_GEMMA").is_none(),
        "LENSD_REQUIRE_GEMMA is set but {} is missing: run scripts/fetch-gemma3.sh first",
        p.display()
    );
    eprintln!(
        "SKIPPED: {} is missing (run scripts/fetch-gemma3.sh; set LENSD_REQUIRE_GEMMA=1 to fail instead)",
        p.display()
    );
    None
}

pub fn compute_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn demo(dtype: ComputeDtype) -> &'static Base {
    static STORED: OnceLock<Base> = OnceLock::new();
    static F32: OnceLock<Base> = OnceLock::new();
    static BF16: OnceLock<Base> = OnceLock::new();
    let cell = match dtype {
        ComputeDtype::Stored => &STORED,
        ComputeDtype::F32 => &F32,
        ComputeDtype::Bf16 => &BF16,
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

/// llama.cpp's converter reorders the rows of Q and K so that rotary pairs are adjacent.
pub fn permute_for_interleaved_rope(w: &Tensor, heads: usize) -> Tensor {
    let (out, inp) = w.dims2().unwrap();
    let hd = out / heads;
    w.reshape((heads, 2, hd / 2, inp))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((out, inp))
        .unwrap()
}

/// Writes the tiny checkpoint as an f32 GGUF file with llama.cpp's names and layout, after
/// `edit` has had its way with the metadata and the tensors (to build broken files).
pub fn write_tiny_gguf(
    path: &Path,
    edit: impl FnOnce(&mut Vec<(String, gguf_file::Value)>, &mut Vec<(String, Tensor)>),
) {
    use candle_core::quantized::{GgmlDType, QTensor};
    use gguf_file::Value;
    let w = candle_core::safetensors::load(testdata("tiny-llama/model.safetensors"), &Device::Cpu)
        .unwrap();
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    let mut put = |name: String, t: Tensor| tensors.push((name, t));
    put(
        "token_embd.weight".into(),
        w["model.embed_tokens.weight"].clone(),
    );
    put("output.weight".into(), w["lm_head.weight"].clone());
    put("output_norm.weight".into(), w["model.norm.weight"].clone());
    for i in 0..3 {
        let hf = |s: &str| w[&format!("model.layers.{i}.{s}.weight")].clone();
        put(
            format!("blk.{i}.attn_q.weight"),
            permute_for_interleaved_rope(&hf("self_attn.q_proj"), 4),
        );
        put(
            format!("blk.{i}.attn_k.weight"),
            permute_for_interleaved_rope(&hf("self_attn.k_proj"), 2),
        );
        put(format!("blk.{i}.attn_v.weight"), hf("self_attn.v_proj"));
        put(
            format!("blk.{i}.attn_output.weight"),
            hf("self_attn.o_proj"),
        );
        put(format!("blk.{i}.ffn_gate.weight"), hf("mlp.gate_proj"));
        put(format!("blk.{i}.ffn_up.weight"), hf("mlp.up_proj"));
        put(format!("blk.{i}.ffn_down.weight"), hf("mlp.down_proj"));
        put(format!("blk.{i}.attn_norm.weight"), hf("input_layernorm"));
        put(
            format!("blk.{i}.ffn_norm.weight"),
            hf("post_attention_layernorm"),
        );
    }
    let mut meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String("llama".into())),
        ("llama.block_count".into(), Value::U32(3)),
        ("llama.embedding_length".into(), Value::U32(64)),
        ("llama.feed_forward_length".into(), Value::U32(128)),
        ("llama.attention.head_count".into(), Value::U32(4)),
        ("llama.attention.head_count_kv".into(), Value::U32(2)),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Value::F32(1e-5),
        ),
        ("llama.rope.freq_base".into(), Value::F32(10_000.0)),
        ("llama.context_length".into(), Value::U32(128)),
    ];
    edit(&mut meta, &mut tensors);
    let q: Vec<(String, QTensor)> = tensors
        .iter()
        .map(|(k, t)| (k.clone(), QTensor::quantize(t, GgmlDType::F32).unwrap()))
        .collect();
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = q.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &meta_refs, &tensor_refs).unwrap();
}

/// A golden safetensors file of tensors by name.
pub fn golden_tensors(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A base, or a panic naming the file, the dtype and why.
pub fn load_base(path: &Path, compute: ComputeDtype) -> Base {
    Base::load(path, LoadOptions { compute })
        .unwrap_or_else(|e| panic!("{} does not load in {compute:?}: {e}", path.display()))
}

/// Golden sequence `s`'s token ids (`input_ids.{s}`).
pub fn input_ids(g: &HashMap<String, Tensor>, s: usize) -> Vec<u32> {
    g[&format!("input_ids.{s}")]
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec1::<u32>()
        .unwrap()
}

/// How many golden sequences (`input_ids.0`, `input_ids.1`, ...) a file holds.
pub fn sequences(g: &HashMap<String, Tensor>) -> usize {
    (0..)
        .take_while(|s| g.contains_key(&format!("input_ids.{s}")))
        .count()
}
