//! The file probe on the tiny checkpoint and its tuned lens: facts read from headers, identity
//! by content (copies agree, the compute dtype and any changed byte do not), hashes cached
//! while files are unchanged, readable errors, and a config check over real files.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use lensd_core::config::{check, parse, Budgets, DonorKind, Severity};
use lensd_core::{ComputeDtype, LensKind};
use lensd_engine::probe::FileProbe;
use serde_json::json;

fn tiny() -> PathBuf {
    common::testdata("tiny-llama")
}

fn tuned() -> PathBuf {
    common::testdata("tiny-llama/tuned-lens")
}

/// A copy of the tiny base's files (not its golden files) under `to`.
fn copy_base(to: &Path) -> PathBuf {
    let dir = to.join("tiny-copy");
    fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        fs::copy(tiny().join(f), dir.join(f)).unwrap();
    }
    dir
}

fn copy_lens(to: &Path) -> PathBuf {
    let dir = to.join("lens-copy");
    fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "params.pt"] {
        fs::copy(tuned().join(f), dir.join(f)).unwrap();
    }
    dir
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_slice(&fs::read(path).unwrap()).unwrap();
    edit(&mut v);
    fs::write(path, serde_json::to_string(&v).unwrap()).unwrap();
}

#[test]
fn a_base_reads_its_facts_from_the_headers() {
    let probe = FileProbe::new();
    let facts = probe.base_facts(&tiny(), ComputeDtype::F32).unwrap();
    assert_eq!((facts.n_layers, facts.d_model), (3, 64));
    let report = lensd_engine::inspect::inspect(&tiny()).unwrap();
    assert_eq!(facts.resident_bytes, report.resident_f32);
    // The tiny checkpoint is stored in f32: every tensor keeps its 4 bytes per element.
    let elements: u64 = report.kinds.iter().map(|k| k.elements).sum();
    assert_eq!(facts.resident_bytes, elements * 4);
    let id = &facts.content_id;
    let hex = id
        .strip_prefix("blake3:")
        .and_then(|s| s.strip_suffix("-f32"));
    assert!(
        hex.is_some_and(|h| h.len() == 16 && h.chars().all(|c| c.is_ascii_hexdigit())),
        "{id}"
    );
}

#[test]
fn copies_share_an_id_and_the_dtype_is_part_of_it() {
    let tmp = tempfile::tempdir().unwrap();
    let copy = copy_base(tmp.path());
    let probe = FileProbe::new();
    let original = probe.base_facts(&tiny(), ComputeDtype::F32).unwrap();
    let copied = probe.base_facts(&copy, ComputeDtype::F32).unwrap();
    assert_eq!(original, copied);
    let stored = probe.base_facts(&tiny(), ComputeDtype::Stored).unwrap();
    assert_ne!(stored.content_id, original.content_id);
    assert!(
        stored.content_id.ends_with("-stored"),
        "{}",
        stored.content_id
    );
    assert_eq!(
        stored.content_id.trim_end_matches("-stored"),
        original.content_id.trim_end_matches("-f32"),
        "the same files hash the same"
    );

    // A GGUF conversion of the same weights holds other bytes: another base.
    let gguf = tmp.path().join("tiny.gguf");
    common::write_tiny_gguf(&gguf, |_, _| {});
    let g = probe.base_facts(&gguf, ComputeDtype::F32).unwrap();
    assert_eq!((g.n_layers, g.d_model), (3, 64));
    assert_eq!(g.resident_bytes, original.resident_bytes);
    assert_ne!(g.content_id, original.content_id);
}

