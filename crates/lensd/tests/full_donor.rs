//! Full donor models (docs/talkative.md, "Donors") with real weights: fine-tunes of the tiny
//! llama made here by moving its weights a seeded amount. A talkative lens with such a donor
//! reads the donor's activations and continues in the donor for its KL, while its decoder and
//! encoder run on the group's base; a generation with the model comes from the donor. Through
//! the service, the donor is one base shared by the models that name it, leased, counted and
//! evicted like a base.

mod common;

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lensd::runtime::LocalEngine;
use lensd::service::Service;
use lensd_core::engine::{Engine, Source};
use lensd_core::layers::LayerSpec;
use lensd_core::registry::{BaseKey, BaseSpec, LensKey, LensSpec, ResourceKey};
use lensd_core::residency::{DeviceId, Place, Tier};
use lensd_core::work::{ExplainSettings, Job, JobFailure, JobLens, JobOutput, Prompt, Sampling};
use lensd_core::{ComputeDtype, LensKind};
use lensd_engine::donor::Donor;
use lensd_engine::generate::{generate, generate_with, SamplingParams};
use lensd_engine::lens::talkative::{ExplainOptions, ExplainedRow, TalkativeLens};
use lensd_engine::model::Logits;
use lensd_engine::probe::FileProbe;
use lensd_engine::{Base, LoadOptions};

const TEXT: &str = "The lens explains what the fine-tune computes";

fn load(dir: &Path) -> Base {
    Base::load(
        dir,
        LoadOptions {
            compute: ComputeDtype::F32,
        },
    )
    .unwrap()
}

/// Whether a weight is used only after the lens's activation: blocks from `tap` on, the final
/// norm and the unembedding.
fn after(tap: usize) -> impl Fn(&str) -> bool {
    move |name| match name.strip_prefix("model.layers.") {
        Some(rest) => rest.split('.').next().unwrap().parse::<usize>().unwrap() >= tap,
        None => !name.starts_with("model.embed_tokens"),
    }
}

fn greedy() -> ExplainOptions {
    ExplainOptions {
        best_of_k: 1,
        temperature: 0.0,
        seed: 0,
        salience: true,
        kl: true,
        // As the runtime batches one candidate per position.
        batch_positions: 32,
    }
}

/// `TEXT` as the runtime reads it.
fn ids(base: &Base) -> Vec<u32> {
    let (text, special) = base.render(&Prompt::plain(TEXT), false).unwrap();
    base.tokenizer.encode_prompt(&text, special).unwrap()
}

fn explain(base: &Base, lens: &TalkativeLens, donor: Option<Donor>) -> Vec<ExplainedRow> {
    let ids = ids(base);
    let positions: Vec<usize> = (0..ids.len()).collect();
    let space = base.space_id().unwrap();
    lens.explain(
        &base.model,
        &ids,
        &positions,
        donor,
        space,
        &greedy(),
        &mut |_| true,
    )
    .unwrap()
}

#[test]
fn a_full_donor_gives_the_activations_and_the_kl_while_the_base_explains() {
    let tmp = tempfile::tempdir().unwrap();
    let base = load(&common::testdata("tiny-llama"));
    let lens = TalkativeLens::load(&common::testdata("talkative/lens"), base.config()).unwrap();
    let tap = lens.tap();
    common::fine_tune(&tmp.path().join("all"), 1, |_| true);
    common::fine_tune(&tmp.path().join("late"), 2, after(tap));
    let (all, late) = (
        load(&tmp.path().join("all")),
        load(&tmp.path().join("late")),
    );

    let plain = explain(&base, &lens, None);
    // A donor equal to the base up to the lens's layer gives the same activations, so the
    // same explanations, errors and salience to the bit; its later blocks and head give the KL.
    let rows = explain(&base, &lens, Some(Donor::Model(&late.model)));
    for (got, want) in rows.iter().zip(&plain) {
        assert_eq!(got.explanation_ids, want.explanation_ids);
        assert_eq!(got.mse, want.mse);
        assert_eq!(got.relative_rmse, want.relative_rmse);
        assert_eq!(got.token_salience, want.token_salience);
    }
    assert!(
        rows.iter()
            .zip(&plain)
            .all(|(g, w)| g.kl_divergence != w.kl_divergence),
        "the continuation after the activation runs in the donor"
    );

    // A donor moved everywhere: the activations are the donor's own, as running it directly
    // gives them (mse / relative_rmse² is the activation's mean square).
    let rows = explain(&base, &lens, Some(Donor::Model(&all.model)));
    let ids = ids(&base);
    let direct = all
        .model
        .forward(&[&ids], None, &[tap], Logits::None)
        .unwrap();
    let acts = direct.tap(tap).unwrap();
    let mean_square: Vec<f32> = acts.sqr().unwrap().mean(1).unwrap().to_vec1().unwrap();
    for (r, ms) in rows.iter().zip(&mean_square) {
        let implied = r.mse / (r.relative_rmse * r.relative_rmse);
        assert!((implied - ms).abs() <= 1e-4 * ms, "{implied} vs {ms}");
    }
    assert!(rows.iter().zip(&plain).all(|(g, w)| g.mse != w.mse));
}

