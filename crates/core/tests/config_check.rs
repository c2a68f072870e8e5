//! Checking a parsed config against the files it names, through a fake [`Probe`] that records
//! every call: each distinct base and lens is probed once, logit lenses never, and every
//! disagreement between files, layers and budgets is reported at its JSON path.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use lensd_core::config::{
    check, default_budgets, parse, BaseFacts, Budgets, Config, DonorKind, LensFacts, Probe, Report,
    Severity, Shape,
};
use lensd_core::registry::{BaseKey, Registry, ResourceKey};
use lensd_core::{ByteSize, ComputeDtype, LensKind};
use serde_json::{json, Value};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// Bases and lenses by path; anything else is "missing". Logs every call.
#[derive(Default)]
struct FakeProbe {
    bases: HashMap<PathBuf, BaseFacts>,
    lenses: HashMap<PathBuf, LensFacts>,
    adapters: BTreeSet<PathBuf>,
    calls: RefCell<Vec<String>>,
}

impl FakeProbe {
    /// A base whose f32 copy is four times its stored copy.
    fn base(mut self, path: &str, n_layers: usize, d_model: usize, stored: u64) -> Self {
        self.bases.insert(
            path.into(),
            BaseFacts {
                content_id: format!("id-of-{path}"),
                n_layers,
                d_model,
                resident_bytes: stored,
                shape: Shape {
                    architecture: "llama".into(),
                    n_heads: 8,
                    n_kv_heads: 2,
                    head_dim: d_model / 8,
                    d_ff: 4 * d_model,
                    vocab_size: 32_000,
                },
            },
        );
        self
    }

    fn lens(self, path: &str, d: Option<usize>, n: Option<usize>, layer: Option<usize>) -> Self {
        self.lens_bytes(path, d, n, layer, MIB)
    }

    fn lens_bytes(
        mut self,
        path: &str,
        d_model: Option<usize>,
        n_layers: Option<usize>,
        layer: Option<usize>,
        bytes: u64,
    ) -> Self {
        self.lenses.insert(
            path.into(),
            LensFacts {
                content_id: format!("id-of-{path}"),
                d_model,
                n_layers,
                layer,
                bytes,
            },
        );
        self
    }

    fn calls(&self) -> Vec<String> {
        self.calls.borrow().clone()
    }
}

impl Probe for FakeProbe {
    fn base(&self, path: &Path, dtype: ComputeDtype) -> Result<BaseFacts, String> {
        self.calls
            .borrow_mut()
            .push(format!("base {} {}", path.display(), dtype.as_str()));
        let mut facts = self
            .bases
            .get(path)
            .cloned()
            .ok_or_else(|| format!("{}: No such file or directory", path.display()))?;
        if dtype == ComputeDtype::F32 {
            facts.resident_bytes *= 4;
        }
        facts.content_id.push_str(dtype.as_str());
        Ok(facts)
    }

    fn lens(
        &self,
        kind: LensKind,
        path: &Path,
        _donor: Option<&Path>,
    ) -> Result<LensFacts, String> {
        assert_ne!(kind, LensKind::Logit, "a logit lens has no files to probe");
        self.calls
            .borrow_mut()
            .push(format!("lens {} {}", kind.as_str(), path.display()));
        self.lenses
            .get(path)
            .cloned()
            .ok_or_else(|| format!("{}: No such file or directory", path.display()))
    }

    /// Bases are full models; any other path that exists is a LoRA adapter.
    fn donor_kind(&self, path: &Path) -> Result<DonorKind, String> {
        self.calls
            .borrow_mut()
            .push(format!("donor {}", path.display()));
        if self.bases.contains_key(path) {
            Ok(DonorKind::Model)
        } else if self.adapters.contains(path) {
            Ok(DonorKind::Adapter)
        } else {
            Err(format!("{}: No such file or directory", path.display()))
        }
    }
}