#[test]
fn hashes_are_cached_until_a_file_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let copy = copy_base(tmp.path());
    let probe = FileProbe::new();
    let first = probe.base_facts(&copy, ComputeDtype::F32).unwrap();
    let len = |f: &str| fs::metadata(copy.join(f)).unwrap().len();
    let config_len = len("config.json");
    assert_eq!(probe.hashed_bytes(), config_len + len("model.safetensors"));

    let again = probe.base_facts(&copy, ComputeDtype::Stored).unwrap();
    assert_eq!(probe.hashed_bytes(), config_len + len("model.safetensors"));
    assert_eq!(first.n_layers, again.n_layers);

    // Rewriting config.json (same meaning, other bytes) rehashes that file only.
    let text = fs::read_to_string(copy.join("config.json")).unwrap();
    fs::write(copy.join("config.json"), format!("{text}\n")).unwrap();
    let changed = probe.base_facts(&copy, ComputeDtype::F32).unwrap();
    assert_ne!(changed.content_id, first.content_id);
    assert_eq!(
        probe.hashed_bytes(),
        2 * config_len + 1 + len("model.safetensors")
    );
}

#[test]
fn a_tuned_lens_reads_its_config_and_sizes_its_translators() {
    let tmp = tempfile::tempdir().unwrap();
    let probe = FileProbe::new();
    let facts = probe.lens_facts(LensKind::Tuned, &tuned()).unwrap();
    assert_eq!(
        (facts.d_model, facts.n_layers, facts.layer),
        (Some(64), Some(3), None)
    );
    // Three translators, each a 64×64 matrix and a bias of 64, held as f32.
    assert_eq!(facts.bytes, 3 * (64 * 64 + 64) * 4);
    assert!(facts.content_id.starts_with("blake3:"));
    let copy = copy_lens(tmp.path());
    assert_eq!(probe.lens_facts(LensKind::Tuned, &copy).unwrap(), facts);
}

#[test]
fn a_talkative_lens_is_read_whole_with_its_donor() {
    let lens_dir = common::testdata("talkative/lens");
    let donor = common::testdata("talkative/donor");
    let probe = FileProbe::new();
    let facts = probe.lens_facts(LensKind::Talkative, &lens_dir).unwrap();
    assert_eq!(
        (facts.d_model, facts.n_layers, facts.layer),
        (Some(64), Some(3), Some(0))
    );
    let lens = lensd_engine::lens::talkative::TalkativeLens::open(&lens_dir).unwrap();
    assert_eq!(facts.bytes, lens.bytes());
    // Every tensor of the file, held as f32: the file is f32 too, plus its header.
    let file = fs::metadata(lens_dir.join("lens.safetensors"))
        .unwrap()
        .len();
    assert!(
        facts.bytes < file && facts.bytes + 4096 > file,
        "{} vs {file}",
        facts.bytes
    );

    let with = probe
        .lens_facts_with(LensKind::Talkative, &lens_dir, Some(&donor))
        .unwrap();
    let adapter = lensd_engine::lora::Adapter::open(&donor).unwrap();
    assert_eq!(with.bytes, facts.bytes + adapter.bytes());
    assert_ne!(
        with.content_id, facts.content_id,
        "the donor is part of the lens"
    );

    let tmp = tempfile::tempdir().unwrap();
    let original = tmp.path().join("run");
    fs::create_dir(&original).unwrap();
    fs::copy(
        common::testdata("talkative/original/checkpoint.pt"),
        original.join("checkpoint.pt"),
    )
    .unwrap();
    let e = err(probe.lens_facts(LensKind::Talkative, &original));
    assert!(
        e.contains("convert_talkative.py") && e.contains("run"),
        "{e}"
    );
    let e = err(probe.lens_facts(LensKind::Talkative, &tmp.path().join("missing")));
    assert!(e.contains("missing"), "{e}");
    let e = err(probe.lens_facts_with(LensKind::Talkative, &lens_dir, Some(&original)));
    assert!(e.contains("adapter_config.json"), "{e}");
}

