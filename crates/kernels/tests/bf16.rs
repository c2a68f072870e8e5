//! The bf16 products against their definition: every value equal to the bit to the plain-Rust
//! sequence [`dot`] (on a CPU with AVX-512 BF16 this checks the hardware kernel, elsewhere the
//! fallback), the rounding equal to the hardware's on ties, subnormals and overflow, and every
//! value within the bound of two bf16 roundings of the exact product.

use lensd_kernels::bf16::{
    dot, fast, from_bf16, matmul, matmul_blocks, row_to_bf16, to_bf16, Bf16Rows, Scratch,
};
use lensd_kernels::{BlockType, KernelError};
use rand::{Rng, SeedableRng};

mod common;
use common::random_blocks;

fn randn(len: usize, rng: &mut impl Rng) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-2.0f32..2.0)).collect()
}

fn product(w: &[f32], n: usize, x: &[f32], rows: usize, d: usize) -> Vec<f32> {
    let packed = Bf16Rows::new(x, rows, d).unwrap();
    let mut out = vec![f32::NAN; rows * n];
    let mut scratch = Scratch::default();
    matmul(w, n, &packed, &mut out, &mut scratch).unwrap();
    out
}

#[test]
fn every_value_is_the_pairwise_sequence_to_the_bit() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    eprintln!("bf16 products in hardware: {}", fast());
    // Row counts around the 12 a group of rows holds; matrix rows around the 16 of a panel and
    // the 32 of a strip; lengths odd, even, and around the 32 values a rounding takes.
    for &(rows, n, d) in &[
        (1, 1, 1),
        (1, 5, 2),
        (15, 13, 31),
        (16, 12, 32),
        (17, 29, 33),
        (33, 4, 64),
        (50, 3, 100),
        (64, 40, 576),
        (12, 32, 8),
        (24, 64, 7),
        (25, 33, 2),
    ] {
        let x = randn(rows * d, &mut rng);
        let w = randn(n * d, &mut rng);
        let got = product(&w, n, &x, rows, d);
        for i in 0..rows {
            let xi = row_to_bf16(&x[i * d..(i + 1) * d]);
            for j in 0..n {
                let want = dot(&xi, &row_to_bf16(&w[j * d..(j + 1) * d]));
                assert_eq!(
                    got[i * n + j].to_bits(),
                    want.to_bits(),
                    "{rows}x{n}x{d}: row {i}, column {j}: {} against {want}",
                    got[i * n + j]
                );
            }
        }
    }
}

#[test]
fn the_matrix_is_rounded_as_the_hardware_rounds_it() {
    // A matrix of one column read back by a row of 1: out[j] = bf16(w[j]).
    let specials: Vec<f32> = [
        0x3F80_8000u32, // a tie below an even value: stays
        0x3F81_8000,    // a tie below an odd value: rounds up
        0x3F80_8001,    // just above a tie
        0xBF81_7FFF,    // just below a tie, negative
        0x0000_0001,    // subnormal: a zero
        0x8040_0000,    // negative subnormal: a negative zero
        0x0080_0000,    // the smallest normal
        0x7F7F_FFFF,    // the largest f32: rounds to infinity
        0x7F80_0000,    // infinity
        0x4049_0FDB,    // pi
    ]
    .iter()
    .map(|&b| f32::from_bits(b))
    .collect();
    let got = product(&specials, specials.len(), &[1.0], 1, 1);
    for (i, &v) in specials.iter().enumerate() {
        let want = from_bf16(to_bf16(v));
        // The sum starts at +0, so a rounded -0 comes back as +0.
        assert!(
            got[i].to_bits() == want.to_bits() || (got[i] == 0.0 && want == 0.0),
            "{:#010x} became {:#010x}, {:#010x} expected",
            v.to_bits(),
            got[i].to_bits(),
            want.to_bits()
        );
    }
    assert_eq!(to_bf16(f32::from_bits(0x3F80_8000)), 0x3F80);
    assert_eq!(to_bf16(f32::from_bits(0x3F81_8000)), 0x3F82);
    assert_eq!(to_bf16(f32::from_bits(0x8040_0000)), 0x8000);
    assert_eq!(to_bf16(f32::MAX), 0x7F80);
    assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
}

