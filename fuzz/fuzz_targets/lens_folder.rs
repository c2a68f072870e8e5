//! Lens folders: a tuned lens (config.json and params.safetensors) or a talkative lens
//! (talkative.json and lens.safetensors) with any bytes in either file: an error that names
//! the file, never a panic.
#![no_main]

use lensd_engine::lens::talkative::TalkativeLens;
use lensd_engine::lens::TunedLens;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // One byte chooses the kind, two give the manifest's length, the rest is the manifest
    // and then the tensor file.
    if data.len() < 3 {
        return;
    }
    let head = data[0];
    let rest = &data[3..];
    let cut = (u16::from_le_bytes([data[1], data[2]]) as usize).min(rest.len());
    let (manifest, tensors) = rest.split_at(cut);
    let dir = tempfile::tempdir().expect("a scratch folder");
    if head % 2 == 0 {
        std::fs::write(dir.path().join("config.json"), manifest).expect("written");
        std::fs::write(dir.path().join("params.safetensors"), tensors).expect("written");
        let _ = TunedLens::open(dir.path());
    } else {
        std::fs::write(dir.path().join("talkative.json"), manifest).expect("written");
        std::fs::write(dir.path().join("lens.safetensors"), tensors).expect("written");
        let _ = TalkativeLens::open(dir.path());
    }
});
