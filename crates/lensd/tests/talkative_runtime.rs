//! A talkative lens through the CPU engine the server runs: loaded with its donor as one lens
//! resource, analysed beside the logit lens in one job, its explanations streamed as rows and
//! equal to the reference's greedy ones (testdata/talkative, tools/talkative_reference.py).

mod common;

use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};

use lensd::runtime::LocalEngine;
use lensd_core::engine::{Engine, Source};
use lensd_core::layers::LayerSpec;
use lensd_core::registry::{BaseKey, BaseSpec, LensKey, LensSpec, ResourceKey};
use lensd_core::residency::{DeviceId, Place};
use lensd_core::work::{
    ComputeEvent, ExplainSettings, Job, JobLens, JobOutput, Prompt, Remaining, Sampling,
};
use lensd_core::{ComputeDtype, LensKind};
use serde_json::Value;

/// The CPU engine with the tiny base and the talkative lens with its donor loaded.
async fn loaded() -> (LocalEngine, BaseKey, LensKey) {
    let engine = LocalEngine::new();
    let base = BaseKey("tiny".into());
    let lens = LensKey("talk".into());
    engine
        .load(
            ResourceKey::Base(base.clone()),
            Source::Base(BaseSpec {
                path: common::testdata("tiny-llama"),
                dtype: ComputeDtype::F32,
                bytes: 1,
                n_layers: 3,
                d_model: 64,
            }),
            Place::Device(DeviceId(0)),
            Box::new(|_, _| {}),
        )
        .await
        .unwrap();
    engine
        .load(
            ResourceKey::Lens(lens.clone()),
            Source::Lens(LensSpec {
                kind: LensKind::Talkative,
                path: common::testdata("talkative/lens"),
                bytes: 1,
                donor: Some(common::testdata("talkative/donor")),
            }),
            Place::Device(DeviceId(0)),
            Box::new(|_, _| {}),
        )
        .await
        .unwrap();
    (engine, base, lens)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_talkative_lens_with_its_donor_explains_beside_the_logit_lens() {
    let golden: Value = serde_json::from_str(
        &std::fs::read_to_string(common::testdata("talkative/golden.json")).unwrap(),
    )
    .unwrap();
    let case = golden["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "donor")
        .unwrap();
    let (engine, base, lens) = loaded().await;

    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let job = Job::Analyze {
        base,
        lenses: vec![
            JobLens {
                model: "logit".into(),
                lens: None,
                donor: None,
            },
            JobLens {
                model: "talk".into(),
                lens: Some(lens),
                donor: None,
            },
        ],
        text: Prompt::plain(golden["text"].as_str().unwrap()),
        layers: "all".parse::<LayerSpec>().unwrap(),
        top_k: 3,
        // Greedy: the four candidates of a position are the same, and so is the kept one;
        // with four per position, sub-batches hold 8 positions.
        explain: ExplainSettings {
            best_of_k: 4,
            temperature: 0.0,
            seed: 0,
            salience: true,
            kl: true,
            ..Default::default()
        },
    };
    let out = engine
        .run(
            DeviceId(0),
            job,
            Box::new(move |e| {
                sink.lock().unwrap().push(e);
                ControlFlow::Continue(())
            }),
        )
        .await
        .unwrap();
    let JobOutput::Analysis { analyses } = out else {
        panic!("not an analysis")
    };
    assert_eq!(analyses.len(), 2);
    let (logit, talk) = (&analyses[0], &analyses[1]);
    assert_eq!((logit.lens.as_str(), talk.lens.as_str()), ("logit", "talk"));
    assert_eq!(logit.layers.len(), 4);
    assert!(logit.explanations.is_empty() && talk.layers.is_empty());

    let rows = case["rows"].as_array().unwrap();
    assert_eq!(talk.explanations.len(), rows.len());
    let mut same = 0;
    for (got, want) in talk.explanations.iter().zip(rows) {
        assert_eq!(got.position as u64, want["position"].as_u64().unwrap());
        assert_eq!(got.token_salience.len(), 6);
        assert!(got.kl_divergence.is_some());
        let ids: Vec<u64> = got.explanation_ids.iter().map(|&i| i as u64).collect();
        let want_ids: Vec<u64> = want["explanation_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        if ids == want_ids {
            same += 1;
            assert_eq!(got.explanation, want["explanation"].as_str().unwrap());
            let mse = want["mse"].as_f64().unwrap() as f32;
            assert!((got.mse - mse).abs() <= 1e-4 * mse, "{} vs {mse}", got.mse);
        }
    }
    // Only a step closer than 1e-3 between its top two tokens may go either way.
    assert!(
        same + 1 >= rows.len(),
        "{same} of {} explanations as the reference",
        rows.len()
    );

    // Rows arrived as they finished: cells of the logit lens, then explanations, with one
    // progress scale over both.
    let events = events.lock().unwrap();
    let chunks: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            ComputeEvent::Rows {
                chunk,
                done,
                total,
                remaining,
            } => {
                // Cells say nothing of how long explanations take; explanations time their own.
                match (chunk.lens, remaining) {
                    (0, Remaining::Unknown) | (1, Remaining::Ms(_)) => {}
                    other => panic!("lens and estimate {other:?}"),
                }
                Some((chunk.clone(), *done, *total))
            }
            _ => None,
        })
        .collect();
    let n = rows.len() as u64;
    let total = 4 * n + n;
    assert!(chunks.iter().all(|(_, _, t)| *t == total));
    assert_eq!(chunks.last().unwrap().1, total);
    let last = events
        .iter()
        .rev()
        .find_map(|e| match e {
            ComputeEvent::Rows { remaining, .. } => Some(*remaining),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        last,
        Remaining::Ms(0),
        "nothing is left after the last chunk"
    );
    let explained: Vec<usize> = chunks
        .iter()
        .filter(|(c, _, _)| c.lens == 1)
        .flat_map(|(c, _, _)| c.explanations.iter().map(|e| e.position))
        .collect();
    assert_eq!(explained, (0..rows.len()).collect::<Vec<_>>());
    assert!(
        chunks.iter().filter(|(c, _, _)| c.lens == 1).count() > 1,
        "streamed in sub-batches"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generation_with_a_talkative_model_comes_from_its_donor() {
    let (engine, base, lens) = loaded().await;
    let sampling = Sampling {
        max_tokens: 12,
        ..Sampling::default()
    };
    let run = |lens: Option<LensKey>| {
        engine.run(
            DeviceId(0),
            Job::Generate {
                base: base.clone(),
                lens,
                donor: None,
                prompt: Prompt::plain("Every layer adds"),
                sampling: sampling.clone(),
            },
            Box::new(|_| ControlFlow::Continue(())),
        )
    };
    let ids = |out: JobOutput| match out {
        JobOutput::Generation { ids, .. } => ids,
        other => panic!("{other:?}"),
    };
    let with_donor = ids(run(Some(lens)).await.unwrap());
    let plain = ids(run(None).await.unwrap());

    // The same, computed directly: the base with the adapter applied, and without.
    let tiny = lensd_engine::Base::load(
        &common::testdata("tiny-llama"),
        lensd_engine::LoadOptions {
            compute: ComputeDtype::F32,
        },
    )
    .unwrap();
    let donor =
        lensd_engine::lora::Adapter::load(&common::testdata("talkative/donor"), tiny.config())
            .unwrap();
    let prompt = tiny
        .tokenizer
        .encode_prompt("Every layer adds", false)
        .unwrap();
    let params = lensd_engine::generate::SamplingParams {
        max_tokens: 12,
        ..Default::default()
    };
    let direct = |a: Option<&lensd_engine::lora::Adapter>| {
        let d = a.map(lensd_engine::donor::Donor::Adapter);
        lensd_engine::generate::generate_with(&tiny, &prompt, &params, d, &mut |_| {
            ControlFlow::Continue(())
        })
        .unwrap()
        .ids
    };
    assert_eq!(with_donor, direct(Some(&donor)));
    assert_eq!(plain, direct(None));
    assert_ne!(with_donor, plain, "the donor changes what the model says");
}
