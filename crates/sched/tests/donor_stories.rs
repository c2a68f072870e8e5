//! Stories of full donor models (a fine-tune named by `different_activations_orig_path`)
//! against the fake engine, under paused time: a donor is a base of its own, loaded once
//! whoever names it, leased with the base and lens of the work that needs it, counted in the
//! budgets and the memory report, and evicted like any base when idle.

use std::sync::Arc;
use std::time::Duration;

mod common;

use common::queue::{analyze, assert_grammar, client, drain, generate, kind};
use common::{base, lens, registry, with_donor, G, GB, MB};
use lensd_core::config::Budgets;
use lensd_core::registry::{BaseKey, Registry};
use lensd_core::residency::Tier;
use lensd_core::work::RequestEvent;
use lensd_sched::fake::FakeEngine;
use lensd_sched::queue::{QueueConfig, Scheduler};
use lensd_sched::residency::{Options, Residency, ResidencyError};

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

/// A group `g` on `base.gguf` whose talkative models `a` and `b` both name the fine-tune
/// `tune.gguf` as their donor, a logit model `p` without one, and a group `t` whose base is
/// that same fine-tune. Every file is 1 GiB but the lenses.
fn world() -> Registry {
    let mut r = registry(&[
        G(
            "g",
            "base.gguf",
            GB,
            &[
                ("a", Some(("lens-a", 10 * MB))),
                ("b", Some(("lens-b", 10 * MB))),
                ("p", None),
            ],
        ),
        G("t", "tune.gguf", GB, &[("t", None)]),
        G("o", "other.gguf", GB, &[("o", None)]),
    ]);
    with_donor(&mut r, &["a", "b"], "tune.gguf", GB);
    r
}

async fn assert_sound(res: &Residency) {
    let rep = res.report().await.unwrap();
    assert!(
        rep.invariant_violations.is_empty(),
        "{:?}",
        rep.invariant_violations
    );
}

#[tokio::test(start_paused = true)]
async fn a_donor_named_by_two_models_loads_once_and_is_shown_with_its_bytes() {
    let engine = FakeEngine::new(true);
    engine.set_load_latency(Duration::from_secs(2));
    let res = start(world(), 3 * GB, GB, &engine);

    let a = res.acquire("a").await.unwrap();
    assert_eq!(
        engine.log(),
        [
            "load base base.gguf -> device",
            "load base tune.gguf -> device",
            "load lens lens-a -> device",
        ],
        "the base and the donor before the lens"
    );
    assert_eq!(a.base, BaseKey("base.gguf".into()));
    assert_eq!(a.donors, [Some(BaseKey("tune.gguf".into()))]);
    engine.clear_log();
    let b = res.acquire("b").await.unwrap();
    let t = res.acquire("t").await.unwrap();
    assert_eq!(
        engine.log(),
        ["load lens lens-b -> device"],
        "the donor is shared by the second model and by the group whose base it is"
    );

    let rep = res.report().await.unwrap();
    let donor = rep.entry(&base("tune.gguf")).unwrap();
    assert_eq!(donor.bytes, GB);
    assert_eq!(donor.tier, Tier::Device);
    assert_eq!(donor.leases, 3);
    assert_eq!(donor.models, ["a", "b", "t"]);
    assert_eq!(donor.donor_for, ["a", "b"]);
    assert!(rep.entry(&base("base.gguf")).unwrap().donor_for.is_empty());
    assert_eq!(rep.tier(Tier::Device).used, 2 * GB + 20 * MB);
    assert_eq!(rep.accounted_bytes, 2 * GB + 20 * MB);
    drop((a, b, t));
    assert_eq!(
        res.report()
            .await
            .unwrap()
            .entry(&base("tune.gguf"))
            .unwrap()
            .leases,
        0
    );
    assert_sound(&res).await;
}

#[tokio::test(start_paused = true)]
async fn an_idle_donor_is_evicted_like_a_base_least_recently_used_first() {
    let engine = FakeEngine::new(true);
    // The device holds a base, a donor and a lens; no host tier to demote to.
    let res = start(world(), 2 * GB + 10 * MB, 0, &engine);
    drop(res.acquire("a").await.unwrap());
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The group's own base is used again since; the donor is now the oldest.
    drop(res.acquire("p").await.unwrap());
    tokio::time::sleep(Duration::from_secs(1)).await;
    engine.clear_log();
    drop(res.acquire("o").await.unwrap());
    assert_eq!(
        engine.log(),
        ["free base tune.gguf", "load base other.gguf -> device"],
        "the donor goes first, and alone: no more than needed"
    );
    let rep = res.report().await.unwrap();
    assert_eq!(rep.entry(&base("tune.gguf")).unwrap().tier, Tier::Disk);
    assert_eq!(rep.entry(&base("base.gguf")).unwrap().tier, Tier::Device);
    assert_sound(&res).await;

    // With room on the host, an idle donor is demoted there and comes back without a load.
    let engine = FakeEngine::new(true);
    let res = start(world(), 2 * GB + 10 * MB, GB, &engine);
    drop(res.acquire("a").await.unwrap());
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(res.acquire("p").await.unwrap());
    drop(res.acquire("o").await.unwrap());
    let rep = res.report().await.unwrap();
    assert_eq!(rep.entry(&base("tune.gguf")).unwrap().tier, Tier::Host);
    drop(res.acquire("a").await.unwrap());
    assert_eq!(engine.loads_of(&base("tune.gguf")), 1);
    assert_sound(&res).await;
}

