//! Random inputs that the kernels' tests share.

// Each test crate that includes this module uses a part of it.
#![allow(dead_code)]

use half::f16;
use lensd_kernels::{BlockType, Parallel};
use rand::Rng;

/// Where a block of `ty` keeps its f16 scales (and `Q4_1`'s and the K types' minimum).
pub fn scale_fields(ty: BlockType) -> &'static [usize] {
    match ty {
        BlockType::Q4_0 | BlockType::Q5_0 | BlockType::Q8_0 => &[0],
        BlockType::Q4_1 | BlockType::Q4K | BlockType::Q5K => &[0, 2],
        BlockType::Q6K => &[208],
    }
}

/// Random blocks whose f16 fields are finite scales of a realistic size (every other byte is
/// random, so every bit pattern of the values is exercised).
pub fn random_blocks(ty: BlockType, rows: usize, k: usize, rng: &mut impl Rng) -> Vec<u8> {
    let mut w = vec![0u8; ty.bytes_for(rows, k).unwrap()];
    rng.fill(&mut w[..]);
    let scale = |rng: &mut dyn rand::RngCore| {
        f16::from_f32(rng.random_range(0.0005f32..0.05)).to_le_bytes()
    };
    for b in w.chunks_exact_mut(ty.block_bytes()) {
        for &at in scale_fields(ty) {
            b[at..at + 2].copy_from_slice(&scale(rng));
        }
        if ty == BlockType::Q4_1 && rng.random_bool(0.5) {
            // Q4_1's minimum is usually negative.
            b[3] |= 0x80;
        }
    }
    w
}

pub fn random_x(len: usize, rng: &mut impl Rng) -> Vec<f32> {
    (0..len)
        .map(|i| {
            let v: f32 = rng.random_range(-1.0..1.0);
            // A few large values per row, as residual streams have.
            if i % 97 == 5 {
                v * 20.0
            } else {
                v
            }
        })
        .collect()
}

/// Runs every task range on its own scoped thread, in reverse, to show tasks are independent.
pub struct EveryTaskOnItsOwnThread;

impl Parallel for EveryTaskOnItsOwnThread {
    fn run(&self, tasks: usize, f: &(dyn Fn(std::ops::Range<usize>) + Sync)) {
        std::thread::scope(|s| {
            for t in (0..tasks).rev() {
                s.spawn(move || f(t..t + 1));
            }
        });
    }
}
