//! A row's statistics accumulated from blocks in any order and partial rows merged, against
//! their definitions computed over the whole row in f64, on every level.

use lensd_kernels::logit_stats::{RowAcc, RowQuery};
use lensd_kernels::Level;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

struct Want {
    lse: f64,
    entropy: f64,
    sum_px: f64,
    rank: u32,
    top: Vec<u32>,
}

fn definitions(x: &[f32], p: &[f32], target_id: usize, k: usize) -> Want {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let s: f64 = x.iter().map(|&v| (v as f64 - m).exp()).sum();
    let lse = m + s.ln();
    let entropy = -x
        .iter()
        .map(|&v| {
            let lq = v as f64 - lse;
            lq.exp() * lq
        })
        .sum::<f64>();
    let mut order: Vec<u32> = (0..x.len() as u32).collect();
    order.sort_by(|&a, &b| x[b as usize].total_cmp(&x[a as usize]).then(a.cmp(&b)));
    order.truncate(k);
    Want {
        lse,
        entropy,
        sum_px: x.iter().zip(p).map(|(&v, &q)| v as f64 * q as f64).sum(),
        rank: 1 + x.iter().filter(|&&v| v > x[target_id]).count() as u32,
        top: order,
    }
}

#[test]
fn blocks_in_any_order_and_merged_parts_give_the_rows_statistics() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    for case in 0..40 {
        let v = rng.random_range(1..3000);
        let spread = [0.1f32, 4.0, 40.0][case % 3];
        let mut x: Vec<f32> = (0..v).map(|_| rng.random_range(-spread..spread)).collect();
        let target_id = rng.random_range(0..v);
        // Exact ties with the target, and values just either side of it.
        for _ in 0..rng.random_range(0..4) {
            let j = rng.random_range(0..v);
            x[j] = x[target_id];
        }
        if v > 2 {
            x[(target_id + 1) % v] = f32::from_bits(x[target_id].to_bits() + 1);
            x[(target_id + 2) % v] = f32::from_bits(x[target_id].to_bits() - 1);
        }
        let mut p: Vec<f32> = (0..v).map(|_| rng.random_range(0.0..1.0)).collect();
        let total: f32 = p.iter().sum();
        p.iter_mut().for_each(|q| *q /= total);
        let k = rng.random_range(1..12);
        let pick = rng.random_range(0..v) as u32;
        let t = x[target_id];
        let q = RowQuery {
            p: &p,
            target_id: target_id as u32,
            near: t - t.abs() * 1e-5 - 1e-30,
            above: t + t.abs() * 1e-5 + 1e-30,
            pick: Some(pick),
            k,
        };
        let want = definitions(&x, &p, target_id, k);
        // Blocks of random sizes, added to two parts in a random order, then merged.
        let mut cuts: Vec<usize> = (0..rng.random_range(0..8))
            .map(|_| rng.random_range(0..=v))
            .collect();
        cuts.extend([0, v]);
        cuts.sort_unstable();
        let mut blocks: Vec<(usize, usize)> = cuts.windows(2).map(|w| (w[0], w[1])).collect();
        blocks.shuffle(&mut rng);
        let mut results = Vec::new();
        for level in Level::available() {
            let mut parts = [RowAcc::default(), RowAcc::default()];
            for (i, &(a, b)) in blocks.iter().enumerate() {
                parts[i % 2].add_block_with(level, &x[a..b], a, &q);
            }
            let [mut acc, other] = parts;
            acc.merge(other, k);
            let tol = 2e-6 * (1.0 + want.lse.abs());
            assert!((acc.log_sum_exp() - want.lse).abs() < tol, "case {case}");
            assert!(
                (acc.entropy() - want.entropy).abs() < tol,
                "case {case}: {} {}",
                acc.entropy(),
                want.entropy
            );
            assert!(
                (acc.sum_px - want.sum_px).abs() < 1e-5 * spread as f64,
                "case {case}"
            );
            assert_eq!(acc.rank(), want.rank, "case {case}");
            let top: Vec<u32> = acc.top.iter().map(|t| t.0).collect();
            assert_eq!(top, want.top, "case {case}");
            assert_eq!(acc.picked, Some(x[pick as usize]), "case {case}");
            results.push(acc);
        }
        // Every level runs the same code: the same numbers.
        assert!(results.windows(2).all(|w| w[0] == w[1]), "case {case}");
    }
}

#[test]
fn a_row_with_one_value_has_zero_entropy_and_rank_one() {
    let q = RowQuery {
        p: &[1.0],
        target_id: 0,
        near: 2.0,
        above: 2.0,
        pick: None,
        k: 3,
    };
    let mut acc = RowAcc::default();
    acc.add_block(&[2.0], 0, &q);
    assert_eq!(acc.entropy(), 0.0);
    assert_eq!(acc.log_sum_exp(), 2.0);
    assert_eq!(acc.rank(), 1);
    assert_eq!(acc.top, vec![(0, 2.0)]);
    assert_eq!(acc.picked, None);
}
