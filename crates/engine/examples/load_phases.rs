//! Where a GGUF base's load goes, against the bare read of its file.
//!
//! `cargo run --release -p lensd-engine --example load_phases -- FILE [ROUNDS]` prints, per
//! round, in milliseconds: the file read from a cold page cache into one reused 1 MiB buffer
//! (the disk's part alone), the file read into fresh memory as a load reads it (cold, then
//! warm), a `stored` load (cold, then warm), a warm `f32` load, and the warm parts of a load
//! one after the other: the header alone, the tokenizer and chat template, the weights.
//! Evicting the file's pages needs only read access to it (`posix_fadvise`).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use lensd_engine::tokenizer::Tokenizer;
use lensd_engine::weights::file::read_whole;
use lensd_engine::weights::gguf::GgufFile;
use lensd_engine::{Base, ComputeDtype, LoadOptions};

fn evict(path: &Path) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).expect("the file opens");
    // SAFETY: a valid descriptor; the call only drops clean cached pages of this file.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise");
}

/// Milliseconds that `f` takes, and its value.
fn ms<T>(f: impl FnOnce() -> T) -> (f64, T) {
    let t = Instant::now();
    let v = f();
    (t.elapsed().as_secs_f64() * 1e3, v)
}

fn load(path: &Path, compute: ComputeDtype) -> f64 {
    ms(|| Base::load(path, LoadOptions { compute }).expect("the base loads")).0
}

fn main() {
    let mut args = std::env::args().skip(1);
    let path = PathBuf::from(args.next().expect("usage: load_phases FILE [ROUNDS]"));
    let rounds: usize = args
        .next()
        .map_or(3, |r| r.parse().expect("ROUNDS is a number"));
    println!(
        "raw cold | read cold, warm | stored load cold, warm | f32 load warm | \
         header, tokenizer, weights (warm)"
    );
    for _ in 0..rounds {
        evict(&path);
        let (raw, _) = ms(|| {
            let mut buf = vec![0u8; 1 << 20];
            let mut f = std::fs::File::open(&path).expect("the file opens");
            while f.read(&mut buf).expect("the file reads") > 0 {}
        });
        evict(&path);
        let (read_cold, bytes) = ms(|| read_whole(&path, &mut |_, _| {}).expect("the file reads"));
        drop(bytes);
        let (read_warm, bytes) = ms(|| read_whole(&path, &mut |_, _| {}).expect("the file reads"));
        drop(bytes);
        evict(&path);
        let stored_cold = load(&path, ComputeDtype::Stored);
        let stored_warm = load(&path, ComputeDtype::Stored);
        let f32_warm = load(&path, ComputeDtype::F32);
        let (header, _) = ms(|| GgufFile::open(&path).expect("the header parses"));
        let g = GgufFile::read(&path, &mut |_, _| {}).expect("the file reads");
        let (tokenizer, _) = ms(|| Tokenizer::from_gguf(&g).expect("the tokenizer builds"));
        let cfg = g.config().expect("the configuration reads");
        let (weights, _) = ms(|| {
            g.load_weights(&cfg, ComputeDtype::Stored, &candle_core::Device::Cpu)
                .expect("the weights load")
        });
        println!(
            "{raw:.1} | {read_cold:.1}, {read_warm:.1} | {stored_cold:.1}, {stored_warm:.1} | \
             {f32_warm:.1} | {header:.1}, {tokenizer:.1}, {weights:.1}"
        );
    }
}
