//! Reading the JSON document into a typed [`Config`], with every problem reported at its path.
//!
//! The document is walked by hand instead of deserialised with derived code: serde stops at the
//! first problem, and someone fixing a file wants every problem listed in one pass.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};

use super::value::{at, index, parse_duration, show, suggest, ROOT};
use super::{Config, Group, ModelEntry, Preload, Report, Settings};
use crate::bytes::ByteSize;
use crate::dtype::{ComputeDtype, LensKind};
use crate::residency::DeviceId;

const ROOT_KEYS: &[&str] = &["model_groups", "settings"];

const GROUP_KEYS: &[&str] = &[
    "group_id",
    "group_name",
    "base_model_path",
    "description",
    "visible",
    "backend_only",
    "models",
    "compute_dtype",
    "pin",
    "keep_alive",
    "devices",
];

const MODEL_KEYS: &[&str] = &[
    "id",
    "name",
    "lens",
    "lens_checkpoint_path",
    "layer",
    "description",
    "batch_size",
    "auto_batch_size_max",
    "visible",
    "backend_only",
    "different_activations_orig_path",
    "pin",
];

const SETTINGS_KEYS: &[&str] = &[
    "default_group",
    "max_cpu_models",
    "preload_groups",
    "use_bf16",
    "no_orig",
    "no_kl",
    "comparison_tl_checkpoint",
    "estimated_gpu_memory",
    "compute_dtype",
    "device_budget",
    "host_budget",
    "keep_alive",
];

/// The original file "commented out" keys by renaming them (`OLDlens_checkpoint_path`,
/// `IGNORE2different_activations_orig_path`); such keys are skipped with a warning.
const COMMENT_PREFIXES: &[&str] = &["OLD", "IGNORE"];

/// Parses `text`; returns the config when there are no errors (warnings allowed), and the
/// report of every problem found.
pub fn parse(text: &str) -> (Option<Config>, Report) {
    let mut r = Reader::default();
    let doc: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            // serde_json appends " at line L column C"; it is restated in our own words.
            let full = e.to_string();
            let reason = full
                .rfind(" at line ")
                .map_or(full.as_str(), |i| &full[..i]);
            r.report.error(
                ROOT,
                format!(
                    "invalid JSON at line {}, column {}: {reason}",
                    e.line(),
                    e.column()
                ),
            );
            return (None, r.report);
        }
    };
    let config = r.document(&doc);
    let config = config.filter(|_| !r.report.has_errors());
    (config, r.report)
}

/// As [`parse`], but the configuration is also returned when every error is in `settings`
/// (each setting in error then left at its default), so that the files its groups name can
/// still be checked and their problems reported beside the settings' ones. Such a
/// configuration is for checking only; `report.has_errors()` says it must not be served.
pub fn parse_for_checking(text: &str) -> (Option<Config>, Report) {
    let mut r = Reader::default();
    let Ok(doc) = serde_json::from_str::<Value>(text) else {
        return parse(text);
    };
    let config = r.document(&doc);
    let only_settings = r
        .report
        .errors()
        .all(|e| e.path == "settings" || e.path.starts_with("settings."));
    (config.filter(|_| only_settings), r.report)
}

/// A JSON object together with the path it sits at.
struct Obj<'a> {
    map: &'a Map<String, Value>,
    path: String,
}

impl<'a> Obj<'a> {
    /// The value at `key`; `null` counts as absent, as it did for the original's Python reader.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn at(&self, key: &str) -> String {
        at(&self.path, key)
    }
}

type Convert<T> = fn(&mut Reader, &str, &Value) -> Option<T>;

#[derive(Default)]
struct Reader {
    report: Report,
    /// Group ids named by settings, checked once every group is known: (path, id).
    group_refs: Vec<(String, String)>,
    /// First path of each group id and model id, to name both places of a duplicate.
    group_ids: HashMap<String, String>,
    model_ids: HashMap<String, String>,
}

