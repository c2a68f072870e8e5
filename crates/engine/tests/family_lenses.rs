//! LoRA adapters and talkative lenses on every family's tiny model: an adapter applied at run
//! time computes what the checkpoint with the adapter merged into its weights computes, and a
//! talkative lens explains every position with finite scores (on gpt-oss too).

mod common;

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::Path;

use candle_core::{Device, Tensor};
use lensd_engine::generate::{generate, generate_with, SamplingParams};
use lensd_engine::lens::talkative::{
    write_untrained, ExplainOptions, TalkativeLens, UntrainedSpec,
};
use lensd_engine::lora::Adapter;
use lensd_engine::model::Logits;
use lensd_engine::{Base, ComputeDtype, LoadOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const FAMILIES: &[&str] = &["llama3", "qwen2", "qwen3", "gemma2", "gemma3"];

fn load(path: &Path) -> Base {
    Base::load(
        path,
        LoadOptions {
            compute: ComputeDtype::F32,
        },
    )
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The tiny family's f32 tensors, from its shards.
fn tensors(family: &str) -> HashMap<String, Tensor> {
    let dir = common::testdata(&format!("tiny-{family}"));
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let mut shards: Vec<&str> = index["weight_map"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_str().unwrap())
        .collect();
    shards.sort();
    shards.dedup();
    let mut all = HashMap::new();
    for shard in shards {
        all.extend(candle_core::safetensors::load(dir.join(shard), &Device::Cpu).unwrap());
    }
    all
}

/// A PEFT LoRA adapter on q_proj, v_proj and down_proj of every block, rank 2, alpha 4, with
/// seeded random A and B, written to `dir`; returns each adapted weight's `s·B·A`.
fn write_adapter(
    dir: &Path,
    weights: &HashMap<String, Tensor>,
    layers: usize,
) -> HashMap<String, Tensor> {
    let dev = &Device::Cpu;
    let (rank, alpha) = (2usize, 4.0);
    let config = serde_json::json!({"peft_type": "LORA", "r": rank, "lora_alpha": alpha,
        "target_modules": ["q_proj", "v_proj", "down_proj"], "bias": "none",
        "use_rslora": false, "use_dora": false, "fan_in_fan_out": false});
    std::fs::write(dir.join("adapter_config.json"), config.to_string()).unwrap();
    let mut rng = StdRng::seed_from_u64(layers as u64);
    let mut file = HashMap::new();
    let mut deltas = HashMap::new();
    for i in 0..layers {
        for (part, module) in [
            ("self_attn", "q_proj"),
            ("self_attn", "v_proj"),
            ("mlp", "down_proj"),
        ] {
            let name = format!("model.layers.{i}.{part}.{module}.weight");
            let (out, inp) = weights[&name].dims2().unwrap();
            let mut random = |shape: (usize, usize)| {
                let v: Vec<f32> = (0..shape.0 * shape.1)
                    .map(|_| 0.4 * (rng.random::<f32>() - 0.5))
                    .collect();
                Tensor::from_vec(v, shape, dev).unwrap()
            };
            let a = random((rank, inp));
            let b = random((out, rank));
            let prefix = format!("base_model.model.model.layers.{i}.{part}.{module}");
            deltas.insert(
                name,
                (b.matmul(&a).unwrap() * (alpha / rank as f64)).unwrap(),
            );
            file.insert(format!("{prefix}.lora_A.weight"), a);
            file.insert(format!("{prefix}.lora_B.weight"), b);
        }
    }
    candle_core::safetensors::save(&file, dir.join("adapter_model.safetensors")).unwrap();
    deltas
}

#[test]
fn an_adapter_at_run_time_computes_what_its_merged_checkpoint_computes() {
    let _lock = common::compute_lock();
    for family in FAMILIES {
        let src = common::testdata(&format!("tiny-{family}"));
        let base = load(&src);
        let weights = tensors(family);
        let tmp = tempfile::tempdir().unwrap();
        let adapter_dir = tmp.path().join("adapter");
        std::fs::create_dir_all(&adapter_dir).unwrap();
        let deltas = write_adapter(&adapter_dir, &weights, base.config().n_layers);
        let adapter = Adapter::load(&adapter_dir, base.config()).unwrap();
        // The merged checkpoint: W + s·B·A, everything else as it was.
        let merged_dir = tmp.path().join("merged");
        std::fs::create_dir_all(&merged_dir).unwrap();
        for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
            std::fs::copy(src.join(f), merged_dir.join(f)).unwrap();
        }
        let merged: HashMap<String, Tensor> = weights
            .into_iter()
            .map(|(n, w)| match deltas.get(&n) {
                Some(d) => {
                    let w = (&w + d).unwrap();
                    (n, w)
                }
                None => (n, w),
            })
            .collect();
        candle_core::safetensors::save(&merged, merged_dir.join("model.safetensors")).unwrap();
        let merged = load(&merged_dir);
        let ids: Vec<u32> = (3..17).collect();
        let with = base
            .model
            .forward_with(&[&ids], None, &[2], Logits::All, Some(&adapter))
            .unwrap();
        let want = merged
            .model
            .forward(&[&ids], None, &[2], Logits::All)
            .unwrap();
        let d = common::max_abs_diff(with.logits.as_ref().unwrap(), want.logits.as_ref().unwrap());
        assert!(d < 1e-4, "{family}: adapter vs merged logits differ by {d}");
        let plain = base.model.forward(&[&ids], None, &[], Logits::All).unwrap();
        let moved = common::max_abs_diff(
            plain.logits.as_ref().unwrap(),
            want.logits.as_ref().unwrap(),
        );
        assert!(
            moved > 1e-2,
            "{family}: the adapter changes nothing ({moved})"
        );
        // Generation from the adapted base is the merged model's.
        let params = SamplingParams {
            max_tokens: 6,
            ..Default::default()
        };
        let donor = lensd_engine::donor::Donor::Adapter(&adapter);
        let a = generate_with(&base, &ids, &params, Some(donor), &mut |_| {
            ControlFlow::Continue(())
        })
        .unwrap();
        let b = generate(&merged, &ids, &params, &mut |_| ControlFlow::Continue(())).unwrap();
        assert_eq!(a.ids, b.ids, "{family}");
    }
}

#[test]
fn a_talkative_lens_explains_every_position_on_every_family() {
    let _lock = common::compute_lock();
    // gpt-oss too (its experts as stored, MXFP4), though LoRA on its experts is refused.
    for family in FAMILIES.iter().chain(&["gptoss"]) {
        let base = load(&common::testdata(&format!("tiny-{family}")));
        let tmp = tempfile::tempdir().unwrap();
        let spec = UntrainedSpec {
            layer: 1,
            t_text: 4,
            patched_layers: 2,
            output_layer: 1,
            ..UntrainedSpec::default()
        };
        write_untrained(&base, family, tmp.path(), &spec).unwrap();
        let lens = TalkativeLens::load(tmp.path(), base.config()).unwrap();
        let ids: Vec<u32> = (5..12).collect();
        let positions: Vec<usize> = (0..ids.len()).collect();
        let opts = ExplainOptions {
            best_of_k: 2,
            temperature: 0.7,
            seed: 3,
            salience: true,
            kl: true,
            batch_positions: 4,
        };
        let rows = lens
            .explain(&base.model, &ids, &positions, None, 1, &opts, &mut |_| true)
            .unwrap();
        assert_eq!(rows.len(), ids.len(), "{family}");
        for r in &rows {
            assert_eq!(r.explanation_ids.len(), 4, "{family}");
            assert!(r.mse.is_finite() && r.mse > 0.0, "{family}: mse {}", r.mse);
            assert!(r.relative_rmse.is_finite(), "{family}");
            assert_eq!(r.token_salience.len(), 4, "{family}");
            let kl = r.kl_divergence.expect("asked for");
            assert!(kl.is_finite() && kl >= 0.0, "{family}: KL {kl}");
        }
        // The same seed explains the same way; the encoder alone scores those explanations
        // as the explanation did.
        let again = lens
            .explain(&base.model, &ids, &positions, None, 1, &opts, &mut |_| true)
            .unwrap();
        assert_eq!(rows, again, "{family}");
        let expl: Vec<Vec<u32>> = rows.iter().map(|r| r.explanation_ids.clone()).collect();
        let scores = lens
            .score(&base.model, &ids, None, &positions, &expl)
            .unwrap();
        for (r, (mse, _)) in rows.iter().zip(scores) {
            assert!(
                (r.mse - mse).abs() <= 1e-5 * mse.max(1.0),
                "{family}: {} vs {mse}",
                r.mse
            );
        }
    }
}
