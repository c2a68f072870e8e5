//! The physical limit benchmarks compare with: how many f32 multiply-adds per second the CPU's
//! cores complete when they do nothing else (independent fused multiply-adds on registers), and
//! where the CPU has AVX-512 BF16, how many bf16 ones (`VDPBF16PS`, two products a lane).

use std::time::Instant;

use crate::Level;

/// Multiply-adds a second on `threads` threads at once, the best of three runs of `iters`
/// iterations per thread (each 96 multiply-adds with AVX2, 8 with the portable loop), or of the
/// AVX-512 loop where the CPU has it and that is faster.
pub fn fma_macs_per_s(threads: usize, iters: u64) -> f64 {
    let narrow = best_of_three(threads, iters, macs_per_iter(), one_thread);
    #[cfg(target_arch = "x86_64")]
    if Level::detect() != Level::Portable && std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY (the loop): the CPU has AVX-512 F.
        let wide = best_of_three(threads, iters, 192, |n, s| unsafe { avx512_loop(n, s) });
        return narrow.max(wide);
    }
    narrow
}

/// bf16 multiply-adds a second, as [`fma_macs_per_s`] (each iteration 384), or `None` where the
/// CPU does not multiply bf16 in hardware ([`crate::bf16::fast`]).
pub fn bf16_macs_per_s(threads: usize, iters: u64) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    if crate::bf16::fast() {
        // SAFETY (the loop): `fast` found AVX-512 F, BW and BF16.
        return Some(best_of_three(threads, iters, 384, |n, s| unsafe {
            bf16_loop(n, s)
        }));
    }
    let _ = (threads, iters);
    None
}

fn best_of_three(threads: usize, iters: u64, per_iter: u64, one: fn(u64, f32) -> f32) -> f64 {
    let threads = threads.max(1);
    (0..3)
        .map(|_| {
            let t = Instant::now();
            let sink: f32 = std::thread::scope(|s| {
                let handles: Vec<_> = (0..threads)
                    .map(|i| s.spawn(move || one(iters, i as f32)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("no panic"))
                    .sum()
            });
            let macs = threads as f64 * iters as f64 * per_iter as f64;
            std::hint::black_box(sink);
            macs / t.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
}

fn macs_per_iter() -> u64 {
    if Level::detect().avx2() {
        96
    } else {
        8
    }
}

fn one_thread(iters: u64, seed: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if Level::detect().avx2() {
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

/// [`avx2_loop`] with 16-lane registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn avx512_loop(iters: u64, seed: f32) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_set1_ps(seed); 12];
    let (m, c) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
    for _ in 0..iters {
        for a in &mut acc {
            *a = _mm512_fmadd_ps(*a, m, c);
        }
    }
    sum512(&acc)
}

/// Every lane of the accumulators added up (so that their work is used).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn sum512(acc: &[std::arch::x86_64::__m512]) -> f32 {
    use std::arch::x86_64::*;
    let sum = acc
        .iter()
        .fold(_mm512_setzero_ps(), |s, a| _mm512_add_ps(s, *a));
    _mm512_reduce_add_ps(sum)
}

/// Twelve independent accumulators of sixteen lanes, each instruction two bf16 products a lane.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn bf16_loop(iters: u64, seed: f32) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_set1_ps(seed); 12];
    let m = _mm512_cvtne2ps_pbh(_mm512_set1_ps(0.5), _mm512_set1_ps(0.25));
    let c = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-7), _mm512_set1_ps(-1e-7));
    for _ in 0..iters {
        for a in &mut acc {
            *a = _mm512_dpbf16_ps(*a, m, c);
        }
    }
    sum512(&acc)
}
