//! The scheduler with the real demo model: two clients analyse at the same time with lenses of
//! two groups that name one base; both finish and neither sees a base switch.

mod common;

use lensd::service::Service;
use lensd_core::layers::LayerSpec;
use lensd_core::work::{AnalyzeWork, ClientId, JobOutput, Prompt, RequestEvent, Text, Work};
use tokio::sync::mpsc::UnboundedReceiver;

fn analyze(model: &str, text: &str) -> Work {
    Work::Analyze(AnalyzeWork {
        models: vec![model.into()],
        text: Text::Given(Prompt::plain(text)),
        layers: "26-30".parse::<LayerSpec>().unwrap(),
        top_k: 3,
        explain: Default::default(),
    })
}

async fn drain(rx: &mut UnboundedReceiver<RequestEvent>) -> Vec<RequestEvent> {
    let mut out = Vec::new();
    while let Some(ev) = rx.recv().await {
        let end = ev.is_terminal();
        out.push(ev);
        if end {
            break;
        }
    }
    out
}

fn base_loads(events: &[RequestEvent]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, RequestEvent::Loading { resource, bytes_done, .. } if resource.starts_with("base") && *bytes_done == 0))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_on_two_groups_of_one_base_never_see_a_switch() {
    let model = common::demo_model();
    let dir = tempfile::tempdir().unwrap();
    let lens = common::fit(dir.path(), "lens", "1e-3");
    let cfg = dir.path().join("model_groups.json");
    let doc = serde_json::json!({
        "model_groups": [
            {"group_id": "plain", "group_name": "SmolLM2", "base_model_path": model,
             "models": [{"id": "tuned", "name": "Tuned", "lens": "tuned", "lens_checkpoint_path": lens}]},
            {"group_id": "audit", "group_name": "SmolLM2, audit", "base_model_path": model,
             "models": [{"id": "audit-logit", "name": "Logit", "lens": "logit"}]}
        ],
        "settings": {"device_budget": "2GiB", "host_budget": "1GiB"}
    });
    std::fs::write(&cfg, doc.to_string()).unwrap();
    let service = Service::start(&cfg).await.unwrap();
    let s = &service.scheduler;
    let (_, mut a) = s
        .submit(
            &ClientId("alice".into()),
            analyze("tuned", "The capital of France is"),
            None,
        )
        .await
        .unwrap();
    let (_, mut b) = s
        .submit(
            &ClientId("bob".into()),
            analyze("audit-logit", "Water boils at one hundred degrees"),
            None,
        )
        .await
        .unwrap();
    let (ea, eb) = tokio::join!(drain(&mut a), drain(&mut b));
    for (who, evs) in [("alice", &ea), ("bob", &eb)] {
        assert!(
            matches!(evs.last(), Some(RequestEvent::Completed { .. })),
            "{who} ended with {:?}",
            evs.last()
                .map(|e| serde_json::to_value(e).unwrap()["type"].clone())
        );
    }
    assert_eq!(
        base_loads(&ea) + base_loads(&eb),
        1,
        "the shared base is loaded once, by whoever ran first"
    );
    let Some(RequestEvent::Completed {
        output: JobOutput::Analysis { analyses },
    }) = ea.last()
    else {
        unreachable!()
    };
    assert_eq!(analyses[0].lens, "tuned");
    let last = analyses[0].layers.last().unwrap();
    assert_eq!(last.layer, 30);
    assert_eq!(last.positions.last().unwrap().top[0].token, " Paris");
    let rows: usize = ea
        .iter()
        .filter(|e| matches!(e, RequestEvent::Rows { .. }))
        .count();
    assert!(rows >= 1, "rows are streamed");

    // One request naming two models of the base: one forward pass, both lenses; at the last
    // layer every lens is the model itself, so their cells there agree.
    let both = Work::Analyze(AnalyzeWork {
        models: vec!["tuned".into(), "audit-logit".into()],
        text: Text::Given(Prompt::plain("The capital of France is")),
        layers: "29-30".parse::<LayerSpec>().unwrap(),
        top_k: 3,
        explain: Default::default(),
    });
    let (_, mut rx) = s
        .submit(&ClientId("dave".into()), both, None)
        .await
        .unwrap();
    let evs = drain(&mut rx).await;
    let Some(RequestEvent::Completed {
        output: JobOutput::Analysis { analyses },
    }) = evs.last()
    else {
        panic!("not completed")
    };
    assert_eq!(
        analyses.iter().map(|a| a.lens.as_str()).collect::<Vec<_>>(),
        ["tuned", "audit-logit"]
    );
    assert_eq!(
        analyses[0].layers[1], analyses[1].layers[1],
        "layer 30 is the model's own output for both"
    );
    assert_ne!(
        analyses[0].layers[0], analyses[1].layers[0],
        "layer 29 differs between the tuned and the logit lens"
    );

    // A long analysis cancelled after its first rows ends as cancelled with partial rows.
    let long = "The lighthouse keeper wrote down the wind and the swell every night. ".repeat(30);
    let work = Work::Analyze(AnalyzeWork {
        models: vec!["tuned".into()],
        text: Text::Given(Prompt::plain(long)),
        layers: LayerSpec::All,
        top_k: 1,
        explain: Default::default(),
    });
    let (id, mut rx) = s
        .submit(&ClientId("carol".into()), work, None)
        .await
        .unwrap();
    while !matches!(rx.recv().await, Some(RequestEvent::Rows { .. })) {}
    assert!(s.cancel(id).await);
    let rest = drain(&mut rx).await;
    assert!(matches!(
        rest.last(),
        Some(RequestEvent::Cancelled { partial: true, .. })
    ));
    let rep = service.residency.report().await.unwrap();
    assert!(
        rep.entries.iter().all(|e| e.leases == 0),
        "no lease outlives its request"
    );
}
