//! A tiny random gpt-oss (tools/gen_tiny_gptoss.py) against transformers' `GptOssForCausalLM`:
//! every layer's residual stream, the router's choices and the logits, from the unquantized
//! checkpoint, from the published layout with MXFP4 experts (computed from the blocks and
//! widened at load) and from bf16; packed, with the KV cache past the sliding window; the
//! features that must matter (window, sinks, clamps) checked to matter; and the bytes planned
//! from the headers equal to the bytes loaded.
//!
//! The expert weights of the tiny model are MXFP4 values, so every file holds the same expert
//! numbers exactly and the MXFP4 path meets the same tolerance as f32: its products differ
//! from transformers' only in the order of the f32 sums.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use lensd_engine::config::{Family, RopeScaling};
use lensd_engine::lens::fit::{fit_tuned_lens, FitOptions};
use lensd_engine::lens::talkative::{
    write_untrained, ExplainOptions, TalkativeLens, UntrainedSpec,
};
use lensd_engine::model::{router_logits, top_k_routes, KvCache, Logits, Model};
use lensd_engine::weights::Mlp;
use lensd_engine::{Base, ComputeDtype, LoadOptions};

/// Agreement required with transformers in f32.
const TOL: f32 = 1e-4;

fn dir() -> PathBuf {
    common::testdata("tiny-gptoss")
}

