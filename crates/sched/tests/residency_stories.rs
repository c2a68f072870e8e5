//! Stories of the residency manager against the fake engine, under paused time: what loads,
//! what moves, what waits, and that the budgets hold after every step.

use std::sync::Arc;
use std::time::Duration;

mod common;

use common::{base, lens, registry, G, GB, MB};
use lensd_core::config::Budgets;
use lensd_core::registry::{LensKey, Registry, ResourceKey};
use lensd_core::residency::Tier;
use lensd_sched::fake::FakeEngine;
use lensd_sched::residency::{Options, PlacementChanged, PreloadEvent, Residency, ResidencyError};

fn start(r: Registry, device: u64, host: u64, engine: &FakeEngine) -> Residency {
    let options = Options {
        sweep: Duration::from_secs(1),
        ..Options::default()
    };
    Residency::start(
        r,
        Budgets { device, host },
        Arc::new(engine.clone()),
        options,
    )
}

async fn assert_sound(res: &Residency, engine: &FakeEngine) {
    common::sound::assert_sound(res, engine).await;
}

fn tier_of(rep: &lensd_sched::residency::MemoryReport, key: &ResourceKey) -> Tier {
    rep.entry(key).unwrap().tier
}

#[tokio::test(start_paused = true)]
async fn within_a_group_only_the_lens_loads() {
    let engine = FakeEngine::new(true);
    engine.set_load_latency(Duration::from_secs(2));
    let reg = registry(&[G(
        "g",
        "base.gguf",
        GB,
        &[
            ("a", Some(("lens-a", 40 * MB))),
            ("b", Some(("lens-b", 40 * MB))),
            ("logit", None),
        ],
    )]);
    let res = start(reg, 2 * GB, GB, &engine);

    let lease = res.acquire("a").await.unwrap();
    assert_eq!(
        engine.log(),
        [
            "load base base.gguf -> device",
            "load lens lens-a -> device"
        ]
    );
    drop(lease);
    assert_sound(&res, &engine).await;

    engine.clear_log();
    let _b = res.acquire("b").await.unwrap();
    assert_eq!(
        engine.log(),
        ["load lens lens-b -> device"],
        "the base stays; only the new lens loads"
    );
    let _logit = res.acquire("logit").await.unwrap();
    let _a = res.acquire("a").await.unwrap();
    assert_eq!(
        engine.log().len(),
        1,
        "the logit lens and a resident lens load nothing"
    );
    assert_sound(&res, &engine).await;
}

#[tokio::test(start_paused = true)]
async fn between_groups_the_base_loads_once_and_the_old_one_waits_on_the_host() {
    // One memory swaps the bases in place, so a host that holds one base is enough; separate
    // memories must hold both on the host for a moment.
    for (shared, host) in [(true, GB + 100 * MB), (false, 2 * GB + 200 * MB)] {
        let engine = FakeEngine::new(shared);
        engine.set_load_latency(Duration::from_secs(30));
        engine.set_transfer_latency(Duration::from_secs(3));
        let reg = registry(&[
            G("one", "one.gguf", GB, &[("a", Some(("lens-a", 40 * MB)))]),
            G("two", "two.gguf", GB, &[("c", Some(("lens-c", 40 * MB)))]),
        ]);
        // The device holds one base and its lens.
        let res = start(reg, GB + 100 * MB, host, &engine);

        drop(res.acquire("a").await.unwrap());
        drop(res.acquire("c").await.unwrap());
        let rep = res.report().await.unwrap();
        assert_eq!(
            tier_of(&rep, &base("one.gguf")),
            Tier::Host,
            "shared {shared}: {:?}",
            engine.log()
        );
        assert_eq!(tier_of(&rep, &base("two.gguf")), Tier::Device);
        assert_sound(&res, &engine).await;

        // Back to the first group: nothing is read from disk again.
        let t = tokio::time::Instant::now();
        drop(res.acquire("a").await.unwrap());
        assert_eq!(engine.loads_of(&base("one.gguf")), 1);
        assert_eq!(engine.loads_of(&lens("lens-a")), 1);
        let rep = res.report().await.unwrap();
        assert_eq!(tier_of(&rep, &base("one.gguf")), Tier::Device);
        assert_eq!(tier_of(&rep, &base("two.gguf")), Tier::Host);
        if shared {
            assert!(
                !engine.log().iter().any(|l| l.starts_with("move")),
                "one memory: no copies"
            );
            assert!(
                t.elapsed() < Duration::from_millis(1),
                "a relabel takes no time"
            );
        } else {
            assert!(
                engine
                    .log()
                    .contains(&"move base one.gguf host -> device".to_string()),
                "{:?}",
                engine.log()
            );
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "from host is faster than from disk"
            );
        }
        assert_sound(&res, &engine).await;
    }
}