impl Reader {
    fn document(&mut self, doc: &Value) -> Option<Config> {
        let root = self.object(doc, ROOT, "the document", ROOT_KEYS)?;

        // Settings come after the groups in the file, and their problems are listed in that
        // order, but groups need their defaults first.
        let mark = self.report.issues.len();
        let settings = self.settings(root.map.get("settings"));
        let settings_issues = self.report.issues.split_off(mark);

        let groups = match root.map.get("model_groups") {
            None | Some(Value::Null) => {
                self.report.error(
                    "model_groups",
                    "required key is missing: expected an array of groups",
                );
                None
            }
            Some(Value::Array(items)) => {
                if items.is_empty() {
                    self.report.warning(
                        "model_groups",
                        "no groups are defined: nothing can be served",
                    );
                }
                let groups: Vec<Option<Group>> = items
                    .iter()
                    .enumerate()
                    .map(|(i, g)| self.group(&index("model_groups", i), g, &settings))
                    .collect();
                groups.into_iter().collect::<Option<Vec<Group>>>()
            }
            Some(other) => {
                self.report.error(
                    "model_groups",
                    format!("expected an array of groups, got {}", show(other)),
                );
                None
            }
        };
        self.report.issues.extend(settings_issues);

        // Without a readable list of groups every reference would look dangling; the missing
        // list is the one problem to report.
        let refs = std::mem::take(&mut self.group_refs);
        let groups_listed = matches!(root.map.get("model_groups"), Some(Value::Array(_)));
        for (path, id) in refs.into_iter().filter(|_| groups_listed) {
            if !self.group_ids.contains_key(&id) {
                let mut known: Vec<&str> = self.group_ids.keys().map(String::as_str).collect();
                known.sort_unstable();
                self.report.error(
                    path,
                    format!(
                        "no group has the id {}; the groups are: {}",
                        show(&Value::String(id)),
                        if known.is_empty() {
                            "(none)".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
            }
        }
        Some(Config {
            groups: groups?,
            settings,
        })
    }

    fn settings(&mut self, v: Option<&Value>) -> Settings {
        let mut s = Settings {
            default_group: None,
            max_cpu_models: None,
            preload_groups: Preload::None,
            device_budget: None,
            host_budget: None,
            keep_alive: None,
            compute_dtype: ComputeDtype::F32,
            use_bf16: None,
            no_orig: None,
            no_kl: None,
            comparison_tl_checkpoint: None,
        };
        let Some(v) = v.filter(|v| !v.is_null()) else {
            return s;
        };
        let Some(o) = self.object(v, "settings", "the settings", SETTINGS_KEYS) else {
            return s;
        };
        s.default_group = self.opt(&o, "default_group", Reader::nonempty_string);
        if let Some(id) = &s.default_group {
            self.group_refs.push((o.at("default_group"), id.clone()));
        }
        s.max_cpu_models = self.opt(&o, "max_cpu_models", Reader::u32);
        s.preload_groups = self
            .opt(&o, "preload_groups", Reader::preload)
            .unwrap_or(Preload::None);
        s.device_budget = self.opt(&o, "device_budget", Reader::size);
        s.host_budget = self.opt(&o, "host_budget", Reader::size);
        s.keep_alive = self.opt(&o, "keep_alive", Reader::duration);
        s.use_bf16 = self.opt(&o, "use_bf16", Reader::boolean);
        // The original's `use_bf16` chose its compute dtype; `compute_dtype` says it for lensd.
        let original = match s.use_bf16 {
            Some(true) => ComputeDtype::Bf16,
            _ => ComputeDtype::F32,
        };
        s.compute_dtype = self
            .opt(&o, "compute_dtype", Reader::dtype)
            .unwrap_or(original);
        s.no_orig = self.opt(&o, "no_orig", Reader::boolean);
        s.no_kl = self.opt(&o, "no_kl", Reader::boolean);
        s.comparison_tl_checkpoint = self.opt(&o, "comparison_tl_checkpoint", Reader::boolean);
        if o.map.contains_key("estimated_gpu_memory") {
            self.report.warning(
                o.at("estimated_gpu_memory"),
                "ignored: lensd measures each base's size from its file header",
            );
        }
        s
    }

    fn group(&mut self, path: &str, v: &Value, settings: &Settings) -> Option<Group> {
        let o = self.object(v, path, "a group", GROUP_KEYS)?;
        let id = self.req(
            &o,
            "group_id",
            "the group's id (a string)",
            Reader::nonempty_string,
        );
        if let Some(id) = &id {
            self.unique_group(&o.at("group_id"), id);
        }
        let name = self.req(
            &o,
            "group_name",
            "a display name (a string)",
            Reader::string,
        );
        let base_path = self.req(
            &o,
            "base_model_path",
            "a GGUF file or a Hugging Face checkpoint folder",
            Reader::path,
        );
        let description = self.opt(&o, "description", Reader::string);
        let visible = self.opt(&o, "visible", Reader::boolean);
        let backend_only = self.opt(&o, "backend_only", Reader::boolean);
        let compute_dtype = self.opt(&o, "compute_dtype", Reader::dtype);
        let pin = self.opt(&o, "pin", Reader::boolean);
        let keep_alive = self.opt(&o, "keep_alive", Reader::duration);
        let devices = self.opt(&o, "devices", Reader::devices);
        let models = match o.get("models") {
            None => {
                self.report.error(
                    o.at("models"),
                    "required key is missing: expected an array of models",
                );
                None
            }
            Some(Value::Array(items)) => {
                if items.is_empty() {
                    self.report.warning(
                        o.at("models"),
                        "the group has no models: users cannot pick it",
                    );
                }
                let models: Vec<Option<ModelEntry>> = items
                    .iter()
                    .enumerate()
                    .map(|(i, m)| self.model(&index(&o.at("models"), i), m))
                    .collect();
                models.into_iter().collect::<Option<Vec<_>>>()
            }
            Some(other) => {
                self.report.error(
                    o.at("models"),
                    format!("expected an array of models, got {}", show(other)),
                );
                None
            }
        };
        Some(Group {
            id: id?,
            name: name?,
            base_path: base_path?,
            description: description.unwrap_or_default(),
            visible: visible.unwrap_or(true),
            backend_only: backend_only.unwrap_or(false),
            compute_dtype: compute_dtype.unwrap_or(settings.compute_dtype),
            pin: pin.unwrap_or(false),
            keep_alive,
            devices,
            models: models?,
        })
    }

    fn model(&mut self, path: &str, v: &Value) -> Option<ModelEntry> {
        let o = self.object(v, path, "a model", MODEL_KEYS)?;
        let id = self.req(
            &o,
            "id",
            "the model's id (a string)",
            Reader::nonempty_string,
        );
        if let Some(id) = &id {
            self.unique_model(&o.at("id"), id);
        }
        let name = self.req(&o, "name", "a display name (a string)", Reader::string);
        let kind = self.opt(&o, "lens", Reader::lens_kind);
        let lens_path = self.opt(&o, "lens_checkpoint_path", Reader::path);
        let has_path_key = o.get("lens_checkpoint_path").is_some();
        let lens = self.lens_of(&o, kind, has_path_key);
        let mut donor = self.opt(&o, "different_activations_orig_path", Reader::path);
        if donor.is_some() && lens.is_some_and(|k| k != LensKind::Talkative) {
            self.report.warning(
                o.at("different_activations_orig_path"),
                "ignored: a donor adapter applies to talkative lenses only; this lens reads \
                 the group's base",
            );
            donor = None;
        }
        // Every key is read before any `?` below, so that each one's problems are reported.
        let layer = self.opt(&o, "layer", Reader::usize);
        let description = self.opt(&o, "description", Reader::string);
        let batch_size = self.opt(&o, "batch_size", Reader::positive_u32);
        let auto_batch_size_max = self.opt(&o, "auto_batch_size_max", Reader::positive_u32);
        let visible = self.opt(&o, "visible", Reader::boolean);
        let backend_only = self.opt(&o, "backend_only", Reader::boolean);
        let pin = self.opt(&o, "pin", Reader::boolean);
        Some(ModelEntry {
            id: id?,
            name: name?,
            lens: lens?,
            lens_path,
            layer,
            description: description.unwrap_or_default(),
            batch_size,
            auto_batch_size_max,
            visible: visible.unwrap_or(true),
            backend_only: backend_only.unwrap_or(false),
            donor,
            pin: pin.unwrap_or(false),
        })
    }

    /// The lens kind of a model, checked against whether it names a checkpoint. `None` when
    /// `lens` itself was invalid (already reported).
    fn lens_of(&mut self, o: &Obj, kind: Option<LensKind>, has_path: bool) -> Option<LensKind> {
        let given = o.get("lens").is_some();
        if given && kind.is_none() {
            return None;
        }
        let kind = kind.unwrap_or(if has_path {
            LensKind::Talkative
        } else {
            LensKind::Logit
        });
        match kind {
            LensKind::Logit if has_path => self.report.error(
                o.at("lens_checkpoint_path"),
                "a logit lens has no checkpoint (it applies the base's own final norm and \
                 unembedding): remove lens_checkpoint_path, or set lens to \"tuned\" or \"talkative\"",
            ),
            LensKind::Tuned if !has_path => self.report.error(
                o.at("lens_checkpoint_path"),
                "required when lens is \"tuned\": the tuned-lens folder (config.json with \
                 params.pt or params.safetensors)",
            ),
            LensKind::Talkative if !has_path => self.report.error(
                o.at("lens_checkpoint_path"),
                "required when lens is \"talkative\": the lens's checkpoint file or folder",
            ),
            _ => {}
        }
        Some(kind)
    }

    fn unique_group(&mut self, path: &str, id: &str) {
        match self.group_ids.get(id) {
            Some(first) => self.report.error(
                path,
                format!(
                    "duplicate group id {}: {first} already uses it; group ids must be unique",
                    show(&Value::String(id.into()))
                ),
            ),
            None => {
                self.group_ids.insert(id.to_string(), path.to_string());
            }
        }
    }

    fn unique_model(&mut self, path: &str, id: &str) {
        match self.model_ids.get(id) {
            Some(first) => self.report.error(
                path,
                format!(
                    "duplicate model id {}: {first} already uses it; model ids must be unique \
                     across all groups",
                    show(&Value::String(id.into()))
                ),
            ),
            None => {
                self.model_ids.insert(id.to_string(), path.to_string());
            }
        }
    }

    /// `v` as an object, with its keys checked against `accepted`.
    fn object<'a>(
        &mut self,
        v: &'a Value,
        path: &str,
        what: &str,
        accepted: &[&str],
    ) -> Option<Obj<'a>> {
        let Some(map) = v.as_object() else {
            self.report.error(
                path,
                format!("expected {what} as an object, got {}", show(v)),
            );
            return None;
        };
        for key in map.keys() {
            if accepted.contains(&key.as_str()) {
                continue;
            }
            let key_path = at(path, key);
            if COMMENT_PREFIXES.iter().any(|p| key.starts_with(p)) {
                self.report.warning(
                    key_path,
                    "ignored: keys starting with OLD or IGNORE are treated as comments",
                );
                continue;
            }
            let hint = suggest(key, accepted)
                .map(|s| format!("did you mean `{s}`? "))
                .unwrap_or_default();
            self.report.error(
                key_path,
                format!(
                    "unknown key `{key}` in {what}; {hint}accepted keys: {} (keys starting with \
                     OLD or IGNORE are ignored as comments)",
                    accepted.join(", ")
                ),
            );
        }
        Some(Obj {
            map,
            path: path.to_string(),
        })
    }

    fn opt<T>(&mut self, o: &Obj, key: &str, convert: Convert<T>) -> Option<T> {
        let v = o.get(key)?;
        convert(self, &o.at(key), v)
    }

    fn req<T>(&mut self, o: &Obj, key: &str, expected: &str, convert: Convert<T>) -> Option<T> {
        match o.get(key) {
            Some(v) => convert(self, &o.at(key), v),
            None => {
                self.report.error(
                    o.at(key),
                    format!("required key is missing: expected {expected}"),
                );
                None
            }
        }
    }

    fn expected<T>(&mut self, path: &str, what: &str, v: &Value) -> Option<T> {
        self.report
            .error(path, format!("expected {what}, got {}", show(v)));
        None
    }

    fn string(&mut self, path: &str, v: &Value) -> Option<String> {
        match v.as_str() {
            Some(s) => Some(s.to_string()),
            None => self.expected(path, "a string", v),
        }
    }

    fn nonempty_string(&mut self, path: &str, v: &Value) -> Option<String> {
        match v.as_str() {
            Some(s) if !s.trim().is_empty() => Some(s.to_string()),
            _ => self.expected(path, "a non-empty string", v),
        }
    }

    fn path(&mut self, path: &str, v: &Value) -> Option<PathBuf> {
        match v.as_str() {
            Some(s) if !s.trim().is_empty() => Some(PathBuf::from(s)),
            _ => self.expected(path, "a non-empty path", v),
        }
    }

    fn boolean(&mut self, path: &str, v: &Value) -> Option<bool> {
        match v.as_bool() {
            Some(b) => Some(b),
            None => self.expected(path, "true or false", v),
        }
    }

    fn usize(&mut self, path: &str, v: &Value) -> Option<usize> {
        match v.as_u64().and_then(|n| usize::try_from(n).ok()) {
            Some(n) => Some(n),
            None => self.expected(path, "a non-negative integer", v),
        }
    }

    fn u32(&mut self, path: &str, v: &Value) -> Option<u32> {
        match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(n) => Some(n),
            None => self.expected(path, "a non-negative integer below 2^32", v),
        }
    }

