//! The state's rules, without a runtime.
use std::path::PathBuf;

use lensd_core::config::Placement;
use lensd_core::registry::{BaseKey, BaseSpec, LensKey, LensSpec, ModelRef};
use lensd_core::{ComputeDtype, LensKind};
use tokio::sync::mpsc;

use super::*;

fn registry() -> Registry {
    let mut r = Registry::default();
    let b = BaseKey("b".into());
    r.bases.insert(
        b.clone(),
        BaseSpec {
            path: PathBuf::from("b.gguf"),
            dtype: ComputeDtype::F32,
            bytes: 100,
            n_layers: 2,
            d_model: 8,
        },
    );
    for (m, l) in [("x", "lx"), ("y", "ly")] {
        let lk = LensKey(l.into());
        r.lenses.insert(
            lk.clone(),
            LensSpec {
                kind: LensKind::Tuned,
                path: PathBuf::from(l),
                bytes: 10,
                donor: None,
            },
        );
        r.models.insert(
            m.into(),
            ModelRef {
                group: "g".into(),
                base: b.clone(),
                lens: Some(lk),
                donor: None,
            },
        );
    }
    r.groups.insert("g".into(), vec!["x".into(), "y".into()]);
    r
}

/// `n` devices of the engine.
pub(super) fn devices(n: u16) -> Vec<DeviceInfo> {
    (0..n)
        .map(|i| DeviceInfo {
            id: DeviceId(i),
            name: format!("cuda:{i}"),
            total_bytes: None,
            free_bytes: None,
        })
        .collect()
}

const D0: Place = Place::Device(DeviceId(0));

/// One memory, a device budget of 200 and a host budget of 100; leases are not followed.
fn shared_state() -> State {
    let (tx, _rx) = mpsc::unbounded_channel();
    State::new(
        registry(),
        Budgets {
            device: 200,
            host: 100,
        },
        Placement::default(),
        true,
        devices(1),
        tx,
    )
}

fn loads(effects: &[Effect]) -> Vec<(u64, String)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Load { job, key, .. } => Some((*job, key.to_string())),
            _ => None,
        })
        .collect()
}

#[test]
fn an_acquire_loads_the_base_then_the_lens_then_hands_out_a_lease() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut s = State::new(
        registry(),
        Budgets {
            device: 200,
            host: 100,
        },
        Placement::default(),
        true,
        devices(1),
        tx,
    );
    let (reply, mut got) = oneshot::channel();
    let fx = s.acquire(vec!["x".into()], None, None, reply, 0);
    assert_eq!(loads(&fx), [(1, "base b".to_string())]);
    assert_eq!(s.used(D0), 100, "the load's bytes are reserved at once");
    let fx = s.job_done(1, Ok(()), 5);
    assert_eq!(loads(&fx), [(2, "lens lx".to_string())]);
    assert!(got.try_recv().is_err(), "not yet");
    assert!(s.job_done(2, Ok(()), 9).is_empty());
    let lease = got.try_recv().unwrap().unwrap();
    assert_eq!(lease.models, ["x"]);
    assert!(s.violations().is_empty());
    drop(lease);
    match rx.try_recv().unwrap() {
        Internal::Released(keys) => {
            s.released(keys, 10);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        s.report(10, None, &BTreeMap::new())
            .entries
            .iter()
            .map(|e| e.leases)
            .sum::<u32>(),
        0
    );
}

#[test]
fn a_failed_lens_load_fails_every_request_that_needs_it_and_frees_its_reservation() {
    let mut s = shared_state();
    let (r1, mut g1) = oneshot::channel();
    let (r2, mut g2) = oneshot::channel();
    s.acquire(vec!["x".into()], None, None, r1, 0);
    s.acquire(vec!["x".into()], None, None, r2, 0);
    s.job_done(1, Ok(()), 1);
    s.job_done(2, Err("lx: truncated".into()), 2);
    for g in [&mut g1, &mut g2] {
        match g.try_recv().unwrap() {
            Err(ResidencyError::LoadFailed { cause, .. }) => assert_eq!(cause, "lx: truncated"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(s.used(D0), 100, "only the base remains");
    assert!(s.violations().is_empty());
}

#[test]
fn a_group_that_fits_only_resource_by_resource_fails_at_once_naming_the_set() {
    // The base fits the host budget alone, the base and both lenses do not.
    let mut s = shared_state();
    let (events, mut got) = mpsc::unbounded_channel();
    let fx = s.preload("g".into(), Tier::Host, events, 0).unwrap();
    assert!(
        loads(&fx).is_empty(),
        "nothing is loaded for a request that cannot be met"
    );
    let mut failed = None;
    while let Ok(ev) = got.try_recv() {
        if let PreloadEvent::Failed { error, .. } = ev {
            failed = Some(error);
        }
    }
    let error = failed.expect("the preload fails rather than waiting for ever");
    assert!(
        error.contains("the set of base b (b.gguf), lens lx (lx) and lens ly (ly)")
            && error.contains("on the host tier"),
        "{error}"
    );
    assert!(s.violations().is_empty());
}
