//! Registries for stories: groups of models over bases and lenses named by path, so that
//! equal paths are equal content.

#![allow(dead_code)]

pub mod queue;
pub mod sound;

use std::path::PathBuf;

use lensd_core::registry::{
    BaseKey, BaseSpec, LensKey, LensSpec, ModelRef, Policy, Registry, ResourceKey,
};
use lensd_core::{ComputeDtype, LensKind};

/// A group: id, base file and bytes, and models with an optional (lens file, bytes).
pub struct G<'a>(
    pub &'a str,
    pub &'a str,
    pub u64,
    pub &'a [(&'a str, Option<(&'a str, u64)>)],
);

pub fn base(path: &str) -> ResourceKey {
    ResourceKey::Base(BaseKey(path.into()))
}

pub fn lens(path: &str) -> ResourceKey {
    ResourceKey::Lens(LensKey(path.into()))
}

/// Builds a registry keyed by path, so that equal paths are equal content.
pub fn registry(groups: &[G]) -> Registry {
    let mut r = Registry::default();
    for G(gid, bpath, bbytes, models) in groups {
        let bkey = BaseKey(bpath.to_string());
        r.bases.insert(
            bkey.clone(),
            BaseSpec {
                path: PathBuf::from(bpath),
                dtype: ComputeDtype::F32,
                bytes: *bbytes,
                n_layers: 30,
                d_model: 576,
            },
        );
        r.policies
            .entry(ResourceKey::Base(bkey.clone()))
            .or_insert(Policy::default());
        let mut ids = Vec::new();
        for (mid, l) in *models {
            let lkey = l.map(|(p, bytes)| {
                let k = LensKey(p.to_string());
                r.lenses.insert(
                    k.clone(),
                    LensSpec {
                        kind: LensKind::Tuned,
                        path: PathBuf::from(p),
                        bytes,
                        donor: None,
                    },
                );
                r.policies
                    .entry(ResourceKey::Lens(k.clone()))
                    .or_insert(Policy::default());
                k
            });
            r.models.insert(
                mid.to_string(),
                ModelRef {
                    group: gid.to_string(),
                    base: bkey.clone(),
                    lens: lkey,
                    donor: None,
                },
            );
            ids.push(mid.to_string());
        }
        r.groups.insert(gid.to_string(), ids);
    }
    r
}

pub const GB: u64 = 1 << 30;
pub const MB: u64 = 1 << 20;

/// Gives `models` the full donor `path` of `bytes`: a base of its own, keyed by path like
/// every base here, shared with any group or donor naming the same path.
pub fn with_donor(r: &mut Registry, models: &[&str], path: &str, bytes: u64) {
    let key = BaseKey(path.to_string());
    r.bases.entry(key.clone()).or_insert_with(|| BaseSpec {
        path: PathBuf::from(path),
        dtype: ComputeDtype::F32,
        bytes,
        n_layers: 30,
        d_model: 576,
    });
    r.policies
        .entry(ResourceKey::Base(key.clone()))
        .or_default();
    for m in models {
        r.models.get_mut(*m).expect("a model of the registry").donor = Some(key.clone());
    }
}
