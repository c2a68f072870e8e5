//! Checks of a parsed config against the files it names, through a [`Probe`]: bases, lenses,
//! and donors (a LoRA adapter is read with its lens; a full donor model is read as a base and
//! must have its group's base's shapes).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::value::{at, index};
use super::{Config, Group, ModelEntry, Report, Settings};
use crate::bytes::ByteSize;
use crate::dtype::{ComputeDtype, LensKind};

/// What a base's header says, read without loading its weights.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BaseFacts {
    /// Identity of the weights by content (a hash of the files) and compute dtype: two groups
    /// naming the same file, or copies of it, get the same id.
    pub content_id: String,
    pub n_layers: usize,
    pub d_model: usize,
    /// Bytes the base occupies once loaded in its compute dtype.
    pub resident_bytes: u64,
    /// The rest of its architecture: what a full donor must share with the base it stands in
    /// for.
    pub shape: Shape,
}

/// A base's architecture beyond its depth and width.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Shape {
    /// The family (`llama`, `qwen2`, `gemma2`, ...).
    pub architecture: String,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub d_ff: usize,
    pub vocab_size: usize,
}

impl BaseFacts {
    /// Each way a donor (`self`) differs from `base`, as `what donor vs base`: empty when the
    /// donor can stand in for the base.
    pub fn shape_differences(&self, base: &BaseFacts) -> Vec<String> {
        shape_differences(
            (self.n_layers, self.d_model, &self.shape),
            (base.n_layers, base.d_model, &base.shape),
        )
    }
}

/// Each way a model of (layers, width, shape) `donor` differs from one of `base`, as `what
/// donor vs base`: empty when the donor can stand in for the base. The engine checks loaded
/// models with it too.
pub fn shape_differences(
    (donor_layers, donor_width, d): (usize, usize, &Shape),
    (base_layers, base_width, b): (usize, usize, &Shape),
) -> Vec<String> {
    let mut out = Vec::new();
    if d.architecture != b.architecture {
        out.push(format!(
            "architecture {} vs {}",
            d.architecture, b.architecture
        ));
    }
    for (what, x, y) in [
        ("layers", donor_layers, base_layers),
        ("width (d_model)", donor_width, base_width),
        ("attention heads", d.n_heads, b.n_heads),
        ("key/value heads", d.n_kv_heads, b.n_kv_heads),
        ("head dimension", d.head_dim, b.head_dim),
        ("feed-forward width", d.d_ff, b.d_ff),
        ("vocabulary", d.vocab_size, b.vocab_size),
    ] {
        if x != y {
            out.push(format!("{what} {x} vs {y}"));
        }
    }
    out
}

/// What `different_activations_orig_path` names, told from its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DonorKind {
    /// A PEFT LoRA adapter folder (`adapter_config.json`): part of the lens, applied to the
    /// group's base.
    Adapter,
    /// A full model of the base's architecture and shapes (a folder with `config.json`, a GGUF
    /// file, or a hub id of either): a base of its own.
    Model,
}

/// What a lens's files say, read without loading its tensors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LensFacts {
    /// A hash of the lens files; identical files share one id (and one loaded copy).
    pub content_id: String,
    pub d_model: Option<usize>,
    /// Layer count of the base the lens was made for (tuned lenses).
    pub n_layers: Option<usize>,
    /// The layer the lens reads (talkative lenses).
    pub layer: Option<usize>,
    /// Bytes the lens occupies once loaded.
    pub bytes: u64,
}

/// Reads headers of bases and lenses. The engine implements it on real files; tests use fakes.
pub trait Probe {
    fn base(&self, path: &Path, dtype: ComputeDtype) -> Result<BaseFacts, String>;
    /// The facts of a lens; `donor` is a talkative lens's LoRA adapter, part of the lens.
    fn lens(&self, kind: LensKind, path: &Path, donor: Option<&Path>) -> Result<LensFacts, String>;
    /// Whether a model's donor is a LoRA adapter or a full model, from its files. A full
    /// donor is then probed with [`Probe::base`].
    fn donor_kind(&self, path: &Path) -> Result<DonorKind, String>;
}

