//! Tiny random models of every family saved by Hugging Face transformers as sharded
//! checkpoints (tools/gen_tiny_families.py): every layer's residual stream, the final norm and
//! the logits against transformers' own forward, packed, with the KV cache past the sliding
//! window, from bf16 weights, and after llama.cpp's conversion to GGUF; and a tuned lens of
//! the tuned-lens package on the tiny Gemma-2.

mod common;
#[path = "common/lens_golden.rs"]
mod lens_golden;

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use lensd_engine::config::{Activation, Family, RopeScaling};
use lensd_engine::lens::analyze::{analyze, AnalyzeOptions};
use lensd_engine::lens::Lens;
use lensd_engine::model::{KvCache, Logits};
use lensd_engine::{Base, ComputeDtype};

use common::{golden_tensors as golden, input_ids, load_base as load, sequences};

/// Agreement required with transformers in f32.
const TOL: f32 = 1e-4;

/// Every tiny model, by folder suffix.
const FAMILIES: &[&str] = &[
    "llama3",
    "llama3-linear",
    "qwen2",
    "qwen3",
    "gemma2",
    "gemma3",
];

fn dir(family: &str) -> PathBuf {
    common::testdata(&format!("tiny-{family}"))
}

/// Every layer, the final norm and the logits of every golden sequence, each run alone.
fn check_all_layers(family: &str, base: &Base, g: &HashMap<String, Tensor>, tol: f32) {
    let l = base.config().n_layers;
    let taps: Vec<usize> = (0..=l).collect();
    let n = sequences(g);
    assert!(n >= 4, "{family}: {n} golden sequences");
    for s in 0..n {
        let ids = input_ids(g, s);
        let out = base
            .model
            .forward(&[&ids], None, &taps, Logits::All)
            .unwrap();
        for i in 0..=l {
            let d = common::max_abs_diff(out.tap(i).unwrap(), &g[&format!("hidden.{s}.{i}")]);
            assert!(d < tol, "{family} sequence {s} layer {i}: max diff {d}");
        }
        let normed = base.model.final_norm(out.tap(l).unwrap()).unwrap();
        let d = common::max_abs_diff(&normed, &g[&format!("normed.{s}")]);
        assert!(d < tol, "{family} sequence {s} final norm: max diff {d}");
        let d = common::max_abs_diff(out.logits.as_ref().unwrap(), &g[&format!("logits.{s}")]);
        assert!(d < tol, "{family} sequence {s} logits: max diff {d}");
    }
}

#[test]
fn every_layer_and_the_logits_match_transformers() {
    let _lock = common::compute_lock();
    for family in FAMILIES {
        let base = load(&dir(family), ComputeDtype::F32);
        assert!(
            base.model.w.blocks.len() == base.config().n_layers,
            "{family}"
        );
        check_all_layers(
            family,
            &base,
            &golden(&dir(family).join("golden.safetensors")),
            TOL,
        );
    }
}

#[test]
fn the_configurations_say_what_each_family_does() {
    let cfg = |f: &str| load(&dir(f), ComputeDtype::Stored).config().clone();
    let llama3 = cfg("llama3");
    assert_eq!(llama3.family, Family::Llama);
    assert!(matches!(llama3.rope.scaling, RopeScaling::Llama3 { .. }));
    assert!(llama3.tied_embeddings);
    let linear = cfg("llama3-linear");
    assert_eq!(linear.rope.scaling, RopeScaling::Linear { factor: 2.0 });
    assert!(!linear.tied_embeddings);
    let qwen2 = cfg("qwen2");
    assert!(qwen2.qkv_bias && !qwen2.o_bias && !qwen2.qk_norm && qwen2.tied_embeddings);
    let qwen3 = cfg("qwen3");
    assert!(qwen3.qk_norm && !qwen3.qkv_bias);
    assert_ne!(qwen3.head_dim * qwen3.n_heads, qwen3.d_model);
    let gemma2 = cfg("gemma2");
    assert!(gemma2.attn_softcap.is_some() && gemma2.final_softcap.is_some());
    assert!(gemma2.sandwich_norms && !gemma2.qk_norm);
    assert_eq!(gemma2.activation, Activation::GeluTanh);
    assert_eq!(gemma2.embed_scale, (gemma2.d_model as f32).sqrt());
    let alternate: Vec<bool> = (0..gemma2.n_layers).map(|i| i % 2 == 0).collect();
    assert_eq!(gemma2.sliding_layers, alternate);
    let gemma3 = cfg("gemma3");
    assert!(gemma3.attn_softcap.is_none() && gemma3.final_softcap.is_none());
    assert!(gemma3.qk_norm && gemma3.sandwich_norms);
    let sixth: Vec<bool> = (0..gemma3.n_layers).map(|i| (i + 1) % 6 != 0).collect();
    assert_eq!(gemma3.sliding_layers, sixth);
    assert!(matches!(gemma3.rope.scaling, RopeScaling::Linear { factor } if factor == 8.0));
    let local = gemma3.sliding_rope.as_ref().expect("a local rotary base");
    assert_ne!(local.theta, gemma3.rope.theta);
    assert_eq!(local.scaling, RopeScaling::None);
}

