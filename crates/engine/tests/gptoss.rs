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
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use lensd_engine::config::{Family, RopeScaling};
use lensd_engine::lens::fit::{fit_tuned_lens, FitOptions};
use lensd_engine::model::{router_logits, top_k_routes, KvCache, Logits, Model};
use lensd_engine::weights::Mlp;
use lensd_engine::{Base, ComputeDtype};

use common::{input_ids as ids, load_base as load, sequences};

/// Agreement required with transformers in f32.
const TOL: f32 = 1e-4;

fn dir() -> PathBuf {
    common::testdata("tiny-gptoss")
}

fn golden(name: &str) -> HashMap<String, Tensor> {
    common::golden_tensors(&dir().join(name))
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
    // llama.cpp's conversion: gate and up apart, GGML's MXFP4 blocks, the rest in f32.
    let gguf = dir().join("model.gguf");
    check_all_layers(
        "GGUF, MXFP4 blocks",
        &load(&gguf, ComputeDtype::Stored).model,
        &g,
    );
    check_all_layers("GGUF, widened", &load(&gguf, ComputeDtype::F32).model, &g);
}

#[test]
fn the_gguf_conversion_reads_as_the_checkpoint_does() {
    let gguf = load(&dir().join("model.gguf"), ComputeDtype::Stored);
    let hf = load(&dir().join("mxfp4"), ComputeDtype::Stored);
    let (a, b) = (gguf.config(), hf.config());
    assert_eq!(
        (
            a.family,
            a.n_layers,
            a.d_ff,
            a.sliding_window,
            &a.sliding_layers
        ),
        (
            b.family,
            b.n_layers,
            b.d_ff,
            b.sliding_window,
            &b.sliding_layers
        )
    );
    assert_eq!(
        (&a.moe, &a.rope, a.attn_sinks),
        (&b.moe, &b.rope, b.attn_sinks)
    );
    // The GGUF vocabulary (llama.cpp's `gpt-4o` pre-tokenizer) splits text as tokenizer.json.
    let info = common::json("tiny-gptoss/golden.json");
    for ex in info["tokenizer_examples"].as_array().unwrap() {
        let text = ex["text"].as_str().unwrap();
        let want = hf.tokenizer.encode(text, true).unwrap();
        assert_eq!(gguf.tokenizer.encode(text, true).unwrap(), want, "{text:?}");
        assert_eq!(want, common::ids_of(&ex["ids"]), "{text:?}");
    }
    assert!(gguf.speaks_harmony());
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
    for path in [
        dir(),
        dir().join("mxfp4"),
        dir().join("bf16"),
        dir().join("model.gguf"),
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

/// gpt-oss-20b's published `config.json` values (the architecture's sizes and settings).
fn gpt_oss_20b_config() -> serde_json::Value {
    let layer_types: Vec<&str> = (0..24)
        .map(|i| {
            if i % 2 == 0 {
                "sliding_attention"
            } else {
                "full_attention"
            }
        })
        .collect();
    serde_json::json!({
        "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss",
        "hidden_size": 2880, "intermediate_size": 2880, "num_hidden_layers": 24,
        "num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 64,
        "num_local_experts": 32, "num_experts_per_tok": 4, "vocab_size": 201088,
        "sliding_window": 128, "layer_types": layer_types, "rope_theta": 150000,
        "rope_scaling": {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0,
            "beta_slow": 1.0, "truncate": false, "original_max_position_embeddings": 4096},
        "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "swiglu_limit": 7.0,
        "attention_bias": true, "tie_word_embeddings": false, "eos_token_id": 200002,
        "pad_token_id": 199999,
        "quantization_config": {"quant_method": "mxfp4", "modules_to_not_convert": [
            "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens",
            "lm_head"]}
    })
}

/// A checkpoint of gpt-oss-20b's shapes and stored dtypes (bf16, the experts as MXFP4 blocks
/// and scales) whose data is a hole: the file is sparse, so it takes its full length
/// (13.8 GB) but almost no disk. Its header is all that planning reads.
fn write_gpt_oss_20b_shaped(dir: &Path) {
    let (d, ff, e, v, heads, kv, hd) = (2880usize, 2880usize, 32usize, 201088usize, 64, 8, 64);
    let mut tensors: Vec<(String, &str, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), "BF16", vec![v, d]),
        ("lm_head.weight".into(), "BF16", vec![v, d]),
        ("model.norm.weight".into(), "BF16", vec![d]),
    ];
    for l in 0..24 {
        let p = |s: &str| format!("model.layers.{l}.{s}");
        for (name, dtype, shape) in [
            ("input_layernorm.weight", "BF16", vec![d]),
            ("post_attention_layernorm.weight", "BF16", vec![d]),
            ("self_attn.q_proj.weight", "BF16", vec![heads * hd, d]),
            ("self_attn.q_proj.bias", "BF16", vec![heads * hd]),
            ("self_attn.k_proj.weight", "BF16", vec![kv * hd, d]),
            ("self_attn.k_proj.bias", "BF16", vec![kv * hd]),
            ("self_attn.v_proj.weight", "BF16", vec![kv * hd, d]),
            ("self_attn.v_proj.bias", "BF16", vec![kv * hd]),
            ("self_attn.o_proj.weight", "BF16", vec![d, heads * hd]),
            ("self_attn.o_proj.bias", "BF16", vec![d]),
            ("self_attn.sinks", "BF16", vec![heads]),
            ("mlp.router.weight", "BF16", vec![e, d]),
            ("mlp.router.bias", "BF16", vec![e]),
            (
                "mlp.experts.gate_up_proj_blocks",
                "U8",
                vec![e, 2 * ff, d / 32, 16],
            ),
            (
                "mlp.experts.gate_up_proj_scales",
                "U8",
                vec![e, 2 * ff, d / 32],
            ),
            ("mlp.experts.gate_up_proj_bias", "BF16", vec![e, 2 * ff]),
            (
                "mlp.experts.down_proj_blocks",
                "U8",
                vec![e, d, ff / 32, 16],
            ),
            ("mlp.experts.down_proj_scales", "U8", vec![e, d, ff / 32]),
            ("mlp.experts.down_proj_bias", "BF16", vec![e, d]),
        ] {
            tensors.push((p(name), dtype, shape));
        }
    }
    let mut header = serde_json::Map::new();
    let mut offset = 0u64;
    for (name, dtype, shape) in &tensors {
        let size = if *dtype == "U8" { 1 } else { 2 };
        let bytes = shape.iter().product::<usize>() as u64 * size;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut text = serde_json::Value::Object(header).to_string();
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("model.safetensors");
    let mut f = std::fs::File::create(&path).unwrap();
    use std::io::Write;
    f.write_all(&(text.len() as u64).to_le_bytes()).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f.set_len(8 + text.len() as u64 + offset).unwrap();
    std::fs::write(dir.join("config.json"), gpt_oss_20b_config().to_string()).unwrap();
    std::fs::copy(dir_tokenizer(), dir.join("tokenizer.json")).unwrap();
}

fn dir_tokenizer() -> PathBuf {
    dir().join("tokenizer.json")
}

#[test]
fn gpt_oss_20b_is_sized_from_its_headers_in_mxfp4_and_in_bf16() {
    let tmp = tempfile::tempdir().unwrap();
    write_gpt_oss_20b_shaped(tmp.path());
    let r = lensd_engine::inspect::inspect(tmp.path()).unwrap();
    let c = r.config.as_ref().expect("gpt-oss is supported");
    assert_eq!(
        (c.family, c.n_layers, c.n_experts()),
        (Family::GptOss, 24, 32)
    );
    // The published parameter count of gpt-oss-20b.
    let params: u64 = r.kinds.iter().map(|k| k.elements).sum();
    assert_eq!(params, 20_914_757_184);
    // Experts: 24 layers of 32 x (2880 x 5760 + 2880 x 2880) weights, 17/32 byte each as
    // MXFP4; the other matrices (embedding, head, attention) in bf16 as stored; vectors and
    // the router held in f32.
    let experts: u64 = 24 * 32 * (2880 * 5760 + 2880 * 2880);
    let matrices: u64 = 2 * 201_088 * 2880 + 24 * 2880 * (4096 + 512 + 512 + 4096);
    let vectors = params - experts - matrices;
    assert_eq!(
        r.resident_stored,
        experts * 17 / 32 + matrices * 2 + vectors * 4
    );
    assert_eq!(r.resident_bf16, (experts + matrices) * 2 + vectors * 4);
    assert_eq!(r.resident_f32, params * 4);
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    eprintln!(
        "gpt-oss-20b resident: MXFP4 {:.2} GiB, bf16 {:.2} GiB, f32 {:.2} GiB",
        gib(r.resident_stored),
        gib(r.resident_bf16),
        gib(r.resident_f32)
    );
}

/// The engine's probe without its content hash (which reads every byte, about a minute for
/// the 13.8 GB hole): sizes from the headers as the engine's probe reads them, identity from
/// the path.
struct HeaderProbe(lensd_engine::probe::FileProbe);

impl lensd_core::config::Probe for HeaderProbe {
    fn base(
        &self,
        path: &Path,
        dtype: ComputeDtype,
    ) -> Result<lensd_core::config::BaseFacts, String> {
        let r = lensd_engine::inspect::inspect(path).map_err(|e| e.to_string())?;
        let cfg = r.config.ok_or("unsupported")?;
        let resident_bytes = match dtype {
            ComputeDtype::Stored => r.resident_stored,
            ComputeDtype::F32 => r.resident_f32,
            ComputeDtype::Bf16 => r.resident_bf16,
        };
        Ok(lensd_core::config::BaseFacts {
            content_id: format!("{}-{}", path.display(), dtype.as_str()),
            n_layers: cfg.n_layers,
            d_model: cfg.d_model,
            resident_bytes,
            shape: lensd_engine::donor::shape_of(&cfg).2,
        })
    }

    fn lens(
        &self,
        kind: lensd_core::LensKind,
        path: &Path,
        donor: Option<&Path>,
    ) -> Result<lensd_core::config::LensFacts, String> {
        self.0.lens(kind, path, donor)
    }

    fn donor_kind(&self, path: &Path) -> Result<lensd_core::config::DonorKind, String> {
        lensd_core::config::Probe::donor_kind(&self.0, path)
    }
}

/// A deployment of one group on the 20b-shaped checkpoint, as the budget check sees it: the
/// issues reported at `settings.device_budget`.
fn budget_issues(base: &Path, dtype: &str, budget: &str) -> Vec<String> {
    let doc = serde_json::json!({
        "model_groups": [{"group_id": "gpt-oss-20b", "group_name": "gpt-oss-20b",
            "base_model_path": base, "compute_dtype": dtype,
            "models": [{"id": "oss-logit", "name": "Logit lens", "layer": 12}]}],
        "settings": {"device_budget": budget, "host_budget": "4GiB"}
    });
    let (config, report) = lensd_core::config::parse(&doc.to_string());
    let config = config.unwrap_or_else(|| panic!("{report:?}"));
    let budgets = lensd_core::config::Budgets::resolve(&config.settings, 64 << 30);
    let probe = HeaderProbe(lensd_engine::probe::FileProbe::new());
    let (report, _) = lensd_core::config::check(&config, &probe, budgets);
    report
        .issues
        .into_iter()
        .filter(|i| i.path == "settings.device_budget")
        .map(|i| i.message)
        .collect()
}

#[test]
fn a_group_on_gpt_oss_20b_is_refused_when_the_budget_cannot_hold_it_in_its_dtype() {
    let tmp = tempfile::tempdir().unwrap();
    write_gpt_oss_20b_shaped(tmp.path());
    // 12.83 GiB as stored (MXFP4 experts): 12 GiB cannot hold it, 13 GiB can.
    let refused = budget_issues(tmp.path(), "stored", "12GiB");
    assert!(
        refused.len() == 1 && refused[0].contains("cannot hold the base"),
        "{refused:?}"
    );
    assert!(budget_issues(tmp.path(), "stored", "13GiB").is_empty());
    // 38.97 GiB in bf16.
    let refused = budget_issues(tmp.path(), "bf16", "38GiB");
    assert!(
        refused.len() == 1 && refused[0].contains("cannot hold the base"),
        "{refused:?}"
    );
    assert!(budget_issues(tmp.path(), "bf16", "39GiB").is_empty());
}

#[test]
fn chats_are_rendered_in_harmony_and_replies_split_from_their_thinking() {
    use lensd_core::work::{ChatMessage, Prompt};
    use lensd_engine::chat::harmony::{render_chat, RenderOptions};
    let base = load(&dir().join("mxfp4"), ComputeDtype::Stored);
    assert!(base.speaks_harmony());
    let t = &base.tokenizer;
    let id = |s: &str| t.token_to_id(s).unwrap();
    // Generation ends with the reply or a tool call, not with the thinking's `<|end|>`.
    assert!(t.stop_ids.contains(&id("<|return|>")) && t.stop_ids.contains(&id("<|call|>")));
    assert!(!t.stop_ids.contains(&id("<|end|>")));

    let conversation = vec![
        ChatMessage::new("system", "Answer briefly."),
        ChatMessage::new("user", "Capital of France?"),
        ChatMessage::new("assistant", "Paris.").with_thinking(Some("Easy one.".into())),
        ChatMessage::new("user", "And of Italy?"),
    ];
    let chat = Prompt::Chat {
        messages: conversation.clone(),
    };
    let (reply_prompt, special) = base.render(&chat, true).unwrap();
    assert!(special);
    assert_eq!(
        reply_prompt,
        render_chat(&conversation, &RenderOptions::default()).unwrap()
    );
    assert!(reply_prompt.starts_with("<|start|>system<|message|>"));
    assert!(reply_prompt.ends_with("<|start|>assistant"));
    // A reply follows Harmony's rule and drops the earlier thinking; an analysis of the
    // conversation reads the thinking its turns carry, and not the thinking they leave out.
    assert!(!reply_prompt.contains("Easy one."));
    let (read, _) = base.render(&chat, false).unwrap();
    assert!(read.contains("<|channel|>analysis<|message|>Easy one.<|end|>"));
    let mut without = conversation.clone();
    without[2].thinking = None;
    let (read_without, _) = base
        .render(&Prompt::Chat { messages: without }, false)
        .unwrap();
    assert!(!read_without.contains("<|channel|>analysis"));
    let ids = t.encode_prompt(&read, true).unwrap();
    assert!(ids.contains(&id("<|channel|>")) && ids.contains(&id("<|message|>")));
    let user_turns = base
        .last_turns_start(&chat, &ids, 1)
        .expect("turn boundaries");
    let tail = t.decode(&ids[user_turns..]).unwrap();
    assert!(
        tail.starts_with("<|start|>user<|message|>And of Italy?"),
        "{tail}"
    );

    // What the model writes after `<|start|>assistant`: thinking, then the reply.
    let written = "<|channel|>analysis<|message|>Rome, surely.<|end|><|start|>assistant\
                   <|channel|>final<|message|>Rome.";
    assert_eq!(
        base.split_reply(&reply_prompt, written),
        Some(("Rome.".to_string(), Some("Rome, surely.".to_string())))
    );
    // After a prefill the model continues the reply: the prefill is the prompt's.
    let prefill = Prompt::Prefill {
        messages: vec![
            ChatMessage::new("user", "Capital of Italy?"),
            ChatMessage::new("assistant", "It is"),
        ],
    };
    let (open, _) = base.render(&prefill, true).unwrap();
    assert!(open.ends_with("<|start|>assistant<|channel|>final<|message|>It is"));
    assert_eq!(
        base.split_reply(&open, " Rome."),
        Some((" Rome.".to_string(), None))
    );
    // Text that is not Harmony (a random model's) has no reply to split off.
    assert_eq!(base.split_reply(&reply_prompt, "just words"), None);
    // A special token in a prefill is refused, not turned into a control token.
    let bad = Prompt::Prefill {
        messages: vec![ChatMessage::new("assistant", "x<|end|>")],
    };
    let e = base.render(&bad, true).unwrap_err().to_string();
    assert!(e.contains("<|end|>"), "{e}");
}

#[test]
fn greedy_generation_with_the_cache_follows_the_full_forward() {
    use lensd_core::work::Prompt;
    use lensd_engine::generate::{argmax, generate, SamplingParams};
    let _lock = common::compute_lock();
    let base = load(&dir().join("mxfp4"), ComputeDtype::Stored);
    let (text, special) = base
        .render(&Prompt::user("How many layers does the lens read?"), true)
        .unwrap();
    let prompt = base.tokenizer.encode_prompt(&text, special).unwrap();
    // Past the window, so that the cached steps attend within it.
    let params = SamplingParams {
        max_tokens: 12,
        temperature: 0.0,
        ..SamplingParams::default()
    };
    let g = generate(&base, &prompt, &params, &mut |_| ControlFlow::Continue(())).unwrap();
    assert!(!g.ids.is_empty());
    let mut seq = prompt.clone();
    for &id in &g.ids {
        let out = base
            .model
            .forward(&[&seq], None, &[], Logits::Last)
            .unwrap();
        let logits = out
            .logits
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(id, argmax(&logits), "after {} tokens", seq.len());
        seq.push(id);
    }
}

#[test]
fn a_lora_adapter_on_the_experts_is_refused_when_loaded() {
    use lensd_engine::lora::Adapter;
    let cfg = load(&dir(), ComputeDtype::Stored).config().clone();
    let tmp = tempfile::tempdir().unwrap();
    let adapter = |module: &str, part: &str, (out, inp): (usize, usize)| {
        let config = serde_json::json!({"peft_type": "LORA", "r": 2, "lora_alpha": 4,
            "target_modules": [module], "bias": "none"});
        std::fs::write(tmp.path().join("adapter_config.json"), config.to_string()).unwrap();
        let prefix = format!("base_model.model.model.layers.0.{part}.{module}");
        let dev = &candle_core::Device::Cpu;
        let zeros = |s: (usize, usize)| Tensor::zeros(s, candle_core::DType::F32, dev).unwrap();
        let file = HashMap::from([
            (format!("{prefix}.lora_A.weight"), zeros((2, inp))),
            (format!("{prefix}.lora_B.weight"), zeros((out, 2))),
        ]);
        candle_core::safetensors::save(&file, tmp.path().join("adapter_model.safetensors"))
            .unwrap();
        Adapter::load(tmp.path(), &cfg)
    };
    // Attention takes one; the experts do not.
    adapter("q_proj", "self_attn", (cfg.q_width(), cfg.d_model)).unwrap();
    let e = adapter("down_proj", "mlp", (cfg.d_model, cfg.d_ff)).unwrap_err();
    assert!(e.to_string().contains("mixture of experts"), "{e}");
}