/// Byte budgets of the device and host tiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Budgets {
    pub device: u64,
    pub host: u64,
}

impl Budgets {
    /// The configured budgets, each falling back to [`default_budgets`].
    pub fn resolve(settings: &Settings, machine_memory: u64) -> Budgets {
        let d = default_budgets(machine_memory);
        Budgets {
            device: settings.device_budget.map_or(d.device, |b| b.0),
            host: settings.host_budget.map_or(d.host, |b| b.0),
        }
    }
}

/// Defaults for a CPU machine with `machine_memory` bytes of RAM, where both tiers share that
/// memory: half for weights in use, a quarter for idle weights kept warm.
pub fn default_budgets(machine_memory: u64) -> Budgets {
    Budgets {
        device: machine_memory / 2,
        host: machine_memory / 4,
    }
}

/// Facts gathered by [`check`], keyed by group id (bases) and model id (lenses, donors).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Resolved {
    pub bases: BTreeMap<String, BaseFacts>,
    pub lenses: BTreeMap<String, LensFacts>,
    /// Full donor models that passed the check, by the id of the model naming them. A model
    /// whose donor is absent here has a LoRA adapter (part of its lens), or none.
    pub donors: BTreeMap<String, BaseFacts>,
}

/// Checks every base, lens and donor the config names, and the budgets against them. Each
/// distinct (base path, compute dtype), including full donors, and each distinct (lens kind,
/// path, adapter) is probed once; logit lenses have no files and are never probed.
pub fn check(config: &Config, probe: &dyn Probe, budgets: Budgets) -> (Report, Resolved) {
    let mut report = Report::default();
    let mut resolved = Resolved::default();
    let mut bases: Bases = HashMap::new();
    let mut donors: HashMap<PathBuf, Result<DonorKind, String>> = HashMap::new();
    let mut lenses: HashMap<(LensKind, PathBuf, Option<PathBuf>), Result<LensFacts, String>> =
        HashMap::new();
    for (gi, g) in config.groups.iter().enumerate() {
        let gpath = index("model_groups", gi);
        let base = bases
            .entry((g.base_path.clone(), g.compute_dtype))
            .or_insert_with(|| probe.base(&g.base_path, g.compute_dtype));
        let base = match base {
            Ok(b) => {
                resolved.bases.insert(g.id.clone(), b.clone());
                Some(b.clone())
            }
            Err(e) => {
                report.error(
                    at(&gpath, "base_model_path"),
                    format!("cannot read the base: {e}"),
                );
                None
            }
        };
        for (mi, m) in g.models.iter().enumerate() {
            let mpath = index(&at(&gpath, "models"), mi);
            if let (Some(b), Some(layer)) = (&base, m.layer) {
                if layer > b.n_layers {
                    report.error(
                        at(&mpath, "layer"),
                        format!(
                            "layer {layer} does not exist: the base has {n} blocks, so its \
                             layers run from 0 (the embeddings) to {n} (the last block's output)",
                            n = b.n_layers
                        ),
                    );
                }
            }
            let Some(lens_path) = m.lens_path.as_ref().filter(|_| m.lens != LensKind::Logit) else {
                continue;
            };
            // A LoRA donor is read with the lens; a full donor is a base of its own.
            let (adapter, donor_ok) = match &m.donor {
                None => (None, true),
                Some(d) => match donors
                    .entry(d.clone())
                    .or_insert_with(|| probe.donor_kind(d))
                {
                    Ok(DonorKind::Adapter) => (Some(d.clone()), true),
                    Ok(DonorKind::Model) => {
                        match full_donor(probe, &mut bases, &mut report, &mpath, g, d, &base) {
                            Some(f) => {
                                resolved.donors.insert(m.id.clone(), f);
                                (None, true)
                            }
                            None => (None, false),
                        }
                    }
                    Err(e) => {
                        report.error(
                            at(&mpath, "different_activations_orig_path"),
                            format!("cannot read the donor: {e}"),
                        );
                        (None, false)
                    }
                },
            };
            let facts = lenses
                .entry((m.lens, lens_path.clone(), adapter.clone()))
                .or_insert_with(|| probe.lens(m.lens, lens_path, adapter.as_deref()));
            match facts {
                Ok(f) => {
                    if let Some(b) = &base {
                        lens_fits(&mut report, &mpath, m, f, b, &g.base_path);
                    }
                    // A model whose donor failed is left out, like one whose lens failed.
                    if donor_ok {
                        resolved.lenses.insert(m.id.clone(), f.clone());
                    }
                }
                Err(e) => report.error(
                    at(&mpath, "lens_checkpoint_path"),
                    format!("cannot read the {} lens: {e}", m.lens.as_str()),
                ),
            }
        }
    }
    check_budgets(&mut report, config, &resolved, budgets);
    (report, resolved)
}

