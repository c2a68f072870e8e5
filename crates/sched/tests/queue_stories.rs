//! Stories of the request queue and its worker against the fake engine, under paused time:
//! who runs when, how many base swaps, positions, cancellation, deadlines, chaining, and the
//! order of every request's events.

mod common;

use std::time::Duration;

use common::queue::{analyze, assert_grammar, client, drain, generate, kind, two_groups, world};
use lensd_core::layers::LayerSpec;
use lensd_core::work::{AnalyzeWork, Prompt, Remaining, RequestEvent, RequestId, Text, Work};
use lensd_sched::fake::FakeEngine;
use lensd_sched::queue::{PolicyKind, QueueConfig, SubmitError};

/// Bases of the analyses in the order they ran, from the fake engine's log.
fn base_swaps(engine: &FakeEngine) -> usize {
    let bases: Vec<String> = engine
        .log()
        .iter()
        .filter(|l| l.starts_with("analyze ") || l.starts_with("generate "))
        .map(|l| l.split_whitespace().nth(1).unwrap().to_string())
        .collect();
    bases.windows(2).filter(|w| w[0] != w[1]).count()
}

async fn alternating_swaps(policy: PolicyKind) -> usize {
    let w = world(
        two_groups(),
        QueueConfig {
            policy,
            ..QueueConfig::default()
        },
    );
    let mut rxs = Vec::new();
    for i in 0..8 {
        let (x, y) = (["a1", "a2"][i % 2], ["b1", "b2"][i % 2]);
        rxs.push(
            w.scheduler
                .submit(&client("x"), analyze(x, 6), None)
                .await
                .unwrap()
                .1,
        );
        rxs.push(
            w.scheduler
                .submit(&client("y"), analyze(y, 6), None)
                .await
                .unwrap()
                .1,
        );
    }
    for rx in &mut rxs {
        let evs = drain(rx).await;
        assert_grammar(&evs);
        assert!(
            matches!(evs.last(), Some(RequestEvent::Completed { .. })),
            "{evs:?}"
        );
    }
    assert_eq!(w.engine.max_concurrent_jobs(), 1);
    base_swaps(&w.engine)
}

#[tokio::test(start_paused = true)]
async fn two_clients_alternating_between_groups_swap_bases_far_less_than_fifo() {
    let fifo = alternating_swaps(PolicyKind::Fifo).await;
    let ours = alternating_swaps(PolicyKind::GroupAware).await;
    eprintln!("base swaps for 16 alternating requests: FIFO {fifo}, group-aware {ours}");
    assert_eq!(fifo, 15, "FIFO swaps on every request");
    assert!(ours <= 4, "group-aware swapped {ours} times");
}

