//! Broken, truncated and unsupported weights: each load fails with an error that names the
//! file and what is wrong, and none panics.

mod common;

use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::{DType, Device, Tensor};
use lensd_engine::model::{Logits, Model};
use lensd_engine::weights::gguf::GgufFile;
use lensd_engine::{Base, EngineError, LoadOptions};
use rand::{Rng, SeedableRng};

fn load_err(path: &Path) -> EngineError {
    match Base::load(path, LoadOptions::default()) {
        Err(e) => e,
        Ok(_) => panic!("{} loaded", path.display()),
    }
}

fn assert_names(e: &EngineError, path: &Path, needles: &[&str]) {
    let msg = e.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "error does not name the file: {msg}"
    );
    for n in needles {
        assert!(msg.contains(n), "error lacks `{n}`: {msg}");
    }
}

#[test]
fn a_missing_file_is_named() {
    let p = Path::new("/nonexistent/model.gguf");
    let e = load_err(p);
    assert!(matches!(e, EngineError::Io { .. }));
    assert_names(&e, p, &["No such file"]);
}

#[test]
fn a_file_of_another_kind_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("notes.txt");
    std::fs::write(&p, "not weights").unwrap();
    assert_names(&load_err(&p), &p, &["neither a GGUF file"]);
}

#[test]
fn a_gguf_cut_short_in_its_tensor_data_is_reported_as_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tiny.gguf");
    common::write_tiny_gguf(&p, |_, _| {});
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 1000]).unwrap();
    let e = GgufFile::open(&p).expect_err("refused");
    assert_names(&e, &p, &["truncated", "needs bytes"]);
}

#[test]
fn a_gguf_cut_short_in_its_header_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tiny.gguf");
    common::write_tiny_gguf(&p, |_, _| {});
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..200]).unwrap();
    assert_names(&load_err(&p), &p, &["header is corrupt or truncated"]);
}

#[test]
fn random_corruption_of_the_header_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tiny.gguf");
    common::write_tiny_gguf(&p, |_, _| {});
    let good = std::fs::read(&p).unwrap();
    let header_len = GgufFile::open(&p).unwrap().tensor_data_offset() as usize;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let bad = dir.path().join("bad.gguf");
    let mut refused = 0;
    for _ in 0..300 {
        let mut b = good.clone();
        for _ in 0..rng.random_range(1..4) {
            let at = rng.random_range(4..header_len);
            b[at] = rng.random();
        }
        std::fs::write(&bad, &b).unwrap();
        // Either it still runs (the byte did not matter) or it fails with an error.
        let run = GgufFile::read(&bad, &mut |_, _| {}).and_then(|g| {
            let cfg = g.config()?;
            let model = Model::new(
                cfg.clone(),
                g.load_weights(&cfg, Default::default(), &Device::Cpu)?,
            );
            model
                .forward(&[&[1, 2, 3]], None, &[0], Logits::All)
                .map(|_| ())
        });
        if run.is_err() {
            refused += 1;
        }
    }
    assert!(refused > 0, "some corruptions must be detected");
}

#[test]
fn an_unsupported_architecture_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("gpt2.gguf");
    common::write_tiny_gguf(&p, |meta, _| {
        meta[0].1 = Value::String("gpt2".into());
    });
    let e = GgufFile::open(&p).unwrap().config().expect_err("refused");
    assert!(matches!(e, EngineError::Unsupported { .. }));
    assert_names(&e, &p, &["architecture `gpt2`", "llama"]);
}

#[test]
fn a_tensor_of_the_wrong_shape_is_named_with_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("shape.gguf");
    common::write_tiny_gguf(&p, |_, tensors| {
        let t = tensors
            .iter_mut()
            .find(|(n, _)| n == "blk.1.attn_k.weight")
            .unwrap();
        t.1 = Tensor::zeros((64, 64), DType::F32, &Device::Cpu).unwrap();
    });
    let g = GgufFile::read(&p, &mut |_, _| {}).unwrap();
    let e = g
        .load_weights(&g.config().unwrap(), Default::default(), &Device::Cpu)
        .expect_err("refused");
    assert!(matches!(e, EngineError::Shape { .. }));
    assert_names(&e, &p, &["blk.1.attn_k.weight", "[64, 64]", "[32, 64]"]);
}

#[test]
fn a_missing_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("missing.gguf");
    common::write_tiny_gguf(&p, |_, tensors| {
        tensors.retain(|(n, _)| n != "blk.2.ffn_up.weight")
    });
    let g = GgufFile::read(&p, &mut |_, _| {}).unwrap();
    let e = g
        .load_weights(&g.config().unwrap(), Default::default(), &Device::Cpu)
        .expect_err("refused");
    assert_names(&e, &p, &["blk.2.ffn_up.weight", "missing"]);
}

#[test]
fn a_gguf_without_a_tokenizer_cannot_serve_text() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("notok.gguf");
    common::write_tiny_gguf(&p, |_, _| {});
    assert_names(&load_err(&p), &p, &["tokenizer.ggml.model", "missing"]);
}

#[test]
fn inconsistent_head_counts_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("heads.gguf");
    common::write_tiny_gguf(&p, |meta, _| {
        let kv = meta
            .iter_mut()
            .find(|(k, _)| k == "llama.attention.head_count_kv")
            .unwrap();
        kv.1 = Value::U32(3);
    });
    let e = GgufFile::open(&p).unwrap().config().expect_err("refused");
    assert_names(&e, &p, &["head count 4", "3"]);
}

fn hf_copy(dir: &Path) {
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(common::testdata("tiny-llama").join(f), dir.join(f)).unwrap();
    }
}

#[test]
fn safetensors_checkpoints_report_each_problem() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    hf_copy(d);
    Base::load(d, LoadOptions::default()).expect("the intact copy loads");

    std::fs::remove_file(d.join("config.json")).unwrap();
    assert_names(&load_err(d), &d.join("config.json"), &["No such file"]);

    std::fs::write(d.join("config.json"), "{ not json").unwrap();
    assert_names(
        &load_err(d),
        &d.join("config.json"),
        &["invalid config.json"],
    );

    let cfg = std::fs::read_to_string(common::testdata("tiny-llama/config.json")).unwrap();
    std::fs::write(
        d.join("config.json"),
        cfg.replace("LlamaForCausalLM", "GPT2LMHeadModel")
            .replace("\"llama\"", "\"gpt2\""),
    )
    .unwrap();
    assert_names(
        &load_err(d),
        &d.join("config.json"),
        &["unsupported", "GPT2LMHeadModel"],
    );

    std::fs::write(
        d.join("config.json"),
        cfg.replace("\"intermediate_size\": 128", "\"intermediate_size\": 96"),
    )
    .unwrap();
    assert_names(
        &load_err(d),
        d,
        &["mlp.gate_proj.weight", "[96, 64]", "[128, 64]"],
    );

    std::fs::write(d.join("config.json"), &cfg).unwrap();
    let st = d.join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() / 2]).unwrap();
    assert_names(&load_err(d), &st, &["invalid safetensors"]);

    std::fs::remove_file(&st).unwrap();
    assert_names(&load_err(d), d, &["no model.safetensors"]);
}
