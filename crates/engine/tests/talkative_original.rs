//! The talkative lens against the original implementation, run as it is
//! (tools/gen_original_talkative_golden.py: the original's `Decoder`, `Encoder` and
//! `LensAnalyzer` at commit 7de72fe, its checkpoints converted by tools/convert_talkative.py).
//! Five checkpoints: the site's options on the tiny llama; a variation (encoder postfix, no
//! encoder projection, no current token, two patched blocks, encoder deeper than the
//! explained layer); the site's options with a LoRA donor and with a full donor model; and
//! the demo model with the site's prompts.
//!
//! At temperature 0 (the original's 1e-6, see the generator) every explanation token must equal
//! the original's up to the first near tie, a step whose top-two logit margin in the original
//! was under `MARGIN`; rows without one must also match in their texts, reconstruction error,
//! relative RMSE and salience. Best-of-k: lensd scores the original's k candidates of every
//! position, keeps the same one, and gives its error and salience.
//!
//! Only committed files are read; a change of the converter's key mapping or of a projection's
//! orientation changes the committed lens files (tools/test_convert_talkative.py checks that
//! converting the checkpoints gives them byte for byte), and a change of the prompt layout
//! changes every number here.

mod common;

use lensd_engine::donor::Donor;
use lensd_engine::lens::talkative::{ExplainOptions, TalkativeLens};
use lensd_engine::lora::Adapter;
use lensd_engine::{Base, ComputeDtype, LoadOptions};
use serde_json::Value;

/// A decoding step whose top-two margin in the original is below this may go either way.
const MARGIN: f32 = 1e-3;
/// Relative tolerance of reconstruction errors (f32 in both; the demo's 30 blocks run in a
/// different order of summation than PyTorch's).
const MSE_REL: f32 = 1e-5;
/// Absolute tolerance of salience, a ratio of errors.
const SALIENCE_ABS: f32 = 2e-5;

fn golden() -> Value {
    common::json("talkative/from-original/golden.json")
}

fn f(v: &Value) -> f32 {
    v.as_f64().unwrap() as f32
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(f).collect()
}

fn close(got: f32, want: f32, rel: f32) -> bool {
    (got - want).abs() <= rel * want.abs().max(1e-6)
}

fn load_tiny(rel: &str) -> Base {
    Base::load(
        &common::testdata(rel),
        LoadOptions {
            compute: ComputeDtype::F32,
        },
    )
    .unwrap()
}

struct Counts {
    rows: usize,
    compared: usize,
    worst_mse: f32,
    worst_salience: f32,
}