#[tokio::test(start_paused = true)]
async fn nobody_waits_beyond_the_aging_bound() {
    let aging = Duration::from_secs(5);
    let w = world(
        two_groups(),
        QueueConfig {
            aging,
            per_client: 64,
            initial_switch_cost: Duration::from_secs(3600),
            ..QueueConfig::default()
        },
    );
    // x keeps the device busy on base one with a stream of requests; y wants base two, whose
    // switch looks prohibitively expensive.
    let feeder = {
        let s = w.scheduler.clone();
        tokio::spawn(async move {
            let mut rxs = Vec::new();
            for _ in 0..40 {
                rxs.push(
                    s.submit(&client("x"), analyze("a1", 20), None)
                        .await
                        .unwrap()
                        .1,
                );
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            for mut rx in rxs {
                drain(&mut rx).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t = tokio::time::Instant::now();
    let (_, mut rx) = w
        .scheduler
        .submit(&client("y"), analyze("b1", 5), None)
        .await
        .unwrap();
    let mut started = None;
    while let Some(ev) = rx.recv().await {
        if matches!(ev, RequestEvent::Started) {
            started = Some(t.elapsed());
        }
        if ev.is_terminal() {
            break;
        }
    }
    let waited = started.expect("y started");
    eprintln!("y waited {waited:?} (aging bound {aging:?})");
    // At most the bound plus the one request running when the bound passed (20 words, ~0.2 s).
    assert!(
        waited >= aging - Duration::from_millis(1) && waited <= aging + Duration::from_millis(400),
        "{waited:?}"
    );
    feeder.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn positions_are_exact_and_count_down_to_the_start() {
    let w = world(two_groups(), QueueConfig::default());
    // A long job holds the worker while four clients queue on the same base.
    let (_, mut busy) = w
        .scheduler
        .submit(&client("busy"), analyze("a1", 50), None)
        .await
        .unwrap();
    while !matches!(busy.recv().await, Some(RequestEvent::Started)) {}
    let mut rxs = Vec::new();
    for c in ["p", "q", "r", "s"] {
        rxs.push(
            w.scheduler
                .submit(&client(c), analyze("a2", 3), None)
                .await
                .unwrap()
                .1,
        );
    }
    let mut starts: Vec<(usize, Vec<usize>)> = Vec::new();
    for (k, rx) in rxs.iter_mut().enumerate() {
        let evs = drain(rx).await;
        assert_grammar(&evs);
        let positions: Vec<usize> = evs
            .iter()
            .filter_map(|e| match e {
                RequestEvent::Queued { position, .. } | RequestEvent::Position { position } => {
                    Some(*position)
                }
                _ => None,
            })
            .collect();
        starts.push((k, positions));
    }
    for (k, positions) in &starts {
        // Queued at its place, then one step at a time down to 0 before it starts.
        let want: Vec<usize> = (0..=*k).rev().collect();
        assert_eq!(positions, &want, "request {k}");
    }
    drain(&mut busy).await;
}

#[tokio::test(start_paused = true)]
async fn cancelling_queued_work_is_immediate_and_running_work_stops_at_the_next_sub_batch() {
    let w = world(two_groups(), QueueConfig::default());
    w.engine.set_chunk_positions(2);
    let (run_id, mut running) = w
        .scheduler
        .submit(&client("x"), analyze("a1", 40), None)
        .await
        .unwrap();
    let (q_id, mut queued) = w
        .scheduler
        .submit(&client("y"), analyze("a1", 4), None)
        .await
        .unwrap();
    let (_, mut behind) = w
        .scheduler
        .submit(&client("z"), analyze("a1", 4), None)
        .await
        .unwrap();
    // Wait for the first rows of the running request.
    let mut seen = Vec::new();
    while let Some(ev) = running.recv().await {
        let rows = matches!(ev, RequestEvent::Rows { .. });
        seen.push(ev);
        if rows {
            break;
        }
    }
    assert!(w.scheduler.cancel(q_id).await);
    let evs = drain(&mut queued).await;
    assert_eq!(
        evs.last(),
        Some(&RequestEvent::Cancelled {
            partial: false,
            reason: "cancelled by the client".into()
        })
    );
    assert!(w.scheduler.cancel(run_id).await);
    let t = tokio::time::Instant::now();
    let rest = drain(&mut running).await;
    assert!(
        t.elapsed() <= Duration::from_millis(25),
        "stops within one sub-batch: {:?}",
        t.elapsed()
    );
    let rows_after = rest
        .iter()
        .filter(|e| matches!(e, RequestEvent::Rows { .. }))
        .count();
    assert!(
        rows_after <= 1,
        "at most the sub-batch in flight: {rows_after}"
    );
    assert_eq!(
        rest.last(),
        Some(&RequestEvent::Cancelled {
            partial: true,
            reason: "cancelled by the client".into()
        })
    );
    seen.extend(rest);
    assert_grammar(&seen);
    // The request behind moved up and still completes.
    let evs = drain(&mut behind).await;
    assert!(
        evs.contains(&RequestEvent::Position { position: 0 }),
        "{evs:?}"
    );
    assert!(matches!(evs.last(), Some(RequestEvent::Completed { .. })));
    assert!(!w.scheduler.cancel(run_id).await, "already over");
    assert!(!w.scheduler.cancel(9999).await);
    let rep = w.residency.report().await.unwrap();
    assert!(rep.entries.iter().all(|e| e.leases == 0), "no lease held");
}

#[tokio::test(start_paused = true)]
async fn a_deadline_too_far_to_count_is_no_deadline_and_a_cancellation_says_its_reason() {
    // issue 17 item 7: `now + deadline` wrapped round in u64 and the request ended at once
    // with `deadline_exceeded`.
    let w = world(two_groups(), QueueConfig::default());
    let (id, mut far) = w
        .scheduler
        .submit(
            &client("x"),
            analyze("a1", 4),
            Some(Duration::from_millis(u64::MAX)),
        )
        .await
        .unwrap();
    let evs = drain(&mut far).await;
    assert!(
        matches!(evs.last(), Some(RequestEvent::Completed { .. })),
        "{evs:?}"
    );
    assert!(
        !w.scheduler.cancel_because(id, "over").await,
        "already over"
    );
    // issue 17 item 10: a cancellation by the server names the server's reason.
    let (_, mut running) = w
        .scheduler
        .submit(&client("x"), analyze("a1", 40), Some(Duration::MAX))
        .await
        .unwrap();
    let (queued_id, mut queued) = w
        .scheduler
        .submit(&client("y"), analyze("a1", 4), None)
        .await
        .unwrap();
    while !matches!(running.recv().await, Some(RequestEvent::Rows { .. })) {}
    let reason = "the server is shutting down";
    assert!(w.scheduler.cancel_because(queued_id, reason).await);
    let last = drain(&mut queued).await.pop();
    assert_eq!(
        last,
        Some(RequestEvent::Cancelled {
            partial: false,
            reason: reason.into()
        })
    );
    assert!(w.scheduler.cancel_client(&client("x")).await == 1);
    let last = drain(&mut running).await.pop();
    assert!(
        matches!(&last, Some(RequestEvent::Cancelled { partial: true, .. })),
        "{last:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_past_its_compute_limit_stops_naming_the_limit() {
    // issue 17 item 11: only the optional deadline limited compute time. 200 words × 5 layers
    // × 2 ms = 2 s of work against 0.5 s of compute; the wait before it does not count.
    let w = world(two_groups(), QueueConfig::default());
    let (_, mut first) = w
        .scheduler
        .submit(&client("x"), analyze("a1", 200), None)
        .await
        .unwrap();
    let (_, mut limited) = w
        .scheduler
        .submit_limited(
            &client("y"),
            analyze("a1", 200),
            None,
            Some(Duration::from_millis(500)),
        )
        .await
        .unwrap();
    let evs = drain(&mut first).await;
    assert!(
        matches!(evs.last(), Some(RequestEvent::Completed { .. })),
        "{evs:?}"
    );
    let started = tokio::time::Instant::now();
    let evs = drain(&mut limited).await;
    let ran = started.elapsed();
    assert!(
        ran >= Duration::from_millis(500) && ran < Duration::from_millis(800),
        "ran for {ran:?}"
    );
    match evs.last() {
        Some(RequestEvent::Error {
            error_type,
            message,
        }) => {
            assert_eq!(error_type, "compute_limit");
            assert!(message.contains("0.5 s of compute"), "{message}");
            assert!(message.contains("partial"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_grammar(&evs);
}

#[tokio::test(start_paused = true)]
async fn a_disconnect_cancels_all_of_a_clients_work_and_leaves_no_lease() {
    let w = world(two_groups(), QueueConfig::default());
    let gone = client("gone");
    let (_, mut r1) = w
        .scheduler
        .submit(&gone, analyze("a1", 40), None)
        .await
        .unwrap();
    let (_, mut r2) = w
        .scheduler
        .submit(&gone, analyze("b1", 4), None)
        .await
        .unwrap();
    let (_, mut other) = w
        .scheduler
        .submit(&client("stays"), analyze("a2", 4), None)
        .await
        .unwrap();
    while !matches!(r1.recv().await, Some(RequestEvent::Rows { .. })) {}
    assert_eq!(w.scheduler.cancel_client(&gone).await, 2);
    assert!(matches!(
        drain(&mut r1).await.last(),
        Some(RequestEvent::Cancelled { partial: true, .. })
    ));
    assert!(matches!(
        drain(&mut r2).await.last(),
        Some(RequestEvent::Cancelled { partial: false, .. })
    ));
    assert!(matches!(
        drain(&mut other).await.last(),
        Some(RequestEvent::Completed { .. })
    ));
    let rep = w.residency.report().await.unwrap();
    assert!(
        rep.entries.iter().all(|e| e.leases == 0),
        "no lease held: {:?}",
        rep.entries
    );
}

#[tokio::test(start_paused = true)]
async fn limits_deadlines_and_bad_requests_end_with_clear_errors() {
    let w = world(
        two_groups(),
        QueueConfig {
            capacity: 4,
            per_client: 2,
            ..QueueConfig::default()
        },
    );
    let (_, mut long) = w
        .scheduler
        .submit(&client("x"), analyze("a1", 100), None)
        .await
        .unwrap();
    while !matches!(long.recv().await, Some(RequestEvent::Started)) {}
    let (_, mut late) = w
        .scheduler
        .submit(
            &client("x"),
            analyze("a1", 3),
            Some(Duration::from_millis(300)),
        )
        .await
        .unwrap();
    let _keep = w
        .scheduler
        .submit(&client("x"), analyze("a1", 3), None)
        .await
        .unwrap();
    let e = w
        .scheduler
        .submit(&client("x"), analyze("a1", 3), None)
        .await
        .unwrap_err();
    assert_eq!(
        (e.error_type(), e.clone()),
        ("client_limit", SubmitError::ClientLimit { limit: 2 })
    );
    let _y = w
        .scheduler
        .submit(&client("y"), analyze("a1", 3), None)
        .await
        .unwrap();
    let _z = w
        .scheduler
        .submit(&client("z"), analyze("a1", 3), None)
        .await
        .unwrap();
    let e = w
        .scheduler
        .submit(&client("v"), analyze("a1", 3), None)
        .await
        .unwrap_err();
    assert_eq!(e, SubmitError::QueueFull { limit: 4 });
    assert!(e.to_string().contains("4 requests"), "{e}");
    let evs = drain(&mut late).await;
    assert!(
        matches!(evs.last(), Some(RequestEvent::Error { error_type, .. }) if error_type == "deadline_exceeded"),
        "{evs:?}"
    );

    let e = w
        .scheduler
        .submit(&client("v"), analyze("nope", 3), None)
        .await
        .unwrap_err();
    assert_eq!(e.error_type(), "unknown_model");
    let mixed = Work::Analyze(AnalyzeWork {
        models: vec!["a1".into(), "b1".into()],
        text: Text::Given(Prompt::plain("x")),
        layers: LayerSpec::All,
        top_k: 1,
        explain: Default::default(),
    });
    let e = w
        .scheduler
        .submit(&client("v"), mixed, None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("different bases"), "{e}");
    drain(&mut long).await;

    // A running request past its deadline stops with a deadline error, its rows partial.
    // 200 words × 5 layers × 2 ms = 2 s of work against a 1 s deadline.
    let (_, mut slow) = w
        .scheduler
        .submit(
            &client("w"),
            analyze("a1", 200),
            Some(Duration::from_secs(1)),
        )
        .await
        .unwrap();
    let evs = drain(&mut slow).await;
    assert_grammar(&evs);
    let last = evs.last().unwrap();
    assert!(
        matches!(last, RequestEvent::Error { error_type, message } if error_type == "deadline_exceeded" && message.contains("partial")),
        "{}",
        kind(last)
    );
    let (_, mut fails) = w
        .scheduler
        .submit(&client("w"), analyze("a1", 0).clone(), None)
        .await
        .unwrap();
    assert!(
        matches!(drain(&mut fails).await.last(), Some(RequestEvent::Error { error_type, .. }) if error_type == "invalid_request")
    );
}

#[tokio::test(start_paused = true)]
async fn an_analysis_of_a_generation_waits_for_its_real_completion() {
    let w = world(two_groups(), QueueConfig::default());
    let x = client("x");
    let (gen_id, mut gen) = w
        .scheduler
        .submit(&x, generate("a1", 10), None)
        .await
        .unwrap();
    let chained = |request: RequestId| {
        Work::Analyze(AnalyzeWork {
            models: vec!["a1".into()],
            text: Text::Generated { request },
            layers: LayerSpec::All,
            top_k: 1,
            explain: Default::default(),
        })
    };
    let (_, mut an) = w.scheduler.submit(&x, chained(gen_id), None).await.unwrap();
    // Someone else's request submitted later still may run before the chained one.
    let gen_events = drain(&mut gen).await;
    assert_grammar(&gen_events);
    assert_eq!(
        gen_events
            .iter()
            .filter(|e| matches!(e, RequestEvent::Token { .. }))
            .count(),
        10
    );
    let an_events = drain(&mut an).await;
    assert_grammar(&an_events);
    let Some(RequestEvent::Completed {
        output: lensd_core::work::JobOutput::Analysis { analyses },
    }) = an_events.last()
    else {
        panic!("{an_events:?}")
    };
    assert_eq!(
        analyses[0].tokens.len(),
        11,
        "the prompt and the ten generated words"
    );
    let log = w.engine.log();
    let g = log.iter().position(|l| l.starts_with("generate")).unwrap();
    let a = log.iter().position(|l| l.starts_with("analyze")).unwrap();
    assert!(g < a);

    // Another client cannot read x's generation; a cancelled generation fails its dependents.
    let e = w
        .scheduler
        .submit(&client("y"), chained(gen_id), None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("another client"), "{e}");
    let (_, mut blocker) = w
        .scheduler
        .submit(&client("z"), analyze("a1", 60), None)
        .await
        .unwrap();
    let (gen2, mut g2) = w
        .scheduler
        .submit(&x, generate("a1", 10), None)
        .await
        .unwrap();
    let (_, mut an2) = w.scheduler.submit(&x, chained(gen2), None).await.unwrap();
    assert!(w.scheduler.cancel(gen2).await);
    assert!(matches!(
        drain(&mut g2).await.last(),
        Some(RequestEvent::Cancelled { .. })
    ));
    assert!(
        matches!(drain(&mut an2).await.last(), Some(RequestEvent::Error { error_type, .. }) if error_type == "dependency_failed")
    );
    drain(&mut blocker).await;
}

#[tokio::test(start_paused = true)]
async fn switching_models_sets_a_default_and_disturbs_nobody() {
    let w = world(two_groups(), QueueConfig::default());
    let (_, mut other) = w
        .scheduler
        .submit(&client("other"), analyze("a1", 80), None)
        .await
        .unwrap();
    while !matches!(other.recv().await, Some(RequestEvent::Started)) {}
    let t = tokio::time::Instant::now();
    let s = w
        .scheduler
        .switch_model(&client("x"), "b2", true, false)
        .await
        .unwrap();
    assert_eq!(t.elapsed(), Duration::ZERO, "a switch returns at once");
    assert_eq!(
        (s.group.as_str(), s.preloading),
        ("two", false),
        "users may not preload by default"
    );
    let s = w
        .scheduler
        .switch_model(&client("admin"), "b1", true, true)
        .await
        .unwrap();
    assert!(s.preloading);
    assert!(matches!(
        w.scheduler
            .switch_model(&client("x"), "zz", false, false)
            .await,
        Err(SubmitError::UnknownModel(_))
    ));
    // x's next request without a model uses b2.
    let no_model = Work::Analyze(AnalyzeWork {
        models: vec![],
        text: Text::Given(Prompt::plain("a b")),
        layers: LayerSpec::All,
        top_k: 1,
        explain: Default::default(),
    });
    let (_, mut rx) = w
        .scheduler
        .submit(&client("x"), no_model.clone(), None)
        .await
        .unwrap();
    let evs = drain(&mut rx).await;
    let Some(RequestEvent::Completed {
        output: lensd_core::work::JobOutput::Analysis { analyses },
    }) = evs.last()
    else {
        panic!("{evs:?}")
    };
    assert_eq!(analyses[0].lens, "b2");
    let other_events = drain(&mut other).await;
    assert!(
        matches!(other_events.last(), Some(RequestEvent::Completed { .. })),
        "the other client's work was not disturbed"
    );
    let e = w
        .scheduler
        .submit(&client("nobody"), no_model, None)
        .await
        .unwrap_err();
    assert_eq!(e.error_type(), "invalid_request");
}

#[tokio::test(start_paused = true)]
async fn the_time_left_is_the_engines_estimate_when_it_has_one() {
    let etas = |r: Remaining| async move {
        let w = world(two_groups(), QueueConfig::default());
        w.engine.set_remaining(r);
        let (_, mut rx) = w
            .scheduler
            .submit(&client("x"), analyze("a1", 12), None)
            .await
            .unwrap();
        let events = drain(&mut rx).await;
        assert_grammar(&events);
        events
            .iter()
            .filter_map(|e| match e {
                RequestEvent::Progress { eta_ms, .. } => Some(*eta_ms),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    // By default the rate so far (measured in real time, so only its shape is certain here).
    let at_rate = etas(Remaining::AtRate).await;
    assert_eq!(at_rate.len(), 3);
    assert!(at_rate.iter().all(Option::is_some));
    assert_eq!(at_rate.last(), Some(&Some(0)));
    assert_eq!(etas(Remaining::Ms(1234)).await, [Some(1234); 3]);
    assert_eq!(etas(Remaining::Unknown).await, [None; 3]);
}