    fn positive_u32(&mut self, path: &str, v: &Value) -> Option<u32> {
        match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(n) if n > 0 => Some(n),
            _ => self.expected(path, "a positive integer below 2^32", v),
        }
    }

    fn lens_kind(&mut self, path: &str, v: &Value) -> Option<LensKind> {
        match v.as_str() {
            Some("logit") => Some(LensKind::Logit),
            Some("tuned") => Some(LensKind::Tuned),
            Some("talkative") => Some(LensKind::Talkative),
            _ => self.expected(path, "one of \"logit\", \"tuned\", \"talkative\"", v),
        }
    }

    fn dtype(&mut self, path: &str, v: &Value) -> Option<ComputeDtype> {
        match v.as_str().map(str::parse::<ComputeDtype>) {
            Some(Ok(d)) => Some(d),
            _ => self.expected(path, "\"stored\" or \"f32\"", v),
        }
    }

    fn duration(&mut self, path: &str, v: &Value) -> Option<Duration> {
        match v.as_str() {
            Some(s) => match parse_duration(s) {
                Ok(d) => Some(d),
                Err(e) => {
                    self.report.error(path, e);
                    None
                }
            },
            None => self.expected(
                path,
                "a duration such as \"90s\", \"30m\", \"2h\" or \"forever\"",
                v,
            ),
        }
    }

    fn size(&mut self, path: &str, v: &Value) -> Option<ByteSize> {
        match v {
            Value::String(s) => match s.parse::<ByteSize>() {
                Ok(b) => Some(b),
                Err(e) => {
                    self.report
                        .error(path, format!("expected a size such as \"6GiB\": {e}"));
                    None
                }
            },
            Value::Number(n) if n.as_u64().is_some() => n.as_u64().map(ByteSize),
            _ => self.expected(path, "a size such as \"6GiB\" or a number of bytes", v),
        }
    }

    /// A non-empty list of distinct device numbers (`[0, 1]`).
    fn devices(&mut self, path: &str, v: &Value) -> Option<Vec<DeviceId>> {
        let Value::Array(items) = v else {
            return self.expected(path, "a list of device numbers such as [0, 1]", v);
        };
        if items.is_empty() {
            self.report.error(
                path,
                "the list is empty: name the devices the group may run on (such as [0, 1]), or \
                 remove the key to let it run on any",
            );
            return None;
        }
        let mut out: Vec<DeviceId> = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let p = index(path, i);
            match item.as_u64().and_then(|n| u16::try_from(n).ok()) {
                Some(n) if out.contains(&DeviceId(n)) => {
                    self.report.error(p, format!("device {n} is listed twice"));
                    ok = false;
                }
                Some(n) => out.push(DeviceId(n)),
                None => {
                    self.expected::<()>(&p, "a device number (0, 1, ...)", item);
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    /// `true` (every group), `false` (none) or a list of group ids.
    fn preload(&mut self, path: &str, v: &Value) -> Option<Preload> {
        match v {
            Value::Bool(true) => Some(Preload::All),
            Value::Bool(false) => Some(Preload::None),
            Value::Array(items) => {
                let mut ids = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let p = index(path, i);
                    if let Some(id) = self.nonempty_string(&p, item) {
                        self.group_refs.push((p, id.clone()));
                        ids.push(id);
                    }
                }
                Some(if ids.is_empty() {
                    Preload::None
                } else {
                    Preload::Groups(ids)
                })
            }
            _ => self.expected(path, "true, false or a list of group ids", v),
        }
    }
}

/// A Hugging Face hub model id as the original's files write it: `owner/name`, optionally
/// followed by `@revision` (a branch, a tag or a commit). Only the syntax lives here; finding the
/// model in the local cache is the engine's (`lensd_engine::hub`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubId {
    /// `owner/name`.
    pub repo: String,
    /// The revision after `@`; `None` means the default branch, `main`.
    pub revision: Option<String>,
}

