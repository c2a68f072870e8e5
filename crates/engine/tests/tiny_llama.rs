//! A tiny random llama saved by Hugging Face transformers (tools/gen_tiny_llama.py): every
//! layer's residual stream, the final norm and the logits against transformers' own forward.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use lensd_engine::model::{KvCache, Logits, Model};
use lensd_engine::weights::gguf::GgufFile;
use lensd_engine::{Base, ComputeDtype, LoadOptions};

/// Agreement required with transformers in f32.
const TOL: f32 = 1e-4;

fn tiny_dir() -> std::path::PathBuf {
    common::testdata("tiny-llama")
}

fn golden() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(tiny_dir().join("golden.safetensors"), &Device::Cpu).unwrap()
}

fn input_ids(g: &HashMap<String, Tensor>, s: usize) -> Vec<u32> {
    g[&format!("input_ids.{s}")]
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec1::<u32>()
        .unwrap()
}

fn tiny(dtype: ComputeDtype) -> Base {
    Base::load(&tiny_dir(), LoadOptions { compute: dtype }).unwrap()
}

#[test]
fn every_layer_and_the_logits_match_transformers() {
    let base = tiny(ComputeDtype::F32);
    let g = golden();
    let l = base.config().n_layers;
    let taps: Vec<usize> = (0..=l).collect();
    for s in 0..3 {
        let ids = input_ids(&g, s);
        let out = base
            .model
            .forward(&[&ids], None, &taps, Logits::All)
            .unwrap();
        for i in 0..=l {
            let d = common::max_abs_diff(out.tap(i).unwrap(), &g[&format!("hidden.{s}.{i}")]);
            assert!(d < TOL, "sequence {s} layer {i}: max diff {d}");
        }
        let normed = base.model.final_norm(out.tap(l).unwrap()).unwrap();
        let d = common::max_abs_diff(&normed, &g[&format!("normed.{s}")]);
        assert!(d < TOL, "sequence {s} final norm: max diff {d}");
        let d = common::max_abs_diff(out.logits.as_ref().unwrap(), &g[&format!("logits.{s}")]);
        assert!(d < TOL, "sequence {s} logits: max diff {d}");
    }
}

#[test]
fn a_packed_batch_equals_each_sequence_alone() {
    let base = tiny(ComputeDtype::F32);
    let g = golden();
    let seqs: Vec<Vec<u32>> = (0..3).map(|s| input_ids(&g, s)).collect();
    let refs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
    let out = base.model.forward(&refs, None, &[1], Logits::All).unwrap();
    let logits = out.logits.as_ref().unwrap();
    for (s, seq) in seqs.iter().enumerate() {
        let o = out.offsets[s];
        let rows = logits.narrow(0, o, seq.len()).unwrap();
        let d = common::max_abs_diff(&rows, &g[&format!("logits.{s}")]);
        assert!(d < TOL, "sequence {s} in a batch: max diff {d}");
        let h = out.tap(1).unwrap().narrow(0, o, seq.len()).unwrap();
        let d = common::max_abs_diff(&h, &g[&format!("hidden.{s}.1")]);
        assert!(d < TOL, "sequence {s} layer 1 in a batch: max diff {d}");
    }
}

#[test]
fn decoding_with_the_cache_equals_the_full_forward() {
    let base = tiny(ComputeDtype::F32);
    let g = golden();
    let ids = input_ids(&g, 1);
    let want = &g["logits.1"];
    let mut cache = [KvCache::default()];
    // A prefix of three tokens, then one token at a time.
    let out = base
        .model
        .forward(&[&ids[..3]], Some(&mut cache), &[], Logits::All)
        .unwrap();
    let d = common::max_abs_diff(&out.logits.unwrap(), &want.narrow(0, 0, 3).unwrap());
    assert!(d < TOL, "prefix: {d}");
    for (pos, id) in ids.iter().enumerate().skip(3) {
        let out = base
            .model
            .forward(&[&[*id]], Some(&mut cache), &[], Logits::Last)
            .unwrap();
        let d = common::max_abs_diff(&out.logits.unwrap(), &want.narrow(0, pos, 1).unwrap());
        assert!(d < TOL, "position {pos}: {d}");
    }
    assert_eq!(cache[0].len(), ids.len());
}

