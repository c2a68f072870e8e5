//! The demo base (SmolLM2-135M-Instruct, Q4_1 GGUF): lens analysis, the fitted tuned lens
//! against the logit lens, both compute dtypes against each other, and generation controls.

mod common;

use std::ops::ControlFlow;

use lensd_engine::generate::{argmax, generate, SamplingParams, StopReason};
use lensd_engine::lens::analyze::{analyze, AnalyzeOptions};
use lensd_engine::lens::fit::{fit_tuned_lens, FitOptions};
use lensd_engine::lens::Lens;
use lensd_engine::model::Logits;
use lensd_engine::{ComputeDtype, EngineError};

fn corpus() -> String {
    let p = common::root().join("data/demo-corpus.txt");
    std::fs::read_to_string(&p).unwrap_or_else(|_| {
        panic!(
            "{} is missing: run scripts/prepare-demo-corpus.sh first",
            p.display()
        )
    })
}

#[test]
fn a_fitted_tuned_lens_beats_the_logit_lens_at_every_layer() {
    let _lock = common::compute_lock();
    let base = common::demo(ComputeDtype::F32);
    let ids = base.tokenizer.encode(&corpus(), false).unwrap();
    let opts = FitOptions {
        max_train_tokens: 8_192,
        holdout_tokens: 1_024,
        ..FitOptions::default()
    };
    let (lens, report) = fit_tuned_lens(base, &ids, &opts, "demo", &mut |_, _, _| {}).unwrap();
    assert_eq!(report.layers.len(), 30);
    assert_eq!(report.holdout_tokens, 1_024);
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
    eprintln!("held-out mean KL: logit {logit:.2} nats, tuned {tuned:.2} nats");
    assert!(tuned < logit / 2.0, "mean KL {tuned:.2} vs {logit:.2}");
    // The lens survives a round trip through its files.
    let dir = tempfile::tempdir().unwrap();
    lens.save(dir.path()).unwrap();
    Lens::open(dir.path().to_str().unwrap(), base.config()).unwrap();
}

#[test]
fn analysis_reads_every_layer_and_ends_at_the_models_prediction() {
    let _lock = common::compute_lock();
    let base = common::demo(ComputeDtype::F32);
    let ids = base
        .tokenizer
        .encode("The capital of France is", false)
        .unwrap();
    let opts = AnalyzeOptions::new((0..=30).collect(), 5);
    let mut calls = 0;
    let a = analyze(base, &[&Lens::Logit], &ids, &opts, &mut |p| {
        calls += 1;
        assert!(p.rows_done <= p.rows_total);
        ControlFlow::Continue(())
    })
    .unwrap()
    .remove(0);
    assert!(calls >= 1);
    assert_eq!(a.layers.len(), 31);
    assert_eq!(a.tokens.len(), ids.len());
    let last = &a.layers[30].positions[ids.len() - 1];
    assert_eq!(last.top[0].token, " Paris");
    assert!(last.kl_to_final.abs() < 1e-4 && last.final_rank == 1);
    assert_eq!(last.next_token_ce, None);
    let out = base
        .model
        .forward(&[&ids], None, &[], Logits::Last)
        .unwrap();
    let row = out
        .logits
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(last.top[0].id, argmax(&row));
    for row in &a.layers {
        for c in &row.positions {
            let p: f32 = c.top.iter().map(|t| t.prob).sum();
            assert!(p <= 1.0 + 1e-4 && c.entropy >= 0.0 && c.kl_to_final >= 0.0);
            assert!(c.top.windows(2).all(|w| w[0].prob >= w[1].prob));
        }
    }
    // Layers in any order, the final one among them, give each layer's cells as before (the
    // final layer's are read from the model's own logits).
    let some = AnalyzeOptions::new(vec![30, 2, 17], 5);
    let b = analyze(base, &[&Lens::Logit], &ids, &some, &mut |_| {
        ControlFlow::Continue(())
    })
    .unwrap()
    .remove(0);
    let layers: Vec<usize> = b.layers.iter().map(|r| r.layer).collect();
    assert_eq!(layers, [30, 2, 17]);
    for row in &b.layers {
        assert_eq!(
            row.positions, a.layers[row.layer].positions,
            "layer {}",
            row.layer
        );
    }
    // Cancelling from the progress callback stops the analysis.
    let r = analyze(base, &[&Lens::Logit], &ids, &opts, &mut |_| {
        ControlFlow::Break(())
    });
    assert!(matches!(r, Err(EngineError::Cancelled)));
}

