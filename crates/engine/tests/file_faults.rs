//! Weight files that change or fail while a base loads: truncated or deleted on disk during
//! the read, failing with I/O errors part-way, or damaged before the load. Each load ends in
//! an error naming the file (or, for a deleted file, in a complete load of the bytes it had),
//! never in a crash.

mod common;

use std::path::{Path, PathBuf};

use common::{demo_model, testdata};
use lensd_engine::model::Logits;
use lensd_engine::weights::faulty::{Fault, FaultyFiles};
use lensd_engine::{Base, LoadOptions};

fn copy_of(src: &Path, dir: &Path) -> PathBuf {
    let dst = dir.join(src.file_name().unwrap());
    std::fs::copy(src, &dst).unwrap();
    dst
}

fn load(path: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<Base, String> {
    Base::load_with_progress(path, LoadOptions::default(), progress).map_err(|e| e.to_string())
}

#[test]
fn a_gguf_truncated_while_it_is_read_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = copy_of(&demo_model(), dir.path());
    // Without a lease the file is read into memory, and nothing holds the truncation back.
    FaultyFiles::install().set(&path, Fault::NoLease);
    let mut truncated = false;
    let e = load(&path, &mut |done, total| {
        // After the first chunk, cut the file on disk, as a copy over it would.
        if done < total && !truncated {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(done + 1000)
                .unwrap();
            truncated = true;
        }
    })
    .err()
    .expect("the load fails");
    assert!(truncated, "the file was read in more than one chunk");
    assert!(
        e.contains(&path.display().to_string()) && e.contains("truncated or replaced in place"),
        "{e}"
    );
}

#[test]
fn a_gguf_deleted_while_it_loads_loads_whole_and_the_next_load_names_it_missing() {
    let dir = tempfile::tempdir().unwrap();
    let path = copy_of(&demo_model(), dir.path());
    let mut deleted = false;
    let base = load(&path, &mut |done, total| {
        if done < total && !deleted {
            std::fs::remove_file(&path).unwrap();
            deleted = true;
        }
    })
    .expect("an open file keeps its bytes after it is deleted");
    assert!(deleted);
    let ids = base
        .tokenizer
        .encode("The capital of France is", false)
        .unwrap();
    let _compute = common::compute_lock();
    let out = base.model.forward(&[&ids], None, &[], Logits::Last);
    assert!(out.is_ok(), "the loaded base computes");
    let e = load(&path, &mut |_, _| {}).err().expect("the file is gone");
    assert!(e.contains(&path.display().to_string()), "{e}");
    assert!(e.contains("No such file"), "{e}");
}

#[test]
fn an_io_error_part_way_through_a_weight_file_is_an_error_naming_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = copy_of(&demo_model(), dir.path());
    let folder = dir.path().join("tiny-llama");
    std::fs::create_dir(&folder).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        copy_of(&testdata(&format!("tiny-llama/{f}")), &folder);
    }
    let shard = folder.join("model.safetensors");
    let faults = FaultyFiles::install();
    faults.set(&gguf, Fault::ErrorFrom(20 << 20));
    faults.set(&shard, Fault::ErrorFrom(4096));

    let e = load(&gguf, &mut |_, _| {})
        .err()
        .expect("the GGUF load fails");
    assert!(
        e.contains(&gguf.display().to_string()) && e.contains("Input/output error"),
        "{e}"
    );
    assert!(
        e.contains("at byte 16777216 of"),
        "the offset of the failed read: {e}"
    );
    let e = load(&folder, &mut |_, _| {})
        .err()
        .expect("the safetensors load fails");
    assert!(
        e.contains(&shard.display().to_string()) && e.contains("Input/output error"),
        "{e}"
    );

    // Once the disk reads again, both load.
    faults.clear(&gguf);
    faults.clear(&shard);
    assert!(load(&gguf, &mut |_, _| {}).is_ok());
    // The folder is read tensor by tensor: progress climbs to the shard's size.
    let mut seen = Vec::new();
    assert!(load(&folder, &mut |done, total| seen.push((done, total))).is_ok());
    let size = std::fs::metadata(&shard).unwrap().len();
    assert!(seen.len() > 2, "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0), "{seen:?}");
    assert_eq!(seen.last(), Some(&(size, size)));
}

#[test]
fn a_gguf_truncated_before_the_load_fails_naming_the_first_missing_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = copy_of(&demo_model(), dir.path());
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let e = load(&path, &mut |_, _| {}).err().expect("the load fails");
    assert!(
        e.contains(&path.display().to_string()) && e.contains("truncated?"),
        "{e}"
    );
}