fn config(groups: Value, settings: Value) -> Config {
    let doc = json!({"model_groups": groups, "settings": settings});
    let (config, report) = parse(&doc.to_string());
    config.unwrap_or_else(|| panic!("the test's config is invalid:\n{report}"))
}

/// Budgets large enough for anything in these tests.
fn roomy() -> Budgets {
    Budgets {
        device: 100 * GIB,
        host: 100 * GIB,
    }
}

fn paths(report: &Report, severity: Severity) -> BTreeSet<String> {
    report
        .issues
        .iter()
        .filter(|i| i.severity == severity)
        .map(|i| i.path.clone())
        .collect()
}

fn set(paths: &[&str]) -> BTreeSet<String> {
    paths.iter().map(|p| p.to_string()).collect()
}

fn message<'a>(report: &'a Report, path: &str) -> &'a str {
    let issue = report.issues.iter().find(|i| i.path == path);
    &issue
        .unwrap_or_else(|| panic!("no issue at {path}:\n{report}"))
        .message
}

#[test]
fn a_clean_config_probes_each_file_once_and_resolves_every_fact() {
    let probe = FakeProbe::default()
        .base("/m/llama", 30, 576, GIB)
        .lens("/l/tuned", Some(576), Some(30), None)
        .lens("/l/talk", None, None, None);
    let c = config(
        json!([
            {"group_id": "a", "group_name": "A", "base_model_path": "/m/llama", "models": [
                {"id": "a-logit", "name": "logit", "layer": 30},
                {"id": "a-tuned", "name": "tuned", "lens": "tuned", "lens_checkpoint_path": "/l/tuned"},
                {"id": "a-talk", "name": "talk", "lens_checkpoint_path": "/l/talk", "layer": 12}
            ]},
            {"group_id": "b", "group_name": "B", "base_model_path": "/m/llama", "models": [
                {"id": "b-tuned", "name": "tuned", "lens": "tuned", "lens_checkpoint_path": "/l/tuned"}
            ]},
            {"group_id": "q", "group_name": "Q", "base_model_path": "/m/llama",
             "compute_dtype": "stored", "models": [{"id": "q-logit", "name": "logit"}]}
        ]),
        json!({}),
    );
    let (report, resolved) = check(&c, &probe, roomy());
    assert!(report.issues.is_empty(), "{report}");
    assert_eq!(
        probe.calls(),
        [
            "base /m/llama f32",
            "lens tuned /l/tuned",
            "lens talkative /l/talk",
            "base /m/llama stored",
        ],
        "one probe per distinct (base, dtype) and per distinct lens; none for logit lenses"
    );
    assert_eq!(resolved.bases.len(), 3);
    assert_eq!(resolved.bases["a"], resolved.bases["b"]);
    assert_eq!(resolved.bases["a"].resident_bytes, 4 * GIB);
    assert_eq!(resolved.bases["q"].resident_bytes, GIB);
    assert_ne!(
        resolved.bases["a"].content_id,
        resolved.bases["q"].content_id
    );
    let lens_ids: Vec<&str> = resolved.lenses.keys().map(String::as_str).collect();
    assert_eq!(
        lens_ids,
        ["a-talk", "a-tuned", "b-tuned"],
        "logit lenses have no entry"
    );
    assert_eq!(resolved.lenses["a-tuned"], resolved.lenses["b-tuned"]);
}