/// The stored dtype quantizes every matrix product's activations to 8 bits; where f32's top two
/// logits are 0.5 apart or more, the two dtypes must agree (at 0.3, one position of the golden,
/// with a margin of 0.41, flips with a 1-ulp change in how activations are scaled).
#[test]
fn quantized_and_f32_compute_agree_on_clear_predictions() {
    let _lock = common::compute_lock();
    let golden = common::json("logits_golden.json");
    let (q, f) = (
        common::demo(ComputeDtype::Stored),
        common::demo(ComputeDtype::F32),
    );
    let (mut clear, mut same, mut all_same, mut all) = (0, 0, 0, 0);
    for prompt in golden["prompts"].as_array().unwrap() {
        let ids = common::ids_of(&prompt["ids"]);
        let lq = q
            .model
            .forward(&[&ids], None, &[], Logits::All)
            .unwrap()
            .logits
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let lf = f
            .model
            .forward(&[&ids], None, &[], Logits::All)
            .unwrap()
            .logits
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for (rq, rf) in lq.iter().zip(&lf) {
            let top = argmax(rf) as usize;
            let second = rf
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != top)
                .map(|(_, x)| *x)
                .fold(f32::MIN, f32::max);
            let equal = argmax(rq) as usize == top;
            all += 1;
            all_same += equal as usize;
            if rf[top] - second >= 0.5 {
                clear += 1;
                same += equal as usize;
            }
        }
    }
    eprintln!(
        "stored vs f32 argmax: {all_same}/{all} positions, {same}/{clear} with margin >= 0.5"
    );
    assert_eq!(same, clear, "the dtypes disagree where f32 is decisive");
}

#[test]
fn generation_follows_its_parameters() {
    let _lock = common::compute_lock();
    let base = common::demo(ComputeDtype::F32);
    let prompt = base
        .tokenizer
        .encode_prompt(
            &base.chat_prompt("What is the capital of France?").unwrap(),
            true,
        )
        .unwrap();
    let go = |p: &SamplingParams| {
        generate(base, &prompt, p, &mut |_| ControlFlow::Continue(())).unwrap()
    };

    let greedy = go(&SamplingParams {
        max_tokens: 20,
        ..Default::default()
    });
    assert_eq!(greedy.text, "The capital of France is Paris.");
    assert_eq!(greedy.stop, StopReason::Stop);
    assert_eq!(
        *greedy.ids.last().unwrap(),
        2,
        "the end-of-turn token is kept in the ids"
    );

    let sampled = SamplingParams {
        max_tokens: 12,
        temperature: 1.0,
        top_p: Some(0.95),
        seed: 11,
        ..Default::default()
    };
    let a = go(&sampled);
    assert_eq!(
        a.ids,
        go(&sampled).ids,
        "the same seed gives the same tokens"
    );
    let others: Vec<Vec<u32>> = (12..16)
        .map(|seed| {
            go(&SamplingParams {
                seed,
                ..sampled.clone()
            })
            .ids
        })
        .collect();
    assert!(
        others.iter().any(|o| *o != a.ids),
        "other seeds change the sample"
    );

    let top1 = go(&SamplingParams {
        max_tokens: 20,
        temperature: 0.8,
        top_k: Some(1),
        seed: 3,
        ..Default::default()
    });
    assert_eq!(top1.ids, greedy.ids, "top-k 1 is greedy");

    let short = go(&SamplingParams {
        max_tokens: 3,
        ..Default::default()
    });
    assert_eq!((short.ids.len(), short.stop), (3, StopReason::MaxTokens));

    let mut seen = 0;
    let cancelled = generate(
        base,
        &prompt,
        &SamplingParams {
            max_tokens: 20,
            ..Default::default()
        },
        &mut |_| {
            seen += 1;
            if seen == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        },
    )
    .unwrap();
    assert_eq!(
        (cancelled.ids.len(), cancelled.stop),
        (2, StopReason::Cancelled)
    );

    for bad in [
        SamplingParams {
            max_tokens: 0,
            ..Default::default()
        },
        SamplingParams {
            temperature: -1.0,
            ..Default::default()
        },
        SamplingParams {
            top_p: Some(1.5),
            ..Default::default()
        },
        SamplingParams {
            top_k: Some(0),
            ..Default::default()
        },
    ] {
        let e =
            generate(base, &prompt, &bad, &mut |_| ControlFlow::Continue(())).expect_err("refused");
        assert!(matches!(e, EngineError::Input(_)), "{e}");
    }
}
