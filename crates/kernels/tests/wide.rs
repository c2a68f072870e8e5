//! Quantized matrices multiplied in f32 (`wide`) against their definition: every value equal
//! to the bit to `dot` of the dequantized row, at every level this CPU runs, for any number of
//! rows and threads; and bad sizes are errors naming what was wrong.

use lensd_kernels::wide::{dot, matmul, matmul_serial, path_name};
use lensd_kernels::{BlockType, KernelError, Level, Serial};
use rand::SeedableRng;

mod common;
use common::{random_blocks, random_x, EveryTaskOnItsOwnThread};

/// The definition: each weight row dequantized, then `dot` with each row of `x`.
fn reference(ty: BlockType, w: &[u8], n: usize, k: usize, x: &[f32], m: usize) -> Vec<f32> {
    let mut rows = vec![0f32; n * k];
    ty.dequantize(w, &mut rows);
    let mut out = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = dot(&x[i * k..(i + 1) * k], &rows[j * k..(j + 1) * k]);
        }
    }
    out
}

fn same_bits(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (at, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            g.to_bits(),
            w.to_bits(),
            "{what}: value {at}: {g} against {w}"
        );
    }
}

#[test]
fn every_value_is_the_defined_sequence_at_every_level() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    // Rows of x around the 4 of a tile; weight rows around the 6 of a tile and the 48 of a
    // strip; one, two and several blocks a row.
    let shapes = [
        (1, 1, 1),
        (3, 5, 1),
        (4, 6, 2),
        (5, 7, 3),
        (13, 47, 1),
        (17, 49, 2),
        (9, 97, 1),
    ];
    for ty in BlockType::ALL {
        for &(m, n, blocks) in &shapes {
            let k = blocks * ty.block_values();
            let w = random_blocks(ty, n, k, &mut rng);
            let x = random_x(m * k, &mut rng);
            let want = reference(ty, &w, n, k, &x, m);
            for level in Level::available() {
                let what = format!("{ty:?} {m}x{n}x{k} at {}", path_name(level));
                let mut out = vec![f32::NAN; m * n];
                matmul(level, ty, &w, n, k, &x, m, &mut out, &Serial).unwrap();
                same_bits(&out, &want, &what);
            }
        }
    }
}

#[test]
fn threads_and_row_counts_do_not_change_a_value() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let (ty, m, n, k) = (BlockType::Q4K, 11, 300, 512);
    let w = random_blocks(ty, n, k, &mut rng);
    let x = random_x(m * k, &mut rng);
    let level = Level::detect();
    let mut serial = vec![0f32; m * n];
    matmul(level, ty, &w, n, k, &x, m, &mut serial, &Serial).unwrap();
    let mut threaded = vec![0f32; m * n];
    matmul(
        level,
        ty,
        &w,
        n,
        k,
        &x,
        m,
        &mut threaded,
        &EveryTaskOnItsOwnThread,
    )
    .unwrap();
    same_bits(&threaded, &serial, "threads");
    // One row at a time, into a wider output: the same values, the rest left alone.
    let ld = n + 3;
    let mut scratch = Vec::new();
    for i in 0..m {
        let mut row = vec![-7f32; ld];
        let xi = &x[i * k..(i + 1) * k];
        matmul_serial(level, ty, &w, n, k, xi, 1, &mut row, ld, &mut scratch).unwrap();
        same_bits(&row[..n], &serial[i * n..(i + 1) * n], &format!("row {i}"));
        assert_eq!(row[n..], [-7.0; 3], "row {i}: past the columns");
    }
}

#[test]
fn bad_sizes_are_errors_naming_them() {
    let ty = BlockType::Q8_0;
    let w = vec![0u8; ty.bytes_for(2, 64).unwrap()];
    let x = vec![0f32; 3 * 64];
    let mut out = vec![0f32; 6];
    let level = Level::detect();
    let err = |r: Result<(), KernelError>| r.unwrap_err().to_string();
    assert_eq!(
        err(matmul(level, ty, &w, 2, 48, &x, 4, &mut out, &Serial)),
        "a row of 48 values is not a whole number of Q8_0 blocks of 32"
    );
    assert_eq!(
        err(matmul(level, ty, &w, 3, 64, &x, 3, &mut out, &Serial)),
        "Q8_0 weights of 3x64 need 204 bytes, got 136"
    );
    assert_eq!(
        err(matmul(level, ty, &w, 2, 64, &x, 2, &mut out, &Serial)),
        "the input holds 192 values, 128 expected"
    );
    assert_eq!(
        err(matmul(level, ty, &w, 2, 64, &x, 3, &mut out[..5], &Serial)),
        "the output holds 5 values, 6 expected"
    );
    let mut scratch = Vec::new();
    assert_eq!(
        err(matmul_serial(
            level,
            ty,
            &w,
            2,
            64,
            &x,
            3,
            &mut out,
            1,
            &mut scratch
        )),
        "an output row stride of 1 is shorter than its 2 columns"
    );
    assert_eq!(
        err(matmul_serial(
            level,
            ty,
            &w,
            2,
            64,
            &x,
            3,
            &mut out[..5],
            2,
            &mut scratch
        )),
        "the output holds 5 values, 6 expected"
    );
}

#[test]
#[should_panic(expected = "a length not a multiple of 16")]
fn dot_refuses_a_length_the_kernels_cannot_have() {
    dot(&[1.0; 8], &[1.0; 8]);
}