#[test]
fn a_packed_batch_equals_each_sequence_alone() {
    let _lock = common::compute_lock();
    for family in FAMILIES {
        let base = load(&dir(family), ComputeDtype::F32);
        let g = golden(&dir(family).join("golden.safetensors"));
        let seqs: Vec<Vec<u32>> = (0..sequences(&g)).map(|s| input_ids(&g, s)).collect();
        let refs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
        let out = base.model.forward(&refs, None, &[1], Logits::All).unwrap();
        let logits = out.logits.as_ref().unwrap();
        for (s, seq) in seqs.iter().enumerate() {
            let o = out.offsets[s];
            let rows = logits.narrow(0, o, seq.len()).unwrap();
            let d = common::max_abs_diff(&rows, &g[&format!("logits.{s}")]);
            assert!(d < TOL, "{family} sequence {s} in a batch: max diff {d}");
            let h = out.tap(1).unwrap().narrow(0, o, seq.len()).unwrap();
            let d = common::max_abs_diff(&h, &g[&format!("hidden.{s}.1")]);
            assert!(d < TOL, "{family} sequence {s} layer 1 in a batch: {d}");
        }
    }
}

#[test]
fn decoding_with_the_cache_past_the_window_equals_the_full_forward() {
    let _lock = common::compute_lock();
    for family in FAMILIES {
        let base = load(&dir(family), ComputeDtype::F32);
        let g = golden(&dir(family).join("golden.safetensors"));
        // The longest sequence: longer than every sliding window of the tiny models.
        let s = (0..sequences(&g))
            .max_by_key(|&s| input_ids(&g, s).len())
            .unwrap();
        let ids = input_ids(&g, s);
        if let Some(w) = base.config().sliding_window {
            assert!(
                ids.len() > w + 2,
                "{family}: window {w}, {} tokens",
                ids.len()
            );
        }
        let want = &g[&format!("logits.{s}")];
        let mut cache = [KvCache::default()];
        let out = base
            .model
            .forward(&[&ids[..3]], Some(&mut cache), &[], Logits::All)
            .unwrap();
        let d = common::max_abs_diff(&out.logits.unwrap(), &want.narrow(0, 0, 3).unwrap());
        assert!(d < TOL, "{family} prefix: {d}");
        for (pos, id) in ids.iter().enumerate().skip(3) {
            let out = base
                .model
                .forward(&[&[*id]], Some(&mut cache), &[], Logits::Last)
                .unwrap();
            let d = common::max_abs_diff(&out.logits.unwrap(), &want.narrow(0, pos, 1).unwrap());
            assert!(d < TOL, "{family} position {pos}: {d}");
        }
        assert_eq!(cache[0].len(), ids.len());
    }
}

