//! Quantized matrices multiplied in f32 panels (`panel`, a lens analysis's unembedding) against
//! their definition: every value equal to the bit to `dot` of the dequantized row, at every
//! level this CPU runs, for row counts around each level's tile and matrices around the panel;
//! and bad sizes are errors naming what was wrong.

use lensd_kernels::panel::{dot, matmul, matmul_tiles};
use lensd_kernels::{BlockType, KernelError, Level};
use rand::SeedableRng;

mod common;
use common::{random_blocks, random_x};

#[test]
fn every_level_gives_the_sequence_of_dot_to_the_bit() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    for ty in BlockType::ALL {
        let b = ty.block_values();
        // Rows around the tiles of 3, 4 and 12 rows; matrix rows around the panel of 32.
        for &(m, n, k) in &[
            (1, 1, b),
            (13, 33, 2 * b),
            (25, 31, b),
            (3, 64, 3 * b),
            (12, 32, b),
        ] {
            let w = random_blocks(ty, n, k, &mut rng);
            let x = random_x(m * k, &mut rng);
            let mut rows = vec![0f32; n * k];
            ty.dequantize(&w, &mut rows);
            let want: Vec<u32> = (0..m * n)
                .map(|at| {
                    let (i, j) = (at / n, at % n);
                    dot(&x[i * k..(i + 1) * k], &rows[j * k..(j + 1) * k]).to_bits()
                })
                .collect();
            for level in Level::available() {
                let mut out = vec![f32::NAN; m * n];
                matmul(level, ty, &w, n, k, &x, m, &mut out, &mut Vec::new()).unwrap();
                let got: Vec<u32> = out.iter().map(|v| v.to_bits()).collect();
                assert_eq!(got, want, "{ty:?} {m}x{n}x{k} at {level:?}");
            }
        }
    }
}

#[test]
fn tiles_give_every_row_once_in_order_with_the_products_values() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    let ty = BlockType::Q4_1;
    let (n, k) = (70, 64);
    let w = random_blocks(ty, n, k, &mut rng);
    for m in [1, 2, 5, 8, 12, 13, 23, 40] {
        let x = random_x(m * k, &mut rng);
        for level in Level::available() {
            let mut want = vec![0f32; m * n];
            matmul(level, ty, &w, n, k, &x, m, &mut want, &mut Vec::new()).unwrap();
            let mut got = Vec::new();
            let mut scratch = Vec::new();
            matmul_tiles(level, ty, &w, n, k, &x, m, &mut scratch, &mut |i0, rows| {
                assert_eq!(i0 * n, got.len(), "{m} rows at {level:?}: tiles in order");
                assert!(!rows.is_empty() && rows.len() % n == 0);
                got.extend_from_slice(rows);
            })
            .unwrap();
            let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{m} rows at {level:?}");
        }
    }
}

#[test]
fn bad_sizes_are_named() {
    let level = Level::detect();
    let w = vec![0u8; 34];
    let mut out = vec![0f32; 2];
    assert_eq!(
        matmul(
            level,
            BlockType::Q8_0,
            &w,
            1,
            32,
            &[0.0; 31],
            1,
            &mut out[..1],
            &mut Vec::new()
        ),
        Err(KernelError::Length {
            what: "the input",
            want: 32,
            got: 31
        })
    );
    assert_eq!(
        matmul(
            level,
            BlockType::Q8_0,
            &w,
            1,
            32,
            &[0.0; 64],
            2,
            &mut out[..1],
            &mut Vec::new()
        ),
        Err(KernelError::Length {
            what: "the output",
            want: 2,
            got: 1
        })
    );
    assert!(matches!(
        matmul(
            level,
            BlockType::Q8_0,
            &w,
            2,
            32,
            &[0.0; 32],
            1,
            &mut out,
            &mut Vec::new()
        ),
        Err(KernelError::WeightBytes { got: 34, .. })
    ));
}
