//! Reading `model_groups.json`: the original site's file as it is, lensd's additions, and
//! broken files whose every problem must be reported at its JSON path in one pass.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use lensd_core::config::{parse, HubId, Preload, Report, Severity};
use lensd_core::{ByteSize, ComputeDtype, LensKind};
use serde_json::json;

const ORIGINAL: &str = include_str!("data/model_groups_original.json");

fn paths(report: &Report, severity: Severity) -> BTreeSet<String> {
    report
        .issues
        .iter()
        .filter(|i| i.severity == severity)
        .map(|i| i.path.clone())
        .collect()
}

fn message<'a>(report: &'a Report, path: &str) -> &'a str {
    let issue = report.issues.iter().find(|i| i.path == path);
    &issue
        .unwrap_or_else(|| panic!("no issue at {path}:\n{report}"))
        .message
}

#[test]
fn the_original_file_reads_with_only_warnings() {
    let (config, report) = parse(ORIGINAL);
    let config = config.unwrap_or_else(|| panic!("rejected:\n{report}"));
    assert_eq!(paths(&report, Severity::Error), BTreeSet::new());
    let expected: BTreeSet<String> = [
        "model_groups[0].models[0].OLDlens_checkpoint_path",
        "model_groups[0].models[1].OLDlens_checkpoint_path",
        "model_groups[0].models[1].OLD2lens_checkpoint_path",
        "model_groups[0].models[2].IGNOREdifferent_activations_orig_path",
        "model_groups[1].models[0].IGNORE2different_activations_orig_path",
        "settings.estimated_gpu_memory",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(paths(&report, Severity::Warning), expected, "{report}");
    assert!(message(&report, "settings.estimated_gpu_memory").contains("file header"));

    assert_eq!(config.groups.len(), 4);
    let bases: BTreeSet<&Path> = config
        .groups
        .iter()
        .map(|g| g.base_path.as_path())
        .collect();
    assert_eq!(bases.len(), 2, "three groups share one base");
    let (group, chat) = config.model("llama3-8b-chat-l24").unwrap();
    assert_eq!(group.id, "llama3-8b-it");
    // The original's only kind of lens is inferred from the checkpoint path.
    assert_eq!(chat.lens, LensKind::Talkative);
    assert_eq!(
        chat.lens_path.as_deref(),
        Some(Path::new("/srv/lenses/llama3-8b/chat_L24_frozen"))
    );
    assert_eq!(
        (chat.layer, chat.batch_size, chat.auto_batch_size_max),
        (Some(24), Some(48), Some(768))
    );
    assert_eq!(chat.donor, None);
    let (secret_group, secret) = config.model("llama3-8b-secret-l16").unwrap();
    assert!(!secret_group.visible && secret_group.backend_only);
    assert!(!secret.visible && secret.backend_only);
    assert_eq!(
        secret.donor.as_deref(),
        Some(Path::new("someone/llama3-8b-secret-lora"))
    );
    assert!(config.group("mistral-7b").unwrap().visible);

    let s = &config.settings;
    assert_eq!(s.default_group.as_deref(), Some("llama3-8b-it"));
    assert_eq!(s.max_cpu_models, Some(5));
    assert_eq!(s.preload_groups, Preload::All);
    assert_eq!(
        (s.use_bf16, s.no_orig, s.no_kl, s.comparison_tl_checkpoint),
        (Some(true), Some(true), Some(true), Some(false))
    );
    // The original's `use_bf16` chooses bf16 where `compute_dtype` says nothing.
    assert_eq!(s.compute_dtype, ComputeDtype::Bf16);
    assert!(config
        .groups
        .iter()
        .all(|g| g.compute_dtype == ComputeDtype::Bf16 && !g.pin));
}

/// A file with one mistake of each kind; every one must be reported, at its own path.
#[test]
fn every_mistake_is_reported_at_its_path_in_one_pass() {
    let doc = json!({
        "model_groups": [
            {
                "group_id": "a",
                "base_model_path": "/m/a.gguf",
                "models": [
                    {"id": "m1", "name": "one", "layer": "ten", "lens_checkpont_path": "/l/x"},
                    {"id": "m2", "name": "two", "lens": "logit", "lens_checkpoint_path": "/l/y"},
                    {"id": "m3", "name": "three", "lens": "tuned"},
                    {"id": "m4", "name": "four", "lens": "linear"},
                    {"id": "m5", "name": "five", "batch_size": 0},
                    {"id": "m6", "name": "six", "layer": -2}
                ]
            },
            {
                "group_id": "a",
                "group_name": "again",
                "base_model_path": "/m/a.gguf",
                "compute_dtype": "f16",
                "keep_alive": "30 minutes",
                "visible": "yes",
                "models": [{"id": "m1", "name": "one again"}]
            },
            {"group_id": "c", "group_name": "C", "base_model_path": 42, "models": []},
            "oops",
            {"group_id": "e", "group_name": "E", "base_model_path": "/m/e"},
            {"group_id": "", "group_name": "F", "base_model_path": "/m/f", "models": [{}]}
        ],
        "settings": {
            "default_group": "nope",
            "preload_groups": ["a", "ghost", 3],
            "device_budget": "6 gigs",
            "host_budget": -1,
            "keep_alive": 30,
            "compute_dtype": "int8",
            "colour": "blue",
            "OLDdefault_group": "a"
        }
    });
    let (config, report) = parse(&doc.to_string());
    assert!(config.is_none(), "a file with errors yields no config");
    let errors: BTreeSet<String> = [
        "model_groups[0].group_name",
        "model_groups[0].models[0].layer",
        "model_groups[0].models[0].lens_checkpont_path",
        "model_groups[0].models[1].lens_checkpoint_path",
        "model_groups[0].models[2].lens_checkpoint_path",
        "model_groups[0].models[3].lens",
        "model_groups[0].models[4].batch_size",
        "model_groups[0].models[5].layer",
        "model_groups[1].group_id",
        "model_groups[1].compute_dtype",
        "model_groups[1].keep_alive",
        "model_groups[1].visible",
        "model_groups[1].models[0].id",
        "model_groups[2].base_model_path",
        "model_groups[3]",
        "model_groups[4].models",
        "model_groups[5].group_id",
        "model_groups[5].models[0].id",
        "model_groups[5].models[0].name",
        "settings.default_group",
        "settings.preload_groups[1]",
        "settings.preload_groups[2]",
        "settings.device_budget",
        "settings.host_budget",
        "settings.keep_alive",
        "settings.compute_dtype",
        "settings.colour",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(paths(&report, Severity::Error), errors, "{report}");
    let warnings: BTreeSet<String> = ["model_groups[2].models", "settings.OLDdefault_group"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(paths(&report, Severity::Warning), warnings, "{report}");

    // Messages say what was expected and what was given.
    let m = |p| message(&report, p);
    assert_eq!(
        m("model_groups[0].models[0].layer"),
        "expected a non-negative integer, got \"ten\""
    );
    assert_eq!(
        m("model_groups[0].models[5].layer"),
        "expected a non-negative integer, got -2"
    );
    assert!(m("model_groups[0].models[0].lens_checkpont_path")
        .contains("did you mean `lens_checkpoint_path`?"));
    assert!(m("model_groups[0].models[1].lens_checkpoint_path").contains("logit lens"));
    assert!(m("model_groups[0].models[3].lens").contains("got \"linear\""));
    let batch = m("model_groups[0].models[4].batch_size");
    assert!(
        batch.contains("positive integer") && batch.ends_with("got 0"),
        "{batch}"
    );
    let dup_model = m("model_groups[1].models[0].id");
    assert!(
        dup_model.contains("\"m1\"") && dup_model.contains("model_groups[0].models[0].id"),
        "{dup_model}"
    );
    assert!(m("model_groups[1].group_id").contains("model_groups[0].group_id"));
    assert!(m("model_groups[1].compute_dtype").contains("got \"f16\""));
    assert!(m("model_groups[1].keep_alive").contains("got \"30 minutes\""));
    assert!(m("model_groups[2].base_model_path").contains("got 42"));
    assert!(m("model_groups[3]").contains("got \"oops\""));
    assert!(m("model_groups[4].models").contains("missing"));
    assert!(m("model_groups[5].models[0].name").contains("missing"));
    let unknown_group = m("settings.default_group");
    assert!(
        unknown_group.contains("\"nope\"") && unknown_group.contains("a, c, e"),
        "{unknown_group}"
    );
    assert!(m("settings.preload_groups[1]").contains("\"ghost\""));
    assert!(m("settings.device_budget").contains("unknown unit `gigs`"));
    assert!(m("settings.host_budget").contains("got -1"));
    let colour = m("settings.colour");
    assert!(
        colour.contains("unknown key `colour`") && colour.contains("device_budget"),
        "{colour}"
    );
}

#[test]
fn lensd_additions_are_read() {
    let doc = json!({
        "model_groups": [
            {
                "group_id": "smol",
                "group_name": "SmolLM2",
                "base_model_path": "models/smol.gguf",
                "pin": true,
                "keep_alive": "forever",
                "models": [
                    {"id": "smol-logit", "name": "Logit", "lens": "logit", "layer": 20},
                    {"id": "smol-tuned", "name": "Tuned", "lens": "tuned",
                     "lens_checkpoint_path": "lenses/smol-tuned", "pin": true},
                    {"id": "smol-plain", "name": "No lens given"}
                ]
            },
            {
                "group_id": "smol-q",
                "group_name": "SmolLM2 quantized",
                "base_model_path": "models/smol.gguf",
                "compute_dtype": "stored",
                "keep_alive": "90s",
                "models": [{"id": "smol-q-logit", "name": "Logit"}]
            }
        ],
        "settings": {
            "compute_dtype": "f32",
            "device_budget": "6GiB",
            "host_budget": 1048576,
            "keep_alive": "30m",
            "preload_groups": ["smol-q"]
        }
    });
    let (config, report) = parse(&doc.to_string());
    assert!(report.issues.is_empty(), "{report}");
    let mut config = config.unwrap();
    let smol = config.group("smol").unwrap();
    assert!(smol.pin);
    assert_eq!(smol.keep_alive, Some(Duration::MAX));
    assert_eq!(smol.compute_dtype, ComputeDtype::F32);
    let kinds: Vec<LensKind> = smol.models.iter().map(|m| m.lens).collect();
    assert_eq!(
        kinds,
        [LensKind::Logit, LensKind::Tuned, LensKind::Logit],
        "no lens and no checkpoint means the logit lens"
    );
    assert!(!smol.models[0].pin && smol.models[1].pin);
    let q = config.group("smol-q").unwrap();
    assert_eq!(q.compute_dtype, ComputeDtype::Stored);
    assert_eq!(q.keep_alive, Some(Duration::from_secs(90)));
    let s = &config.settings;
    assert_eq!(s.device_budget, Some(ByteSize(6 << 30)));
    assert_eq!(s.host_budget, Some(ByteSize(1 << 20)));
    assert_eq!(s.keep_alive, Some(Duration::from_secs(1800)));
    assert_eq!(s.preload_groups, Preload::Groups(vec!["smol-q".into()]));

    config.resolve_paths(Path::new("/etc/lensd"));
    let smol = config.group("smol").unwrap();
    assert_eq!(smol.base_path, Path::new("/etc/lensd/models/smol.gguf"));
    assert_eq!(
        smol.models[1].lens_path.as_deref(),
        Some(Path::new("/etc/lensd/lenses/smol-tuned"))
    );
}

#[test]
fn settings_default_the_groups_dtype_and_null_means_absent() {
    let doc = json!({
        "model_groups": [{
            "group_id": "g", "group_name": "G", "base_model_path": "/m", "description": null,
            "models": [{"id": "x", "name": "X", "layer": null, "different_activations_orig_path": null}]
        }],
        "settings": {"compute_dtype": "stored", "default_group": null, "preload_groups": false}
    });
    let (config, report) = parse(&doc.to_string());
    assert!(report.issues.is_empty(), "{report}");
    let config = config.unwrap();
    assert_eq!(config.groups[0].compute_dtype, ComputeDtype::Stored);
    assert_eq!(config.groups[0].models[0].layer, None);
    assert_eq!(config.settings.preload_groups, Preload::None);
    assert_eq!(config.settings.default_group, None);

    // Settings may be left out entirely.
    let (config, report) = parse(r#"{"model_groups": []}"#);
    assert_eq!(
        paths(&report, Severity::Warning),
        ["model_groups".to_string()].into()
    );
    assert_eq!(config.unwrap().settings.compute_dtype, ComputeDtype::F32);
}

#[test]
fn invalid_json_is_one_error_with_its_position() {
    let text = "{\n  \"model_groups\": [\n    {\"group_id\": \"a\",}\n  ]\n}";
    let (config, report) = parse(text);
    assert!(config.is_none());
    assert_eq!(report.issues.len(), 1, "{report}");
    let msg = &report.issues[0].message;
    assert!(msg.starts_with("invalid JSON at line 3, column"), "{msg}");
    assert!(
        !msg.contains(" at line 3 column"),
        "position given twice: {msg}"
    );
}

#[test]
fn a_document_that_is_not_an_object_or_lacks_groups_is_refused() {
    let (config, report) = parse("[1, 2]");
    assert!(config.is_none());
    assert_eq!(report.issues[0].path, "$");
    assert!(report.issues[0].message.contains("got an array of 2 items"));

    // The default group cannot be found, but the missing list is the one thing to say.
    let (config, report) = parse(r#"{"settings": {"default_group": "g"}}"#);
    assert!(config.is_none());
    assert_eq!(
        paths(&report, Severity::Error),
        ["model_groups".to_string()].into()
    );

    let (_, report) = parse(r#"{"model_groups": {}, "groups": []}"#);
    assert_eq!(
        paths(&report, Severity::Error),
        ["model_groups".to_string(), "groups".to_string()].into()
    );
}

#[test]
fn hub_ids_survive_path_resolution_unless_the_config_folder_has_that_path() {
    let doc = json!({
        "model_groups": [
            {"group_id": "hub", "group_name": "Hub", "base_model_path": "google/gemma-2-9b-it",
             "models": [{"id": "a", "name": "A", "lens_checkpoint_path": "lenses/b",
                         "different_activations_orig_path": "IlyaGusev/gemma-2-9b-it-abliterated@v1"}]},
            {"group_id": "local", "group_name": "Local", "base_model_path": "models/tiny",
             "models": []},
            {"group_id": "file", "group_name": "File", "base_model_path": "models/smol.gguf",
             "models": []}
        ]
    });
    let (config, report) = parse(&doc.to_string());
    assert!(!report.has_errors(), "{report}");
    let mut config = config.unwrap();
    // Only `models/tiny` exists beside the config.
    let dir = Path::new("/etc/lensd");
    config.resolve_paths_with(dir, |p| p == dir.join("models/tiny"));
    let hub = config.group("hub").unwrap();
    assert_eq!(
        hub.base_path,
        Path::new("google/gemma-2-9b-it"),
        "kept for the hub cache"
    );
    assert_eq!(
        hub.models[0].donor.as_deref(),
        Some(Path::new("IlyaGusev/gemma-2-9b-it-abliterated@v1"))
    );
    assert_eq!(
        hub.models[0].lens_path.as_deref(),
        Some(Path::new("/etc/lensd/lenses/b")),
        "a lens checkpoint is always a local folder, even one shaped like an id"
    );
    let local = config.group("local").unwrap();
    assert_eq!(local.base_path, Path::new("/etc/lensd/models/tiny"));
    let file = config.group("file").unwrap();
    assert_eq!(
        file.base_path,
        Path::new("/etc/lensd/models/smol.gguf"),
        "a missing file is reported at its full path, not looked up on the hub"
    );
}

#[test]
fn hub_ids_follow_the_hubs_naming_rules() {
    let id = HubId::parse("google/gemma-2-9b-it").unwrap();
    assert_eq!(
        (id.repo.as_str(), id.revision_or_main()),
        ("google/gemma-2-9b-it", "main")
    );
    assert_eq!(id.cache_folder(), "models--google--gemma-2-9b-it");
    let id = HubId::parse("Qwen/Qwen3-0.6B@refs/pr/1").unwrap();
    assert_eq!(id.revision.as_deref(), Some("refs/pr/1"));
    assert_eq!(id.to_string(), "Qwen/Qwen3-0.6B@refs/pr/1");
    for not_an_id in [
        "gemma",
        "/abs/path",
        "./models/x",
        "a/b/c",
        "owner/",
        "-owner/name",
        "owner/name-",
        "owner/na--me",
        "owner/na..me",
        "owner/name with space",
        "models/smol.gguf",
        "owner/name@",
        "owner/name@../x",
        "owner/name@/abs",
    ] {
        assert_eq!(HubId::parse(not_an_id), None, "{not_an_id}");
    }
}

#[test]
fn compute_dtype_overrides_the_originals_use_bf16() {
    for (settings, want) in [
        (serde_json::json!({"use_bf16": true}), ComputeDtype::Bf16),
        (serde_json::json!({"use_bf16": false}), ComputeDtype::F32),
        (
            serde_json::json!({"use_bf16": true, "compute_dtype": "f32"}),
            ComputeDtype::F32,
        ),
        (serde_json::json!({}), ComputeDtype::F32),
    ] {
        let doc = serde_json::json!({
            "model_groups": [{"group_id": "g", "group_name": "G", "base_model_path": "/m/g.gguf",
                              "models": []}],
            "settings": settings
        });
        let (config, report) = parse(&doc.to_string());
        let config = config.unwrap_or_else(|| panic!("{report}"));
        assert_eq!(config.settings.compute_dtype, want, "{settings}");
        assert_eq!(config.groups[0].compute_dtype, want, "{settings}");
    }
}
