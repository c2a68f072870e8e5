//! CPU matrix products `x · Wᵀ` where `W` is stored in GGML's quantized blocks (Q4_0, Q4_1,
//! Q5_0, Q8_0, Q4_K, Q5_K, Q6_K), read in place from a file's bytes.
//!
//! The activations are quantized to 8 bits per row first, as llama.cpp does, so that each
//! block's products are integer sums (exact) and only one float multiply-add per block remains
//! (per superblock for the K types, whose sub-block scales multiply integers): [`act`] holds
//! those formats. [`portable`] is the plain-Rust kernel every CPU runs and the tests'
//! reference; `avx2` computes the same integer sums with AVX2 (and a prompt's 32-value blocks
//! with AVX-512 VNNI where the CPU has it) and is chosen at run time ([`Level::detect`]).
//! [`matmul_many`] runs several matrices that share an input as one product, [`dequantize`]
//! widens whole matrices (a base loaded in f32), and [`peak`] measures the cores' multiply-add
//! rates that benchmarks compare with. [`bf16`] multiplies f32 rows by an f32 matrix with both
//! rounded to bf16 (AVX-512 BF16), for a lens analysis's unembedding. [`wide`] multiplies
//! quantized matrices in f32 as they are stored, a strip of rows widened at a time (a base
//! computed in f32 without an f32 copy of its matrices). Two element-wise kernels
//! sit beside them: [`logit_stats`], a lens analysis's statistics accumulated a block of logits
//! at a time, and [`gated`], the gated MLP's `act(gate) · up`.
//!
//! The crate has no tensor type and no thread pool: the caller passes slices and a
//! [`Parallel`] that runs independent tasks (the engine hands it candle's pool, so the matrix
//! products of a forward pass share one set of threads).

pub mod act;
#[cfg(target_arch = "x86_64")]
mod avx2;
pub mod bf16;
pub mod blocks;
mod dequant;
pub mod gated;
pub mod logit_stats;
mod matmul;
pub mod panel;
pub mod peak;
pub mod portable;
pub mod wide;

pub use blocks::BlockType;
pub use dequant::dequantize;
pub use matmul::{
    matmul, matmul_many, matmul_many_with, matmul_with, Matrix, Parallel, Serial, Shared, TASK_MACS,
};

/// Which kernels run. Every level computes the same integer sums; they differ only in the
/// order of the float additions that combine blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Portable,
    /// AVX2, FMA and F16C (x86-64 since Haswell and Zen).
    Avx2,
    /// [`Level::Avx2`] with AVX-512 VNNI (and VL): a prompt's 32-value blocks multiply with
    /// `vpdpbusd`, four byte products summed into i32 in one instruction (Ice Lake, Zen 4).
    Avx512Vnni,
}

impl Level {
    /// The fastest level this CPU runs. `LENSD_CPU_KERNELS=portable` or `=avx2` caps it there
    /// (to compare levels on one machine); another value is reported on stderr and ignored.
    pub fn detect() -> Level {
        static LEVEL: std::sync::OnceLock<Level> = std::sync::OnceLock::new();
        *LEVEL.get_or_init(|| {
            let cap = match std::env::var("LENSD_CPU_KERNELS").as_deref() {
                Ok("portable") => Level::Portable,
                Ok("avx2") => Level::Avx2,
                Ok("avx512vnni") | Err(_) => Level::Avx512Vnni,
                Ok(other) => {
                    eprintln!(
                        "LENSD_CPU_KERNELS={other} is not `portable`, `avx2` or `avx512vnni`; \
                         using the fastest level this CPU runs"
                    );
                    Level::Avx512Vnni
                }
            };
            Level::available()
                .into_iter()
                .rfind(|&l| l <= cap)
                .unwrap_or(Level::Portable)
        })
    }

    /// Every level this CPU can run, slowest first; the portable one always.
    pub fn available() -> Vec<Level> {
        #[allow(unused_mut)] // only x86-64 adds levels
        let mut levels = vec![Level::Portable];
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            levels.push(Level::Avx2);
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("avx512vnni")
            {
                levels.push(Level::Avx512Vnni);
            }
        }
        levels
    }

    /// Whether the level runs the AVX2 code (every level but the portable one).
    pub fn avx2(self) -> bool {
        self != Level::Portable
    }

    /// Whether this CPU runs the level's code.
    pub fn runs_here(self) -> bool {
        static LEVELS: std::sync::OnceLock<Vec<Level>> = std::sync::OnceLock::new();
        LEVELS.get_or_init(Level::available).contains(&self)
    }

    pub fn name(self) -> &'static str {
        match self {
            Level::Portable => "portable",
            Level::Avx2 => "avx2",
            Level::Avx512Vnni => "avx512vnni",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KernelError {
    #[error("a row of {k} values is not a whole number of {ty:?} blocks of {block}")]
    RowNotWholeBlocks {
        ty: BlockType,
        k: usize,
        block: usize,
    },
    #[error("{ty:?} weights of {rows}x{k} need {want} bytes, got {got}")]
    WeightBytes {
        ty: BlockType,
        rows: usize,
        k: usize,
        want: usize,
        got: usize,
    },
    #[error("an output row stride of {ld} is shorter than its {n} columns")]
    Stride { ld: usize, n: usize },
    #[error("{what} holds {got} values, {want} expected")]
    Length {
        what: &'static str,
        want: usize,
        got: usize,
    },
}
