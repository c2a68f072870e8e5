//! Times `matmul` on random weights of each block type (and the same weights multiplied in f32,
//! `wide::matmul`), and the bf16 product on one thread:
//! `cargo run --release -p lensd-kernels --example kernel_speed -- [threads] [m] [n] [k]`.

use lensd_kernels::{matmul_with, BlockType, Level, Parallel};
use rand::{Rng, SeedableRng};

struct Scoped(usize);

impl Parallel for Scoped {
    fn threads(&self) -> usize {
        self.0
    }

    fn run(&self, tasks: usize, f: &(dyn Fn(std::ops::Range<usize>) + Sync)) {
        if self.0 == 1 {
            return f(0..tasks);
        }
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..self.0 {
                s.spawn(|| loop {
                    let t = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if t >= tasks {
                        break;
                    }
                    f(t..t + 1)
                });
            }
        });
    }
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let threads = args.first().copied().unwrap_or(2);
    let m = args.get(1).copied().unwrap_or(1);
    let n = args.get(2).copied().unwrap_or(8192);
    let k = args.get(3).copied().unwrap_or(2048);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
    bf16_speed(&x, m, n, k, &mut rng);
    for ty in BlockType::ALL {
        let Some(bytes) = ty.bytes_for(n, k) else {
            println!(
                "{ty:?}: skipped, K = {k} is not a multiple of its {} values",
                ty.block_values()
            );
            continue;
        };
        let mut w = vec![0u8; bytes];
        rng.fill(&mut w[..]);
        for b in w.chunks_exact_mut(ty.block_bytes()) {
            let at = if ty == BlockType::Q6K { 208 } else { 0 };
            b[at..at + 2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
            if matches!(ty, BlockType::Q4_1 | BlockType::Q4K | BlockType::Q5K) {
                b[2..4].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
            }
        }
        let mut values = vec![0f32; n * k];
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = std::time::Instant::now();
            lensd_kernels::dequantize(ty, &w, &mut values, &Scoped(threads)).unwrap();
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!(
            "{ty:?} dequantize: {:7.3} ms, {:6.2} GB/s of f32 written",
            best * 1e3,
            values.len() as f64 * 4.0 / best / 1e9
        );
        let mut out = vec![0f32; m * n];
        let mut best = f64::MAX;
        for _ in 0..7 {
            let t = std::time::Instant::now();
            let level = Level::detect();
            lensd_kernels::wide::matmul(level, ty, &w, n, k, &x, m, &mut out, &Scoped(threads))
                .unwrap();
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!(
            "{ty:?} in f32 ({}): {:7.3} ms, {:6.2} GMAC/s",
            lensd_kernels::wide::path_name(Level::detect()),
            best * 1e3,
            (m * n * k) as f64 / best / 1e9
        );
        // The analyses' product in panels, on one thread.
        let (mut best, mut scratch) = (f64::MAX, Vec::new());
        for _ in 0..7 {
            let t = std::time::Instant::now();
            let level = Level::detect();
            lensd_kernels::panel::matmul(level, ty, &w, n, k, &x, m, &mut out, &mut scratch)
                .unwrap();
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!(
            "{ty:?} in f32 panels, one thread: {:7.3} ms, {:6.2} GMAC/s",
            best * 1e3,
            (m * n * k) as f64 / best / 1e9
        );
        for level in Level::available() {
            let par = Scoped(threads);
            let mut best = f64::MAX;
            for _ in 0..7 {
                let t = std::time::Instant::now();
                matmul_with(level, ty, &w, n, k, &x, m, &mut out, &par).unwrap();
                best = best.min(t.elapsed().as_secs_f64());
            }
            println!(
                "{ty:?} {:>8}: {:7.3} ms, {:6.2} GB/s of weights, {:6.2} GMAC/s",
                level.name(),
                best * 1e3,
                w.len() as f64 / best / 1e9,
                (m * n * k) as f64 / best / 1e9
            );
        }
    }
}

/// The bf16 product of the rows with an f32 matrix of `n` rows, on the calling thread.
fn bf16_speed(x: &[f32], m: usize, n: usize, k: usize, rng: &mut impl Rng) {
    use lensd_kernels::bf16;
    let w: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..1.0)).collect();
    let rows = bf16::Bf16Rows::new(x, m, k).unwrap();
    let (mut out, mut scratch) = (vec![0f32; m * n], bf16::Scratch::default());
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = std::time::Instant::now();
        bf16::matmul(&w, n, &rows, &mut out, &mut scratch).unwrap();
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!(
        "bf16 (hardware: {}), one thread: {:7.3} ms, {:6.2} GMAC/s; one thread's peak: f32 {:.1}, \
         bf16 {:.1} GMAC/s",
        bf16::fast(),
        best * 1e3,
        (m * n * k) as f64 / best / 1e9,
        lensd_kernels::peak::fma_macs_per_s(1, 10_000_000) / 1e9,
        lensd_kernels::peak::bf16_macs_per_s(1, 10_000_000).unwrap_or(f64::NAN) / 1e9
    );
}
