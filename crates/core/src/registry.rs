//! The registry: which model uses which base and lens, with every base and lens identified by
//! content, so that groups naming the same file share one resource. Built from a checked
//! config; compared with a newer one to apply a reload without disturbing what is unchanged.
//!
//! A model's full donor (a fine-tune named by `different_activations_orig_path`) is a base
//! like any other, shared by content with other donors and with group bases; the model refers
//! to it beside its group's base.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{Config, Resolved};
use crate::dtype::{ComputeDtype, LensKind};

/// A base by content and compute dtype (see `BaseFacts::content_id`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BaseKey(pub String);

/// A lens by the content of its files.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LensKey(pub String);

/// Anything the residency manager places in a tier.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum ResourceKey {
    Base(BaseKey),
    Lens(LensKey),
}

impl std::fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResourceKey::Base(b) => write!(f, "base {}", b.0),
            ResourceKey::Lens(l) => write!(f, "lens {}", l.0),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BaseSpec {
    pub path: PathBuf,
    pub dtype: ComputeDtype,
    pub bytes: u64,
    pub n_layers: usize,
    pub d_model: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LensSpec {
    pub kind: LensKind,
    pub path: PathBuf,
    pub bytes: u64,
    /// A talkative lens's LoRA adapter for the activations (its bytes count in `bytes`). A
    /// full donor model is not here but in [`ModelRef::donor`].
    pub donor: Option<PathBuf>,
}

/// Residency policy of a resource, merged over every model that uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct Policy {
    pub pinned: bool,
    /// The longest keep-alive among its users; `None` (some user keeps it for good) keeps it as
    /// long as the budgets allow.
    pub keep_alive: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelRef {
    pub group: String,
    pub base: BaseKey,
    /// `None` for the logit lens, which needs no weights beyond the base.
    pub lens: Option<LensKey>,
    /// A talkative lens's full donor model: a base of its own whose activations the lens
    /// explains and which generates for the model. `None` without one, with a LoRA donor (part
    /// of the lens), and when the donor is the group's base itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub donor: Option<BaseKey>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Registry {
    pub models: BTreeMap<String, ModelRef>,
    pub groups: BTreeMap<String, Vec<String>>,
    pub bases: BTreeMap<BaseKey, BaseSpec>,
    pub lenses: BTreeMap<LensKey, LensSpec>,
    pub policies: BTreeMap<ResourceKey, Policy>,
}

/// What a reload changes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RegistryDiff {
    pub added_models: Vec<String>,
    pub removed_models: Vec<String>,
    /// Models whose base, lens or donor changed.
    pub changed_models: Vec<String>,
    /// Resources no model uses any more.
    pub dropped: Vec<ResourceKey>,
    /// Resources that appear for the first time.
    pub new: Vec<ResourceKey>,
}

impl Registry {
    /// Builds the registry of a config whose files [`crate::config::check`] resolved. Models
    /// whose base or lens was not resolved (a check error) are left out; a full donor
    /// (`resolved.donors`) becomes a base shared by content, with its users' policy.
    pub fn build(config: &Config, resolved: &Resolved) -> Registry {
        let mut r = Registry::default();
        for g in &config.groups {
            let Some(bf) = resolved.bases.get(&g.id) else {
                continue;
            };
            let base = BaseKey(bf.content_id.clone());
            let keep_alive = g.keep_alive.or(config.settings.keep_alive);
            r.bases.entry(base.clone()).or_insert_with(|| BaseSpec {
                path: g.base_path.clone(),
                dtype: g.compute_dtype,
                bytes: bf.resident_bytes,
                n_layers: bf.n_layers,
                d_model: bf.d_model,
            });
            let mut ids = Vec::new();
            for m in &g.models {
                let lens = match (m.lens, &m.lens_path) {
                    (LensKind::Logit, _) => None,
                    (kind, Some(path)) => {
                        let Some(lf) = resolved.lenses.get(&m.id) else {
                            continue;
                        };
                        let key = LensKey(lf.content_id.clone());
                        // A full donor is a base below, never part of the lens.
                        let adapter = m
                            .donor
                            .clone()
                            .filter(|_| !resolved.donors.contains_key(&m.id));
                        r.lenses.entry(key.clone()).or_insert_with(|| LensSpec {
                            kind,
                            path: path.clone(),
                            bytes: lf.bytes,
                            donor: adapter,
                        });
                        Some(key)
                    }
                    (_, None) => continue,
                };
                let donor = match (resolved.donors.get(&m.id), &m.donor) {
                    (Some(df), Some(path)) => {
                        let key = BaseKey(df.content_id.clone());
                        r.bases.entry(key.clone()).or_insert_with(|| BaseSpec {
                            path: path.clone(),
                            dtype: g.compute_dtype,
                            bytes: df.resident_bytes,
                            n_layers: df.n_layers,
                            d_model: df.d_model,
                        });
                        // A donor identical to the group's base is the base itself.
                        Some(key).filter(|k| *k != base)
                    }
                    _ => None,
                };
                let pinned = g.pin || m.pin;
                for b in std::iter::once(&base).chain(&donor) {
                    merge(
                        &mut r.policies,
                        ResourceKey::Base(b.clone()),
                        pinned,
                        keep_alive,
                    );
                }
                if let Some(l) = &lens {
                    merge(
                        &mut r.policies,
                        ResourceKey::Lens(l.clone()),
                        pinned,
                        keep_alive,
                    );
                }
                r.models.insert(
                    m.id.clone(),
                    ModelRef {
                        group: g.id.clone(),
                        base: base.clone(),
                        lens,
                        donor,
                    },
                );
                ids.push(m.id.clone());
            }
            r.groups.insert(g.id.clone(), ids);
        }
        r
    }