fn golden(name: &str) -> HashMap<String, Tensor> {
    let path = dir().join(name);
    candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn load(path: &Path, compute: ComputeDtype) -> Base {
    Base::load(path, LoadOptions { compute })
        .unwrap_or_else(|e| panic!("{} does not load in {compute:?}: {e}", path.display()))
}

fn ids(g: &HashMap<String, Tensor>, s: usize) -> Vec<u32> {
    g[&format!("input_ids.{s}")]
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec1::<u32>()
        .unwrap()
}

fn sequences(g: &HashMap<String, Tensor>) -> usize {
    (0..)
        .take_while(|s| g.contains_key(&format!("input_ids.{s}")))
        .count()
}

fn check_all_layers(what: &str, model: &Model, g: &HashMap<String, Tensor>) {
    let l = model.cfg.n_layers;
    let taps: Vec<usize> = (0..=l).collect();
    assert!(sequences(g) >= 4);
    for s in 0..sequences(g) {
        let out = model
            .forward(&[&ids(g, s)], None, &taps, Logits::All)
            .unwrap();
        for i in 0..=l {
            let d = common::max_abs_diff(out.tap(i).unwrap(), &g[&format!("hidden.{s}.{i}")]);
            assert!(d < TOL, "{what} sequence {s} layer {i}: max diff {d}");
        }
        let normed = model.final_norm(out.tap(l).unwrap()).unwrap();
        let d = common::max_abs_diff(&normed, &g[&format!("normed.{s}")]);
        assert!(d < TOL, "{what} sequence {s} final norm: {d}");
        let d = common::max_abs_diff(out.logits.as_ref().unwrap(), &g[&format!("logits.{s}")]);
        assert!(d < TOL, "{what} sequence {s} logits: {d}");
    }
}

#[test]
fn every_layer_and_the_logits_match_transformers_from_every_layout() {
    let _lock = common::compute_lock();
    let g = golden("golden.safetensors");
    check_all_layers("f32", &load(&dir(), ComputeDtype::F32).model, &g);
    let mx = dir().join("mxfp4");
    let stored = load(&mx, ComputeDtype::Stored);
    let Mlp::Experts(w) = &stored.model.w.blocks[0].mlp else {
        panic!("gpt-oss blocks have experts")
    };
    assert_eq!(w.gate_up.dtype_name(), "MXFP4", "kept as stored");
    check_all_layers("MXFP4 blocks", &stored.model, &g);
    check_all_layers("MXFP4 widened", &load(&mx, ComputeDtype::F32).model, &g);
    let bf16 = load(&dir().join("bf16"), ComputeDtype::F32);
    check_all_layers(
        "bf16 widened",
        &bf16.model,
        &golden("golden_bf16.safetensors"),
    );
}

#[test]
fn the_router_chooses_the_experts_transformers_chooses() {
    let _lock = common::compute_lock();
    let g = golden("golden.safetensors");
    for compute in [ComputeDtype::F32, ComputeDtype::Stored] {
        let base = load(&dir().join("mxfp4"), compute);
        let k = base.config().moe.as_ref().unwrap().top_k;
        let mut hits = vec![0usize; base.config().n_experts()];
        for s in 0..sequences(&g) {
            for (i, block) in base.model.w.blocks.iter().enumerate() {
                let Mlp::Experts(w) = &block.mlp else {
                    panic!("block {i} has no experts")
                };
                let h = &g[&format!("mlp_in.{s}.{i}")];
                let routes = top_k_routes(&router_logits(w, h).unwrap(), k).unwrap();
                let want = g[&format!("router.{s}.{i}")].to_vec2::<i64>().unwrap();
                let weights = g[&format!("route_weights.{s}.{i}")]
                    .to_vec2::<f32>()
                    .unwrap();
                for (t, chosen) in routes.iter().enumerate() {
                    let got: Vec<i64> = chosen.iter().map(|&(e, _)| e as i64).collect();
                    assert_eq!(got, want[t], "sequence {s} block {i} token {t}");
                    for (j, &(e, wt)) in chosen.iter().enumerate() {
                        assert!((wt - weights[t][j]).abs() < 1e-5, "{s}/{i}/{t}: {wt}");
                        hits[e] += 1;
                    }
                }
            }
        }
        // The golden sequences exercise every expert.
        assert!(hits.iter().all(|&h| h > 0), "{hits:?}");
    }
}

#[test]
fn the_configuration_says_what_gpt_oss_does() {
    let base = load(&dir(), ComputeDtype::Stored);
    let c = base.config();
    let info = common::json("tiny-gptoss/golden.json");
    assert_eq!(c.family, Family::GptOss);
    assert!(c.attn_sinks && c.qkv_bias && c.o_bias && !c.tied_embeddings);
    let moe = c.moe.as_ref().unwrap();
    assert_eq!((moe.n_experts, moe.top_k, moe.limit), (8, 3, 7.0));
    assert_eq!(c.sliding_window, Some(8));
    assert_eq!(c.sliding_layers, vec![true, false, true, false]);
    let RopeScaling::Yarn {
        attention_factor, ..
    } = c.rope.scaling
    else {
        panic!("yarn scaling, not {:?}", c.rope.scaling)
    };
    let want = info["attention_scaling"].as_f64().unwrap();
    assert!(
        (attention_factor - want).abs() < 1e-12,
        "{attention_factor}"
    );
    let freqs = c.rope.inv_freq(c.head_dim);
    let want: Vec<f64> = info["inv_freq"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(freqs.len(), want.len());
    for (i, (a, b)) in freqs.iter().zip(&want).enumerate() {
        assert!(
            ((*a as f64) - b).abs() <= 1e-7 * b.abs(),
            "frequency {i}: {a} vs {b}"
        );
    }
    // Kept, blended and divided frequencies all occur.
    let plain = lensd_engine::config::Rope::plain(c.rope.theta).inv_freq(c.head_dim);
    assert_eq!(freqs[0], plain[0]);
    assert!(freqs[1] < plain[1] && freqs[1] > plain[1] / 32.0);
    assert!((freqs[5] - plain[5] / 32.0).abs() < 1e-9);
}

#[test]
fn a_packed_batch_equals_each_sequence_alone() {
    let _lock = common::compute_lock();
    let g = golden("golden.safetensors");
    let base = load(&dir().join("mxfp4"), ComputeDtype::Stored);
    let seqs: Vec<Vec<u32>> = (0..sequences(&g)).map(|s| ids(&g, s)).collect();
    let refs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
    let out = base.model.forward(&refs, None, &[2], Logits::All).unwrap();
    for (s, seq) in seqs.iter().enumerate() {
        let o = out.offsets[s];
        let rows = out
            .logits
            .as_ref()
            .unwrap()
            .narrow(0, o, seq.len())
            .unwrap();
        let d = common::max_abs_diff(&rows, &g[&format!("logits.{s}")]);
        assert!(d < TOL, "sequence {s} in a batch: {d}");
        let h = out.tap(2).unwrap().narrow(0, o, seq.len()).unwrap();
        let d = common::max_abs_diff(&h, &g[&format!("hidden.{s}.2")]);
        assert!(d < TOL, "sequence {s} layer 2 in a batch: {d}");
    }
}

#[test]
fn decoding_with_the_cache_past_the_window_equals_the_full_forward() {
    let _lock = common::compute_lock();
    let g = golden("golden.safetensors");
    let base = load(&dir().join("mxfp4"), ComputeDtype::Stored);
    let s = (0..sequences(&g))
        .max_by_key(|&s| ids(&g, s).len())
        .unwrap();
    let seq = ids(&g, s);
    assert!(seq.len() > base.config().sliding_window.unwrap() + 2);
    let want = &g[&format!("logits.{s}")];
    let mut cache = [KvCache::default()];
    let out = base
        .model
        .forward(&[&seq[..3]], Some(&mut cache), &[], Logits::All)
        .unwrap();
    let d = common::max_abs_diff(&out.logits.unwrap(), &want.narrow(0, 0, 3).unwrap());
    assert!(d < TOL, "prefix: {d}");
    for (pos, id) in seq.iter().enumerate().skip(3) {
        let out = base
            .model
            .forward(&[&[*id]], Some(&mut cache), &[], Logits::Last)
            .unwrap();
        let d = common::max_abs_diff(&out.logits.unwrap(), &want.narrow(0, pos, 1).unwrap());
        assert!(d < TOL, "position {pos}: {d}");
    }
    assert_eq!(cache[0].len(), seq.len());
}

/// The longest golden sequence's logits from `model`, and how far they are from the golden.
fn distance(model: &Model, g: &HashMap<String, Tensor>) -> f32 {
    let s = (0..sequences(g)).max_by_key(|&s| ids(g, s).len()).unwrap();
    let out = model
        .forward(&[&ids(g, s)], None, &[], Logits::All)
        .unwrap();
    common::max_abs_diff(&out.logits.unwrap(), &g[&format!("logits.{s}")])
}

#[test]
fn the_window_the_sinks_and_the_clamps_each_change_the_result() {
    let _lock = common::compute_lock();
    let g = golden("golden.safetensors");
    let base = load(&dir(), ComputeDtype::F32);
    let mut wide = base.config().clone();
    wide.sliding_window = Some(1000);
    let d = distance(&Model::new(wide, base.model.w.clone()), &g);
    assert!(d > 1e-2, "without the window: {d}");
    let mut sinkless = base.model.w.clone();
    for b in &mut sinkless.blocks {
        b.sinks = None;
    }
    let d = distance(&Model::new(base.config().clone(), sinkless), &g);
    assert!(d > 1e-2, "without sinks: {d}");
    let mut unclamped = base.config().clone();
    unclamped.moe.as_mut().unwrap().limit = 1e6;
    let d = distance(&Model::new(unclamped, base.model.w.clone()), &g);
    assert!(d > 1e-2, "without the clamps: {d}");
    let mut plain = base.config().clone();
    plain.rope.scaling = RopeScaling::None;
    let d = distance(&Model::new(plain, base.model.w.clone()), &g);
    assert!(d > 1e-2, "without yarn: {d}");
}

#[test]
fn resident_bytes_from_the_headers_equal_the_loaded_bytes() {
    for path in [dir(), dir().join("mxfp4"), dir().join("bf16")] {
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
    // As stored, the MXFP4 experts take 4.25 bits a weight: 17/64 of their f32 bytes.
    let c = load(&dir(), ComputeDtype::Stored).config().clone();
    let expert_weights = (c.n_layers * c.n_experts() * 3 * c.d_ff * c.d_model) as u64;
    let f32 = lensd_engine::inspect::inspect(&dir().join("mxfp4")).unwrap();
    assert_eq!(
        f32.resident_f32 - f32.resident_stored,
        expert_weights * 4 - expert_weights * 17 / 32,
    );
}

/// Text of the repository's docs, tokenized by the tiny model's tokenizer.
fn corpus(base: &Base) -> Vec<u32> {
    let mut text = String::new();
    for f in [
        "README.md",
        "docs/talkative.md",
        "docs/gpu.md",
        "lenses/README.md",
    ] {
        text.push_str(&std::fs::read_to_string(common::root().join(f)).unwrap());
    }
    base.tokenizer.encode(&text, false).unwrap()
}

#[test]
fn a_fitted_tuned_lens_beats_the_logit_lens_at_every_layer() {
    let _lock = common::compute_lock();
    let base = load(&dir().join("mxfp4"), ComputeDtype::Stored);
    let ids = corpus(&base);
    let opts = FitOptions {
        seq_len: 64,
        max_train_tokens: 8_192,
        holdout_tokens: 1_024,
        ..FitOptions::default()
    };
    assert!(
        ids.len() > opts.max_train_tokens + opts.holdout_tokens,
        "{}",
        ids.len()
    );
    let (_, report) = fit_tuned_lens(&base, &ids, &opts, "tiny-gptoss", &mut |_, _, _| {}).unwrap();
    assert_eq!(report.layers.len(), base.config().n_layers);
    for l in &report.layers {
        assert!(
            l.kl_tuned < l.kl_logit,
            "layer {}: tuned KL {:.3} is not below logit KL {:.3}",
            l.layer,
            l.kl_tuned,
            l.kl_logit
        );
    }
    let (logit, tuned) = report.mean_kl();
    eprintln!("held-out mean KL: logit {logit:.3} nats, tuned {tuned:.3} nats");
}

#[test]
fn a_talkative_lens_explains_every_position() {
    let _lock = common::compute_lock();
    let base = load(&dir().join("mxfp4"), ComputeDtype::Stored);
    let tmp = tempfile::tempdir().unwrap();
    let spec = UntrainedSpec {
        layer: 2,
        t_text: 4,
        patched_layers: 2,
        output_layer: 2,
        ..UntrainedSpec::default()
    };
    write_untrained(&base, "tiny-gptoss", tmp.path(), &spec).unwrap();
    let lens = TalkativeLens::load(tmp.path(), base.config()).unwrap();
    let ids: Vec<u32> = (20..32).collect();
    let positions: Vec<usize> = (0..ids.len()).collect();
    let opts = ExplainOptions {
        best_of_k: 2,
        temperature: 0.7,
        seed: 3,
        salience: true,
        kl: true,
        batch_positions: 5,
    };
    let rows = lens
        .explain(&base.model, &ids, &positions, None, 2, &opts, &mut |_| true)
        .unwrap();
    assert_eq!(rows.len(), ids.len());
    for r in &rows {
        assert_eq!(r.explanation_ids.len(), 4);
        assert!(r.mse.is_finite() && r.mse > 0.0, "mse {}", r.mse);
        assert_eq!(r.token_salience.len(), 4);
        let kl = r.kl_divergence.expect("asked for");
        assert!(kl.is_finite() && kl >= 0.0, "KL {kl}");
    }
    let expl: Vec<Vec<u32>> = rows.iter().map(|r| r.explanation_ids.clone()).collect();
    let scores = lens
        .score(&base.model, &ids, None, &positions, &expl)
        .unwrap();
    for (r, (mse, _)) in rows.iter().zip(scores) {
        assert!(
            (r.mse - mse).abs() <= 1e-5 * mse.max(1.0),
            "{} vs {mse}",
            r.mse
        );
    }
}