#[test]
fn the_window_changes_what_long_sequences_see() {
    let _lock = common::compute_lock();
    for family in ["gemma2", "gemma3"] {
        let base = load(&dir(family), ComputeDtype::F32);
        let g = golden(&dir(family).join("golden.safetensors"));
        let s = (0..sequences(&g))
            .max_by_key(|&s| input_ids(&g, s).len())
            .unwrap();
        let ids = input_ids(&g, s);
        let mut cfg = base.config().clone();
        cfg.sliding_window = Some(ids.len() + 1);
        let wide = lensd_engine::model::Model::new(cfg, base.model.w.clone());
        let out = wide.forward(&[&ids], None, &[], Logits::All).unwrap();
        let d = common::max_abs_diff(&out.logits.unwrap(), &g[&format!("logits.{s}")]);
        assert!(
            d > 1e-2,
            "{family}: without the window the logits stay within {d} of the golden ones, so the \
             test would not notice a wrong window"
        );
    }
}

#[test]
fn bf16_weights_compute_as_transformers_does_with_the_same_weights() {
    let _lock = common::compute_lock();
    for family in FAMILIES {
        let g = golden(&dir(family).join("golden_bf16.safetensors"));
        let bf16 = dir(family).join("bf16");
        let base = load(&bf16, ComputeDtype::F32);
        check_all_layers(family, &base, &g, TOL);
        // Kept in bf16, the products round their inputs: only close.
        let stored = load(&bf16, ComputeDtype::Stored);
        let ids = input_ids(&g, 1);
        let out = stored
            .model
            .forward(&[&ids], None, &[], Logits::All)
            .unwrap();
        let d = common::max_abs_diff(&out.logits.unwrap(), &g["logits.1"]);
        assert!(d < 0.25, "{family} computing in bf16: max diff {d}");
        assert!(
            stored.bytes().owned < base.bytes().owned * 6 / 10,
            "{family}: bf16 matrices kept in bf16"
        );
    }
}

#[test]
fn llama_cpp_conversions_to_gguf_give_the_same_states() {
    let _lock = common::compute_lock();
    for family in FAMILIES {
        let path = dir(family).join("model.gguf");
        let base = load(&path, ComputeDtype::F32);
        let hf = load(&dir(family), ComputeDtype::Stored);
        let (a, b) = (base.config(), hf.config());
        assert_eq!(
            (a.family, a.n_layers, a.sliding_window, &a.sliding_layers),
            (b.family, b.n_layers, b.sliding_window, &b.sliding_layers),
            "{family}"
        );
        assert_eq!(
            (a.attn_softcap, a.final_softcap),
            (b.attn_softcap, b.final_softcap)
        );
        // GGUF has no query_pre_attn_scalar: llama.cpp scales Gemma's queries by the head size
        // (d / heads for the 27B models), so the Gemma goldens of the GGUF files were computed
        // by transformers with query_pre_attn_scalar = head_dim.
        let gemma = matches!(a.family, Family::Gemma2 | Family::Gemma3);
        let want_scale = if gemma {
            1.0 / (a.head_dim as f64).sqrt()
        } else {
            b.query_scale
        };
        assert!(
            (a.query_scale - want_scale).abs() < 1e-9,
            "{family} query scale"
        );
        let file = if gemma {
            "golden_gguf.safetensors"
        } else {
            "golden.safetensors"
        };
        let g = golden(&dir(family).join(file));
        // Sequences of the model's own ids: the GGUF vocabulary may differ in its specials.
        for s in 0..sequences(&g) {
            let ids = input_ids(&g, s);
            let l = a.n_layers;
            let out = base
                .model
                .forward(&[&ids], None, &[1, l], Logits::All)
                .unwrap();
            for i in [1, l] {
                let d = common::max_abs_diff(out.tap(i).unwrap(), &g[&format!("hidden.{s}.{i}")]);
                assert!(d < TOL, "{family} GGUF sequence {s} layer {i}: {d}");
            }
            let d = common::max_abs_diff(out.logits.as_ref().unwrap(), &g[&format!("logits.{s}")]);
            assert!(d < TOL, "{family} GGUF sequence {s} logits: {d}");
        }
    }
}