    pub fn resources(&self) -> BTreeSet<ResourceKey> {
        let bases = self.bases.keys().cloned().map(ResourceKey::Base);
        bases
            .chain(self.lenses.keys().cloned().map(ResourceKey::Lens))
            .collect()
    }

    /// Bytes of a resource once loaded.
    pub fn bytes(&self, key: &ResourceKey) -> Option<u64> {
        match key {
            ResourceKey::Base(b) => self.bases.get(b).map(|s| s.bytes),
            ResourceKey::Lens(l) => self.lenses.get(l).map(|s| s.bytes),
        }
    }

    /// The resources a model needs: its base, its full donor if it has one, then its lens if
    /// it has one.
    pub fn needs(&self, model: &str) -> Option<Vec<ResourceKey>> {
        let m = self.models.get(model)?;
        let mut v = vec![ResourceKey::Base(m.base.clone())];
        v.extend(m.donor.clone().map(ResourceKey::Base));
        v.extend(m.lens.clone().map(ResourceKey::Lens));
        Some(v)
    }

    /// The models that use `key`: as their base, their full donor or their lens.
    pub fn users(&self, key: &ResourceKey) -> Vec<String> {
        self.models
            .iter()
            .filter(|(_, m)| match key {
                ResourceKey::Base(b) => m.base == *b || m.donor.as_ref() == Some(b),
                ResourceKey::Lens(l) => m.lens.as_ref() == Some(l),
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The models whose full donor `base` is.
    pub fn donor_of(&self, base: &BaseKey) -> Vec<String> {
        self.models
            .iter()
            .filter(|(_, m)| m.donor.as_ref() == Some(base))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The resources of every model of a group, base first, without repeats.
    pub fn group_needs(&self, group: &str) -> Option<Vec<ResourceKey>> {
        let mut out: Vec<ResourceKey> = Vec::new();
        for m in self.groups.get(group)? {
            for k in self.needs(m).unwrap_or_default() {
                if !out.contains(&k) {
                    out.push(k);
                }
            }
        }
        Some(out)
    }

    pub fn policy(&self, key: &ResourceKey) -> Policy {
        self.policies.get(key).copied().unwrap_or_default()
    }

    /// What changes from `self` to `next`.
    pub fn diff(&self, next: &Registry) -> RegistryDiff {
        let mut d = RegistryDiff::default();
        for (id, m) in &next.models {
            match self.models.get(id) {
                None => d.added_models.push(id.clone()),
                Some(old) if old.base != m.base || old.lens != m.lens || old.donor != m.donor => {
                    d.changed_models.push(id.clone())
                }
                Some(_) => {}
            }
        }
        d.removed_models = self
            .models
            .keys()
            .filter(|id| !next.models.contains_key(*id))
            .cloned()
            .collect();
        let (before, after) = (self.resources(), next.resources());
        d.dropped = before.difference(&after).cloned().collect();
        d.new = after.difference(&before).cloned().collect();
        d
    }
}

fn merge(
    p: &mut BTreeMap<ResourceKey, Policy>,
    key: ResourceKey,
    pinned: bool,
    keep_alive: Option<Duration>,
) {
    let e = p.entry(key).or_insert(Policy { pinned, keep_alive });
    e.pinned |= pinned;
    e.keep_alive = match (e.keep_alive, keep_alive) {
        (Some(a), Some(b)) => Some(a.max(b)),
        _ => None,
    };
}