#[test]
fn a_generation_with_a_full_donor_is_the_donor_generating() {
    let tmp = tempfile::tempdir().unwrap();
    common::fine_tune(tmp.path(), 1, |_| true);
    let base = load(&common::testdata("tiny-llama"));
    let tune = load(tmp.path());
    let prompt = base
        .tokenizer
        .encode_prompt("Every layer adds", false)
        .unwrap();
    let params = SamplingParams {
        max_tokens: 12,
        ..Default::default()
    };
    let run = |b: &Base, d: Option<Donor>| {
        generate_with(b, &prompt, &params, d, &mut |_| ControlFlow::Continue(()))
            .unwrap()
            .ids
    };
    let with_donor = run(&base, Some(Donor::Model(&tune.model)));
    let direct = generate(&tune, &prompt, &params, &mut |_| ControlFlow::Continue(()))
        .unwrap()
        .ids;
    assert_eq!(
        with_donor, direct,
        "exactly what the fine-tune says by itself"
    );
    assert_ne!(with_donor, run(&base, None));
}

/// The CPU engine with the tiny base, the talkative lens (no adapter) and the fine-tune at
/// `tune` loaded as a base.
async fn engine_with(tune: &Path) -> (LocalEngine, BaseKey, BaseKey, LensKey) {
    let engine = LocalEngine::new();
    let (base, donor, lens) = (
        BaseKey("tiny".into()),
        BaseKey("tune".into()),
        LensKey("talk".into()),
    );
    for (key, path) in [
        (&base, common::testdata("tiny-llama")),
        (&donor, tune.into()),
    ] {
        let spec = BaseSpec {
            path,
            dtype: ComputeDtype::F32,
            bytes: 1,
            n_layers: 3,
            d_model: 64,
        };
        engine
            .load(
                ResourceKey::Base(key.clone()),
                Source::Base(spec),
                Place::Device(DeviceId(0)),
                Box::new(|_, _| {}),
            )
            .await
            .unwrap();
    }
    let spec = LensSpec {
        kind: LensKind::Talkative,
        path: common::testdata("talkative/lens"),
        bytes: 1,
        donor: None,
    };
    engine
        .load(
            ResourceKey::Lens(lens.clone()),
            Source::Lens(spec),
            Place::Device(DeviceId(0)),
            Box::new(|_, _| {}),
        )
        .await
        .unwrap();
    (engine, base, donor, lens)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_runs_a_job_in_the_donor_base_it_names() {
    let tmp = tempfile::tempdir().unwrap();
    common::fine_tune(tmp.path(), 1, |_| true);
    let (engine, base, donor, lens) = engine_with(tmp.path()).await;
    let analyze = |donor: Option<BaseKey>| Job::Analyze {
        base: base.clone(),
        lenses: vec![JobLens {
            model: "talk".into(),
            lens: Some(lens.clone()),
            donor,
        }],
        text: Prompt::plain(TEXT),
        layers: LayerSpec::All,
        top_k: 1,
        explain: ExplainSettings {
            best_of_k: 1,
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
            analyze(Some(donor.clone())),
            Box::new(|_| ControlFlow::Continue(())),
        )
        .await
        .unwrap();
    let JobOutput::Analysis { analyses } = out else {
        panic!("not an analysis")
    };
    // The same as the engine called directly with the fine-tune as the donor.
    let tiny = load(&common::testdata("tiny-llama"));
    let talk = TalkativeLens::load(&common::testdata("talkative/lens"), tiny.config()).unwrap();
    let tune = load(tmp.path());
    let want = explain(&tiny, &talk, Some(Donor::Model(&tune.model)));
    let got = &analyses[0].explanations;
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(
            (&g.explanation_ids, g.mse, g.relative_rmse, g.kl_divergence),
            (&w.explanation_ids, w.mse, w.relative_rmse, w.kl_divergence)
        );
        assert_eq!(g.token_salience, w.token_salience);
    }

    // A generation of the model comes from the fine-tune.
    let sampling = Sampling {
        max_tokens: 12,
        ..Sampling::default()
    };
    let out = engine
        .run(
            DeviceId(0),
            Job::Generate {
                base: base.clone(),
                lens: Some(lens.clone()),
                donor: Some(donor.clone()),
                prompt: Prompt::plain("Every layer adds"),
                sampling: sampling.clone(),
            },
            Box::new(|_| ControlFlow::Continue(())),
        )
        .await
        .unwrap();
    let JobOutput::Generation { ids, .. } = out else {
        panic!("not a generation")
    };
    let prompt = tiny
        .tokenizer
        .encode_prompt("Every layer adds", false)
        .unwrap();
    let params = SamplingParams {
        max_tokens: 12,
        ..Default::default()
    };
    let direct = generate(&tune, &prompt, &params, &mut |_| ControlFlow::Continue(())).unwrap();
    assert_eq!(ids, direct.ids);

    // A donor the engine does not hold fails the job, naming it.
    engine.release(
        &ResourceKey::Base(donor.clone()),
        Place::Device(DeviceId(0)),
    );
    match engine
        .run(
            DeviceId(0),
            analyze(Some(donor)),
            Box::new(|_| ControlFlow::Continue(())),
        )
        .await
    {
        Err(JobFailure::Engine(m)) => assert!(m.contains("base tune is not loaded"), "{m}"),
        other => panic!("expected an engine failure, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_models_naming_one_donor_load_it_once_and_it_leaves_when_room_is_needed() {
    let tmp = tempfile::tempdir().unwrap();
    let probe = FileProbe::new();
    let tiny = common::testdata("tiny-llama");
    let talk = common::testdata("talkative/lens");
    common::fine_tune(&tmp.path().join("tune"), 1, |_| true);
    common::fine_tune(&tmp.path().join("other"), 2, |_| true);
    // Room for the base, the donor and the lens, and half a base more: another base needs
    // someone to leave.
    let bytes = |p: &Path| {
        probe
            .base_facts(p, ComputeDtype::F32)
            .unwrap()
            .resident_bytes
    };
    let (base_bytes, donor_bytes) = (bytes(&tiny), bytes(&tmp.path().join("tune")));
    let lens_bytes = probe.lens_facts(LensKind::Talkative, &talk).unwrap().bytes;
    let device = base_bytes + donor_bytes + lens_bytes + base_bytes / 2;
    let doc = serde_json::json!({
        "model_groups": [
            {"group_id": "tiny", "group_name": "Tiny", "base_model_path": tiny, "models": [
                {"id": "talk-a", "name": "A", "lens_checkpoint_path": talk,
                 "different_activations_orig_path": "tune"},
                {"id": "talk-b", "name": "B", "lens_checkpoint_path": talk,
                 "different_activations_orig_path": "tune"},
                {"id": "logit", "name": "Logit", "lens": "logit"}
            ]},
            {"group_id": "other", "group_name": "Other", "base_model_path": "other",
             "models": [{"id": "other-logit", "name": "Logit", "lens": "logit"}]}
        ],
        "settings": {"device_budget": device.to_string(), "host_budget": "0"}
    });
    let cfg = tmp.path().join("model_groups.json");
    std::fs::write(&cfg, doc.to_string()).unwrap();
    let service = Arc::new(Service::start(&cfg).await.unwrap());
    let registry = service.registry().await;
    let donor = registry.models["talk-a"]
        .donor
        .clone()
        .expect("a full donor");
    assert_eq!(registry.models["talk-b"].donor.as_ref(), Some(&donor));
    assert_eq!(
        registry.bases.len(),
        3,
        "base, donor and the other group's base"
    );
    assert_eq!(
        registry.lenses[registry.models["talk-a"].lens.as_ref().unwrap()].donor,
        None,
        "a full donor is not part of the lens"
    );
    let donor = ResourceKey::Base(donor);

    let a = service.residency.acquire("talk-a").await.unwrap();
    let b = service.residency.acquire("talk-b").await.unwrap();
    assert_eq!(
        service.engine.base_loads(),
        2,
        "the base and the donor, once"
    );
    let rep = service.residency.report().await.unwrap();
    let entry = rep.entry(&donor).unwrap();
    assert_eq!(
        (entry.tier, entry.bytes, entry.leases),
        (Tier::Device, donor_bytes, 2)
    );
    assert_eq!(entry.donor_for, ["talk-a", "talk-b"]);
    assert_eq!(
        rep.tier(Tier::Device).used,
        base_bytes + donor_bytes + lens_bytes
    );

    // A request through the scheduler explains with it.
    let work = lensd_core::work::Work::Analyze(lensd_core::work::AnalyzeWork {
        models: vec!["talk-a".into()],
        text: lensd_core::work::Text::Given(Prompt::plain("a short text")),
        layers: LayerSpec::All,
        top_k: 1,
        explain: ExplainSettings {
            best_of_k: 1,
            ..ExplainSettings::default()
        },
    });
    let client = lensd_core::work::ClientId("x".into());
    let (_, mut events) = service.scheduler.submit(&client, work, None).await.unwrap();
    let last = loop {
        let ev = events.recv().await.unwrap();
        if ev.is_terminal() {
            break ev;
        }
    };
    match last {
        lensd_core::work::RequestEvent::Completed {
            output: JobOutput::Analysis { analyses },
        } => assert!(!analyses[0].explanations.is_empty()),
        other => panic!("{other:?}"),
    }
    drop((a, b));

    // The group's base is used again since; the donor is the least recently used.
    tokio::time::sleep(Duration::from_millis(20)).await;
    drop(service.residency.acquire("logit").await.unwrap());
    tokio::time::sleep(Duration::from_millis(20)).await;
    drop(service.residency.acquire("other-logit").await.unwrap());
    assert_eq!(service.engine.base_loads(), 3);
    let rep = service.residency.report().await.unwrap();
    assert_eq!(
        rep.entry(&donor).unwrap().tier,
        Tier::Disk,
        "the donor left"
    );
    assert!(rep.tier(Tier::Device).used <= device);
    assert!(rep.invariant_violations.is_empty());
}

#[test]
fn lensd_explain_takes_a_full_donor_as_well_as_an_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    common::fine_tune(tmp.path(), 1, |_| true);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lensd"))
        .args(["explain", "--model"])
        .arg(common::testdata("tiny-llama"))
        .arg("--lens")
        .arg(common::testdata("talkative/lens"))
        .arg("--donor")
        .arg(tmp.path())
        .args(["--text", TEXT, "--best-of-k", "1", "--temperature", "0"])
        .args(["--format", "json"])
        .output()
        .expect("lensd runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let base = load(&common::testdata("tiny-llama"));
    let lens = TalkativeLens::load(&common::testdata("talkative/lens"), base.config()).unwrap();
    let tune = load(tmp.path());
    let want = explain(&base, &lens, Some(Donor::Model(&tune.model)));
    let got: Vec<Vec<u32>> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| serde_json::from_value(r["explanation_ids"].clone()).unwrap())
        .collect();
    let want: Vec<Vec<u32>> = want.into_iter().map(|r| r.explanation_ids).collect();
    assert_eq!(got, want);
}