#[test]
fn missing_files_are_reported_where_they_are_named() {
    let probe = FakeProbe::default().base("/m/ok", 4, 64, MIB);
    let c = config(
        json!([
            {"group_id": "gone", "group_name": "G", "base_model_path": "/m/gone", "models": [
                {"id": "g1", "name": "x", "lens": "tuned", "lens_checkpoint_path": "/l/elsewhere"}
            ]},
            {"group_id": "ok", "group_name": "O", "base_model_path": "/m/ok", "models": [
                {"id": "o1", "name": "x", "lens_checkpoint_path": "/l/gone"}
            ]}
        ]),
        json!({}),
    );
    let (report, resolved) = check(&c, &probe, roomy());
    assert_eq!(
        paths(&report, Severity::Error),
        set(&[
            "model_groups[0].base_model_path",
            "model_groups[0].models[0].lens_checkpoint_path",
            "model_groups[1].models[0].lens_checkpoint_path",
        ]),
        "{report}"
    );
    let base = message(&report, "model_groups[0].base_model_path");
    assert_eq!(
        base,
        "cannot read the base: /m/gone: No such file or directory"
    );
    let lens = message(&report, "model_groups[1].models[0].lens_checkpoint_path");
    assert!(
        lens.starts_with("cannot read the talkative lens: /l/gone:"),
        "{lens}"
    );
    assert_eq!(resolved.bases.keys().collect::<Vec<_>>(), ["ok"]);
    assert!(resolved.lenses.is_empty());
}

#[test]
fn layers_run_from_zero_to_the_base_layer_count() {
    let probe = FakeProbe::default().base("/m/three", 3, 64, MIB);
    let c = config(
        json!([{"group_id": "g", "group_name": "G", "base_model_path": "/m/three", "models": [
            {"id": "first", "name": "x", "layer": 0},
            {"id": "last", "name": "x", "layer": 3},
            {"id": "beyond", "name": "x", "layer": 4}
        ]}]),
        json!({}),
    );
    let (report, _) = check(&c, &probe, roomy());
    assert_eq!(
        paths(&report, Severity::Error),
        set(&["model_groups[0].models[2].layer"]),
        "{report}"
    );
    let m = message(&report, "model_groups[0].models[2].layer");
    assert!(
        m.contains("layer 4") && m.contains("0 (the embeddings) to 3"),
        "{m}"
    );
}

#[test]
fn a_lens_made_for_another_base_is_a_mismatch() {
    let probe = FakeProbe::default()
        .base("/m/small", 3, 64, MIB)
        .lens("/l/wide", Some(128), Some(3), None)
        .lens("/l/deep", Some(64), Some(30), None)
        .lens("/l/talk-wide", Some(576), None, Some(2))
        .lens("/l/talk-unknown", None, None, None)
        .lens("/l/talk-layer", Some(64), None, Some(2))
        .lens("/l/talk-too-deep", Some(64), None, Some(9));
    let c = config(
        json!([{"group_id": "g", "group_name": "G", "base_model_path": "/m/small", "models": [
            {"id": "wide", "name": "x", "lens": "tuned", "lens_checkpoint_path": "/l/wide"},
            {"id": "deep", "name": "x", "lens": "tuned", "lens_checkpoint_path": "/l/deep"},
            {"id": "talk-wide", "name": "x", "lens_checkpoint_path": "/l/talk-wide"},
            {"id": "talk-unknown", "name": "x", "lens_checkpoint_path": "/l/talk-unknown"},
            {"id": "talk-layer", "name": "x", "lens_checkpoint_path": "/l/talk-layer", "layer": 3},
            {"id": "talk-too-deep", "name": "x", "lens_checkpoint_path": "/l/talk-too-deep"}
        ]}]),
        json!({}),
    );
    let (report, resolved) = check(&c, &probe, roomy());
    assert_eq!(
        paths(&report, Severity::Error),
        set(&[
            "model_groups[0].models[0].lens_checkpoint_path",
            "model_groups[0].models[1].lens_checkpoint_path",
            "model_groups[0].models[2].lens_checkpoint_path",
            "model_groups[0].models[5].lens_checkpoint_path",
        ]),
        "{report}"
    );
    assert_eq!(
        paths(&report, Severity::Warning),
        set(&["model_groups[0].models[4].layer"]),
        "{report}"
    );
    let m = |i: usize| {
        message(
            &report,
            &format!("model_groups[0].models[{i}].lens_checkpoint_path"),
        )
    };
    assert!(
        m(0).contains("d_model) is 128 but the base's is 64"),
        "{}",
        m(0)
    );
    assert!(m(0).contains("/m/small"), "names the base: {}", m(0));
    assert!(m(1).contains("30 layers but the base has 3"), "{}", m(1));
    assert!(
        m(2).contains("576") && m(2).starts_with("this talkative lens"),
        "{}",
        m(2)
    );
    assert!(m(5).contains("output of block 9"), "{}", m(5));
    assert!(message(&report, "model_groups[0].models[4].layer").contains("reads layer 2, not 3"));
    // A mismatched lens is still described: its facts are what the report is about.
    assert!(resolved.lenses.contains_key("wide"));
}

