//! The talkative lens against the independent reference of tools/talkative_reference.py
//! (PyTorch and transformers, with PEFT for the donor adapter), on the tiny llama: greedy
//! explanations, reconstruction errors, salience and KL; the encoder alone; the cost rules
//! (the encoder stops at its output layer, best-of-K is one batch); and bad artifacts.

mod common;

use std::path::{Path, PathBuf};

use lensd_engine::donor::Donor;
use lensd_engine::lens::talkative::{ExplainOptions, TalkativeLens};
use lensd_engine::lora::Adapter;
use lensd_engine::{Base, ComputeDtype, EngineError, LoadOptions};
use serde_json::Value;

fn dir() -> PathBuf {
    common::testdata("talkative")
}

fn golden() -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("golden.json")).unwrap()).unwrap()
}

fn tiny() -> Base {
    Base::load(
        &common::testdata("tiny-llama"),
        LoadOptions {
            compute: ComputeDtype::F32,
        },
    )
    .unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn f(v: &Value) -> f32 {
    v.as_f64().unwrap() as f32
}

fn tol(g: &Value, name: &str) -> f32 {
    f(&g["tolerances"][name])
}

fn close(got: f32, want: f32, rel: f32, abs: f32) -> bool {
    (got - want).abs() <= abs + rel * want.abs()
}

fn greedy() -> ExplainOptions {
    ExplainOptions {
        best_of_k: 1,
        temperature: 0.0,
        seed: 0,
        salience: true,
        kl: true,
        batch_positions: 5,
    }
}

#[test]
fn greedy_explanations_and_scores_match_the_reference() {
    let g = golden();
    let base = tiny();
    let lens = TalkativeLens::load(&dir().join("lens"), base.config()).unwrap();
    let donor = Adapter::load(&dir().join("donor"), base.config()).unwrap();
    let text_ids = ids(&g["ids"]);
    assert_eq!(
        base.tokenizer
            .encode(g["text"].as_str().unwrap(), false)
            .unwrap(),
        text_ids
    );
    assert_eq!(
        base.space_id().unwrap() as u64,
        g["space_id"].as_u64().unwrap()
    );
    let positions: Vec<usize> = (0..text_ids.len()).collect();
    let rel = tol(&g, "mse_rel");
    let rmse_rel = tol(&g, "relative_rmse_rel");
    let (sal_abs, kl_abs, kl_rel) = (
        tol(&g, "salience_abs"),
        tol(&g, "kl_abs"),
        tol(&g, "kl_rel"),
    );
    let margin = tol(&g, "margin_min");
    let mut compared = 0;
    let mut worst = [0f32; 4];
    for case in g["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let adapter = case["donor"]
            .as_bool()
            .unwrap()
            .then_some(Donor::Adapter(&donor));
        let rows = lens
            .explain(
                &base.model,
                &text_ids,
                &positions,
                adapter,
                base.space_id().unwrap(),
                &greedy(),
                &mut |_| true,
            )
            .unwrap();
        let named = base.describe(&lens, rows);
        for (got, want) in named.iter().zip(case["rows"].as_array().unwrap()) {
            let p = got.row.position;
            assert_eq!(p as u64, want["position"].as_u64().unwrap());
            let want_ids = ids(&want["explanation_ids"]);
            // Past a near tie either side may pick the other token; compare up to it.
            let margins: Vec<f32> = want["decoder_margins"]
                .as_array()
                .unwrap()
                .iter()
                .map(f)
                .collect();
            let sure = margins.iter().take_while(|&&m| m >= margin).count();
            assert_eq!(
                got.row.explanation_ids[..sure],
                want_ids[..sure],
                "{name} position {p}: explanation ids"
            );
            if sure < want_ids.len() {
                continue;
            }
            compared += 1;
            let structured: Vec<String> = want["explanation_structured"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_string())
                .collect();
            assert_eq!(got.structured, structured, "{name} position {p}");
            assert_eq!(got.explanation, want["explanation"].as_str().unwrap());
            for (what, a, b, rel) in [
                ("mse", got.row.mse, f(&want["mse"]), rel),
                (
                    "relative_rmse",
                    got.row.relative_rmse,
                    f(&want["relative_rmse"]),
                    rmse_rel,
                ),
            ] {
                assert!(
                    close(a, b, rel, 0.0),
                    "{name} position {p}: {what} {a} vs {b}"
                );
            }
            let kl = got.row.kl_divergence.unwrap();
            let want_kl = f(&want["kl_divergence"]);
            worst[0] = worst[0].max((got.row.mse - f(&want["mse"])).abs() / f(&want["mse"]));
            worst[1] = worst[1].max((got.row.relative_rmse - f(&want["relative_rmse"])).abs());
            worst[2] = worst[2].max((kl - want_kl).abs());
            assert!(
                close(kl, want_kl, kl_rel, kl_abs),
                "{name} position {p}: KL {kl} vs {want_kl}"
            );
            let want_sal: Vec<f32> = want["token_salience"]
                .as_array()
                .unwrap()
                .iter()
                .map(f)
                .collect();
            assert_eq!(got.row.token_salience.len(), want_sal.len());
            for (j, (a, b)) in got.row.token_salience.iter().zip(&want_sal).enumerate() {
                worst[3] = worst[3].max((a - b).abs());
                assert!(
                    close(*a, *b, 0.0, sal_abs),
                    "{name} position {p}: salience {j} {a} vs {b}"
                );
            }
        }
    }
    let total: usize = g["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["rows"].as_array().unwrap().len())
        .sum();
    eprintln!(
        "{compared} of {total} rows compared in full; largest differences: mse {:.1e} relative, \
         relative_rmse {:.1e}, KL {:.1e} nats, salience {:.1e}",
        worst[0], worst[1], worst[2], worst[3]
    );
    assert!(
        compared * 10 >= total * 9,
        "only {compared} of {total} rows had no near tie"
    );
}

#[test]
fn the_encoder_alone_scores_fixed_explanations_like_the_reference() {
    let g = golden();
    let base = tiny();
    let lens = TalkativeLens::load(&dir().join("lens"), base.config()).unwrap();
    let donor = Adapter::load(&dir().join("donor"), base.config()).unwrap();
    let text_ids = ids(&g["ids"]);
    let rel = tol(&g, "mse_rel");
    let rmse_rel = tol(&g, "relative_rmse_rel");
    for s in g["encoder_scores"].as_array().unwrap() {
        let case = s["case"].as_str().unwrap();
        let adapter = (case == "donor").then_some(Donor::Adapter(&donor));
        let p = s["position"].as_u64().unwrap() as usize;
        let got = lens
            .score(
                &base.model,
                &text_ids,
                adapter,
                &[p],
                &[ids(&s["explanation_ids"])],
            )
            .unwrap()[0];
        assert!(
            close(got.0, f(&s["mse"]), rel, 0.0),
            "{case} {p}: mse {got:?} vs {s}"
        );
        assert!(
            close(got.1, f(&s["relative_rmse"]), rmse_rel, 0.0),
            "{case} {p}: {got:?} vs {s}"
        );
    }
}

#[test]
fn the_encoder_stops_at_its_output_layer_and_best_of_k_is_one_batch() {
    let base = tiny();
    let lens = TalkativeLens::load(&dir().join("lens"), base.config()).unwrap();
    let m = &lens.manifest;
    let text = base.tokenizer.encode("Counting what runs", false).unwrap();
    let counters = &base.model.counters;

    // Scoring runs the base up to the activation's block, then the encoder's blocks only.
    let (blocks0, _) = counters.read();
    lens.score(&base.model, &text, None, &[1], &[vec![5; m.t_text]])
        .unwrap();
    let (blocks1, _) = counters.read();
    assert_eq!(
        blocks1 - blocks0,
        (m.layer + 1 + m.encoder.output_layer + 1) as u64,
        "the encoder runs blocks 0..={} of {}",
        m.encoder.output_layer,
        base.config().n_layers
    );

    // The passes of an explanation do not depend on K: all candidates decode together.
    let passes = |k: usize| {
        let opts = ExplainOptions {
            best_of_k: k,
            temperature: 1.0,
            seed: 7,
            salience: false,
            kl: false,
            batch_positions: 8,
        };
        let (_, p0) = counters.read();
        let rows = lens
            .explain(&base.model, &text, &[0, 1, 2], None, 0, &opts, &mut |_| {
                true
            })
            .unwrap();
        assert_eq!(rows.len(), 3);
        counters.read().1 - p0
    };
    let one = passes(1);
    assert_eq!(
        one,
        1 + m.t_text as u64 + 1,
        "activations, decoder steps, encoder"
    );
    assert_eq!(passes(16), one);
}

#[test]
fn best_of_k_keeps_the_candidate_with_the_lowest_error() {
    let base = tiny();
    let lens = TalkativeLens::load(&dir().join("lens"), base.config()).unwrap();
    let text = base
        .tokenizer
        .encode("Sampling several explanations", false)
        .unwrap();
    let run = |k: usize| {
        let opts = ExplainOptions {
            best_of_k: k,
            temperature: 1.5,
            seed: 11,
            salience: false,
            kl: false,
            batch_positions: 4,
        };
        lens.explain(&base.model, &text, &[2], None, 0, &opts, &mut |_| true)
            .unwrap()
            .remove(0)
    };
    let best = run(32);
    // The same seed draws the same first candidate, which the best of 32 cannot be worse than.
    assert!(best.mse <= run(1).mse);
    // And the kept candidate's error is what the encoder alone gives it.
    let (mse, _) = lens
        .score(
            &base.model,
            &text,
            None,
            &[2],
            std::slice::from_ref(&best.explanation_ids),
        )
        .unwrap()[0];
    assert!(
        (mse - best.mse).abs() <= 1e-6 * mse.max(1.0),
        "{mse} vs {}",
        best.mse
    );
    // Same seed, same answer.
    assert_eq!(run(32), best);
}

fn copy_lens(to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in ["talkative.json", "lens.safetensors"] {
        std::fs::copy(dir().join("lens").join(f), to.join(f)).unwrap();
    }
}

fn edit_manifest(at: &Path, edit: impl FnOnce(&mut Value)) {
    let path = at.join("talkative.json");
    let mut m: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut m);
    std::fs::write(&path, serde_json::to_string(&m).unwrap()).unwrap();
}

#[test]
fn bad_artifacts_are_refused_naming_the_problem() {
    let base = tiny();
    let cfg = base.config();
    let tmp = tempfile::tempdir().unwrap();
    let err = |name: &str, edit: &dyn Fn(&Path)| -> String {
        let at = tmp.path().join(name);
        copy_lens(&at);
        edit(&at);
        match TalkativeLens::load(&at, cfg) {
            Ok(_) => panic!("{name}: loaded"),
            Err(e) => e.to_string(),
        }
    };
    let e = err("flipped", &|at| {
        let p = at.join("lens.safetensors");
        let mut b = std::fs::read(&p).unwrap();
        let n = b.len() - 3;
        b[n] ^= 0x40;
        std::fs::write(&p, b).unwrap();
    });
    assert!(
        e.contains("content sha256") && e.contains("lens.safetensors"),
        "{e}"
    );
    let e = err("width", &|at| {
        edit_manifest(at, |m| m["base"]["d_model"] = 128.into())
    });
    // The manifest and the tensors disagree about the width.
    assert!(
        e.contains("decoder.proj_weight") && e.contains("128"),
        "{e}"
    );
    // A lens of consistent files for another base: refused when checked against it.
    let lens = TalkativeLens::open(&dir().join("lens")).unwrap();
    let mut wide = cfg.clone();
    wide.d_model = 128;
    let e = lens.check(&wide).unwrap_err().to_string();
    assert!(e.contains("d_model 64, the base has 128"), "{e}");
    let e = err("layer", &|at| edit_manifest(at, |m| m["layer"] = 3.into()));
    assert!(e.contains("`layer` 3"), "{e}");
    let e = err("version", &|at| {
        edit_manifest(at, |m| m["version"] = 2.into())
    });
    assert!(e.contains("version 2"), "{e}");
    let e = err("format", &|at| {
        edit_manifest(at, |m| m["format"] = "x".into())
    });
    assert!(e.contains("lensd.talkative"), "{e}");
    let e = err("unknown", &|at| {
        edit_manifest(at, |m| m["extra"] = 1.into())
    });
    assert!(e.contains("extra"), "{e}");
    let e = err("patched", &|at| {
        edit_manifest(at, |m| m["decoder"]["patched_layers"] = 1.into())
    });
    assert!(e.contains("decoder.proj_weight"), "{e}");
    let e = err("missing", &|at| {
        std::fs::remove_file(at.join("lens.safetensors")).unwrap()
    });
    assert!(e.contains("lens.safetensors"), "{e}");
    let e = err("truncated", &|at| {
        let p = at.join("lens.safetensors");
        let b = std::fs::read(&p).unwrap();
        std::fs::write(&p, &b[..b.len() / 2]).unwrap();
        let hash = {
            use sha2::Digest;
            sha2::Sha256::digest(&b[..b.len() / 2])
                .iter()
                .map(|x| format!("{x:02x}"))
                .collect::<String>()
        };
        edit_manifest(at, |m| m["content_sha256"] = hash.into());
    });
    assert!(e.contains("invalid safetensors"), "{e}");
}

#[test]
fn unsupported_adapters_are_refused_by_setting() {
    let base = tiny();
    let tmp = tempfile::tempdir().unwrap();
    for (key, value, says) in [
        ("use_dora", Value::Bool(true), "use_dora"),
        (
            "modules_to_save",
            serde_json::json!(["lm_head"]),
            "modules_to_save",
        ),
        (
            "target_modules",
            serde_json::json!(["embed_tokens"]),
            "embed_tokens",
        ),
        ("bias", Value::String("all".into()), "bias"),
    ] {
        let at = tmp.path().join(key);
        std::fs::create_dir_all(&at).unwrap();
        std::fs::copy(
            dir().join("donor/adapter_model.safetensors"),
            at.join("adapter_model.safetensors"),
        )
        .unwrap();
        let mut c: Value = serde_json::from_str(
            &std::fs::read_to_string(dir().join("donor/adapter_config.json")).unwrap(),
        )
        .unwrap();
        c[key] = value;
        std::fs::write(at.join("adapter_config.json"), c.to_string()).unwrap();
        match Adapter::load(&at, base.config()) {
            Err(e @ EngineError::Unsupported { .. }) => {
                assert!(e.to_string().contains(says), "{e}")
            }
            other => panic!("{key}: {other:?}"),
        }
    }
}
