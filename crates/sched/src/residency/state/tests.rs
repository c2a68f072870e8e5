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

/// Separate memories: `n` devices with a budget of 200 each and a host of 100.
fn gpu_state(n: u16) -> (State, mpsc::UnboundedReceiver<Internal>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let budgets = Budgets {
        device: 200,
        host: 100,
    };
    let state = State::new(
        registry(),
        budgets,
        Placement::default(),
        false,
        devices(n),
        tx,
    );
    (state, rx)
}

fn transfers(effects: &[Effect]) -> Vec<(u64, String, Place, Place)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Transfer { job, key, from, to } => Some((*job, key.to_string(), *from, *to)),
            _ => None,
        })
        .collect()
}

const D1: Place = Place::Device(DeviceId(1));

#[test]
fn a_second_copy_is_copied_from_a_leased_one_which_stays_where_it_is() {
    let (mut s, _rx) = gpu_state(2);
    let (reply, mut got) = oneshot::channel();
    s.acquire(vec!["x".into()], Some(DeviceId(0)), None, reply, 0);
    s.job_done(1, Ok(()), 1);
    s.job_done(2, Ok(()), 2);
    let first = got.try_recv().unwrap().unwrap();
    assert_eq!(first.device, DeviceId(0));

    let (reply, mut got) = oneshot::channel();
    let fx = s.acquire(vec!["x".into()], Some(DeviceId(1)), None, reply, 3);
    assert_eq!(transfers(&fx), [(3, "base b".to_string(), D0, D1)]);
    assert_eq!((s.used(D0), s.used(D1)), (110, 100), "both ends count");
    assert!(
        s.entry(&base_key(), D0).unwrap().ready(),
        "the leased source stays usable"
    );
    let fx = s.job_done(3, Ok(()), 4);
    assert_eq!(transfers(&fx), [(4, "lens lx".to_string(), D0, D1)]);
    assert!(
        fx.iter().all(|e| !matches!(e, Effect::Release { .. })),
        "nothing freed"
    );
    s.job_done(4, Ok(()), 5);
    let second = got.try_recv().unwrap().unwrap();
    assert_eq!(second.device, DeviceId(1));
    assert_eq!(s.entry(&base_key(), D0).unwrap().leases, 1);
    assert_eq!(s.entry(&base_key(), D1).unwrap().leases, 1);
    assert!(s.violations().is_empty(), "{:?}", s.violations());
    drop((first, second));
}

impl State {
    /// Every engine job in flight.
    fn find_job_ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .entries
            .values()
            .filter_map(|e| e.job.map(|j| j.id()))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

fn base_key() -> ResourceKey {
    ResourceKey::Base(BaseKey("b".into()))
}

#[test]
fn an_idle_copy_with_another_copy_elsewhere_is_freed_rather_than_kept_on_the_host() {
    let (mut s, mut rx) = gpu_state(2);
    for d in [0, 1] {
        let (reply, mut got) = oneshot::channel();
        s.acquire(vec!["x".into()], Some(DeviceId(d)), None, reply, 0);
        let jobs: Vec<u64> = s.find_job_ids();
        for j in jobs {
            s.job_done(j, Ok(()), 1);
        }
        for j in s.find_job_ids() {
            s.job_done(j, Ok(()), 1);
        }
        drop(got.try_recv().unwrap().unwrap());
        while let Ok(Internal::Released(keys)) = rx.try_recv() {
            s.released(keys, 2);
        }
    }
    let (report, fx) = s.unload("g", Tier::Host, 3).unwrap();
    let done: Vec<String> = fx
        .iter()
        .map(|e| match e {
            Effect::Release { key, place } => format!("free {key} on {place}"),
            Effect::Transfer { key, from, to, .. } => format!("move {key} {from} -> {to}"),
            Effect::Load { key, place, .. } => format!("load {key} -> {place}"),
        })
        .collect();
    // Device 0's copies are freed, as device 1 has copies too; device 1's base, the last copy,
    // moves to the host, where its lens no longer fits and is freed.
    assert_eq!(
        done,
        [
            "free base b on device 0",
            "move base b device 1 -> host",
            "free lens lx on device 0",
            "free lens lx on device 1",
        ]
    );
    assert_eq!(report.kept, []);
    assert!(s.violations().is_empty(), "{:?}", s.violations());
}

#[test]
fn a_lost_device_leaves_the_books_and_requests_waiting_for_it_fail() {
    let (mut s, _rx) = gpu_state(2);
    let (reply, mut got) = oneshot::channel();
    s.acquire(vec!["x".into()], Some(DeviceId(1)), None, reply, 0);
    s.job_done(1, Ok(()), 1);
    assert_eq!(s.used(D1), 110, "the base and the lens being loaded");
    let fx = s.device_failed(DeviceId(1), "gone".into(), 2);
    assert!(fx
        .iter()
        .any(|e| matches!(e, Effect::Release { place, .. } if *place == D1)));
    match got.try_recv().unwrap() {
        Err(ResidencyError::DeviceFailed { device, why }) => {
            assert_eq!((device.as_str(), why.as_str()), ("cuda:1", "gone"))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.used(D1), 0);
    // The lens load that was in flight ends later; it finds nothing.
    assert!(s.job_done(2, Ok(()), 3).is_empty());
    // Nothing is placed there again; device 0 serves.
    let (reply, mut got) = oneshot::channel();
    s.acquire(vec!["x".into()], Some(DeviceId(1)), None, reply, 4);
    assert!(matches!(
        got.try_recv().unwrap(),
        Err(ResidencyError::DeviceFailed { .. })
    ));
    let (reply, mut got) = oneshot::channel();
    let fx = s.acquire(vec!["x".into()], None, None, reply, 4);
    assert!(matches!(&fx[0], Effect::Load { place, .. } if *place == D0));
    assert!(got.try_recv().is_err(), "loading on device 0");
    assert!(s.violations().is_empty(), "{:?}", s.violations());
}
