//! `model_groups.json`: the original site's file, read unchanged, plus lensd's additions.
//!
//! Reading happens in two steps. [`parse`] checks the document itself (types, required and
//! unknown keys, duplicate ids, references between entries) and yields a typed [`Config`];
//! [`check`] then looks at the files it names through a [`Probe`] (bases and lenses exist, their
//! headers agree with each other, budgets can hold the largest base). Both report every problem
//! at once, each with the JSON path it concerns.

mod check;
mod devices;
mod parse;
mod value;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

pub use check::{
    check, default_budgets, shape_differences, BaseFacts, Budgets, DonorKind, LensFacts, Probe,
    Resolved, Shape,
};
pub use devices::{default_device_budget, Placement};
pub use parse::{parse, parse_for_checking, HubId};
pub use value::parse_duration;

use crate::bytes::ByteSize;
use crate::dtype::{ComputeDtype, LensKind};
use crate::residency::DeviceId;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    pub groups: Vec<Group>,
    pub settings: Settings,
}

/// A group of models that share one base (the original's `model_groups[]`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Group {
    pub id: String,
    pub name: String,
    /// A GGUF file or a Hugging Face folder (config.json + safetensors + tokenizer.json).
    pub base_path: PathBuf,
    pub description: String,
    pub visible: bool,
    pub backend_only: bool,
    /// `compute_dtype` of the group, else of `settings`, else `f32`.
    pub compute_dtype: ComputeDtype,
    /// Pinned entries are never evicted.
    pub pin: bool,
    /// Idle time after which this group's entries may be demoted; `settings.keep_alive` when unset.
    /// `"forever"` in the file is [`Duration::MAX`].
    pub keep_alive: Option<Duration>,
    /// The devices the group's models may run on (`devices = [0, 1]`); any device when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<DeviceId>>,
    pub models: Vec<ModelEntry>,
}

/// One lens on the group's base (the original's `models[]` entry).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelEntry {
    /// Unique across all groups.
    pub id: String,
    pub name: String,
    /// `lens` when given; otherwise `talkative` when a checkpoint path is set (the original's
    /// only kind), else `logit`.
    pub lens: LensKind,
    /// The lens's files; absent for `logit`.
    pub lens_path: Option<PathBuf>,
    /// The layer the lens reads; for tuned and logit lenses, the default layer shown.
    pub layer: Option<usize>,
    pub description: String,
    pub batch_size: Option<u32>,
    pub auto_batch_size_max: Option<u32>,
    pub visible: bool,
    pub backend_only: bool,
    /// The original's `different_activations_orig_path`: the model whose activations a
    /// talkative lens explains, either a LoRA adapter (PEFT folder) applied to the shared base
    /// or a full model of the base's shapes, loaded as a base of its own (docs/talkative.md).
    pub donor: Option<PathBuf>,
    pub pin: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Preload {
    None,
    All,
    Groups(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settings {
    pub default_group: Option<String>,
    /// The original's CPU cache size, counted in groups. Accepted for compatibility; lensd's
    /// host tier is bounded in bytes by `host_budget` instead.
    pub max_cpu_models: Option<u32>,
    /// `true` preloads every group, a list preloads those groups, `false`/absent none.
    pub preload_groups: Preload,
    pub device_budget: Option<ByteSize>,
    pub host_budget: Option<ByteSize>,
    pub keep_alive: Option<Duration>,
    pub compute_dtype: ComputeDtype,
    /// The original's flags, kept so that its file reads unchanged.
    pub use_bf16: Option<bool>,
    pub no_orig: Option<bool>,
    pub no_kl: Option<bool>,
    pub comparison_tl_checkpoint: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem, at a JSON path such as `model_groups[2].models[0].layer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Issue {
    pub severity: Severity,
    pub path: String,
    pub message: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub issues: Vec<Issue>,
}

impl Report {
    pub fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.issues.push(Issue {
            severity: Severity::Error,
            path: path.into(),
            message: message.into(),
        });
    }

    pub fn warning(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.issues.push(Issue {
            severity: Severity::Warning,
            path: path.into(),
            message: message.into(),
        });
    }

    pub fn has_errors(&self) -> bool {
        self.issues.iter().any(|i| i.severity == Severity::Error)
    }

    pub fn errors(&self) -> impl Iterator<Item = &Issue> {
        self.issues.iter().filter(|i| i.severity == Severity::Error)
    }

    pub fn extend(&mut self, other: Report) {
        self.issues.extend(other.issues);
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for i in &self.issues {
            let level = match i.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            };
            writeln!(f, "{level}: {}: {}", i.path, i.message)?;
        }
        Ok(())
    }
}

impl Config {
    pub fn group(&self, id: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.id == id)
    }

    /// Joins every relative base and lens path onto `dir`, the folder of the config file, so that
    /// a file means the same whatever folder the server is started from. A base or donor named
    /// by Hugging Face hub id (`google/gemma-2-9b-it`), as the original's files do, is kept as
    /// written when nothing under `dir` has that path, for the engine to find in the hub cache.
    /// Looks at the file system (one `stat` per such id); [`Config::resolve_paths_with`] takes
    /// the check as an argument.
    pub fn resolve_paths(&mut self, dir: &Path) {
        self.resolve_paths_with(dir, |p| p.exists());
    }

    /// [`Config::resolve_paths`], with `exists` telling whether a joined path names a file.
    pub fn resolve_paths_with(&mut self, dir: &Path, exists: impl Fn(&Path) -> bool) {
        let join = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        // Lens checkpoints are always local folders; bases and donors may be hub ids.
        let join_or_hub = |p: &mut PathBuf| {
            let hub_id = p.to_str().and_then(HubId::parse).is_some();
            if !hub_id || exists(&dir.join(&*p)) {
                join(p);
            }
        };
        for g in &mut self.groups {
            join_or_hub(&mut g.base_path);
            for m in &mut g.models {
                if let Some(p) = &mut m.lens_path {
                    join(p);
                }
                if let Some(p) = &mut m.donor {
                    join_or_hub(p);
                }
            }
        }
    }

    /// The model with `id` and the group it belongs to.
    pub fn model(&self, id: &str) -> Option<(&Group, &ModelEntry)> {
        self.groups
            .iter()
            .find_map(|g| g.models.iter().find(|m| m.id == id).map(|m| (g, m)))
    }
}