fn two_bases() -> FakeProbe {
    FakeProbe::default()
        .base("/m/small", 4, 64, 100 * MIB)
        .base("/m/big", 4, 64, GIB)
        .lens_bytes("/l/big-lens", Some(64), Some(4), None, 300 * MIB)
        .lens_bytes("/l/small-lens", Some(64), Some(4), None, 10 * MIB)
}

fn two_groups(settings: Value) -> Config {
    config(
        json!([
            {"group_id": "small", "group_name": "S", "base_model_path": "/m/small", "models": [
                {"id": "s-tuned", "name": "x", "lens": "tuned", "lens_checkpoint_path": "/l/big-lens"}
            ]},
            {"group_id": "big", "group_name": "B", "base_model_path": "/m/big", "compute_dtype": "stored",
             "models": [
                {"id": "b-logit", "name": "x"},
                {"id": "b-tuned", "name": "x", "lens": "tuned", "lens_checkpoint_path": "/l/small-lens"}
            ]}
        ]),
        settings,
    )
}

#[test]
fn a_device_budget_below_the_largest_base_names_it() {
    // The small base computes in f32 (400 MiB), the big one stored (1 GiB): the big one is
    // the largest.
    let c = two_groups(json!({"device_budget": "512MiB", "host_budget": "8GiB"}));
    let budgets = Budgets::resolve(&c.settings, 64 * GIB);
    assert_eq!(budgets.device, 512 * MIB);
    let (report, _) = check(&c, &two_bases(), budgets);
    assert_eq!(report.issues.len(), 1, "{report}");
    assert_eq!(
        message(&report, "settings.device_budget"),
        "the device budget of 512.0 MiB cannot hold the base /m/big (1.0 GiB once loaded with \
         compute dtype stored, group big); raise the budget or use a smaller compute dtype"
    );
}

#[test]
fn a_device_budget_must_hold_a_base_with_its_groups_largest_lens() {
    // Largest pair: big (1 GiB) + its 10 MiB lens = 1034 MiB; small: 400 + 300 = 700 MiB.
    let c = two_groups(json!({"device_budget": "1030MiB", "host_budget": "8GiB"}));
    let (report, _) = check(&c, &two_bases(), Budgets::resolve(&c.settings, 64 * GIB));
    assert_eq!(report.issues.len(), 1, "{report}");
    let m = message(&report, "settings.device_budget");
    assert!(
        m.contains("/m/big")
            && m.contains("model b-tuned (10.0 MiB)")
            && m.contains("1.0 GiB in all"),
        "{m}"
    );
    assert_eq!(report.issues[0].severity, Severity::Error);

    // Exactly enough is enough.
    let c = two_groups(json!({"device_budget": "1034MiB", "host_budget": "8GiB"}));
    let (report, _) = check(&c, &two_bases(), Budgets::resolve(&c.settings, 64 * GIB));
    assert!(report.issues.is_empty(), "{report}");
}

