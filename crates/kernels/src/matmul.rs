//! `out[i][j] = Σₖ x[i][k] · W[j][k]` over quantized `W`, split into tasks of whole weight rows.

use std::ops::Range;

use crate::act::{quantize_row256, quantize_row32, Act256, Act32};
use crate::{BlockType, KernelError, Level};

/// Runs `f` over `0..tasks`, split into ranges that may run on several threads at once. Every
/// task index must be run exactly once.
pub trait Parallel: Sync {
    fn run(&self, tasks: usize, f: &(dyn Fn(Range<usize>) + Sync));

    /// Threads that run tasks at once, so that work splits into a multiple of them.
    fn threads(&self) -> usize {
        1
    }
}

/// Every task on the calling thread.
pub struct Serial;

impl Parallel for Serial {
    fn run(&self, tasks: usize, f: &(dyn Fn(Range<usize>) + Sync)) {
        f(0..tasks)
    }
}

/// Multiply-adds per task: enough that a decoding step's small products are not dominated by
/// handing tasks to threads, small enough that two threads balance.
pub const TASK_MACS: usize = 1 << 16;

/// `x`: `m` rows of `k` f32; `w`: `n` rows of `k` values in `ty`'s blocks; `out`: `m` rows of `n`.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    ty: BlockType,
    w: &[u8],
    n: usize,
    k: usize,
    x: &[f32],
    m: usize,
    out: &mut [f32],
    par: &dyn Parallel,
) -> Result<(), KernelError> {
    matmul_with(Level::detect(), ty, w, n, k, x, m, out, par)
}

/// [`matmul`] with the kernels of `level`, which must be one this CPU runs (else the portable
/// ones are used).
#[allow(clippy::too_many_arguments)]
pub fn matmul_with(
    level: Level,
    ty: BlockType,
    w: &[u8],
    n: usize,
    k: usize,
    x: &[f32],
    m: usize,
    out: &mut [f32],
    par: &dyn Parallel,
) -> Result<(), KernelError> {
    matmul_many_with(level, &[Matrix { ty, w, n }], k, x, m, out, par)
}

/// One matrix of [`matmul_many`]: `n` rows of `k` values in `ty`'s blocks.
#[derive(Debug, Clone, Copy)]
pub struct Matrix<'a> {
    pub ty: BlockType,
    pub w: &'a [u8],
    pub n: usize,
}

/// The products of one input with several matrices (a block's queries, keys and values), in
/// one parallel run with the input quantized once per block size. `out` holds `m` rows of
/// `Σ n`: each row has the first matrix's `n` values, then the second's, and so on.
pub fn matmul_many(
    mats: &[Matrix],
    k: usize,
    x: &[f32],
    m: usize,
    out: &mut [f32],
    par: &dyn Parallel,
) -> Result<(), KernelError> {
    matmul_many_with(Level::detect(), mats, k, x, m, out, par)
}

/// A matrix's kernels, for the activations of its block size.
enum Kernels {
    B32(Tiles<Act32>),
    B256(Tiles<Act256>),
}

/// [`matmul_many`] with the kernels of `level` (as [`matmul_with`]).
pub fn matmul_many_with(
    level: Level,
    mats: &[Matrix],
    k: usize,
    x: &[f32],
    m: usize,
    out: &mut [f32],
    par: &dyn Parallel,
) -> Result<(), KernelError> {
    for &Matrix { ty, w, n } in mats {
        check_weights(ty, w, n, k)?;
    }
    let total: usize = mats.iter().map(|a| a.n).sum();
    check_len("the input", m * k, x.len())?;
    check_len("the output", m * total, out.len())?;
    if total == 0 || m == 0 {
        return Ok(());
    }
    let level = if level.runs_here() {
        level
    } else {
        Level::Portable
    };
    let quantized = |block: usize| mats.iter().any(|a| a.ty.block_values() == block);
    let (nb32, nb256) = (k / 32, k / 256);
    let mut acts32 = vec![Act32::default(); if quantized(32) { m * nb32 } else { 0 }];
    quantize_rows(&mut acts32, x, nb32, k, par, quantize_row32);
    let mut acts256 = vec![Act256::default(); if quantized(256) { m * nb256 } else { 0 }];
    quantize_rows(&mut acts256, x, nb256, k, par, quantize_row256);
    let kernels: Vec<Kernels> = mats
        .iter()
        .map(|a| match a.ty.block_values() {
            32 => Kernels::B32(tiles32(level, a.ty)),
            _ => Kernels::B256(tiles256(level, a.ty)),
        })
        .collect();
    // At least TASK_MACS a task, and a multiple of the threads so that none waits at the end;
    // tasks hold whole groups of rows of one matrix.
    let threads = par.threads().max(1);
    let min_tasks = (total * k * m / TASK_MACS).max(1).next_multiple_of(threads);
    let rows_per_task = total.div_ceil(min_tasks).next_multiple_of(ROW_GROUP);
    let mut tasks: Vec<(usize, Range<usize>)> = Vec::new();
    let mut offsets = Vec::with_capacity(mats.len());
    let mut offset = 0;
    for (a, mat) in mats.iter().enumerate() {
        offsets.push(offset);
        offset += mat.n;
        tasks.extend(
            (0..mat.n)
                .step_by(rows_per_task)
                .map(|s| (a, s..(s + rows_per_task).min(mat.n))),
        );
    }
    let out = Shared::new(out);
    par.run(tasks.len(), &|range: Range<usize>| {
        for (a, rows) in &tasks[range] {
            let mat = &mats[*a];
            let dest = Dest {
                out: &out,
                stride: total,
                offset: offsets[*a],
            };
            match &kernels[*a] {
                Kernels::B32(t) => run_rows(mat, &acts32, nb32, m, &dest, t, rows.clone()),
                Kernels::B256(t) => run_rows(mat, &acts256, nb256, m, &dest, t, rows.clone()),
            }
        }
    });
    Ok(())
}

