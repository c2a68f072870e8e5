//! A CPU analysis whose unembedding runs in bf16 (`Unembed::Bf16`) against the same analysis in
//! f32, on the demo model and Gemma-3-270M loaded in f32: every statistic of every cell within
//! the stated tolerances. Only the unembedding differs (the forward pass is f32 in both), so
//! these bound what the bf16 products do to the numbers a user reads.

mod common;

use std::ops::ControlFlow;

use lensd_core::{Analysis, Cell};
use lensd_engine::lens::analyze::{analyze, AnalyzeOptions, StatsAt, Unembed};
use lensd_engine::lens::Lens;
use lensd_engine::{Base, ComputeDtype, LoadOptions};

// Measured on this file's two texts (demo 2,046 cells, Gemma-3-270M 1,159): the largest
// differences were top-k probability 0.036, entropy 0.067 nats, KL ÷ (1 + KL) 0.0086,
// cross-entropy ÷ (1 + CE) 0.012; the medians top-1 probability 0.0012, entropy 0.0038. The
// bounds below are about twice those.

/// Largest difference of any top-k probability, in any cell.
const PROB_MAX: f32 = 0.06;
/// Largest entropy difference, nats.
const ENTROPY_MAX: f32 = 0.12;
/// Largest KL and next-token cross-entropy differences ÷ (1 + f32's value): a logit moves with
/// the size of its products, so the far-off layers' values of tens to hundreds of nats move
/// most.
const KL_MAX: f32 = 0.02;
const CE_MAX: f32 = 0.025;
/// The median cell's top-1 probability and entropy differences.
const MEDIAN_MAX: f32 = 0.006;
/// A top-1, and each of the top-k, are compared only where f32's neighbouring logits are at
/// least this far apart (bf16 moves a logit by up to 2⁻⁸ · Σ|xᵢ wᵢ|, over 0.1 in Gemma's
/// first layers, whose activations are outsized).
const MARGIN: f32 = 0.5;

const TEXTS: &[&str] = &[
    "Lenses read what a transformer predicts at every layer. The capital of France is Paris. \
     The capital of Germany is Berlin, and the capital of Spain is Madrid.",
    "fn main() { let xs: Vec<u32> = (0..10).collect(); println!(\"{:?}\", xs); }",
];

fn analyse(base: &Base, ids: &[u32], unembed: Unembed) -> Analysis {
    let opts = AnalyzeOptions {
        stats: StatsAt::Host,
        unembed,
        ..AnalyzeOptions::new((0..=base.config().n_layers).collect(), 5)
    };
    analyze(base, &[&Lens::Logit], ids, &opts, &mut |_| {
        ControlFlow::Continue(())
    })
    .unwrap()
    .remove(0)
}

#[derive(Default)]
struct Diffs {
    top1: Vec<f32>,
    entropy: Vec<f32>,
    largest: [f32; 4],
    top1_compared: usize,
}