#[test]
fn a_host_budget_below_the_largest_base_is_a_warning() {
    let c = two_groups(json!({"host_budget": "900MiB"}));
    // 8 GiB of RAM: the device default is 4 GiB, enough.
    let (report, _) = check(&c, &two_bases(), Budgets::resolve(&c.settings, 8 * GIB));
    assert!(!report.has_errors(), "{report}");
    assert_eq!(
        paths(&report, Severity::Warning),
        set(&["settings.host_budget"])
    );
    let m = message(&report, "settings.host_budget");
    assert!(
        m.contains("900.0 MiB") && m.contains("/m/big") && m.contains("kept warm"),
        "{m}"
    );
}

#[test]
fn budgets_left_unset_come_from_the_machine_and_say_so() {
    let c = two_groups(json!({}));
    let budgets = Budgets::resolve(&c.settings, GIB);
    assert_eq!(budgets, default_budgets(GIB));
    assert_eq!((budgets.device, budgets.host), (512 * MIB, 256 * MIB));
    let (report, _) = check(&c, &two_bases(), budgets);
    assert_eq!(
        paths(&report, Severity::Error),
        set(&["settings.device_budget"]),
        "{report}"
    );
    assert_eq!(
        paths(&report, Severity::Warning),
        set(&["settings.host_budget"])
    );
    let m = message(&report, "settings.device_budget");
    assert!(
        m.contains(&format!("{} (not set", ByteSize(512 * MIB))),
        "{m}"
    );
    assert!(m.contains("set settings.device_budget"), "{m}");
}

// ---- donors ------------------------------------------------------------------------------

impl FakeProbe {
    /// A base or full donor with a Gemma-2-9B-like shape, changed by `edit`.
    fn model(mut self, path: &str, stored: u64, edit: impl FnOnce(&mut BaseFacts)) -> Self {
        let mut facts = BaseFacts {
            content_id: format!("id-of-{path}"),
            n_layers: 42,
            d_model: 3584,
            resident_bytes: stored,
            shape: Shape {
                architecture: "gemma2".into(),
                n_heads: 16,
                n_kv_heads: 8,
                head_dim: 256,
                d_ff: 14336,
                vocab_size: 256_000,
            },
        };
        edit(&mut facts);
        self.bases.insert(path.into(), facts);
        self
    }

    fn adapter(mut self, path: &str) -> Self {
        self.adapters.insert(path.into());
        self
    }
}

/// The original's deployment in small: a base, a fine-tune of it named as the donor of two
/// models, a LoRA donor, and a second group whose base is the fine-tune itself.
fn donors_probe() -> FakeProbe {
    FakeProbe::default()
        .model("/m/gemma", GIB, |_| {})
        .model("/m/abliterated", GIB, |_| {})
        .model("/m/qwen", GIB, |f| {
            f.n_layers = 48;
            f.d_model = 5120;
            f.shape.architecture = "qwen2".into();
            f.shape.n_heads = 40;
            f.shape.vocab_size = 152_064;
        })
        .adapter("/a/lora")
        .lens("/l/talk", Some(3584), Some(42), Some(20))
        .lens("/l/talk-lora", Some(3584), Some(42), Some(20))
}

fn donors_config(donor: &str, settings: Value) -> Config {
    config(
        json!([
            {"group_id": "gemma", "group_name": "G", "base_model_path": "/m/gemma",
             "compute_dtype": "stored", "models": [
                {"id": "talk-a", "name": "a", "lens_checkpoint_path": "/l/talk",
                 "different_activations_orig_path": donor},
                {"id": "talk-b", "name": "b", "lens_checkpoint_path": "/l/talk",
                 "different_activations_orig_path": donor},
                {"id": "talk-lora", "name": "lora", "lens_checkpoint_path": "/l/talk-lora",
                 "different_activations_orig_path": "/a/lora"},
                {"id": "plain", "name": "plain", "lens_checkpoint_path": "/l/talk"}
            ]},
            {"group_id": "abliterated", "group_name": "A", "base_model_path": "/m/abliterated",
             "compute_dtype": "stored", "models": [{"id": "abl-logit", "name": "logit"}]}
        ]),
        settings,
    )
}

