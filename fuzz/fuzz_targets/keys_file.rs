//! `lensd serve --keys FILE` and `--role-limits FILE`: any bytes give the keys (or limits)
//! or an error naming the file, never a panic; a key read back authenticates as itself.
#![no_main]

use lensd_server::auth::Keys;
use lensd_server::roles::RoleTable;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("a scratch folder");
    let path = dir.path().join("keys.json");
    std::fs::write(&path, data).expect("written");
    if let Ok(keys) = Keys::from_file(&path) {
        if let Ok(text) = std::str::from_utf8(data) {
            // Every key the file gives authenticates, with the Bearer scheme only.
            if let Ok(doc) = serde_json::from_str::<serde_json::Value>(text) {
                for k in doc["keys"].as_array().into_iter().flatten() {
                    if let Some(key) = k["key"].as_str() {
                        assert!(keys.holder(key).is_ok());
                        let header = format!("Bearer {key}");
                        let trimmed = key.trim() == key && !key.contains(' ');
                        if trimmed {
                            assert!(keys.caller(Some(&header)).is_ok());
                        }
                    }
                }
            }
        }
    }
    let _ = RoleTable::from_file(&path);
});
