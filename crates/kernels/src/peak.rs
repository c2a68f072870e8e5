//! The physical limit benchmarks compare with: how many f32 multiply-adds per second the CPU's
//! cores complete when they do nothing else (independent fused multiply-adds on registers).

use std::time::Instant;

use crate::Level;

/// Multiply-adds a second on `threads` threads at once, the best of three runs of `iters`
/// iterations per thread (each 96 multiply-adds with AVX2, 8 with the portable loop).
pub fn fma_macs_per_s(threads: usize, iters: u64) -> f64 {
    let threads = threads.max(1);
    (0..3)
        .map(|_| {
            let t = Instant::now();
            let sink: f32 = std::thread::scope(|s| {
                let handles: Vec<_> = (0..threads)
                    .map(|i| s.spawn(move || one_thread(iters, i as f32)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("no panic"))
                    .sum()
            });
            let macs = threads as f64 * iters as f64 * macs_per_iter() as f64;
            std::hint::black_box(sink);
            macs / t.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
}

fn macs_per_iter() -> u64 {
    if Level::detect() == Level::Avx2 {
        96
    } else {
        8
    }
}

fn one_thread(iters: u64, seed: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if Level::detect() == Level::Avx2 {
        // SAFETY: `detect` found AVX2 and FMA.
        return unsafe { avx2_loop(iters, seed) };
    }
    let mut acc = [seed; 8];
    for _ in 0..iters {
        for a in &mut acc {
            *a = a.mul_add(0.999_999, 1e-7);
        }
        acc = std::hint::black_box(acc);
    }
    acc.iter().sum()
}

/// Twelve independent accumulators of eight lanes: enough to cover the FMA units' latency.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_loop(iters: u64, seed: f32) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_set1_ps(seed); 12];
    let (m, c) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
    for _ in 0..iters {
        for a in &mut acc {
            *a = _mm256_fmadd_ps(*a, m, c);
        }
    }
    let mut out = [0f32; 8];
    let sum = acc
        .iter()
        .fold(_mm256_setzero_ps(), |s, a| _mm256_add_ps(s, *a));
    _mm256_storeu_ps(out.as_mut_ptr(), sum);
    out.iter().sum()
}
