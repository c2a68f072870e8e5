//! lensd's compute engine: bases of several families (Llama, Qwen2/3, Gemma-2/3) loaded from
//! GGUF or safetensors, one forward pass that exposes the residual stream at every layer,
//! generation, and the lenses read from it.
//! Synchronous and single-threaded from the caller's view; candle parallelises inside ops.

mod attention;
pub mod base;
pub mod chat;
pub mod config;
pub mod device;
pub mod donor;
pub mod error;
pub mod family;
mod gated;
pub mod generate;
pub mod hub;
pub mod inspect;
pub mod lens;
pub mod lora;
pub mod model;
pub mod probe;
pub mod tokenizer;
pub mod weights;

pub use base::Base;
pub use config::{Family, ModelConfig, RopeStyle};
pub use device::DeviceSpec;
pub use error::{EngineError, Result};
pub use weights::{ComputeDtype, LoadOptions, WeightBytes};

/// Threads candle's matrix products use: `RAYON_NUM_THREADS`, else the physical cores. The
/// `lensd` binary sets `RAYON_NUM_THREADS` at start from `CANDLE_NUM_THREADS` when only that
/// is given.
pub fn compute_threads() -> usize {
    candle_core::utils::get_num_threads()
}

/// The level of lensd's quantized-block kernels on this CPU: `avx512vnni`, `avx2` or `portable`
/// (`LENSD_CPU_KERNELS` caps it).
pub fn cpu_kernels() -> &'static str {
    lensd_kernels::Level::detect().name()
}

/// f32 multiply-adds a second that `threads` threads complete doing nothing else (about 0.3 s
/// of measurement): the physical limit benchmarks report a fraction of.
pub fn fma_peak_macs_per_s(threads: usize) -> f64 {
    lensd_kernels::peak::fma_macs_per_s(threads, 20_000_000)
}

/// The same for bf16 multiply-adds, where the CPU has them in hardware (AVX-512 BF16).
pub fn bf16_peak_macs_per_s(threads: usize) -> Option<f64> {
    lensd_kernels::peak::bf16_macs_per_s(threads, 10_000_000)
}
