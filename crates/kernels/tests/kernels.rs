//! Every kernel level against the portable path, and the portable path against the definition
//! (dequantize both sides, multiply in f64), on random blocks of every type.

use half::f16;
use lensd_kernels::act::{quantize_row256, quantize_row32, Act256, Act32};
use lensd_kernels::{matmul_many_with, matmul_with, BlockType, KernelError, Level, Matrix, Serial};
use rand::SeedableRng;

mod common;
use common::{random_blocks, random_x, scale_fields, EveryTaskOnItsOwnThread};

fn run(level: Level, ty: BlockType, w: &[u8], n: usize, k: usize, x: &[f32], m: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; m * n];
    matmul_with(level, ty, w, n, k, x, m, &mut out, &Serial).unwrap();
    out
}

/// The activations as the kernels see them: quantized to 8 bits, then widened; and for the
/// 32-value types each block's `s` (their products use it for the weights' zero point).
fn dequantized_x(ty: BlockType, x: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let mut out = Vec::with_capacity(x.len());
    let mut sums = Vec::new();
    if ty.block_values() == 32 {
        let mut a = vec![Act32::default(); x.len() / 32];
        quantize_row32(x, &mut a);
        for a in &a {
            out.extend(a.q.iter().map(|&q| q as f32 * a.d));
            sums.push(if ty == BlockType::Q4_1 { a.s } else { 0.0 });
        }
    } else {
        let mut a = vec![Act256::default(); x.len() / 256];
        quantize_row256(x, &mut a);
        for a in &a {
            out.extend(a.q.iter().map(|&q| q as f32 * a.d));
        }
    }
    (out, sums)
}

const SHAPES: [(usize, usize, usize); 5] =
    [(1, 1, 1), (1, 3, 7), (5, 2, 13), (3, 9, 4), (11, 2, 6)];

#[test]
fn the_portable_kernels_compute_the_dequantized_product() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    for ty in BlockType::ALL {
        for (m, blocks, n) in SHAPES {
            let k = blocks * ty.block_values();
            let w = random_blocks(ty, n, k, &mut rng);
            let x = random_x(m * k, &mut rng);
            let got = run(Level::Portable, ty, &w, n, k, &x, m);
            let mut wf = vec![0f32; n * k];
            ty.dequantize(&w, &mut wf);
            for i in 0..m {
                let (xq, sums) = dequantized_x(ty, &x[i * k..(i + 1) * k]);
                for j in 0..n {
                    let wrow = &wf[j * k..(j + 1) * k];
                    let terms = xq.iter().zip(wrow);
                    let want: f64 = terms.clone().map(|(&a, &b)| a as f64 * b as f64).sum();
                    let mag: f64 = terms.map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
                    // `Q4_1`'s `s` is rounded to f16 as llama.cpp stores it; it multiplies the
                    // block's minimum, at most its largest weight.
                    let zero_points: f64 = sums
                        .iter()
                        .zip(wrow.chunks(32))
                        .map(|(s, w)| {
                            let wmax = w.iter().fold(0f32, |m, v| m.max(v.abs()));
                            s.abs() as f64 * wmax as f64 / 1024.0
                        })
                        .sum();
                    let g = got[i * n + j] as f64;
                    assert!(
                        (g - want).abs() <= 1e-5 * mag + zero_points + 1e-30,
                        "{ty:?} m={m} k={k} n={n} [{i},{j}]: {g} vs {want} (scale {mag})"
                    );
                }
            }
        }
    }
}