#[test]
fn every_value_is_within_two_roundings_of_the_exact_product() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let (rows, n, d) = (40, 30, 640);
    let x = randn(rows * d, &mut rng);
    let w = randn(n * d, &mut rng);
    let got = product(&w, n, &x, rows, d);
    for i in 0..rows {
        for j in 0..n {
            let (xi, wj) = (&x[i * d..(i + 1) * d], &w[j * d..(j + 1) * d]);
            let exact: f64 = xi.iter().zip(wj).map(|(&a, &b)| a as f64 * b as f64).sum();
            let size: f64 = xi
                .iter()
                .zip(wj)
                .map(|(&a, &b)| (a as f64 * b as f64).abs())
                .sum();
            // Each factor moves by at most 2⁻⁹ of itself; the f32 sum adds d roundings.
            let bound = size * (2f64.powi(-8) + 2f64.powi(-18) + d as f64 * 2f64.powi(-24));
            let err = (got[i * n + j] as f64 - exact).abs();
            assert!(
                err <= bound,
                "row {i}, column {j}: off by {err}, bound {bound}"
            );
        }
    }
}

#[test]
fn sizes_that_do_not_fit_are_named() {
    let x = vec![0f32; 6];
    assert_eq!(
        Bf16Rows::new(&x, 2, 4).err(),
        Some(KernelError::Length {
            what: "the rows",
            want: 8,
            got: 6
        })
    );
    let packed = Bf16Rows::new(&x, 2, 3).unwrap();
    let mut scratch = Scratch::default();
    let mut out = vec![0f32; 4];
    assert_eq!(
        matmul(&[0.0; 5], 2, &packed, &mut out, &mut scratch),
        Err(KernelError::Length {
            what: "the matrix",
            want: 6,
            got: 5
        })
    );
    assert_eq!(
        matmul(&[0.0; 6], 2, &packed, &mut out[..3], &mut scratch),
        Err(KernelError::Length {
            what: "the output",
            want: 4,
            got: 3
        })
    );
}

#[test]
fn a_quantized_matrix_gives_the_products_of_its_dequantized_rows_to_the_bit() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    // Matrix rows around the 16 of a panel and the 32 a pass rounds; one to three blocks a row.
    for ty in BlockType::ALL {
        let b = ty.block_values();
        for &(rows, n, d) in &[(1, 1, b), (13, 31, 2 * b), (25, 33, 3 * b), (12, 16, b)] {
            let data = random_blocks(ty, n, d, &mut rng);
            let mut w = vec![0f32; n * d];
            ty.dequantize(&data, &mut w);
            let x = randn(rows * d, &mut rng);
            let packed = Bf16Rows::new(&x, rows, d).unwrap();
            let mut got = vec![f32::NAN; rows * n];
            matmul_blocks(ty, &data, n, &packed, &mut got, &mut Scratch::default()).unwrap();
            let want = product(&w, n, &x, rows, d);
            let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{ty:?}, {rows}x{n}x{d}");
        }
    }
    // Rows that are not whole blocks, and a matrix of the wrong size, are named.
    let packed = Bf16Rows::new(&[0.0; 40], 1, 40).unwrap();
    let mut out = vec![0f32; 2];
    assert_eq!(
        matmul_blocks(
            BlockType::Q8_0,
            &[0; 68],
            2,
            &packed,
            &mut out,
            &mut Scratch::default()
        ),
        Err(KernelError::RowNotWholeBlocks {
            ty: BlockType::Q8_0,
            k: 40,
            block: 32
        })
    );
    let packed = Bf16Rows::new(&[0.0; 32], 1, 32).unwrap();
    assert!(matches!(
        matmul_blocks(
            BlockType::Q8_0,
            &[0; 67],
            2,
            &packed,
            &mut out,
            &mut Scratch::default()
        ),
        Err(KernelError::WeightBytes { got: 67, .. })
    ));
}