/// Probed bases by (path, compute dtype), full donors included.
type Bases = HashMap<(PathBuf, ComputeDtype), Result<BaseFacts, String>>;

/// Probes the full donor `path` of the model at `mpath` as a base in group `g`'s compute dtype
/// and checks its shapes against the group's base. Its facts when it can stand in for that
/// base; otherwise the problem is reported at the model's `different_activations_orig_path`.
fn full_donor(
    probe: &dyn Probe,
    bases: &mut Bases,
    report: &mut Report,
    mpath: &str,
    g: &Group,
    path: &Path,
    base: &Option<BaseFacts>,
) -> Option<BaseFacts> {
    let here = at(mpath, "different_activations_orig_path");
    let facts = bases
        .entry((path.to_path_buf(), g.compute_dtype))
        .or_insert_with(|| probe.base(path, g.compute_dtype));
    let facts = match facts {
        Ok(f) => f.clone(),
        Err(e) => {
            report.error(here, format!("cannot read the donor model: {e}"));
            return None;
        }
    };
    // Without a readable base there is nothing to compare with; the base's error says why.
    let base = base.as_ref()?;
    let differences = facts.shape_differences(base);
    if !differences.is_empty() {
        report.error(
            here,
            format!(
                "the donor model {} cannot stand in for the base {}: its shapes differ \
                 (donor vs base): {}; name a fine-tune of the group's base",
                path.display(),
                g.base_path.display(),
                differences.join(", ")
            ),
        );
        return None;
    }
    Some(facts)
}

/// Whether a lens's header agrees with the base of its group.
fn lens_fits(
    report: &mut Report,
    mpath: &str,
    m: &ModelEntry,
    lens: &LensFacts,
    base: &BaseFacts,
    base_path: &Path,
) {
    let mut differences = Vec::new();
    if let Some(d) = lens.d_model.filter(|d| *d != base.d_model) {
        differences.push(format!(
            "its width (d_model) is {d} but the base's is {}",
            base.d_model
        ));
    }
    if m.lens == LensKind::Tuned {
        if let Some(n) = lens.n_layers.filter(|n| *n != base.n_layers) {
            differences.push(format!(
                "it has translators for {n} layers but the base has {} layers",
                base.n_layers
            ));
        }
    }
    if m.lens == LensKind::Talkative {
        // A talkative lens names the block whose output it reads, like the original's layer.
        if let Some(l) = lens.layer.filter(|l| *l >= base.n_layers) {
            differences.push(format!(
                "it reads the output of block {l} but the base's blocks end at {}",
                base.n_layers - 1
            ));
        }
    } else if let Some(l) = lens.layer.filter(|l| *l > base.n_layers) {
        differences.push(format!(
            "it reads layer {l} but the base's layers end at {}",
            base.n_layers
        ));
    }
    if !differences.is_empty() {
        report.error(
            at(mpath, "lens_checkpoint_path"),
            format!(
                "this {} lens was made for another base than {}: {}",
                m.lens.as_str(),
                base_path.display(),
                differences.join("; ")
            ),
        );
    }
    if let (Some(l), Some(given)) = (lens.layer, m.layer) {
        if l != given {
            report.warning(
                at(mpath, "layer"),
                format!("the lens reads layer {l}, not {given}: the lens's own layer is used"),
            );
        }
    }
}

