//! `model_groups.json` parsing and validation: any bytes give a config or a report of
//! problems, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let (config, report) = lensd_core::config::parse(text);
        if config.is_none() {
            assert!(report.has_errors(), "no config and no error for {text:?}");
        }
    }
});