/// Compares two cells; `where_` names the cell in a failure.
fn compare(w: &Cell, g: &Cell, where_: &str, d: &mut Diffs) {
    let lp = |c: &Cell, i: usize| c.top[i].prob.ln();
    if lp(w, 0) - lp(w, 1) >= MARGIN {
        d.top1_compared += 1;
        assert_eq!(w.top[0].id, g.top[0].id, "{where_}: top-1 differs");
    }
    for (i, t) in w.top.iter().enumerate() {
        // The k-th is clear only of what follows it, which the cell does not hold.
        let clear = (i == 0 || lp(w, i - 1) - lp(w, i) >= MARGIN)
            && w.top
                .get(i + 1)
                .is_some_and(|n| t.prob.ln() - n.prob.ln() >= MARGIN);
        if clear {
            assert_eq!(t.id, g.top[i].id, "{where_}: top-{} differs", i + 1);
        }
        if let Some(gt) = g.top.iter().find(|gt| gt.id == t.id) {
            let diff = (t.prob - gt.prob).abs();
            assert!(
                diff <= PROB_MAX,
                "{where_}: p({}) {} against {}",
                t.id,
                t.prob,
                gt.prob
            );
            d.largest[0] = d.largest[0].max(diff);
        }
    }
    if w.top[0].id == g.top[0].id {
        d.top1.push((w.top[0].prob - g.top[0].prob).abs());
    }
    let de = (w.entropy - g.entropy).abs();
    assert!(
        de <= ENTROPY_MAX,
        "{where_}: entropy {} against {}",
        w.entropy,
        g.entropy
    );
    d.entropy.push(de);
    let dk = (w.kl_to_final - g.kl_to_final).abs() / (1.0 + w.kl_to_final);
    assert!(
        dk <= KL_MAX,
        "{where_}: KL {} against {}",
        w.kl_to_final,
        g.kl_to_final
    );
    let dc = match (w.next_token_ce, g.next_token_ce) {
        (Some(a), Some(b)) => (a - b).abs() / (1.0 + a),
        (a, b) => {
            assert_eq!(a, b, "{where_}: next-token cross-entropy");
            0.0
        }
    };
    assert!(
        dc <= CE_MAX,
        "{where_}: next-token cross-entropy {:?} against {:?}",
        w.next_token_ce,
        g.next_token_ce
    );
    d.largest[1] = d.largest[1].max(de);
    d.largest[2] = d.largest[2].max(dk);
    d.largest[3] = d.largest[3].max(dc);
}

fn check(name: &str, base: &Base) {
    let bf16 = Unembed::Bf16.effective() == Unembed::Bf16;
    eprintln!(
        "{name}: unembedding in {}",
        if bf16 {
            "bf16"
        } else {
            "f32 (no AVX-512 BF16 here)"
        }
    );
    let mut d = Diffs::default();
    for text in TEXTS {
        let ids = base.tokenizer.encode(text, false).unwrap();
        let (want, got) = (
            analyse(base, &ids, Unembed::F32),
            analyse(base, &ids, Unembed::Bf16),
        );
        for (wl, gl) in want.layers.iter().zip(&got.layers) {
            for (p, (w, g)) in wl.positions.iter().zip(&gl.positions).enumerate() {
                compare(
                    w,
                    g,
                    &format!("{name}, layer {}, position {p}", wl.layer),
                    &mut d,
                );
            }
        }
    }
    let median = |v: &mut Vec<f32>| {
        v.sort_by(f32::total_cmp);
        v[v.len() / 2]
    };
    let (mp, me) = (median(&mut d.top1), median(&mut d.entropy));
    eprintln!(
        "{name}: {} cells, {} top-1 compared; largest |Δ| top-k p {:.2e}, entropy {:.2e}, \
         KL÷(1+KL) {:.2e}, next-token CE÷(1+CE) {:.2e}; median |Δ| top-1 p {mp:.2e}, entropy {me:.2e}",
        d.entropy.len(),
        d.top1_compared,
        d.largest[0],
        d.largest[1],
        d.largest[2],
        d.largest[3]
    );
    assert!(
        mp <= MEDIAN_MAX && me <= MEDIAN_MAX,
        "{name}: medians {mp}, {me}"
    );
    assert!(
        d.top1_compared * 2 > d.entropy.len(),
        "{name}: too few clear top-1s"
    );
}

#[test]
fn the_demo_models_statistics_agree_with_an_f32_unembedding() {
    let _lock = common::compute_lock();
    check("demo", common::demo(ComputeDtype::F32));
}

#[test]
fn gemma3s_statistics_agree_with_an_f32_unembedding() {
    let Some(path) = common::gemma3_model() else {
        return;
    };
    let _lock = common::compute_lock();
    let base = Base::load(
        &path,
        LoadOptions {
            compute: ComputeDtype::F32,
        },
    )
    .unwrap();
    check("gemma-3-270m", &base);
}