#[test]
fn a_full_donor_is_probed_as_a_base_and_shared_by_content() {
    let probe = donors_probe();
    let c = donors_config("/m/abliterated", json!({}));
    let (report, resolved) = check(&c, &probe, roomy());
    assert!(report.issues.is_empty(), "{report}");
    assert_eq!(
        probe.calls(),
        [
            "base /m/gemma stored",
            "donor /m/abliterated",
            "base /m/abliterated stored",
            "lens talkative /l/talk",
            "donor /a/lora",
            "lens talkative /l/talk-lora",
        ],
        "each donor's kind is read once; a full donor is probed as a base in its group's \
         dtype, once, also when another group names it as its base"
    );
    let donor_ids: Vec<&str> = resolved.donors.keys().map(String::as_str).collect();
    assert_eq!(donor_ids, ["talk-a", "talk-b"], "a LoRA donor is no base");
    assert_eq!(resolved.donors["talk-a"], resolved.bases["abliterated"]);

    let r = Registry::build(&c, &resolved);
    let donor = BaseKey("id-of-/m/abliteratedstored".into());
    assert_eq!(r.bases.len(), 2, "the donor shares the second group's base");
    assert_eq!(r.models["talk-a"].donor.as_ref(), Some(&donor));
    assert_eq!(r.models["talk-b"].donor.as_ref(), Some(&donor));
    assert_eq!(r.models["abl-logit"].base, donor);
    assert_eq!(r.models["talk-lora"].donor, None);
    assert_eq!(r.models["plain"].donor, None);
    assert_eq!(
        r.needs("talk-a").unwrap(),
        [
            ResourceKey::Base(r.models["talk-a"].base.clone()),
            ResourceKey::Base(donor.clone()),
            ResourceKey::Lens(r.models["talk-a"].lens.clone().unwrap()),
        ]
    );
    // The full donor is not part of the lens; the LoRA donor is.
    let talk = &r.lenses[r.models["talk-a"].lens.as_ref().unwrap()];
    assert_eq!(talk.donor, None);
    assert_eq!(r.models["plain"].lens, r.models["talk-a"].lens, "one lens");
    let lora = &r.lenses[r.models["talk-lora"].lens.as_ref().unwrap()];
    assert_eq!(lora.donor.as_deref(), Some(Path::new("/a/lora")));
    assert_eq!(
        r.users(&ResourceKey::Base(donor.clone())),
        ["abl-logit", "talk-a", "talk-b"]
    );
    assert_eq!(r.donor_of(&donor), ["talk-a", "talk-b"]);
    let group_needs = r.group_needs("gemma").unwrap();
    assert!(
        group_needs.contains(&ResourceKey::Base(donor)),
        "a preload brings donors too"
    );
}

#[test]
fn a_donor_that_is_the_base_itself_needs_nothing_more() {
    let c = donors_config("/m/gemma", json!({}));
    let (report, resolved) = check(&c, &donors_probe(), roomy());
    assert!(report.issues.is_empty(), "{report}");
    let r = Registry::build(&c, &resolved);
    assert_eq!(r.models["talk-a"].donor, None);
    assert_eq!(r.needs("talk-a").unwrap().len(), 2, "base and lens");
}

