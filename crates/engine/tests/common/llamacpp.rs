//! Comparing a base with llama.cpp's logits and greedy generations on the same GGUF (golden
//! files of tools/gen_llamacpp_golden.py and tools/gen_gemma3_golden.py): argmax at every
//! position whose top-two margin is decisive, the distance of llama.cpp's top-5 logits, and
//! greedy ids up to the first near-tie.

use std::ops::ControlFlow;

use lensd_engine::generate::{generate, SamplingParams};
use lensd_engine::model::Logits;
use lensd_engine::Base;

pub struct Agreement {
    pub positions: usize,
    pub decisive: usize,
    pub argmax_equal: usize,
    pub decisive_equal: usize,
    pub max_top5_diff: f64,
    pub mean_top5_diff: f64,
}

/// Every position of every prompt of `golden` (a logits golden file); the argmax must agree
/// wherever llama.cpp's margin is at least `near_tie`.
pub fn compare_logits(
    base: &Base,
    golden: &serde_json::Value,
    near_tie: f64,
    what: &str,
) -> Agreement {
    let mut a = Agreement {
        positions: 0,
        decisive: 0,
        argmax_equal: 0,
        decisive_equal: 0,
        max_top5_diff: 0.0,
        mean_top5_diff: 0.0,
    };
    let mut compared = 0;
    for prompt in golden["prompts"].as_array().unwrap() {
        let ids = crate::common::ids_of(&prompt["ids"]);
        let out = base.model.forward(&[&ids], None, &[], Logits::All).unwrap();
        let logits = out.logits.unwrap().to_vec2::<f32>().unwrap();
        for (pos, (row, want)) in logits
            .iter()
            .zip(prompt["positions"].as_array().unwrap())
            .enumerate()
        {
            let top = want["top"].as_array().unwrap();
            let want_top1 = top[0][0].as_u64().unwrap() as u32;
            let margin = want["margin"].as_f64().unwrap();
            let got_top1 = lensd_engine::generate::argmax(row);
            a.positions += 1;
            a.argmax_equal += (got_top1 == want_top1) as usize;
            if margin >= near_tie {
                a.decisive += 1;
                a.decisive_equal += (got_top1 == want_top1) as usize;
                assert_eq!(
                    got_top1, want_top1,
                    "{what} {:?} position {pos}: argmax {got_top1}, llama.cpp {want_top1} (margin {margin:.2})",
                    prompt["text"]
                );
            }
            for entry in top {
                let id = entry[0].as_u64().unwrap() as usize;
                let diff = (row[id] as f64 - entry[1].as_f64().unwrap()).abs();
                a.max_top5_diff = a.max_top5_diff.max(diff);
                a.mean_top5_diff += diff;
                compared += 1;
            }
        }
    }
    a.mean_top5_diff /= compared as f64;
    eprintln!(
        "{what}: argmax equal at {}/{} positions ({:.1}%), {}/{} decisive; top-5 logit diff max {:.3} mean {:.3}",
        a.argmax_equal,
        a.positions,
        100.0 * a.argmax_equal as f64 / a.positions as f64,
        a.decisive_equal,
        a.decisive,
        a.max_top5_diff,
        a.mean_top5_diff
    );
    a
}

/// Greedy generations of every case of `golden`, rendered with the base's chat template; ids
/// must agree up to the first step whose margin is under `near_tie`. Returns the number of
/// generated tokens compared.
pub fn compare_generation(
    base: &Base,
    golden: &serde_json::Value,
    near_tie: f64,
    what: &str,
) -> usize {
    let mut covered = 0;
    for case in golden["cases"].as_array().unwrap() {
        let user = case["messages"][0]["content"].as_str().unwrap();
        let rendered = base.chat_prompt(user).unwrap();
        assert_eq!(
            rendered,
            case["rendered"].as_str().unwrap(),
            "chat template rendering"
        );
        let prompt = base.tokenizer.encode_prompt(&rendered, true).unwrap();
        assert_eq!(
            prompt,
            crate::common::ids_of(&case["prompt_ids"]),
            "prompt ids for {user:?}"
        );
        let want = crate::common::ids_of(&case["generated"]);
        let margins: Vec<f64> = case["margins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_f64().unwrap())
            .collect();
        let decisive = margins
            .iter()
            .position(|&m| m < near_tie)
            .unwrap_or(want.len());
        let params = SamplingParams {
            max_tokens: want.len(),
            ..SamplingParams::default()
        };
        let got = generate(base, &prompt, &params, &mut |_| ControlFlow::Continue(())).unwrap();
        assert_eq!(
            &got.ids[..decisive.min(got.ids.len())],
            &want[..decisive],
            "{what} {user:?}: greedy ids differ before the first near-tie (step {decisive})"
        );
        covered += decisive;
    }
    eprintln!("{what}: {covered} generated tokens compared before near-ties");
    covered
}