/// Each row of `x` (`k` values) into its `nb` blocks of `acts`, rows in parallel when there
/// are enough of them to be worth a hand-off.
fn quantize_rows<A: Send>(
    acts: &mut [A],
    x: &[f32],
    nb: usize,
    k: usize,
    par: &dyn Parallel,
    quantize: fn(&[f32], &mut [A]),
) {
    let m = acts.len() / nb.max(1);
    if m < 8 || par.threads() < 2 {
        for (a, x) in acts
            .chunks_exact_mut(nb.max(1))
            .zip(x.chunks_exact(k.max(1)))
        {
            quantize(x, a);
        }
        return;
    }
    let acts = Shared::new(acts);
    par.run(m, &|rows: Range<usize>| {
        for i in rows {
            // SAFETY: row `i` of `m` is `nb` blocks inside `acts`, and only this task writes it.
            let a = unsafe { acts.slice(i * nb, nb) };
            quantize(&x[i * k..(i + 1) * k], a);
        }
    });
}

/// `w` holds `n` whole rows of `k` values in `ty`'s blocks.
pub(crate) fn check_weights(
    ty: BlockType,
    w: &[u8],
    n: usize,
    k: usize,
) -> Result<(), KernelError> {
    let block = ty.block_values();
    if !k.is_multiple_of(block) {
        return Err(KernelError::RowNotWholeBlocks { ty, k, block });
    }
    let want = ty.bytes_for(n, k).unwrap_or(usize::MAX);
    if w.len() != want {
        return Err(KernelError::WeightBytes {
            ty,
            rows: n,
            k,
            want,
            got: w.len(),
        });
    }
    Ok(())
}

pub(crate) fn check_len(what: &'static str, want: usize, got: usize) -> Result<(), KernelError> {
    if want == got {
        Ok(())
    } else {
        Err(KernelError::Length { what, want, got })
    }
}

/// A buffer that the tasks of one `Parallel::run` write at disjoint places (output columns,
/// activation rows, dequantized blocks). The buffer outlives the run, which returns only when
/// every task has.
pub struct Shared<T>(*mut T);

// SAFETY: every user writes disjoint elements from different tasks (the contract of `write`
// and `slice`), and nothing reads the buffer until the run has returned.
unsafe impl<T: Send> Sync for Shared<T> {}

impl<T> Shared<T> {
    pub fn new(buf: &mut [T]) -> Self {
        Shared(buf.as_mut_ptr())
    }

    /// # Safety
    /// `at` is inside the buffer, and no other task touches it.
    pub unsafe fn write(&self, at: usize, v: T) {
        *self.0.add(at) = v
    }

    /// The buffer's first element, for tasks that write strided places (columns of rows).
    pub fn ptr(&self) -> *mut T {
        self.0
    }

    /// # Safety
    /// `start..start + len` is inside the buffer, and no other task touches it.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice(&self, start: usize, len: usize) -> &mut [T] {
        std::slice::from_raw_parts_mut(self.0.add(start), len)
    }
}

