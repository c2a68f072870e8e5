//! GGUF files and tuned lenses' translators mapped under a read lease (`weights::mapped`): a
//! file truncated or written in place while lensd maps it waits until lensd holds its own
//! copy, so a loaded base or lens keeps the bytes it was loaded with and computes as before,
//! never meeting a bus error. Where no lease can be had, the file is read into memory.

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use common::demo_model;
use lensd_engine::lens::tuned::{TunedLens, TunedLensConfig};
use lensd_engine::model::Logits;
use lensd_engine::weights::gguf::GgufFile;
use lensd_engine::{Base, ComputeDtype, LoadOptions};

fn copy_of(src: &Path, dir: &Path) -> PathBuf {
    let dst = dir.join(src.file_name().unwrap());
    std::fs::copy(src, &dst).unwrap();
    dst
}

/// A copy of the demo GGUF in a fresh folder (kept alive by the caller), with its bytes.
fn demo_copy() -> (tempfile::TempDir, PathBuf, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let path = copy_of(&demo_model(), dir.path());
    let before = std::fs::read(&path).unwrap();
    (dir, path, before)
}

/// Reads the file whole; says on stderr when this system gave no lease, so that the test
/// checked the read path.
fn read(path: &Path) -> GgufFile {
    let g = GgufFile::read(path, &mut |_, _| {}).unwrap();
    if !g.is_mapped() {
        eprintln!(
            "no read lease on {}: the file was read into memory",
            path.display()
        );
    }
    g
}

#[test]
fn a_gguf_truncated_under_its_mapping_keeps_every_byte() {
    let (_dir, path, before) = demo_copy();
    let g = read(&path);
    let was_mapped = g.is_mapped();
    // The truncation waits until lensd has copied the bytes and given its lease up.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(1000)
        .unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 1000);
    assert!(!g.is_mapped(), "the bytes are lensd's own after the change");
    assert!(g.bytes().unwrap() == &before[..], "every byte is as loaded");
    if was_mapped {
        eprintln!("the mapped bytes were copied before the truncation went on");
    }
}

#[test]
fn a_gguf_written_in_place_under_its_mapping_keeps_every_byte() {
    let (_dir, path, before) = demo_copy();
    let g = read(&path);
    let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.seek(SeekFrom::Start(before.len() as u64 / 2)).unwrap();
    f.write_all(&vec![0xA5; 1 << 20]).unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert_ne!(
        std::fs::read(&path).unwrap(),
        before,
        "the file changed on disk"
    );
    assert!(!g.is_mapped());
    assert!(g.bytes().unwrap() == &before[..], "every byte is as loaded");
    // A new read sees the file as it is now.
    let again = read(&path);
    assert!(again.bytes().unwrap() != &before[..]);
}

#[test]
fn a_gguf_open_for_writing_elsewhere_is_read_not_mapped() {
    let dir = tempfile::tempdir().unwrap();
    let path = copy_of(&demo_model(), dir.path());
    let writer = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    let g = GgufFile::read(&path, &mut |_, _| {}).unwrap();
    assert!(
        !g.is_mapped(),
        "no lease is granted on a file open for writing"
    );
    assert!(g.bytes().unwrap() == &std::fs::read(&path).unwrap()[..]);
    drop(writer);
    // Once the writer is gone, the file maps (where the system grants leases at all), and the
    // progress reports climb to the file's size either way.
    let mut seen = Vec::new();
    let g = GgufFile::read(&path, &mut |done, total| seen.push((done, total))).unwrap();
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0), "{seen:?}");
    assert_eq!(seen.last(), Some(&(size, size)));
    assert!(g.bytes().unwrap() == &std::fs::read(&path).unwrap()[..]);
}