impl HubId {
    /// `spec` as a hub id, or `None` when it is not one: exactly one `/` between two names of
    /// letters, digits, `-`, `_` and `.` (the hub's own rule: at most 96 characters, starting
    /// and ending with a letter, a digit or `_`, no `--` or `..`). A name ending in a weight or
    /// config file's extension (`x/model.gguf`) is a path, not a repository.
    pub fn parse(spec: &str) -> Option<HubId> {
        let (repo, revision) = match spec.split_once('@') {
            Some((repo, rev)) => (repo, Some(rev)),
            None => (spec, None),
        };
        let (owner, name) = repo.split_once('/')?;
        if !hub_name(owner) || !hub_name(name) || FILE_EXTENSIONS.iter().any(|e| name.ends_with(e))
        {
            return None;
        }
        if let Some(rev) = revision {
            // Branch names may hold `/` (`refs/pr/1`); no part may climb out of the cache.
            let ok = !rev.starts_with('/')
                && rev
                    .split('/')
                    .all(|p| !p.is_empty() && p != "." && p != "..")
                && !rev
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == '\\');
            if !ok {
                return None;
            }
        }
        Some(HubId {
            repo: repo.to_string(),
            revision: revision.map(str::to_string),
        })
    }

    /// The revision to read: the one given, else `main`.
    pub fn revision_or_main(&self) -> &str {
        self.revision.as_deref().unwrap_or("main")
    }

    /// The repository's folder in the cache: `models--{owner}--{name}`.
    pub fn cache_folder(&self) -> String {
        format!("models--{}", self.repo.replace('/', "--"))
    }
}

impl std::fmt::Display for HubId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.revision {
            Some(rev) => write!(f, "{}@{rev}", self.repo),
            None => f.write_str(&self.repo),
        }
    }
}

/// Endings that make `owner/name` a file rather than a repository.
const FILE_EXTENSIONS: &[&str] = &[".gguf", ".safetensors", ".json", ".pt", ".bin"];

fn hub_name(s: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    (1..=96).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && edge(s.chars().next())
        && edge(s.chars().last())
        && !s.contains("--")
        && !s.contains("..")
}