#[test]
fn a_donor_whose_shapes_differ_is_refused_naming_both_and_each_difference() {
    let c = donors_config("/m/qwen", json!({}));
    let (report, resolved) = check(&c, &donors_probe(), roomy());
    assert_eq!(
        paths(&report, Severity::Error),
        set(&[
            "model_groups[0].models[0].different_activations_orig_path",
            "model_groups[0].models[1].different_activations_orig_path",
        ]),
        "{report}"
    );
    let m = message(
        &report,
        "model_groups[0].models[0].different_activations_orig_path",
    );
    for part in [
        "/m/qwen",
        "/m/gemma",
        "(donor vs base)",
        "architecture qwen2 vs gemma2",
        "layers 48 vs 42",
        "width (d_model) 5120 vs 3584",
        "attention heads 40 vs 16",
        "vocabulary 152064 vs 256000",
    ] {
        assert!(m.contains(part), "{part}: {m}");
    }
    assert!(!m.contains("key/value heads"), "only what differs: {m}");
    // The models are left out of what would be served; the others stay.
    assert!(!resolved.donors.contains_key("talk-a"));
    assert!(!resolved.lenses.contains_key("talk-a"));
    let r = Registry::build(&c, &resolved);
    assert!(!r.models.contains_key("talk-a") && r.models.contains_key("plain"));
}

#[test]
fn an_unreadable_donor_is_reported_at_its_key() {
    let c = donors_config("/m/gone", json!({}));
    let (report, _) = check(&c, &donors_probe(), roomy());
    let m = message(
        &report,
        "model_groups[0].models[0].different_activations_orig_path",
    );
    assert!(m.starts_with("cannot read the donor: /m/gone"), "{m}");
}

#[test]
fn the_device_budget_must_hold_a_base_with_a_models_donor_and_lens() {
    // gemma 1 GiB + the donor 1 GiB + the lens 1 MiB.
    let c = donors_config(
        "/m/abliterated",
        json!({"device_budget": "2GiB", "host_budget": "8GiB"}),
    );
    let (report, _) = check(&c, &donors_probe(), Budgets::resolve(&c.settings, 64 * GIB));
    let m = message(&report, "settings.device_budget");
    assert!(
        m.contains("/m/gemma")
            && m.contains("the donor model /m/abliterated of model talk-a (1.0 GiB)")
            && m.contains("the lens of model talk-a (1.0 MiB)")
            && m.contains("2.0 GiB in all"),
        "{m}"
    );
    let c = donors_config(
        "/m/abliterated",
        json!({"device_budget": "2049MiB", "host_budget": "8GiB"}),
    );
    let (report, _) = check(&c, &donors_probe(), Budgets::resolve(&c.settings, 64 * GIB));
    assert!(report.issues.is_empty(), "{report}");
    // A donor that is the base costs nothing more.
    let c = donors_config(
        "/m/gemma",
        json!({"device_budget": "1025MiB", "host_budget": "8GiB"}),
    );
    let (report, _) = check(&c, &donors_probe(), Budgets::resolve(&c.settings, 64 * GIB));
    assert!(report.issues.is_empty(), "{report}");
}

#[test]
fn a_reload_that_changes_a_donor_changes_the_model_and_its_resources() {
    let probe = donors_probe().model("/m/other-tune", GIB, |_| {});
    let build = |donor: &str, second_group: bool| {
        let mut c = donors_config(donor, json!({}));
        if !second_group {
            c.groups.truncate(1);
        }
        let (report, resolved) = check(&c, &probe, roomy());
        assert!(report.issues.is_empty(), "{report}");
        Registry::build(&c, &resolved)
    };
    let before = build("/m/abliterated", false);
    let after = build("/m/other-tune", false);
    let d = before.diff(&after);
    assert_eq!(d.changed_models, ["talk-a", "talk-b"]);
    let old = ResourceKey::Base(BaseKey("id-of-/m/abliteratedstored".into()));
    let new = ResourceKey::Base(BaseKey("id-of-/m/other-tunestored".into()));
    assert_eq!(d.dropped, std::slice::from_ref(&old));
    assert_eq!(d.new, [new]);
    // A donor that another group still uses as its base stays.
    let d = build("/m/abliterated", true).diff(&build("/m/other-tune", true));
    assert!(!d.dropped.contains(&old), "{d:?}");
    // The same donor again changes nothing.
    assert_eq!(
        before.diff(&build("/m/abliterated", false)),
        Default::default()
    );
}