#[tokio::test(start_paused = true)]
async fn two_groups_naming_one_base_file_share_one_copy() {
    let engine = FakeEngine::new(true);
    let reg = registry(&[
        G(
            "plain",
            "shared.gguf",
            GB,
            &[("a", Some(("lens-a", 40 * MB)))],
        ),
        G(
            "audit",
            "shared.gguf",
            GB,
            &[
                ("c", Some(("lens-c", 40 * MB))),
                ("a2", Some(("lens-a", 40 * MB))),
            ],
        ),
    ]);
    let res = start(reg, 2 * GB, GB, &engine);
    let _a = res.acquire("a").await.unwrap();
    let _c = res.acquire("c").await.unwrap();
    let _a2 = res.acquire("a2").await.unwrap();
    assert_eq!(engine.loads_of(&base("shared.gguf")), 1);
    assert_eq!(
        engine.loads_of(&lens("lens-a")),
        1,
        "identical lens files load once"
    );
    let rep = res.report().await.unwrap();
    let b = rep.entry(&base("shared.gguf")).unwrap();
    assert_eq!(b.models, ["a", "a2", "c"]);
    assert_eq!(b.leases, 3);
    assert_eq!(rep.entry(&lens("lens-a")).unwrap().leases, 2);
    assert_eq!(rep.tier(Tier::Device).used, GB + 80 * MB);
    assert_sound(&res, &engine).await;
}

#[tokio::test(start_paused = true)]
async fn eviction_takes_the_least_recently_used_lens() {
    let engine = FakeEngine::new(true);
    let reg = registry(&[G(
        "g",
        "base.gguf",
        GB,
        &[
            ("a", Some(("lens-a", 100 * MB))),
            ("b", Some(("lens-b", 100 * MB))),
            ("c", Some(("lens-c", 100 * MB))),
        ],
    )]);
    // Room on the device for the base and two lenses; no host tier to demote to.
    let res = start(reg, GB + 200 * MB, 0, &engine);
    drop(res.acquire("a").await.unwrap());
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(res.acquire("b").await.unwrap());
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(res.acquire("a").await.unwrap()); // a is now more recent than b
    tokio::time::sleep(Duration::from_secs(1)).await;
    engine.clear_log();
    drop(res.acquire("c").await.unwrap());
    assert_eq!(
        engine.log(),
        ["free lens lens-b", "load lens lens-c -> device"]
    );
    assert_sound(&res, &engine).await;
}

