//! Blocks of every covered type from real GGUF files (testdata/kernels/, made by
//! tools/gen_kernel_golden.py): lensd dequantizes them exactly as llama.cpp does, and every
//! kernel level's products with them equal the dequantized rows' products with the activations
//! the kernels quantized.

use lensd_kernels::act::{quantize_row256, quantize_row32, Act256, Act32};
use lensd_kernels::{matmul_with, BlockType, Level, Serial};
use safetensors::SafeTensors;

fn golden() -> Vec<u8> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/kernels/llamacpp_dequant.safetensors"
    );
    std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn name(ty: BlockType) -> &'static str {
    match ty {
        BlockType::Q4_0 => "Q4_0",
        BlockType::Q4_1 => "Q4_1",
        BlockType::Q5_0 => "Q5_0",
        BlockType::Q8_0 => "Q8_0",
        BlockType::Q4K => "Q4_K",
        BlockType::Q5K => "Q5_K",
        BlockType::Q6K => "Q6_K",
    }
}

/// `(rows, k, blocks, llama.cpp's values)` of a type's golden rows.
fn rows(st: &SafeTensors, ty: BlockType) -> (usize, usize, Vec<u8>, Vec<f32>) {
    let blocks = st.tensor(&format!("{}.blocks", name(ty))).unwrap();
    let values = st.tensor(&format!("{}.values", name(ty))).unwrap();
    let (rows, k) = (values.shape()[0], values.shape()[1]);
    let values = values
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (rows, k, blocks.data().to_vec(), values)
}

/// How many values are not bit for bit the same.
fn differing_bits(got: &[f32], want: &[f32]) -> usize {
    got.iter()
        .zip(want)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count()
}

#[test]
fn every_type_dequantizes_as_llama_cpp_does() {
    let bytes = golden();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    for ty in BlockType::ALL {
        let (rows, k, blocks, want) = rows(&st, ty);
        assert!(rows >= 3 && k >= ty.block_values(), "{ty:?}: {rows}x{k}");
        let mut got = vec![0f32; rows * k];
        ty.dequantize(&blocks, &mut got);
        let differ = differing_bits(&got, &want);
        assert_eq!(
            differ,
            0,
            "{ty:?}: {differ} of {} values differ from llama.cpp's",
            rows * k
        );
    }
}

#[test]
fn every_level_multiplies_real_blocks_as_their_dequantized_rows() {
    let bytes = golden();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let m = 5;
    for ty in BlockType::ALL {
        let (n, k, blocks, wf) = rows(&st, ty);
        // Activations with a residual stream's outliers.
        let x: Vec<f32> = (0..m * k)
            .map(|i| {
                ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * if i % 131 == 3 { 30.0 } else { 1.0 }
            })
            .collect();
        for level in Level::available() {
            let mut out = vec![0f32; m * n];
            matmul_with(level, ty, &blocks, n, k, &x, m, &mut out, &Serial).unwrap();
            for i in 0..m {
                let xq = quantized(ty, &x[i * k..(i + 1) * k]);
                for j in 0..n {
                    let w = &wf[j * k..(j + 1) * k];
                    let want: f64 = xq.iter().zip(w).map(|(&a, &b)| a as f64 * b as f64).sum();
                    let mag: f64 = xq
                        .iter()
                        .zip(w)
                        .map(|(&a, &b)| (a as f64 * b as f64).abs())
                        .sum();
                    let got = out[i * n + j] as f64;
                    // Q4_1's products use the activations' f16-rounded sums (as llama.cpp's do).
                    let tol = if ty == BlockType::Q4_1 { 2e-3 } else { 1e-5 };
                    assert!(
                        (got - want).abs() <= tol * mag,
                        "{ty:?} {level:?} [{i},{j}]: {got} vs {want} (scale {mag})"
                    );
                }
            }
        }
    }
}

/// The activations as the kernels quantize them, widened back to f32.
fn quantized(ty: BlockType, x: &[f32]) -> Vec<f32> {
    if ty.block_values() == 32 {
        let mut a = vec![Act32::default(); x.len() / 32];
        quantize_row32(x, &mut a);
        a.iter().flat_map(|a| a.q.map(|q| q as f32 * a.d)).collect()
    } else {
        let mut a = vec![Act256::default(); x.len() / 256];
        quantize_row256(x, &mut a);
        a.iter().flat_map(|a| a.q.map(|q| q as f32 * a.d)).collect()
    }
}

/// Runs every task range on its own scoped thread.
struct Threads;

impl lensd_kernels::Parallel for Threads {
    fn run(&self, tasks: usize, f: &(dyn Fn(std::ops::Range<usize>) + Sync)) {
        std::thread::scope(|s| {
            for t in 0..tasks {
                s.spawn(move || f(t..t + 1));
            }
        });
    }
}

#[test]
fn the_parallel_vector_dequantization_equals_llama_cpp_too() {
    let bytes = golden();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    for ty in BlockType::ALL {
        let (rows, k, blocks, want) = rows(&st, ty);
        // Many copies of the rows, so that the work splits into several tasks.
        let copies = 200;
        let blocks = blocks.repeat(copies);
        let mut got = vec![f32::NAN; copies * rows * k];
        lensd_kernels::dequantize(ty, &blocks, &mut got, &Threads).unwrap();
        for (c, got) in got.chunks_exact(rows * k).enumerate() {
            let differ = differing_bits(got, &want);
            assert_eq!(
                differ, 0,
                "{ty:?} copy {c}: {differ} values differ from llama.cpp's"
            );
        }
        let e = lensd_kernels::dequantize(ty, &blocks[1..], &mut got, &Threads).unwrap_err();
        assert!(e.to_string().contains("bytes"), "{e}");
    }
}