fn err<T>(r: Result<T, lensd_engine::EngineError>) -> String {
    match r {
        Ok(_) => panic!("probe succeeded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn unreadable_files_give_errors_that_name_them() {
    let tmp = tempfile::tempdir().unwrap();
    let probe = FileProbe::new();

    let missing = tmp.path().join("nowhere");
    let e = err(probe.base_facts(&missing, ComputeDtype::F32));
    assert!(
        e.contains("nowhere") && e.contains("no such file") && e.contains("Hugging Face model id"),
        "{e}"
    );

    let text = tmp.path().join("notes.txt");
    fs::write(&text, "not weights").unwrap();
    let e = err(probe.base_facts(&text, ComputeDtype::F32));
    assert!(
        e.contains("notes.txt") && e.contains("neither a GGUF file"),
        "{e}"
    );

    let no_tokenizer = copy_base(tmp.path());
    fs::remove_file(no_tokenizer.join("tokenizer.json")).unwrap();
    let e = err(probe.base_facts(&no_tokenizer, ComputeDtype::F32));
    assert!(
        e.contains("tiny-copy") && e.contains("no tokenizer.json"),
        "{e}"
    );

    let e = err(probe.lens_facts(LensKind::Tuned, &text));
    assert!(
        e.contains("notes.txt") && e.contains("a tuned lens is a folder"),
        "{e}"
    );

    let no_params = copy_lens(tmp.path());
    fs::remove_file(no_params.join("params.pt")).unwrap();
    let e = err(probe.lens_facts(LensKind::Tuned, &no_params));
    assert!(e.contains("lens-copy") && e.contains("params.pt"), "{e}");
}

fn group(id: &str, base: &Path, lens: &Path) -> serde_json::Value {
    json!({
        "group_id": id,
        "group_name": id,
        "base_model_path": base,
        "models": [
            {"id": format!("{id}-logit"), "name": "logit", "layer": 3},
            {"id": format!("{id}-tuned"), "name": "tuned", "lens": "tuned",
             "lens_checkpoint_path": lens, "layer": 1}
        ]
    })
}

fn roomy() -> Budgets {
    Budgets {
        device: 1 << 30,
        host: 1 << 30,
    }
}

#[test]
fn a_config_over_the_tiny_files_checks_clean() {
    let tmp = tempfile::tempdir().unwrap();
    let copy = copy_base(tmp.path());
    let doc = json!({"model_groups": [group("a", &tiny(), &tuned()), group("b", &copy, &tuned())]});
    let (config, report) = parse(&doc.to_string());
    let config = config.unwrap_or_else(|| panic!("{report}"));
    let probe = FileProbe::new();
    let (report, resolved) = check(&config, &probe, roomy());
    assert!(report.issues.is_empty(), "{report}");
    assert_eq!(
        resolved.bases["a"], resolved.bases["b"],
        "a copy is the same base"
    );
    assert_eq!(resolved.lenses["a-tuned"], resolved.lenses["b-tuned"]);
    assert!(!resolved.lenses.contains_key("a-logit"));
}

#[test]
fn a_lens_for_another_base_is_reported_at_its_model() {
    let tmp = tempfile::tempdir().unwrap();
    // The same weights declared with two blocks: a base the tuned lens was not made for.
    let shallow = copy_base(tmp.path());
    edit_json(&shallow.join("config.json"), |v| {
        v["num_hidden_layers"] = json!(2)
    });
    let narrow = copy_lens(tmp.path());
    edit_json(&narrow.join("config.json"), |v| v["d_model"] = json!(32));
    let doc = json!({"model_groups": [
        group("ok", &tiny(), &tuned()),
        group("shallow", &shallow, &tuned()),
        group("narrow", &tiny(), &narrow)
    ]});
    let (config, report) = parse(&doc.to_string());
    let config = config.unwrap_or_else(|| panic!("{report}"));
    let (report, _) = check(&config, &FileProbe::new(), roomy());
    let errors: Vec<(&str, &str)> = report
        .issues
        .iter()
        .filter(|i| i.severity == Severity::Error)
        .map(|i| (i.path.as_str(), i.message.as_str()))
        .collect();
    assert_eq!(errors.len(), 3, "{report}");
    assert_eq!(errors[0].0, "model_groups[1].models[0].layer");
    assert!(
        errors[0].1.contains("layer 3 does not exist"),
        "{}",
        errors[0].1
    );
    assert_eq!(
        errors[1].0,
        "model_groups[1].models[1].lens_checkpoint_path"
    );
    assert!(
        errors[1].1.contains("3 layers but the base has 2"),
        "{}",
        errors[1].1
    );
    assert_eq!(
        errors[2].0,
        "model_groups[2].models[1].lens_checkpoint_path"
    );
    assert!(
        errors[2].1.contains("is 32 but the base's is 64"),
        "{}",
        errors[2].1
    );
}

#[test]
fn a_talkative_lens_with_a_donor_checks_clean_and_its_mistakes_are_placed() {
    let talk = common::testdata("talkative/lens");
    let donor = common::testdata("talkative/donor");
    let doc = json!({"model_groups": [{"group_id": "t", "group_name": "T", "base_model_path": tiny(),
    "models": [
        {"id": "talk", "name": "Talkative", "layer": 0, "lens_checkpoint_path": talk,
         "different_activations_orig_path": donor},
        {"id": "plain", "name": "Talkative without donor", "lens": "talkative", "lens_checkpoint_path": talk},
        {"id": "elsewhere", "name": "Wrong layer", "layer": 2, "lens": "talkative", "lens_checkpoint_path": talk},
        {"id": "hub", "name": "Donor by name", "lens": "talkative", "lens_checkpoint_path": talk,
         "different_activations_orig_path": "someone/llama-lora"}
    ]}]});
    let (config, report) = parse(&doc.to_string());
    let config = config.unwrap_or_else(|| panic!("{report}"));
    let (report, resolved) = check(&config, &FileProbe::new(), roomy());
    let issues: Vec<(&str, Severity)> = report
        .issues
        .iter()
        .map(|i| (i.path.as_str(), i.severity))
        .collect();
    assert_eq!(
        issues,
        [
            ("model_groups[0].models[2].layer", Severity::Warning),
            (
                "model_groups[0].models[3].different_activations_orig_path",
                Severity::Error
            ),
        ],
        "{report}"
    );
    // A donor named by hub id is looked up in the local Hugging Face cache, never fetched.
    let msg = &report.issues[1].message;
    assert!(
        msg.contains("someone/llama-lora") && msg.contains("lensd pull someone/llama-lora"),
        "{msg}"
    );
    // The donor is part of the lens: more bytes, another identity.
    let (with, without) = (&resolved.lenses["talk"], &resolved.lenses["plain"]);
    assert!(with.bytes > without.bytes);
    assert_ne!(with.content_id, without.content_id);
    assert_eq!(without.layer, Some(0));
}

#[test]
fn a_donor_is_told_apart_by_its_files() {
    let probe = FileProbe::new();
    let kind = |p: &Path| probe.donor_kind(p);
    assert_eq!(
        kind(&common::testdata("talkative/donor")).unwrap(),
        DonorKind::Adapter
    );
    assert_eq!(kind(&tiny()).unwrap(), DonorKind::Model);
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("tiny.gguf");
    common::write_tiny_gguf(&gguf, |_, _| {});
    assert_eq!(kind(&gguf).unwrap(), DonorKind::Model);
    // A full donor is probed as a base: its shapes are in its facts.
    let shape = probe.base_facts(&tiny(), ComputeDtype::F32).unwrap().shape;
    assert_eq!(
        (shape.architecture.as_str(), shape.n_heads, shape.n_kv_heads),
        ("llama", 4, 2)
    );
    assert_eq!(
        (shape.head_dim, shape.d_ff, shape.vocab_size),
        (16, 128, 512)
    );
    let e = kind(dir.path()).unwrap_err().to_string();
    assert!(e.contains("neither a LoRA adapter nor a model"), "{e}");
    let e = kind(&dir.path().join("missing")).unwrap_err().to_string();
    assert!(e.contains("no such file or folder"), "{e}");
}