/// What one model needs on the device at once: its group's base, its full donor when that is
/// another base, and its lens.
struct Need<'a> {
    group: &'a Group,
    base: &'a BaseFacts,
    /// (donor path, facts) of a full donor other than the base.
    donor: Option<(&'a Path, &'a BaseFacts)>,
    /// (model id, bytes) of the lens.
    lens: Option<(&'a str, u64)>,
    model: Option<&'a str>,
}

impl Need<'_> {
    fn base_name(&self) -> String {
        format!(
            "{} ({} once loaded with compute dtype {}, group {})",
            self.group.base_path.display(),
            ByteSize(self.base.resident_bytes),
            self.group.compute_dtype.as_str(),
            self.group.id
        )
    }

    fn total(&self) -> u64 {
        self.base.resident_bytes
            + self.donor.map_or(0, |(_, d)| d.resident_bytes)
            + self.lens.map_or(0, |(_, bytes)| bytes)
    }
}

/// The needs of every model whose base was read (one without a model for an empty group).
fn needs<'a>(config: &'a Config, resolved: &'a Resolved) -> Vec<Need<'a>> {
    let mut out = Vec::new();
    for group in &config.groups {
        let Some(base) = resolved.bases.get(&group.id) else {
            continue;
        };
        let before = out.len();
        for m in &group.models {
            let donor = resolved
                .donors
                .get(&m.id)
                .filter(|d| d.content_id != base.content_id)
                .zip(m.donor.as_deref())
                .map(|(d, p)| (p, d));
            out.push(Need {
                group,
                base,
                donor,
                lens: resolved.lenses.get(&m.id).map(|l| (m.id.as_str(), l.bytes)),
                model: Some(&m.id),
            });
        }
        if out.len() == before {
            out.push(Need {
                group,
                base,
                donor: None,
                lens: None,
                model: None,
            });
        }
    }
    out
}

/// The budgets against the largest base, and the largest base with a model's donor and lens.
fn check_budgets(report: &mut Report, config: &Config, resolved: &Resolved, budgets: Budgets) {
    let needs = needs(config, resolved);
    let Some(biggest) = needs.iter().max_by_key(|n| n.base.resident_bytes) else {
        return;
    };
    let device = describe_budget(
        budgets.device,
        config.settings.device_budget.is_some(),
        "device_budget",
    );
    if budgets.device < biggest.base.resident_bytes {
        report.error(
            "settings.device_budget",
            format!(
                "the device budget of {device} cannot hold the base {}; raise the budget or use \
                 a smaller compute dtype",
                biggest.base_name()
            ),
        );
    } else if let Some(need) = needs.iter().rev().max_by_key(|n| n.total()) {
        // `max_by_key` keeps the last of equals: reversed, the first model is named.
        if budgets.device < need.total() {
            let mut parts = Vec::new();
            if let (Some((path, d)), Some(model)) = (need.donor, need.model) {
                parts.push(format!(
                    "the donor model {} of model {model} ({})",
                    path.display(),
                    ByteSize(d.resident_bytes)
                ));
            }
            if let Some((lens_id, lens_bytes)) = need.lens {
                parts.push(format!(
                    "the lens of model {lens_id} ({})",
                    ByteSize(lens_bytes)
                ));
            }
            if !parts.is_empty() {
                report.error(
                    "settings.device_budget",
                    format!(
                        "the device budget of {device} cannot hold the base {} together with {}: \
                         {} in all",
                        need.base_name(),
                        parts.join(" and "),
                        ByteSize(need.total())
                    ),
                );
            }
        }
    }
    if budgets.host < biggest.base.resident_bytes {
        let host = describe_budget(
            budgets.host,
            config.settings.host_budget.is_some(),
            "host_budget",
        );
        report.warning(
            "settings.host_budget",
            format!(
                "the host budget of {host} is smaller than the base {}: it cannot be kept warm \
                 in host memory and is read from disk again whenever it is loaded",
                biggest.base_name()
            ),
        );
    }
}

fn describe_budget(bytes: u64, configured: bool, key: &str) -> String {
    if configured {
        ByteSize(bytes).to_string()
    } else {
        format!(
            "{} (not set: this machine's default; set settings.{key} to change it)",
            ByteSize(bytes)
        )
    }
}
