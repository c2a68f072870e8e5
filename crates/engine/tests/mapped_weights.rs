//! GGUF files mapped under a read lease (`weights::mapped`): a file truncated or written in
//! place while lensd maps it waits until lensd holds its own copy, so a loaded base keeps the
//! bytes it was loaded with and computes as before, never meeting a bus error. Where no lease
//! can be had, the file is read into memory.

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use common::demo_model;
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
