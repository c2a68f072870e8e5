//! What users see when the disk under a base misbehaves, through the real service on the tiny
//! checkpoint: an I/O error part-way through a load fails the requests that needed it with an
//! error naming the file, while other requests go on and a later request loads again; a slow
//! disk shows the load's bytes as they arrive.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::testdata;
use lensd::service::Service;
use lensd_core::layers::LayerSpec;
use lensd_core::work::{AnalyzeWork, ClientId, Prompt, RequestEvent, Text, Work};
use lensd_engine::weights::faulty::{Fault, FaultyFiles};
use tokio::sync::mpsc::UnboundedReceiver;

/// Two copies of the tiny checkpoint, differing in one weight, as two groups `a` and `b`; `b`
/// is the default group and is on the device once the service has started.
async fn two_copies(dir: &Path) -> (Service, PathBuf) {
    let mut bases = Vec::new();
    for name in ["a", "b"] {
        let folder = dir.join(name);
        std::fs::create_dir(&folder).unwrap();
        for f in ["config.json", "model.safetensors", "tokenizer.json"] {
            std::fs::copy(testdata(&format!("tiny-llama/{f}")), folder.join(f)).unwrap();
        }
        bases.push(folder);
    }
    // Another last weight byte makes `a` other content, so another base, than `b`.
    let shard = bases[0].join("model.safetensors");
    let mut bytes = std::fs::read(&shard).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    std::fs::write(&shard, bytes).unwrap();
    let group = |id: &str, base: &Path| {
        serde_json::json!({"group_id": id, "group_name": id, "base_model_path": base,
        "models": [{"id": format!("{id}-logit"), "name": "Logit", "lens": "logit"}]})
    };
    let doc = serde_json::json!({
        "model_groups": [group("a", &bases[0]), group("b", &bases[1])],
        "settings": {"default_group": "b", "device_budget": "64MiB", "host_budget": "64MiB"}
    });
    let cfg = dir.join("model_groups.json");
    std::fs::write(&cfg, serde_json::to_string(&doc).unwrap()).unwrap();
    let service = Service::start(&cfg).await.unwrap();
    let preloads = service.preloads.lock().unwrap().take().expect("started");
    for (group, outcome) in preloads.await.unwrap() {
        assert_eq!(outcome, Ok(()), "preload of {group}");
    }
    (service, shard)
}

async fn submit(service: &Service, client: &str, model: &str) -> UnboundedReceiver<RequestEvent> {
    let work = Work::Analyze(AnalyzeWork {
        models: vec![model.into()],
        text: Text::Given(Prompt::plain("one two three")),
        layers: LayerSpec::All,
        top_k: 1,
        explain: Default::default(),
    });
    service
        .scheduler
        .submit(&ClientId(client.into()), work, None)
        .await
        .unwrap()
        .1
}

/// Every event of a request up to its terminal one, which must be the only one.
async fn events(rx: &mut UnboundedReceiver<RequestEvent>) -> Vec<RequestEvent> {
    let mut out = Vec::new();
    while let Some(ev) = rx.recv().await {
        let end = ev.is_terminal();
        out.push(ev);
        if end {
            break;
        }
    }
    assert_eq!(out.iter().filter(|e| e.is_terminal()).count(), 1, "{out:?}");
    out
}

fn completed(evs: &[RequestEvent]) -> bool {
    matches!(evs.last(), Some(RequestEvent::Completed { .. }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_error_mid_load_fails_the_request_that_needed_it_and_a_later_one_loads() {
    let dir = tempfile::tempdir().unwrap();
    let (service, shard) = two_copies(dir.path()).await;
    let faults = FaultyFiles::install();
    faults.set(&shard, Fault::ErrorFrom(4096));

    let mut failing = submit(&service, "x", "a-logit").await;
    let mut other = submit(&service, "y", "b-logit").await;
    let evs = events(&mut failing).await;
    match evs.last() {
        Some(RequestEvent::Error {
            error_type,
            message,
        }) => {
            assert_eq!(error_type, "unavailable");
            let file = shard.display().to_string();
            assert!(
                message.contains(&file) && message.contains("Input/output error"),
                "{message}"
            );
        }
        other => panic!("expected an error, got {other:?}"),
    }
    assert!(
        completed(&events(&mut other).await),
        "the other group's request is served"
    );

    faults.clear(&shard);
    let evs = events(&mut submit(&service, "x", "a-logit").await).await;
    assert!(
        completed(&evs),
        "the disk reads again, and so does the base: {evs:?}"
    );
    let rep = service.residency.report().await.unwrap();
    assert!(
        rep.entries.iter().all(|e| e.leases == 0),
        "{:?}",
        rep.entries
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_disk_shows_the_load_as_its_bytes_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let (service, shard) = two_copies(dir.path()).await;
    FaultyFiles::install().set(
        &shard,
        Fault::Slow {
            bytes: 64 << 10,
            delay: Duration::from_millis(5),
        },
    );
    let evs = events(&mut submit(&service, "x", "a-logit").await).await;
    let loaded: Vec<(u64, u64)> = evs
        .iter()
        .filter_map(|e| match e {
            RequestEvent::Loading {
                bytes_done,
                bytes_total,
                ..
            } => Some((*bytes_done, *bytes_total)),
            _ => None,
        })
        .collect();
    let file_reads = std::fs::metadata(&shard).unwrap().len().div_ceil(64 << 10);
    assert!(
        loaded.len() as u64 >= file_reads,
        "a report per read of the file ({file_reads}): {loaded:?}"
    );
    assert!(loaded.windows(2).all(|w| w[0].0 <= w[1].0), "{loaded:?}");
    let (done, total) = *loaded.last().unwrap();
    assert_eq!(done, total, "the last report is the whole");
    assert!(completed(&evs), "{evs:?}");
}