#[tokio::test(start_paused = true)]
async fn a_leased_base_is_never_evicted_and_the_load_that_needs_its_room_waits() {
    let engine = FakeEngine::new(true);
    engine.set_load_latency(Duration::from_secs(5));
    let reg = registry(&[
        G("one", "one.gguf", GB, &[("a", None)]),
        G("two", "two.gguf", GB, &[("c", None)]),
        G("big", "huge.gguf", 3 * GB, &[("h", None)]),
    ]);
    let res = start(reg, GB + GB / 2, GB, &engine);
    let lease = res.acquire("a").await.unwrap();
    let waiting = tokio::spawn({
        let res = res.clone();
        async move { res.acquire("c").await }
    });
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert!(
        !waiting.is_finished(),
        "the second base must wait for the lease"
    );
    let rep = res.report().await.unwrap();
    assert_eq!(tier_of(&rep, &base("one.gguf")), Tier::Device);
    assert_eq!(tier_of(&rep, &base("two.gguf")), Tier::Disk);
    assert_sound(&res, &engine).await;

    drop(lease);
    let c = waiting.await.unwrap().unwrap();
    assert_eq!(c.models, ["c"]);
    let rep = res.report().await.unwrap();
    assert_eq!(tier_of(&rep, &base("one.gguf")), Tier::Host);
    assert_sound(&res, &engine).await;

    // What can never fit fails at once, naming the sizes.
    match res.acquire("h").await {
        Err(ResidencyError::DoesNotFit {
            resource,
            needed,
            budget,
            ..
        }) => {
            assert!(resource.contains("huge.gguf"), "{resource}");
            assert_eq!((needed.0, budget.0), (3 * GB, GB + GB / 2));
        }
        other => panic!("expected DoesNotFit, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_load_reports_its_cause_and_leaves_the_books_consistent() {
    let engine = FakeEngine::new(true);
    engine.set_load_latency(Duration::from_secs(1));
    engine.fail_loads_of("broken");
    let reg = registry(&[G(
        "g",
        "base.gguf",
        GB,
        &[
            ("bad", Some(("broken-lens", 40 * MB))),
            ("good", Some(("lens-ok", 40 * MB))),
        ],
    )]);
    let res = start(reg, 2 * GB, GB, &engine);
    match res.acquire("bad").await {
        Err(ResidencyError::LoadFailed {
            resource,
            place,
            cause,
        }) => {
            assert_eq!(place, "device");
            assert!(resource.contains("broken-lens"), "{resource}");
            assert!(cause.contains("corrupt"), "{cause}");
        }
        other => panic!("expected LoadFailed, got {other:?}"),
    }
    let rep = res.report().await.unwrap();
    assert_eq!(tier_of(&rep, &lens("broken-lens")), Tier::Disk);
    assert_eq!(
        rep.tier(Tier::Device).used,
        GB,
        "only the base is accounted"
    );
    assert_sound(&res, &engine).await;
    let ok = res.acquire("good").await.unwrap();
    assert_eq!(ok.lenses, [Some(LensKey("lens-ok".into()))]);
    assert!(
        matches!(res.acquire("nope").await, Err(ResidencyError::UnknownModel(m)) if m == "nope")
    );
}

#[tokio::test(start_paused = true)]
async fn preload_reports_progress_and_races_requests_without_double_loads() {
    let engine = FakeEngine::new(true);
    engine.set_load_latency(Duration::from_secs(8));
    let reg = registry(&[G(
        "g",
        "base.gguf",
        GB,
        &[
            ("a", Some(("lens-a", 40 * MB))),
            ("b", Some(("lens-b", 40 * MB))),
        ],
    )]);
    let res = start(reg, 2 * GB, GB, &engine);
    let mut events = res.preload("g", Tier::Device).await.unwrap();
    let racing = tokio::spawn({
        let res = res.clone();
        async move { res.acquire("b").await }
    });
    let mut seen = Vec::new();
    while let Some(ev) = events.recv().await {
        let done = matches!(ev, PreloadEvent::Done { .. } | PreloadEvent::Failed { .. });
        seen.push(ev);
        if done {
            break;
        }
    }
    assert!(
        matches!(seen.last(), Some(PreloadEvent::Done { group }) if group == "g"),
        "{seen:?}"
    );
    let base_progress: Vec<(u64, u64)> = seen
        .iter()
        .filter_map(|e| match e {
            PreloadEvent::Loading {
                resource,
                bytes_done,
                bytes_total,
            } if *resource == base("base.gguf") => Some((*bytes_done, *bytes_total)),
            _ => None,
        })
        .collect();
    assert_eq!(
        base_progress,
        [
            (0, GB),
            (GB / 4, GB),
            (GB / 2, GB),
            (3 * GB / 4, GB),
            (GB, GB)
        ]
    );
    for key in [base("base.gguf"), lens("lens-a"), lens("lens-b")] {
        assert!(
            seen.contains(&PreloadEvent::Ready {
                resource: key.clone(),
                tier: Tier::Device
            }),
            "{key} ready: {seen:?}"
        );
        assert_eq!(engine.loads_of(&key), 1, "{key} loaded once");
    }
    racing.await.unwrap().unwrap();
    assert!(res.preload("nope", Tier::Device).await.is_err());
    assert_sound(&res, &engine).await;
}

#[tokio::test(start_paused = true)]
async fn idle_entries_leave_the_device_after_their_keep_alive() {
    let engine = FakeEngine::new(true);
    let mut reg = registry(&[G("g", "base.gguf", GB, &[("a", Some(("lens-a", 40 * MB)))])]);
    for p in reg.policies.values_mut() {
        p.keep_alive = Some(Duration::from_secs(60));
    }
    let res = start(reg, 2 * GB, 2 * GB, &engine);
    let lease = res.acquire("a").await.unwrap();
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(
        tier_of(&res.report().await.unwrap(), &base("base.gguf")),
        Tier::Device,
        "in use: kept"
    );
    drop(lease);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        tier_of(&res.report().await.unwrap(), &base("base.gguf")),
        Tier::Device,
        "idle 30 s: kept"
    );
    tokio::time::sleep(Duration::from_secs(40)).await;
    let rep = res.report().await.unwrap();
    assert_eq!(
        tier_of(&rep, &base("base.gguf")),
        Tier::Host,
        "idle 70 s: demoted"
    );
    assert_eq!(tier_of(&rep, &lens("lens-a")), Tier::Host);
    assert_sound(&res, &engine).await;
}

#[tokio::test(start_paused = true)]
async fn unload_demotes_or_frees_but_leaves_what_is_in_use() {
    let engine = FakeEngine::new(true);
    let mut reg = registry(&[G(
        "g",
        "base.gguf",
        GB,
        &[
            ("a", Some(("lens-a", 40 * MB))),
            ("b", Some(("lens-b", 40 * MB))),
        ],
    )]);
    reg.policies.get_mut(&lens("lens-b")).unwrap().pinned = true;
    let res = start(reg, 2 * GB, 2 * GB, &engine);
    let mut ev = res.preload("g", Tier::Device).await.unwrap();
    while !matches!(ev.recv().await, Some(PreloadEvent::Done { .. }) | None) {}
    let lease = res.acquire("a").await.unwrap();
    let r = res.unload("g", Tier::Host).await.unwrap();
    assert_eq!(r.moved, []);
    assert_eq!(r.kept.len(), 3, "{r:?}");
    drop(lease);
    let r = res.unload("g", Tier::Host).await.unwrap();
    assert_eq!(
        r.moved,
        [
            (base("base.gguf"), Tier::Host),
            (lens("lens-a"), Tier::Host)
        ]
    );
    assert_eq!(r.kept, [(lens("lens-b"), "pinned".to_string())]);
    let r = res.unload("g", Tier::Disk).await.unwrap();
    assert_eq!(
        r.moved,
        [
            (base("base.gguf"), Tier::Disk),
            (lens("lens-a"), Tier::Disk)
        ]
    );
    assert!(!engine.holds(&base("base.gguf")));
    assert!(matches!(
        res.unload("nope", Tier::Host).await,
        Err(ResidencyError::UnknownGroup(_))
    ));
    assert_sound(&res, &engine).await;
}

#[tokio::test(start_paused = true)]
async fn a_reload_keeps_unchanged_weights_and_frees_removed_ones() {
    let engine = FakeEngine::new(true);
    let old = registry(&[G(
        "g",
        "base.gguf",
        GB,
        &[
            ("a", Some(("lens-a", 40 * MB))),
            ("b", Some(("lens-b", 40 * MB))),
        ],
    )]);
    let res = start(old.clone(), 2 * GB, GB, &engine);
    let a = res.acquire("a").await.unwrap();
    drop(res.acquire("b").await.unwrap());
    let new = registry(&[G(
        "g",
        "base.gguf",
        GB,
        &[
            ("a", Some(("lens-a", 40 * MB))),
            ("d", Some(("lens-d", 40 * MB))),
        ],
    )]);
    let diff = old.diff(&new);
    assert_eq!(
        (diff.added_models.as_slice(), diff.removed_models.as_slice()),
        (&["d".to_string()][..], &["b".to_string()][..])
    );
    engine.clear_log();
    res.reload(
        new.clone(),
        Budgets {
            device: 2 * GB,
            host: GB,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        engine.log(),
        ["free lens lens-b"],
        "the base and the leased lens stay"
    );
    drop(a);
    drop(res.acquire("d").await.unwrap());
    assert_eq!(
        engine.log(),
        ["free lens lens-b", "load lens lens-d -> device"],
        "the base was not read again"
    );
    assert!(matches!(
        res.acquire("b").await,
        Err(ResidencyError::UnknownModel(_))
    ));
    // Budgets too small for what is in use are refused and change nothing.
    let hold = res.acquire("a").await.unwrap();
    let err = res
        .reload(
            new,
            Budgets {
                device: GB / 2,
                host: GB,
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ResidencyError::BudgetTooSmall(_)), "{err}");
    drop(hold);
    assert_sound(&res, &engine).await;
}

#[tokio::test(start_paused = true)]
async fn budgets_hold_through_a_long_mixed_workload() {
    for shared in [true, false] {
        let engine = FakeEngine::new(shared);
        engine.set_load_latency(Duration::from_millis(700));
        engine.set_transfer_latency(Duration::from_millis(300));
        let lenses: Vec<(String, u64)> = (0..6)
            .map(|i| (format!("lens-{i}"), (20 + 10 * i) * MB))
            .collect();
        let models: Vec<(String, Option<(&str, u64)>)> = lenses
            .iter()
            .enumerate()
            .map(|(i, (p, b))| (format!("m{i}"), Some((p.as_str(), *b))))
            .collect();
        let m: Vec<(&str, Option<(&str, u64)>)> =
            models.iter().map(|(id, l)| (id.as_str(), *l)).collect();
        let reg = registry(&[
            G("g0", "b0.gguf", 500 * MB, &m[0..3]),
            G("g1", "b1.gguf", 400 * MB, &m[3..5]),
            G("g2", "b0.gguf", 500 * MB, &m[5..6]),
        ]);
        let res = start(reg, 700 * MB, 600 * MB, &engine);
        // A fixed pseudo-random sequence of overlapping requests and preloads.
        let mut x: u64 = 12345;
        let mut tasks = Vec::new();
        for step in 0..60 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let model = format!("m{}", (x >> 33) % 6);
            let hold = Duration::from_millis(100 + (x >> 40) % 2000);
            let r = res.clone();
            tasks.push(tokio::spawn(async move {
                let lease = r.acquire(&model).await;
                tokio::time::sleep(hold).await;
                lease.map(|_| ())
            }));
            if step % 15 == 7 {
                let _ = res
                    .preload(["g0", "g1", "g2"][(step / 15) % 3], Tier::Host)
                    .await
                    .unwrap();
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            assert_sound(&res, &engine).await;
        }
        for t in tasks {
            t.await
                .unwrap()
                .expect("every model fits its budget, so every request is served");
            assert_sound(&res, &engine).await;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn several_models_of_one_base_are_leased_together_with_load_progress() {
    let engine = FakeEngine::new(true);
    engine.set_load_latency(Duration::from_secs(4));
    let reg = registry(&[G(
        "g",
        "base.gguf",
        GB,
        &[
            ("a", Some(("lens-a", 40 * MB))),
            ("b", Some(("lens-b", 40 * MB))),
            ("l", None),
        ],
    )]);
    let res = start(reg, 2 * GB, GB, &engine);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let models = ["a", "b", "l"].map(String::from);
    let lease = res.acquire_all(&models, Some(tx)).await.unwrap();
    assert_eq!(lease.models, models);
    assert_eq!(
        lease.lenses,
        [
            Some(LensKey("lens-a".into())),
            Some(LensKey("lens-b".into())),
            None
        ]
    );
    assert_eq!(
        engine.log(),
        [
            "load base base.gguf -> device",
            "load lens lens-a -> device",
            "load lens lens-b -> device"
        ]
    );
    let mut loading = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        if let PreloadEvent::Loading {
            resource,
            bytes_done,
            bytes_total,
        } = ev
        {
            loading.push((resource, bytes_done, bytes_total));
        }
    }
    assert_eq!(
        loading.len(),
        15,
        "a start and four progress steps for each of three loads"
    );
    assert_eq!(loading[0], (base("base.gguf"), 0, GB));
    assert_eq!(loading[4], (base("base.gguf"), GB, GB));
    let rep = res.report().await.unwrap();
    assert_eq!(
        rep.entry(&base("base.gguf")).unwrap().leases,
        1,
        "one lease holds the base once"
    );
    drop(lease);
    assert_sound(&res, &engine).await;
    assert!(
        matches!(res.acquire_all(&["a".into(), "zzz".into()], None).await, Err(ResidencyError::UnknownModel(m)) if m == "zzz")
    );
}

/// Every change notice so far, as in-flight counts.
fn drain(rx: &mut tokio::sync::broadcast::Receiver<PlacementChanged>) -> Vec<usize> {
    std::iter::from_fn(|| rx.try_recv().ok())
        .map(|c| c.in_flight)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn listeners_hear_of_every_placement_change_whoever_caused_it() {
    let engine = FakeEngine::new(true);
    engine.set_load_latency(Duration::from_secs(2));
    let mut reg = registry(&[G("g", "base.gguf", GB, &[("a", Some(("lens-a", 40 * MB)))])]);
    for p in reg.policies.values_mut() {
        p.keep_alive = Some(Duration::from_secs(60));
    }
    let res = start(reg, 2 * GB, 2 * GB, &engine);
    let mut rx = res.changes();

    // A request's load: in flight, then settled.
    drop(res.acquire("a").await.unwrap());
    let seen = drain(&mut rx);
    assert!(seen.len() >= 2, "{seen:?}");
    assert!(seen[0] > 0, "the load start is announced: {seen:?}");
    assert_eq!(seen.last(), Some(&0), "and its end: {seen:?}");

    // Using what is resident changes nothing.
    drop(res.acquire("a").await.unwrap());
    assert_eq!(drain(&mut rx), Vec::<usize>::new());

    // A keep-alive expiry nobody asked for.
    tokio::time::sleep(Duration::from_secs(70)).await;
    res.report().await.unwrap();
    assert_eq!(drain(&mut rx), [0]);
    assert_eq!(
        tier_of(&res.report().await.unwrap(), &base("base.gguf")),
        Tier::Host
    );

    // An unload.
    res.unload("g", Tier::Disk).await.unwrap();
    assert_eq!(drain(&mut rx), [0]);
    assert_eq!(drain(&mut rx), Vec::<usize>::new());
}