/// Runs one case of the golden file against lensd.
fn check_case(name: &str, case: &Value, base: &Base) -> Counts {
    let dir = common::testdata(&format!("talkative/from-original/{name}/lens"));
    let lens = TalkativeLens::load(&dir, base.config()).unwrap();
    let adapter;
    let full;
    let donor = match case["donor"].as_str() {
        None => None,
        Some("testdata/talkative/donor") => {
            adapter = Adapter::load(&common::testdata("talkative/donor"), base.config()).unwrap();
            Some(Donor::Adapter(&adapter))
        }
        Some(path) => {
            full = load_tiny(path.trim_start_matches("testdata/"));
            Some(Donor::Model(&full.model))
        }
    };
    let space = base.space_id().unwrap();
    let mut n = Counts {
        rows: 0,
        compared: 0,
        worst_mse: 0.0,
        worst_salience: 0.0,
    };
    for text in case["texts"].as_array().unwrap() {
        let ids = common::ids_of(&text["ids"]);
        assert_eq!(
            base.tokenizer
                .encode(text["text"].as_str().unwrap(), false)
                .unwrap(),
            ids,
            "{name}: the original analyzer's token ids"
        );
        let positions: Vec<usize> = (0..ids.len()).collect();
        let opts = ExplainOptions {
            best_of_k: 1,
            temperature: 0.0,
            seed: 0,
            salience: true,
            kl: false,
            batch_positions: 64,
        };
        let rows = lens
            .explain(
                &base.model,
                &ids,
                &positions,
                donor,
                space,
                &opts,
                &mut |_| true,
            )
            .unwrap();
        let named = base.describe(&lens, rows);
        for (got, want) in named.iter().zip(text["rows"].as_array().unwrap()) {
            n.rows += 1;
            let p = got.row.position;
            assert_eq!(p as u64, want["position"].as_u64().unwrap());
            assert_eq!(
                got.token_text,
                want["token"].as_str().unwrap(),
                "{name} {p}"
            );
            let want_ids = common::ids_of(&want["explanation_ids"]);
            let sure = floats(&want["decoder_margins"])
                .iter()
                .take_while(|&&m| m >= MARGIN)
                .count();
            assert_eq!(
                got.row.explanation_ids[..sure],
                want_ids[..sure],
                "{name} position {p}: explanation ids before the first near tie"
            );
            if sure < want_ids.len() {
                continue;
            }
            n.compared += 1;
            assert_eq!(got.explanation, want["explanation"].as_str().unwrap());
            let structured: Vec<&str> = want["explanation_structured"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap())
                .collect();
            assert_eq!(got.structured, structured, "{name} position {p}");
            for (what, a, b) in [
                ("mse", got.row.mse, f(&want["mse"])),
                (
                    "relative_rmse",
                    got.row.relative_rmse,
                    f(&want["relative_rmse"]),
                ),
            ] {
                assert!(
                    close(a, b, MSE_REL),
                    "{name} position {p}: {what} {a} vs the original's {b}"
                );
            }
            n.worst_mse = n
                .worst_mse
                .max((got.row.mse - f(&want["mse"])).abs() / f(&want["mse"]));
            let want_sal = floats(&want["token_salience"]);
            assert_eq!(got.row.token_salience.len(), want_sal.len());
            for (j, (a, b)) in got.row.token_salience.iter().zip(&want_sal).enumerate() {
                n.worst_salience = n.worst_salience.max((a - b).abs());
                assert!(
                    (a - b).abs() <= SALIENCE_ABS,
                    "{name} position {p}: salience of token {j} {a} vs the original's {b}"
                );
            }
        }
        check_best_of_k(name, &text["best_of_k"], &lens, base, &ids, donor, space);
    }
    n
}

