//! A tuned lens trained and saved by the tuned-lens package (tools/gen_tiny_tuned_lens.py) on
//! the tiny llama: its cells in lensd against the package's own numbers, and the logit lens.

mod common;
#[path = "common/lens_golden.rs"]
mod lens_golden;

use std::collections::HashMap;
use std::ops::ControlFlow;

use candle_core::{DType, Device, Tensor};
use lensd_core::Analysis;
use lensd_engine::lens::analyze::{analyze, AnalyzeOptions};
use lensd_engine::lens::{Lens, TunedLens};
use lensd_engine::{Base, ComputeDtype, EngineError, LoadOptions};

fn tiny() -> Base {
    Base::load(
        &common::testdata("tiny-llama"),
        LoadOptions {
            compute: ComputeDtype::F32,
        },
    )
    .unwrap()
}

fn golden() -> (HashMap<String, Tensor>, HashMap<String, Tensor>) {
    let dev = &Device::Cpu;
    (
        candle_core::safetensors::load(common::testdata("tiny-llama/golden.safetensors"), dev)
            .unwrap(),
        candle_core::safetensors::load(
            common::testdata("tiny-llama/tuned_lens_golden.safetensors"),
            dev,
        )
        .unwrap(),
    )
}

fn ids(g: &HashMap<String, Tensor>, s: usize) -> Vec<u32> {
    g[&format!("input_ids.{s}")]
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn run(base: &Base, lens: &Lens, ids: &[u32], layers: Vec<usize>) -> Analysis {
    let opts = AnalyzeOptions::new(layers, 5);
    analyze(
        base,
        &[lens],
        ids,
        &opts,
        &mut |_| ControlFlow::Continue(()),
    )
    .unwrap()
    .remove(0)
}

#[test]
fn a_lens_saved_by_the_tuned_lens_package_gives_its_numbers() {
    let base = tiny();
    let (g, want) = golden();
    let lens = Lens::open(
        common::testdata("tiny-llama/tuned-lens").to_str().unwrap(),
        base.config(),
    )
    .unwrap();
    for s in 0..3 {
        let a = run(&base, &lens, &ids(&g, s), vec![0, 1, 2]);
        lens_golden::check(&a, &want, "", s);
    }
}

#[test]
fn the_logit_lens_matches_the_package_at_every_layer() {
    let base = tiny();
    let (g, want) = golden();
    for s in 0..3 {
        let a = run(&base, &Lens::Logit, &ids(&g, s), vec![0, 1, 2, 3]);
        lens_golden::check(&a, &want, "logit_", s);
        // At the last layer every lens is the model itself.
        for c in &a.layers[3].positions {
            assert!(c.kl_to_final.abs() < 1e-5);
            assert_eq!(c.final_rank, 1);
        }
    }
}

#[test]
fn a_lens_written_as_safetensors_reads_back_identically() {
    let base = tiny();
    let (g, _) = golden();
    let src = common::testdata("tiny-llama/tuned-lens");
    let lens = TunedLens::load(&src, base.config()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    lens.save(dir.path()).unwrap();
    assert!(dir.path().join("params.safetensors").is_file());
    assert!(!dir.path().join("params.pt").exists());
    let again = Lens::open(dir.path().to_str().unwrap(), base.config()).unwrap();
    let ids = ids(&g, 1);
    let a = run(&base, &Lens::Tuned(lens), &ids, vec![0, 1, 2, 3]);
    let b = run(&base, &again, &ids, vec![0, 1, 2, 3]);
    assert_eq!(a.layers, b.layers);
}

#[test]
fn a_lens_for_another_base_is_refused_with_the_reason() {
    let base = tiny();
    let src = common::testdata("tiny-llama/tuned-lens");
    let mut cfg = base.config().clone();
    cfg.n_layers = 4;
    match TunedLens::load(&src, &cfg) {
        Err(EngineError::LensMismatch { msg, .. }) => assert!(
            msg.contains("num_hidden_layers is 3") && msg.contains("4 layers"),
            "{msg}"
        ),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a 3-layer lens loaded for a 4-layer base"),
    }
    let mut cfg = base.config().clone();
    cfg.d_model = 128;
    match TunedLens::load(&src, &cfg) {
        Err(EngineError::LensMismatch { msg, .. }) => assert!(
            msg.contains("d_model is 64") && msg.contains("128"),
            "{msg}"
        ),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a 64-wide lens loaded for a 128-wide base"),
    }
}

#[test]
fn translator_tensors_of_the_wrong_shape_are_named() {
    let base = tiny();
    let dir = tempfile::tempdir().unwrap();
    let src = common::testdata("tiny-llama/tuned-lens");
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    let mut map = HashMap::new();
    for i in 0..3 {
        let d = if i == 1 { 32 } else { 64 };
        map.insert(
            format!("{i}.weight"),
            Tensor::zeros((64, d), DType::F32, &Device::Cpu).unwrap(),
        );
        map.insert(
            format!("{i}.bias"),
            Tensor::zeros(64, DType::F32, &Device::Cpu).unwrap(),
        );
    }
    candle_core::safetensors::save(&map, dir.path().join("params.safetensors")).unwrap();
    let err = TunedLens::load(dir.path(), base.config())
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("`1.weight`") && err.contains("[64, 32]") && err.contains("[64, 64]"),
        "{err}"
    );
    map.remove("2.bias");
    candle_core::safetensors::save(&map, dir.path().join("params.safetensors")).unwrap();
    let err = TunedLens::load(dir.path(), base.config())
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("missing") || err.contains("`1.weight`"),
        "{err}"
    );
}

#[test]
fn streamed_chunks_reassemble_into_the_result_and_cancel_between_chunks() {
    let base = tiny();
    let (g, _) = golden();
    let ids = ids(&g, 1);
    let tuned = Lens::open(
        common::testdata("tiny-llama/tuned-lens").to_str().unwrap(),
        base.config(),
    )
    .unwrap();
    // 4 layers and 8 rows per chunk: chunks of 2 positions.
    let opts = AnalyzeOptions {
        rows_per_chunk: Some(8),
        ..AnalyzeOptions::new(vec![0, 1, 2, 3], 3)
    };
    let mut chunks = Vec::new();
    let mut seen = 0;
    let res = analyze(&base, &[&Lens::Logit, &tuned], &ids, &opts, &mut |p| {
        assert!(p.rows_done > seen && p.rows_done <= p.rows_total);
        seen = p.rows_done;
        chunks.push(p.chunk.clone());
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(
        chunks.len(),
        2 * ids.len() / 2,
        "12 positions in chunks of 2, for two lenses"
    );
    for (li, a) in res.iter().enumerate() {
        for (l, row) in a.layers.iter().enumerate() {
            let streamed: Vec<_> = chunks
                .iter()
                .filter(|c| c.lens == li)
                .flat_map(|c| c.layers[l].positions.clone())
                .collect();
            assert_eq!(streamed, row.positions, "lens {li} layer {}", row.layer);
        }
    }
    let mut calls = 0;
    let r = analyze(&base, &[&Lens::Logit], &ids, &opts, &mut |_| {
        calls += 1;
        if calls == 2 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    assert!(matches!(r, Err(EngineError::Cancelled)));
    assert_eq!(calls, 2, "nothing runs after the chunk that cancelled");
}