#[test]
fn resident_bytes_from_the_headers_equal_the_loaded_bytes() {
    for family in FAMILIES {
        for path in [
            dir(family),
            dir(family).join("bf16"),
            dir(family).join("model.gguf"),
        ] {
            let report = lensd_engine::inspect::inspect(&path).unwrap();
            for (compute, want) in [
                (ComputeDtype::F32, report.resident_f32),
                (ComputeDtype::Stored, report.resident_stored),
                (ComputeDtype::Bf16, report.resident_bf16),
            ] {
                let got = load(&path, compute).bytes();
                assert_eq!(
                    got.owned + got.mapped,
                    want,
                    "{} in {compute:?}",
                    path.display()
                );
            }
        }
    }
}

fn run(base: &Base, lens: &Lens, ids: &[u32], layers: Vec<usize>) -> lensd_core::Analysis {
    analyze(
        base,
        &[lens],
        ids,
        &AnalyzeOptions::new(layers, 5),
        &mut |_| ControlFlow::Continue(()),
    )
    .unwrap()
    .remove(0)
}

#[test]
fn tuned_and_logit_lenses_on_gemma2_match_the_package_with_the_soft_cap() {
    let _lock = common::compute_lock();
    let base = load(&dir("gemma2"), ComputeDtype::F32);
    let g = golden(&dir("gemma2").join("golden.safetensors"));
    let want = golden(&dir("gemma2").join("tuned_lens_golden.safetensors"));
    let l = base.config().n_layers;
    let lens = Lens::open(
        dir("gemma2").join("tuned-lens").to_str().unwrap(),
        base.config(),
    )
    .unwrap();
    for s in 0..sequences(&g) {
        let ids = input_ids(&g, s);
        let a = run(&base, &lens, &ids, (0..l).collect());
        lens_golden::check(&a, &want, "", s);
        let a = run(&base, &Lens::Logit, &ids, (0..=l).collect());
        lens_golden::check(&a, &want, "logit_", s);
    }
}

/// A checkpoint in the layout of the multimodal Gemma-3 models (4B and larger, the original's
/// `google/gemma-3-27b-it`): the text model's configuration under `text_config`, its tensors
/// under `language_model.model.`, beside a vision tower and a projector.
fn multimodal_gemma3(out: &Path) {
    let src = dir("gemma3");
    let text: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    let config = serde_json::json!({
        "architectures": ["Gemma3ForConditionalGeneration"],
        "model_type": "gemma3",
        "text_config": text,
        "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 8},
        "mm_tokens_per_image": 4,
    });
    std::fs::write(out.join("config.json"), config.to_string()).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), out.join(f)).unwrap();
    }
    let mut tensors = HashMap::new();
    for shard in [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ] {
        for (name, t) in golden(&src.join(shard)) {
            let name = name.replacen("model.", "language_model.model.", 1);
            tensors.insert(name, t);
        }
    }
    let dev = &Device::Cpu;
    tensors.insert(
        "vision_tower.vision_model.embeddings.patch_embedding.weight".into(),
        Tensor::ones((8, 3, 4, 4), DType::F32, dev).unwrap(),
    );
    tensors.insert(
        "multi_modal_projector.mm_input_projection_weight".into(),
        Tensor::ones((8, 48), DType::F32, dev).unwrap(),
    );
    candle_core::safetensors::save(&tensors, out.join("model.safetensors")).unwrap();
}

#[test]
fn the_text_model_of_a_multimodal_gemma3_checkpoint_runs_alone() {
    let _lock = common::compute_lock();
    let tmp = tempfile::tempdir().unwrap();
    multimodal_gemma3(tmp.path());
    let base = load(tmp.path(), ComputeDtype::F32);
    assert_eq!(base.config().family, Family::Gemma3);
    check_all_layers(
        "multimodal gemma3",
        &base,
        &golden(&dir("gemma3").join("golden.safetensors")),
        TOL,
    );
    // The vision tower is neither loaded nor counted.
    let report = lensd_engine::inspect::inspect(tmp.path()).unwrap();
    let text_only = lensd_engine::inspect::inspect(&dir("gemma3")).unwrap();
    assert_eq!(report.resident_f32, text_only.resident_f32);
    assert_eq!(base.bytes().owned, report.resident_f32);
    assert!(report.tensor_bytes > text_only.tensor_bytes);
}