/// lensd scores the original's candidates, keeps the same one and gives its salience.
fn check_best_of_k(
    name: &str,
    bok: &Value,
    lens: &TalkativeLens,
    base: &Base,
    ids: &[u32],
    donor: Option<Donor>,
    space: u32,
) {
    let k = bok["k"].as_u64().unwrap() as usize;
    for row in bok["rows"].as_array().unwrap() {
        let p = row["position"].as_u64().unwrap() as usize;
        let cands: Vec<Vec<u32>> = row["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .map(common::ids_of)
            .collect();
        assert_eq!(cands.len(), k);
        let scores = lens
            .score(&base.model, ids, donor, &vec![p; k], &cands)
            .unwrap();
        let want = floats(&row["candidate_mses"]);
        for (j, ((got, _), want)) in scores.iter().zip(&want).enumerate() {
            assert!(
                close(*got, *want, MSE_REL),
                "{name} position {p}: candidate {j} mse {got} vs the original's {want}"
            );
        }
        let argmin =
            |v: &[f32]| (0..v.len()).fold(0, |best, j| if v[j] < v[best] { j } else { best });
        let mine: Vec<f32> = scores.iter().map(|s| s.0).collect();
        let chosen = argmin(&want);
        let mut sorted = want.clone();
        sorted.sort_by(f32::total_cmp);
        if sorted[1] - sorted[0] > 4.0 * MSE_REL * sorted[0] {
            assert_eq!(argmin(&mine), chosen, "{name} position {p}: best of {k}");
        }
        assert!(close(mine[chosen], f(&row["mse"]), MSE_REL));
        // Salience of the kept candidate: each token replaced by the space token in turn.
        let best = &cands[chosen];
        let variants: Vec<Vec<u32>> = (0..best.len())
            .map(|j| {
                let mut e = best.clone();
                e[j] = space;
                e
            })
            .collect();
        let ablated = lens
            .score(&base.model, ids, donor, &vec![p; best.len()], &variants)
            .unwrap();
        let want_sal = floats(&row["token_salience"]);
        for (j, ((m, _), w)) in ablated.iter().zip(&want_sal).enumerate() {
            let s = (m - mine[chosen]) / mine[chosen];
            assert!(
                (s - w).abs() <= SALIENCE_ABS,
                "{name} position {p}: best-of-k salience of token {j} {s} vs the original's {w}"
            );
        }
    }
}

fn report(name: &str, n: &Counts) {
    eprintln!(
        "{name}: {} of {} rows compared in full (the others have a near tie); largest \
         differences: mse {:.1e} relative, salience {:.1e}",
        n.compared, n.rows, n.worst_mse, n.worst_salience
    );
    assert!(
        n.compared * 10 >= n.rows * 7,
        "{name}: only {} of {} rows had no near tie",
        n.compared,
        n.rows
    );
}

#[test]
fn the_tiny_llama_lenses_explain_like_the_original() {
    let g = golden();
    let base = load_tiny("tiny-llama");
    for name in [
        "tiny-deployed",
        "tiny-postfix",
        "tiny-lora",
        "tiny-full-donor",
    ] {
        let case = &g["cases"][name];
        assert_eq!(case["model"], "tiny");
        let n = check_case(name, case, &base);
        report(name, &n);
    }
}

#[test]
fn the_demo_model_lens_explains_like_the_original() {
    let g = golden();
    let case = &g["cases"]["demo"];
    let _lock = common::compute_lock();
    let base = common::demo(ComputeDtype::F32);
    let n = check_case("demo", case, base);
    report("demo", &n);
}

/// The committed trained lens of the demo model (lenses/README.md) reconstructs activations of
/// text it was not trained on better than the same lens untrained (its initialisation: identity
/// projections, prompts from their texts' embeddings).
#[test]
fn the_trained_demo_lens_beats_its_untrained_start_on_held_out_text() {
    use lensd_engine::lens::talkative::{write_untrained, UntrainedSpec};

    let _lock = common::compute_lock();
    let base = common::demo(ComputeDtype::F32);
    let trained = TalkativeLens::load(
        &common::root().join("lenses/smollm2-135m-talkative-l15"),
        base.config(),
    )
    .unwrap();
    let m = &trained.manifest;
    let dir = tempfile::tempdir().unwrap();
    let spec = UntrainedSpec {
        layer: m.layer,
        t_text: m.t_text,
        patched_layers: m.decoder.patched_layers,
        output_layer: m.encoder.output_layer,
        decoder_prompt: m.decoder.prompt.clone(),
        encoder_prompt: m.encoder.prompt.clone(),
    };
    write_untrained(base, "untrained", dir.path(), &spec).unwrap();
    let untrained = TalkativeLens::load(dir.path(), base.config()).unwrap();
    // Held out: the trainer reads docstrings of Python's standard library only.
    let text = "The committee met on Tuesday to discuss the new budget, and most members \
                agreed that the library should stay open later in the summer. A short report \
                will be sent to every household next month. To install the package, run the \
                setup script and then restart the server; errors are written to the log file.";
    let ids = base.tokenizer.encode(text, false).unwrap();
    let positions: Vec<usize> = (5..ids.len()).collect();
    let opts = ExplainOptions {
        best_of_k: 1,
        temperature: 0.0,
        seed: 0,
        salience: false,
        kl: false,
        batch_positions: 64,
    };
    let space = base.space_id().unwrap();
    let run = |lens: &TalkativeLens| {
        lens.explain(
            &base.model,
            &ids,
            &positions,
            None,
            space,
            &opts,
            &mut |_| true,
        )
        .unwrap()
    };
    let (t, u) = (run(&trained), run(&untrained));
    let mean = |rows: &[lensd_engine::lens::talkative::ExplainedRow]| {
        rows.iter().map(|r| r.relative_rmse).sum::<f32>() / rows.len() as f32
    };
    let distinct = |rows: &[lensd_engine::lens::talkative::ExplainedRow]| {
        let mut e: Vec<&Vec<u32>> = rows.iter().map(|r| &r.explanation_ids).collect();
        e.sort();
        e.dedup();
        e.len()
    };
    eprintln!(
        "relative RMSE over {} held-out positions: trained {:.3}, untrained {:.3}; distinct \
         explanations: {} and {}",
        positions.len(),
        mean(&t),
        mean(&u),
        distinct(&t),
        distinct(&u)
    );
    assert!(
        mean(&t) < 0.9 * mean(&u),
        "trained {} vs untrained {}",
        mean(&t),
        mean(&u)
    );
}
