//! What clients see of the configuration: groups and models with their residency, filtered by
//! role. Views never contain a server file path.

use lensd_core::config::{Config, Group, ModelEntry};
use lensd_core::registry::{Registry, ResourceKey};
use lensd_core::residency::Tier;
use lensd_sched::residency::{EntryState, MemoryReport};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Role;

/// The configuration the server serves from, replaced whole on reload.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub config: Config,
    pub registry: Registry,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ResidencyView {
    /// `device`, `host` or `disk`.
    pub base_tier: String,
    /// Absent for the logit lens, which has no weights of its own.
    pub lens_tier: Option<String>,
    pub base_bytes: u64,
    pub lens_bytes: u64,
    /// The base or lens is being loaded right now.
    pub loading: bool,
    /// Expected time to bring what this model needs (base and lens) to the device, from
    /// measured load speeds; 0 when both are there.
    pub estimated_ready_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ModelView {
    pub id: String,
    pub name: String,
    pub description: String,
    pub group_id: String,
    pub group_name: String,
    /// `logit`, `tuned` or `talkative`.
    pub lens: String,
    pub layer: Option<usize>,
    pub batch_size: Option<u32>,
    pub auto_batch_size_max: Option<u32>,
    pub residency: ResidencyView,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GroupView {
    pub group_id: String,
    pub group_name: String,
    pub description: String,
    pub layers: usize,
    pub d_model: usize,
    /// `f32` or `stored`.
    pub compute_dtype: String,
    pub base_bytes: u64,
    pub base_tier: String,
    /// The caller's current model is in a group with the same base: switching needs no base.
    pub fast_switch: bool,
    /// Expected time to bring this group's base to the device, from measured load speeds.
    pub estimated_switch_ms: u64,
    pub models: Vec<ModelView>,
}

/// Whether a role may see and use a model: hidden models are for admins, backend-only models
/// for callers with a key.
pub fn may_use(role: Role, g: &Group, m: &ModelEntry) -> bool {
    let hidden = !g.visible || !m.visible;
    let backend = g.backend_only || m.backend_only;
    (!hidden || role == Role::Admin) && (!backend || role >= Role::User)
}

/// Expected milliseconds to bring `bytes` from `tier` to the device at the measured speed. A
/// copy in host memory moves about four times faster than a read from disk; where the device
/// shares host memory it is already there.
fn estimate_ms(tier: Tier, bytes: u64, report: Option<&MemoryReport>, bytes_per_ms: u64) -> u64 {
    match tier {
        Tier::Disk => bytes / bytes_per_ms.max(1),
        _ if report.is_some_and(|r| r.shared_memory) => 0,
        Tier::Host => bytes / (4 * bytes_per_ms.max(1)),
        Tier::Device => 0,
    }
}

fn tier_of(report: Option<&MemoryReport>, key: &ResourceKey) -> (Tier, bool) {
    report
        .and_then(|r| r.entry(key))
        .map(|e| (e.tier, e.state != EntryState::Ready))
        .unwrap_or((Tier::Disk, false))
}

pub fn model_view(
    snap: &Snapshot,
    report: Option<&MemoryReport>,
    g: &Group,
    m: &ModelEntry,
    bytes_per_ms: u64,
) -> ModelView {
    let r = snap.registry.models.get(&m.id);
    let (base_tier, base_loading, base_bytes) = match r {
        Some(r) => {
            let (t, l) = tier_of(report, &ResourceKey::Base(r.base.clone()));
            (
                t,
                l,
                snap.registry.bases.get(&r.base).map_or(0, |b| b.bytes),
            )
        }
        None => (Tier::Disk, false, 0),
    };
    let (lens_tier, lens_loading, lens_bytes) = match r.and_then(|r| r.lens.clone()) {
        Some(l) => {
            let (t, loading) = tier_of(report, &ResourceKey::Lens(l.clone()));
            (
                Some(t),
                loading,
                snap.registry.lenses.get(&l).map_or(0, |s| s.bytes),
            )
        }
        None => (None, false, 0),
    };
    let lens_estimate = lens_tier.map_or(0, |t| estimate_ms(t, lens_bytes, report, bytes_per_ms));
    // A full donor is a second base the model needs on the device.
    let (donor_estimate, donor_loading) = match r.and_then(|r| r.donor.clone()) {
        Some(d) => {
            let (t, loading) = tier_of(report, &ResourceKey::Base(d.clone()));
            let bytes = snap.registry.bases.get(&d).map_or(0, |b| b.bytes);
            (estimate_ms(t, bytes, report, bytes_per_ms), loading)
        }
        None => (0, false),
    };
    let estimated_ready_ms =
        estimate_ms(base_tier, base_bytes, report, bytes_per_ms) + lens_estimate + donor_estimate;
    ModelView {
        id: m.id.clone(),
        name: m.name.clone(),
        description: m.description.clone(),
        group_id: g.id.clone(),
        group_name: g.name.clone(),
        lens: m.lens.as_str().into(),
        layer: m.layer,
        batch_size: m.batch_size,
        auto_batch_size_max: m.auto_batch_size_max,
        residency: ResidencyView {
            base_tier: base_tier.as_str().into(),
            lens_tier: lens_tier.map(|t| t.as_str().to_string()),
            base_bytes,
            lens_bytes,
            loading: base_loading || lens_loading || donor_loading,
            estimated_ready_ms,
        },
    }
}

/// Every model the role may use, in configuration order.
pub fn models(
    snap: &Snapshot,
    report: Option<&MemoryReport>,
    role: Role,
    bytes_per_ms: u64,
) -> Vec<ModelView> {
    snap.config
        .groups
        .iter()
        .flat_map(|g| g.models.iter().map(move |m| (g, m)))
        .filter(|(g, m)| may_use(role, g, m))
        .map(|(g, m)| model_view(snap, report, g, m, bytes_per_ms))
        .collect()
}

/// Bytes per millisecond used to estimate a switch before any load has been measured.
pub const DEFAULT_LOAD_BYTES_PER_MS: u64 = 500_000;

/// Every group with at least one model the role may use.
pub fn groups(
    snap: &Snapshot,
    report: Option<&MemoryReport>,
    role: Role,
    current: Option<&str>,
    bytes_per_ms: u64,
) -> Vec<GroupView> {
    let current_base = current
        .and_then(|m| snap.registry.models.get(m))
        .map(|r| r.base.clone());
    snap.config
        .groups
        .iter()
        .filter_map(|g| {
            let models: Vec<ModelView> = g
                .models
                .iter()
                .filter(|m| may_use(role, g, m))
                .map(|m| model_view(snap, report, g, m, bytes_per_ms))
                .collect();
            if models.is_empty() {
                return None;
            }
            let base_key = g
                .models
                .iter()
                .find_map(|m| snap.registry.models.get(&m.id))
                .map(|r| r.base.clone());
            let spec = base_key.as_ref().and_then(|b| snap.registry.bases.get(b));
            let (tier, _) = match &base_key {
                Some(b) => tier_of(report, &ResourceKey::Base(b.clone())),
                None => (Tier::Disk, false),
            };
            let base_bytes = spec.map_or(0, |s| s.bytes);
            let estimated_switch_ms = estimate_ms(tier, base_bytes, report, bytes_per_ms);
            Some(GroupView {
                group_id: g.id.clone(),
                group_name: g.name.clone(),
                description: g.description.clone(),
                layers: spec.map_or(0, |s| s.n_layers),
                d_model: spec.map_or(0, |s| s.d_model),
                compute_dtype: g.compute_dtype.as_str().into(),
                base_bytes,
                base_tier: tier.as_str().into(),
                fast_switch: current_base.is_some() && current_base == base_key,
                estimated_switch_ms,
                models,
            })
        })
        .collect()
}

/// The model and its group, if the role may use it.
pub fn find<'a>(snap: &'a Snapshot, role: Role, id: &str) -> Option<(&'a Group, &'a ModelEntry)> {
    snap.config.model(id).filter(|(g, m)| may_use(role, g, m))
}

/// Replaces every absolute path in `message` (a `/` that begins a word, up to the next space,
/// quote, backtick, bracket, comma, colon or semicolon) with `[file]`. For messages about a
/// configuration that is not in force, such as a reload's errors, whose paths [`scrub`] cannot
/// know; a sentence's last path takes its full stop with it.
pub fn scrub_absolute_paths(message: &str) -> String {
    const STARTS_AFTER: &str = " \t\n'\"`([{=:,";
    const ENDS_AT: &str = " \t\n'\"`)]},;:";
    let mut out = String::with_capacity(message.len());
    let mut in_path = false;
    let mut prev: Option<char> = None;
    for c in message.chars() {
        if in_path {
            if ENDS_AT.contains(c) {
                in_path = false;
                out.push(c);
            }
        } else if c == '/' && prev.is_none_or(|p| STARTS_AFTER.contains(p)) {
            in_path = true;
            out.push_str("[file]");
        } else {
            out.push(c);
        }
        prev = Some(c);
    }
    out
}

/// Replaces every configured file path in `message` so that errors never reveal them.
pub fn scrub(snap: &Snapshot, message: &str) -> String {
    let mut out = message.to_string();
    let mut paths: Vec<String> = Vec::new();
    for g in &snap.config.groups {
        paths.push(g.base_path.display().to_string());
        for m in &g.models {
            if let Some(p) = &m.lens_path {
                paths.push(p.display().to_string());
            }
        }
    }
    // Longest first, so that a folder inside another is replaced whole.
    paths.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in paths {
        if !p.is_empty() {
            out = out.replace(&p, "[file]");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::scrub_absolute_paths;

    #[test]
    fn absolute_paths_are_scrubbed_wherever_they_start_a_word() {
        // issue 17 item 8: a reload's error named the new configuration's files.
        let message = "/etc/lensd/model_groups.json: groups[0] (`demo`): base_model_path \
            '/opt/w/missing.gguf' does not exist; lens=/srv/l.safetensors, see (/a/b)";
        let out = scrub_absolute_paths(message);
        assert_eq!(
            out,
            "[file]: groups[0] (`demo`): base_model_path '[file]' does not exist; \
             lens=[file], see ([file])"
        );
        // Slashes inside words are not paths.
        let plain = "3 tokens/s, 1/2 of the budget, and/or a ratio";
        assert_eq!(scrub_absolute_paths(plain), plain);
    }
}