/// The kernels of one block type at one level.
pub(crate) struct Tiles<A> {
    pub one: fn(&[u8], &[A]) -> f32,
    /// [`GROUP`] weight rows × every activation row of `acts` (a prompt's rows, `out.len()` of
    /// them): `out[i]` gets activation row `i`'s products with the weight rows.
    pub group: fn([&[u8]; GROUP], acts: &[A], out: &mut [GroupOut]),
}

/// One activation row's products with a group of weight rows.
pub(crate) type GroupOut = [f32; GROUP];

/// Weight rows that a prompt's kernels take at once.
pub(crate) const GROUP: usize = 8;

/// Tasks hold whole groups of this many weight rows.
const ROW_GROUP: usize = GROUP;

/// Where a matrix's products go: column `offset + j` of rows of `stride` values.
struct Dest<'a> {
    out: &'a Shared<f32>,
    stride: usize,
    offset: usize,
}

/// The products of weight rows `rows` of `mat` with every activation row.
fn run_rows<A>(
    mat: &Matrix,
    acts: &[A],
    nb: usize,
    m: usize,
    dest: &Dest,
    tiles: &Tiles<A>,
    rows: Range<usize>,
) {
    let row_bytes = mat.w.len() / mat.n;
    let wrow = |j: usize| &mat.w[j * row_bytes..(j + 1) * row_bytes];
    let arow = |i: usize| &acts[i * nb..(i + 1) * nb];
    // SAFETY (every write below): `i < m` and `j < n`, so the place is inside the `m` rows of
    // `stride ≥ offset + n` values the caller checked, and only the task owning weight row `j`
    // of this matrix writes its column.
    let put = |i: usize, j: usize, v: f32| unsafe {
        dest.out.write(i * dest.stride + dest.offset + j, v)
    };
    let mut j = rows.start;
    // A decoding step (one activation row) takes the weight rows one at a time (below): on a
    // Zen 4 that streamed Gemma-3-270M's 178 MB Q8_0 unembedding 1.5 times as fast as four
    // rows interleaved, and decoded its tokens 1.2 times as fast (docs/engine.md).
    if m > 1 {
        let mut group = vec![[0f32; GROUP]; m];
        while j < rows.end {
            // The last group of the matrix repeats its last row where it has fewer.
            let len = (rows.end - j).min(GROUP);
            let w = std::array::from_fn(|r| wrow(j + r.min(len - 1)));
            (tiles.group)(w, &acts[..m * nb], &mut group);
            for (i, v) in group.iter().enumerate() {
                for (r, &v) in v[..len].iter().enumerate() {
                    put(i, j + r, v);
                }
            }
            j += len;
        }
    }
    for j in j..rows.end {
        for i in 0..m {
            put(i, j, (tiles.one)(wrow(j), arow(i)));
        }
    }
}

/// The portable kernel `one` as tiles (each product on its own).
macro_rules! portable_tiles {
    ($one:expr) => {
        Tiles {
            one: $one,
            group: |w, acts, out| {
                let nb = acts.len() / out.len().max(1);
                for (o, a) in out.iter_mut().zip(acts.chunks_exact(nb.max(1))) {
                    *o = w.map(|w| ($one)(w, a));
                }
            },
        }
    };
}

fn tiles32(level: Level, ty: BlockType) -> Tiles<Act32> {
    use crate::portable as p;
    #[cfg(target_arch = "x86_64")]
    if level.avx2() {
        return crate::avx2::tiles32(ty, level == Level::Avx512Vnni);
    }
    let _ = level;
    match ty {
        BlockType::Q4_0 => portable_tiles!(p::dot_q4_0),
        BlockType::Q4_1 => portable_tiles!(p::dot_q4_1),
        BlockType::Q5_0 => portable_tiles!(p::dot_q5_0),
        BlockType::Q8_0 => portable_tiles!(p::dot_q8_0),
        _ => unreachable!("{ty:?} has 256-value blocks"),
    }
}

fn tiles256(level: Level, ty: BlockType) -> Tiles<Act256> {
    use crate::portable as p;
    #[cfg(target_arch = "x86_64")]
    if level.avx2() {
        return crate::avx2::tiles256(ty);
    }
    let _ = level;
    match ty {
        BlockType::Q4K => portable_tiles!(|w, a| p::dot_k(w, a, false)),
        BlockType::Q5K => portable_tiles!(|w, a| p::dot_k(w, a, true)),
        BlockType::Q6K => portable_tiles!(p::dot_q6k),
        _ => unreachable!("{ty:?} has 32-value blocks"),
    }
}