#[test]
fn every_simd_level_equals_the_portable_kernels() {
    let levels = Level::available();
    println!("levels on this CPU: {levels:?}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    for level in levels.into_iter().filter(|&l| l != Level::Portable) {
        for ty in BlockType::ALL {
            for (m, blocks, n) in SHAPES.into_iter().chain([(2, 17, 5)]) {
                let k = blocks * ty.block_values();
                let w = random_blocks(ty, n, k, &mut rng);
                let x = random_x(m * k, &mut rng);
                let want = run(Level::Portable, ty, &w, n, k, &x, m);
                let got = run(level, ty, &w, n, k, &x, m);
                let mut wf = vec![0f32; n * k];
                ty.dequantize(&w, &mut wf);
                for i in 0..m {
                    for j in 0..n {
                        // The integer sums are equal; the float sums differ in order only.
                        let mag: f32 = x[i * k..(i + 1) * k]
                            .iter()
                            .zip(&wf[j * k..(j + 1) * k])
                            .map(|(a, b)| (a * b).abs())
                            .sum();
                        let (g, w) = (got[i * n + j], want[i * n + j]);
                        assert!(
                            (g - w).abs() <= 2e-6 * mag,
                            "{level:?} {ty:?} m={m} k={k} n={n} [{i},{j}]: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn extreme_values_give_the_portable_products() {
    // Every weight byte at one bit pattern (all values at their largest, or Q8_0's −128 and
    // 127) against activations that all quantize to ±127: the prompt kernels add several
    // `vpmaddubsw` results as i16 before widening, and these are the largest sums they meet.
    let (m, n, blocks) = (6, 9, 3);
    for ty in BlockType::ALL {
        let k = blocks * ty.block_values();
        for pattern in [0xFFu8, 0x80, 0x7F] {
            let mut w = vec![pattern; ty.bytes_for(n, k).unwrap()];
            for b in w.chunks_exact_mut(ty.block_bytes()) {
                for &at in scale_fields(ty) {
                    b[at..at + 2].copy_from_slice(&f16::from_f32(0.01).to_le_bytes());
                }
            }
            for sign in [1.0f32, -1.0] {
                let x = vec![sign; m * k];
                let want = run(Level::Portable, ty, &w, n, k, &x, m);
                for level in Level::available() {
                    let got = run(level, ty, &w, n, k, &x, m);
                    for (g, w) in got.iter().zip(&want) {
                        assert!(
                            (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                            "{level:?} {ty:?} bytes {pattern:#x}, x = {sign}: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn tasks_on_many_threads_give_the_serial_result() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    for ty in [BlockType::Q4_1, BlockType::Q6K] {
        // Large enough for several tasks.
        let (m, n, k) = (3, 300, 4 * 256);
        let w = random_blocks(ty, n, k, &mut rng);
        let x = random_x(m * k, &mut rng);
        let level = Level::detect();
        let serial = run(level, ty, &w, n, k, &x, m);
        let mut par = vec![f32::NAN; m * n];
        matmul_with(
            level,
            ty,
            &w,
            n,
            k,
            &x,
            m,
            &mut par,
            &EveryTaskOnItsOwnThread,
        )
        .unwrap();
        assert_eq!(serial, par, "{ty:?}");
    }
}

#[test]
fn several_matrices_in_one_run_equal_their_products_one_by_one() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    let k = 2 * 256;
    // 32- and 256-value types together, sizes that are not multiples of the row groups, and an
    // empty matrix.
    let types = [
        BlockType::Q4_1,
        BlockType::Q6K,
        BlockType::Q8_0,
        BlockType::Q4K,
    ];
    let rows = [37, 130, 0, 9];
    let ws: Vec<Vec<u8>> = types
        .iter()
        .zip(rows)
        .map(|(&ty, n)| random_blocks(ty, n, k, &mut rng))
        .collect();
    let mats: Vec<Matrix> = types
        .iter()
        .zip(rows)
        .zip(&ws)
        .map(|((&ty, n), w)| Matrix { ty, w, n })
        .collect();
    let total: usize = rows.iter().sum();
    for level in Level::available() {
        for m in [1, 6] {
            let x = random_x(m * k, &mut rng);
            let mut out = vec![f32::NAN; m * total];
            matmul_many_with(level, &mats, k, &x, m, &mut out, &EveryTaskOnItsOwnThread).unwrap();
            let mut col = 0;
            for mat in &mats {
                let one = run(level, mat.ty, mat.w, mat.n, k, &x, m);
                for i in 0..m {
                    assert_eq!(
                        &out[i * total + col..i * total + col + mat.n],
                        &one[i * mat.n..(i + 1) * mat.n],
                        "{level:?}, {:?}, row {i}",
                        mat.ty
                    );
                }
                col += mat.n;
            }
        }
    }
}

#[test]
fn shapes_that_do_not_fit_are_refused_by_name() {
    let w = vec![0u8; 20 * 2];
    // Two Q4_1 rows of `k` values: the error for weights `w`, input `x` and output `out`.
    let refused = |w: &[u8], k: usize, x: &[f32], out: &mut [f32]| {
        matmul_with(
            Level::Portable,
            BlockType::Q4_1,
            w,
            2,
            k,
            x,
            1,
            out,
            &Serial,
        )
        .unwrap_err()
    };
    let mut out = vec![0f32; 2];
    let e = refused(&w, 33, &[0.0; 33], &mut out);
    assert_eq!(
        e,
        KernelError::RowNotWholeBlocks {
            ty: BlockType::Q4_1,
            k: 33,
            block: 32
        }
    );
    assert!(e.to_string().contains("33"), "{e}");
    let e = refused(&w[..39], 32, &[0.0; 32], &mut out);
    assert_eq!(e.to_string(), "Q4_1 weights of 2x32 need 40 bytes, got 39");
    let e = refused(&w, 32, &[0.0; 31], &mut out);
    assert_eq!(e.to_string(), "the input holds 31 values, 32 expected");
    let e = refused(&w, 32, &[0.0; 32], &mut out[..1]);
    assert_eq!(e.to_string(), "the output holds 1 values, 2 expected");
}

#[test]
fn a_zero_row_gives_zeros_and_no_nan() {
    for ty in BlockType::ALL {
        let k = ty.block_values();
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let w = random_blocks(ty, 3, k, &mut rng);
        for level in Level::available() {
            assert_eq!(
                run(level, ty, &w, 3, k, &vec![0.0; k], 1),
                vec![0.0; 3],
                "{ty:?} {level:?}"
            );
        }
    }
}

#[test]
fn the_fma_peak_measures_work_that_ran() {
    // A loop the compiler removed would report an impossible rate: no core completes 10¹² f32
    // multiply-adds a second (a 5 GHz core with two 16-lane FMA units does 1.6·10¹¹).
    for threads in [1, 2] {
        let rate = lensd_kernels::peak::fma_macs_per_s(threads, 2_000_000);
        assert!(
            rate > 1e8 && rate < 1e12 * threads as f64,
            "{threads} threads: {rate}"
        );
    }
}

/// `vpdpbusd` forms the same integer sums as `vpmaddubsw` and `vpmaddwd`, and the float work
/// after them is the same: the VNNI level's products equal the AVX2 level's to the bit.
#[test]
fn the_vnni_level_gives_the_avx2_levels_bits() {
    let levels = Level::available();
    if !levels.contains(&Level::Avx512Vnni) {
        eprintln!("this CPU lacks AVX-512 VNNI; levels: {levels:?}");
        return;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    for ty in BlockType::ALL {
        for (m, blocks, n) in SHAPES.into_iter().chain([(2, 17, 5), (13, 3, 17)]) {
            let k = blocks * ty.block_values();
            let w = random_blocks(ty, n, k, &mut rng);
            let x = random_x(m * k, &mut rng);
            let want = run(Level::Avx2, ty, &w, n, k, &x, m);
            let got = run(Level::Avx512Vnni, ty, &w, n, k, &x, m);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{ty:?} m={m} k={k} n={n}");
        }
    }
}