#[tokio::test(start_paused = true)]
async fn a_leased_donor_stays_while_the_job_runs_and_the_job_reads_it() {
    let engine = FakeEngine::new(true);
    engine.set_load_latency(Duration::from_millis(800));
    engine.set_compute_costs(Duration::from_millis(100), Duration::from_millis(100));
    let reg = world();
    let res = start(reg.clone(), 2 * GB + 10 * MB, 0, &engine);
    let sched = Scheduler::start(
        QueueConfig::default(),
        reg,
        res.clone(),
        Arc::new(engine.clone()),
    );
    // 5 layers × 40 words at 100 ms a row: more than 20 s of work.
    let (_, mut rx) = sched
        .submit(&client("x"), analyze("a", 40), None)
        .await
        .unwrap();
    let mut seen = Vec::new();
    while !seen.iter().any(|e| matches!(e, RequestEvent::Rows { .. })) {
        seen.push(rx.recv().await.unwrap());
    }
    let loading: Vec<String> = seen
        .iter()
        .filter_map(|e| match e {
            RequestEvent::Loading { resource, .. } => Some(resource.clone()),
            _ => None,
        })
        .collect();
    assert!(
        loading.contains(&"base tune.gguf".to_string()),
        "the donor's load is reported like the base's: {loading:?}"
    );
    let rep = res.report().await.unwrap();
    assert_eq!(rep.entry(&base("tune.gguf")).unwrap().leases, 1);

    // Neither an unload nor another group's need for room moves it.
    let unload = res.unload("g", Tier::Disk).await.unwrap();
    assert!(
        unload
            .kept
            .contains(&(base("tune.gguf"), "in use".to_string())),
        "{unload:?}"
    );
    let other = tokio::spawn({
        let res = res.clone();
        async move { res.acquire("o").await }
    });
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!other.is_finished(), "the other base waits for the lease");
    assert_eq!(
        res.report()
            .await
            .unwrap()
            .entry(&base("tune.gguf"))
            .unwrap()
            .tier,
        Tier::Device
    );

    seen.extend(drain(&mut rx).await);
    assert_grammar(&seen);
    assert!(
        matches!(seen.last(), Some(RequestEvent::Completed { .. })),
        "{:?}",
        seen.iter().map(kind).collect::<Vec<_>>()
    );
    assert!(
        engine
            .log()
            .contains(&"analyze base.gguf [a] donors [tune.gguf]".to_string()),
        "{:?}",
        engine.log()
    );
    drop(other.await.unwrap().unwrap());
    assert_eq!(
        res.report()
            .await
            .unwrap()
            .entry(&base("other.gguf"))
            .unwrap()
            .tier,
        Tier::Device,
        "once the lease ended, the other base found room"
    );

    // A generation with the model comes from its donor too.
    let (_, mut rx) = sched
        .submit(&client("x"), generate("b", 3), None)
        .await
        .unwrap();
    let evs = drain(&mut rx).await;
    assert!(
        matches!(evs.last(), Some(RequestEvent::Completed { .. })),
        "{:?}",
        evs.iter().map(kind).collect::<Vec<_>>()
    );
    assert!(
        engine
            .log()
            .contains(&"generate base.gguf donors [tune.gguf]".to_string()),
        "{:?}",
        engine.log()
    );
    assert_sound(&res).await;
}

#[tokio::test(start_paused = true)]
async fn a_budget_too_small_for_base_and_donor_refuses_at_once_naming_both() {
    let engine = FakeEngine::new(true);
    let res = start(world(), GB + GB / 2, GB, &engine);
    match res.acquire("a").await {
        Err(e @ ResidencyError::DoesNotFit { .. }) => {
            let m = e.to_string();
            for part in [
                "base.gguf",
                "tune.gguf, the donor of a, b",
                "lens-a",
                "2.0 GiB",
                "1.5 GiB",
            ] {
                assert!(m.contains(part), "{part}: {m}");
            }
        }
        other => panic!("expected DoesNotFit, got {other:?}"),
    }
    assert!(engine.log().is_empty(), "nothing was loaded for it");
    // The model without a donor still fits.
    drop(res.acquire("p").await.unwrap());
    assert_sound(&res).await;
}

#[tokio::test(start_paused = true)]
async fn a_reload_without_the_donor_frees_it_when_its_last_lease_ends() {
    let engine = FakeEngine::new(true);
    let res = start(world(), 3 * GB, GB, &engine);
    let a = res.acquire("a").await.unwrap();
    // The next configuration has no model naming the donor and no group on it.
    let next = registry(&[G(
        "g",
        "base.gguf",
        GB,
        &[
            ("a", Some(("lens-a", 10 * MB))),
            ("b", Some(("lens-b", 10 * MB))),
            ("p", None),
        ],
    )]);
    let diff = world().diff(&next);
    assert!(diff.dropped.contains(&base("tune.gguf")), "{diff:?}");
    assert_eq!(diff.changed_models, ["a", "b"]);
    res.reload(
        next,
        Budgets {
            device: 3 * GB,
            host: GB,
        },
    )
    .await
    .unwrap();
    assert!(
        !engine.log().contains(&"free base tune.gguf".to_string()),
        "still leased"
    );
    drop(a);
    let rep = res.report().await.unwrap();
    assert!(
        rep.entry(&base("tune.gguf")).is_none(),
        "gone from the books"
    );
    assert!(engine.log().contains(&"free base tune.gguf".to_string()));
    assert_eq!(rep.tier(Tier::Device).used, GB + 10 * MB);
    assert!(rep.entry(&lens("lens-a")).is_some());
    assert_sound(&res).await;
}