/// A cache and a prefix of it share buffers until one grows: each continues with its own
/// tokens, in turns, and each still gives the full forward's logits of its own sequence.
#[test]
fn a_cache_and_its_prefix_continue_independently() {
    let base = tiny(ComputeDtype::F32);
    let g = golden();
    let (a, b) = (input_ids(&g, 1), input_ids(&g, 0));
    let layers = base.model.cfg.n_layers;
    let mut whole = [KvCache::default()];
    base.model
        .forward(&[&a[..4]], Some(&mut whole), &[], Logits::None)
        .unwrap();
    let mut prefix = [whole[0].prefix(2, 0..layers).unwrap()];
    // The prefix continues with the other sequence's tokens, the whole cache with its own.
    let mut seq_prefix = a[..2].to_vec();
    let mut seq_whole = a[..4].to_vec();
    for step in 0..4 {
        for (cache, seq, next) in [
            (&mut prefix, &mut seq_prefix, b[step]),
            (&mut whole, &mut seq_whole, a[4 + step]),
        ] {
            seq.push(next);
            let got = base
                .model
                .forward(&[&[next]], Some(cache), &[], Logits::Last)
                .unwrap()
                .logits
                .unwrap();
            let want = base
                .model
                .forward(&[seq.as_slice()], None, &[], Logits::Last)
                .unwrap()
                .logits
                .unwrap();
            let d = common::max_abs_diff(&got, &want);
            assert!(d < TOL, "step {step}, sequence {seq:?}: {d}");
        }
    }
    assert_eq!((prefix[0].len(), whole[0].len()), (6, 8));
}

/// Writes the tiny checkpoint again with its matrices in `dtype`.
fn convert_checkpoint(dir: &Path, dtype: DType) {
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(tiny_dir().join(f), dir.join(f)).unwrap();
    }
    let w =
        candle_core::safetensors::load(tiny_dir().join("model.safetensors"), &Device::Cpu).unwrap();
    let w: HashMap<String, Tensor> = w
        .into_iter()
        .map(|(k, v)| (k, v.to_dtype(dtype).unwrap()))
        .collect();
    candle_core::safetensors::save(&w, dir.join("model.safetensors")).unwrap();
}

#[test]
fn half_precision_checkpoints_compute_in_their_dtype_or_in_f32() {
    let g = golden();
    let ids = input_ids(&g, 0);
    for (dtype, tol) in [(DType::F16, 0.02), (DType::BF16, 0.15)] {
        let dir = tempfile::tempdir().unwrap();
        convert_checkpoint(dir.path(), dtype);
        for compute in [ComputeDtype::Stored, ComputeDtype::F32] {
            let base = Base::load(dir.path(), LoadOptions { compute }).unwrap();
            let out = base.model.forward(&[&ids], None, &[], Logits::All).unwrap();
            let d = common::max_abs_diff(&out.logits.unwrap(), &g["logits.0"]);
            assert!(
                d < tol,
                "{dtype:?} weights computing in {compute:?}: max diff {d}"
            );
            let stored_bytes = base.bytes().owned;
            if compute == ComputeDtype::Stored {
                let f32_base = tiny(ComputeDtype::F32);
                assert!(
                    stored_bytes < f32_base.bytes().owned * 6 / 10,
                    "{dtype:?} kept in half precision"
                );
            }
        }
    }
}

#[test]
fn the_same_model_as_gguf_with_interleaved_rope_gives_the_same_states() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    common::write_tiny_gguf(&path, |_, _| {});
    let g = GgufFile::read(&path, &mut |_, _| {}).unwrap();
    let cfg = g.config().unwrap();
    assert_eq!(cfg.rope_style, lensd_engine::RopeStyle::Interleaved);
    assert!(!cfg.tied_embeddings);
    let model = Model::new(
        cfg,
        g.load_weights(&g.config().unwrap(), ComputeDtype::Stored, &Device::Cpu)
            .unwrap(),
    );
    let gold = golden();
    let ids = input_ids(&gold, 1);
    let out = model.forward(&[&ids], None, &[2, 3], Logits::All).unwrap();
    for i in [2, 3] {
        let d = common::max_abs_diff(out.tap(i).unwrap(), &gold[&format!("hidden.1.{i}")]);
        assert!(d < TOL, "layer {i}: {d}");
    }
    let d = common::max_abs_diff(&out.logits.unwrap(), &gold["logits.1"]);
    assert!(d < TOL, "logits: {d}");
}

#[test]
fn tokenizer_json_gives_the_ids_of_the_python_tokenizers_package() {
    let base = tiny(ComputeDtype::Stored);
    let meta = common::json("tiny-llama/golden.json");
    for case in meta["tokenizer"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want = common::ids_of(&case["ids"]);
        assert_eq!(base.tokenizer.encode(text, true).unwrap(), want, "{text:?}");
        assert_eq!(base.tokenizer.decode(&want).unwrap(), text);
    }
}