#[test]
fn a_stored_base_computes_as_before_once_its_file_is_truncated_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let path = copy_of(&demo_model(), dir.path());
    let base = Base::load(
        &path,
        LoadOptions {
            compute: ComputeDtype::Stored,
        },
    )
    .unwrap();
    let ids = base
        .tokenizer
        .encode("The capital of France is", false)
        .unwrap();
    let logits = |base: &Base| {
        let _compute = common::compute_lock();
        let out = base
            .model
            .forward(&[&ids], None, &[], Logits::Last)
            .unwrap();
        out.logits
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let before = logits(&base);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(
        logits(&base),
        before,
        "the same bits as before the file changed"
    );
}

#[test]
fn a_mapping_made_lensds_own_keeps_its_bytes_and_holds_no_writer_back() {
    let (_dir, path, before) = demo_copy();
    let g = read(&path);
    if g.is_mapped() {
        let huge = g.huge_mapped_bytes().expect("smaps names the mapping");
        assert!(huge <= g.file_len(), "{huge}");
    }
    assert!(g.make_own());
    assert!(!g.is_mapped());
    // No lease is left: the truncation goes through, and the bytes stay.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    assert!(g.bytes().unwrap() == &before[..]);
    assert!(g.make_own(), "owning twice is harmless");
}

/// A tuned lens of `layers` random translators of width `d`, saved in `dir`.
fn random_lens(dir: &Path, d: usize, layers: usize) -> TunedLens {
    use candle_core::{Device, Tensor};
    let config = TunedLensConfig {
        base_model_name_or_path: String::new(),
        d_model: d,
        num_hidden_layers: layers,
        bias: true,
        base_model_revision: None,
        unembed_hash: None,
        lens_type: "linear_tuned_lens".into(),
    };
    let cpu = Device::Cpu;
    let weights = (0..layers)
        .map(|_| Tensor::randn(0f32, 0.05, (d, d), &cpu).unwrap())
        .collect();
    let biases = (0..layers)
        .map(|_| Tensor::randn(0f32, 0.1, d, &cpu).unwrap())
        .collect();
    let lens = TunedLens::from_parts(config, weights, biases);
    lens.save(dir).unwrap();
    TunedLens::open(dir).unwrap()
}

/// Every layer's translation of the same rows, as bits.
fn translations(lens: &TunedLens, h: &candle_core::Tensor) -> Vec<Vec<u32>> {
    (0..lens.config.num_hidden_layers)
        .map(|l| {
            let y = lens.transform(l, h).unwrap();
            let v: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
            v.iter().map(|v| v.to_bits()).collect()
        })
        .collect()
}

#[test]
fn a_tuned_lens_mapped_translates_as_read_and_keeps_its_translators_when_its_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (d, layers) = (96, 3);
    let mapped = random_lens(dir.path(), d, layers);
    let params = dir.path().join("params.safetensors");
    if !mapped.is_mapped() {
        eprintln!("no read lease on {}: the lens was read", params.display());
    }
    assert_eq!(mapped.is_shared_with_the_file(), mapped.is_mapped());
    // A writer elsewhere gets no lease: this copy is read into memory.
    let writer = std::fs::OpenOptions::new()
        .write(true)
        .open(&params)
        .unwrap();
    let read = TunedLens::open(dir.path()).unwrap();
    assert!(
        !read.is_mapped(),
        "no lease is granted on a file open for writing"
    );
    drop(writer);
    assert_eq!(mapped.bytes(), read.bytes());
    let h = candle_core::Tensor::randn(0f32, 1.0, (7, d), &candle_core::Device::Cpu).unwrap();
    let want = translations(&read, &h);
    assert_eq!(
        translations(&mapped, &h),
        want,
        "the same bits mapped or read"
    );
    // The file truncated under the mapping: lensd copies the translators first, then the
    // truncation goes on, and the lens translates as before.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&params)
        .unwrap()
        .set_len(100)
        .unwrap();
    assert!(!mapped.is_shared_with_the_file());
    assert_eq!(
        translations(&mapped, &h),
        want,
        "the same bits after the change"
    );
    // A lens file cut short is an error naming it, whether mapped or read.
    let err = TunedLens::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("params.safetensors"), "{err}");
}
