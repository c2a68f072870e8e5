//! Comparing a lens analysis with the tuned-lens package's numbers (golden files written by
//! tools/gen_tiny_tuned_lens.py and tools/gen_tiny_families.py).

use std::collections::HashMap;

use candle_core::Tensor;
use lensd_core::Analysis;

/// Agreement required per cell: both sides compute in f32.
pub const TOL: f32 = 1e-4;

fn v1(t: &Tensor) -> Vec<f32> {
    t.to_vec1().unwrap()
}

/// Compares an analysis with the package's numbers stored under `prefix` (`""` or `logit_`).
pub fn check(a: &Analysis, want: &HashMap<String, Tensor>, prefix: &str, s: usize) {
    for row in &a.layers {
        let i = row.layer;
        let key = |k: &str| format!("{prefix}{k}.{s}.{i}");
        let ent = v1(&want[&key("entropy")]);
        let kl = v1(&want[&key("kl")]);
        let top_ids: Vec<Vec<i64>> = want[&key("topk_ids")].to_vec2().unwrap();
        let top_p: Vec<Vec<f32>> = want[&key("topk_probs")].to_vec2().unwrap();
        for (pos, c) in row.positions.iter().enumerate() {
            let at = format!("{prefix}lens sequence {s} layer {i} position {pos}");
            assert!(
                (c.entropy - ent[pos]).abs() < TOL,
                "{at}: entropy {} vs {}",
                c.entropy,
                ent[pos]
            );
            assert!(
                (c.kl_to_final - kl[pos]).abs() < TOL,
                "{at}: KL {} vs {}",
                c.kl_to_final,
                kl[pos]
            );
            for (k, t) in c.top.iter().enumerate() {
                assert!(
                    (t.prob - top_p[pos][k]).abs() < TOL,
                    "{at}: top-{k} prob {} vs {}",
                    t.prob,
                    top_p[pos][k]
                );
                // Ids must agree unless two probabilities are tied within the tolerance.
                if t.id as i64 != top_ids[pos][k] {
                    let tied = top_p[pos]
                        .iter()
                        .filter(|p| (*p - t.prob).abs() < TOL)
                        .count()
                        > 1;
                    assert!(tied, "{at}: top-{k} id {} vs {}", t.id, top_ids[pos][k]);
                }
            }
        }
    }
}
