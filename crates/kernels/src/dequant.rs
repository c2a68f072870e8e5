//! Whole matrices dequantized to f32 in parallel, with the CPU's vector instructions: what a
//! base loaded in f32 does to every quantized matrix of its file.

use std::ops::Range;

use crate::matmul::{Parallel, Shared};
use crate::{BlockType, KernelError, Level};

/// Values per task: large enough to amortize a hand-off, small enough to balance two threads
/// and to keep a task's output in cache while it is written.
const TASK_VALUES: usize = 1 << 16;

/// `blocks` (whole blocks of `ty`) into `out` (their values).
pub fn dequantize(
    ty: BlockType,
    blocks: &[u8],
    out: &mut [f32],
    par: &dyn Parallel,
) -> Result<(), KernelError> {
    let (bb, bv) = (ty.block_bytes(), ty.block_values());
    if !blocks.len().is_multiple_of(bb) {
        return Err(KernelError::WeightBytes {
            ty,
            rows: 1,
            k: out.len(),
            want: out.len() / bv * bb,
            got: blocks.len(),
        });
    }
    let n_blocks = blocks.len() / bb;
    if out.len() != n_blocks * bv {
        return Err(KernelError::Length {
            what: "the dequantized output",
            want: n_blocks * bv,
            got: out.len(),
        });
    }
    let per_task = (TASK_VALUES / bv).max(1);
    let tasks = n_blocks.div_ceil(per_task);
    let out = Shared::new(out);
    let level = Level::detect();
    par.run(tasks, &|range: Range<usize>| {
        for t in range {
            let b = t * per_task..((t + 1) * per_task).min(n_blocks);
            // SAFETY: task `t` owns the values of its blocks, inside `out` (checked above).
            let o = unsafe { out.slice(b.start * bv, b.len() * bv) };
            run(level, ty, &blocks[b.start * bb..b.end * bb], o);
        }
    });
    Ok(())
}

pub(crate) fn run(level: Level, ty: BlockType, blocks: &[u8], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if level.avx2() {
        // SAFETY: `Level::detect` found AVX2 and FMA.
        return unsafe { run_avx2(ty, blocks, out) };
    }
    let _ = level;
    ty.dequantize(blocks, out)
}

/// The portable loops compiled with AVX2 (the compiler vectorizes them; same results).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn run_avx2(ty: BlockType, blocks: &[u8], out: &mut [f32]) {
    ty.dequantize(blocks, out)
}
