//! The real engine with two devices, through the residency manager and the scheduler: groups
//! placed by their pins, each device's copies kept apart, demotion to the host and promotion
//! back by copies rather than by reading the disk again. The two devices are both this
//! machine's CPU (`LocalEngine::on(&[cpu, cpu])`), so every step runs with real weights here;
//! on GPUs the same steps move bytes between memories.

mod common;

use std::path::PathBuf;

use lensd::runtime::LocalEngine;
use lensd::service::Service;
use lensd_core::analysis::Analysis;
use lensd_core::layers::LayerSpec;
use lensd_core::registry::ResourceKey;
use lensd_core::residency::{DeviceId, Place, Tier};
use lensd_core::work::{AnalyzeWork, Prompt, Text, Work};
use lensd_engine::DeviceSpec;
use lensd_sched::queue::QueueConfig;

fn testdata(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata")
        .join(rel)
}

fn analyze(model: &str) -> Work {
    Work::Analyze(AnalyzeWork {
        models: vec![model.into()],
        text: Text::Given(Prompt::plain("one two three four five six")),
        layers: "0-2".parse::<LayerSpec>().unwrap(),
        top_k: 3,
        explain: Default::default(),
    })
}

async fn run(service: &Service, model: &str) -> Analysis {
    common::analysis_of(service, analyze(model), model).await
}

/// Groups `a` (f32, pinned to `pin` when given) and `b` (stored dtype) on the tiny llama.
fn config(dir: &std::path::Path, pin: Option<u16>) -> PathBuf {
    let base = testdata("tiny-llama");
    let mut a = serde_json::json!({"group_id": "a", "group_name": "A", "base_model_path": base,
        "models": [{"id": "a-logit", "name": "Logit", "lens": "logit"}]});
    if let Some(d) = pin {
        a["devices"] = serde_json::json!([d]);
    }
    let doc = serde_json::json!({
        "model_groups": [
            a,
            {"group_id": "b", "group_name": "B", "base_model_path": base, "compute_dtype": "stored",
             "models": [{"id": "b-logit", "name": "Logit", "lens": "logit"}]}
        ],
        "settings": {"device_budget": "64MiB", "host_budget": "64MiB"}
    });
    let path = dir.join(format!("model_groups-{pin:?}.json"));
    std::fs::write(&path, doc.to_string()).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_run_on_their_devices_and_come_back_from_the_host_without_a_disk_read() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), Some(1));
    let engine = LocalEngine::on(&[DeviceSpec::Cpu, DeviceSpec::Cpu]).unwrap();
    let service = Service::start_on(&cfg, QueueConfig::default(), engine.clone())
        .await
        .unwrap();
    let a = run(&service, "a-logit").await;
    let b = run(&service, "b-logit").await;

    let registry = service.registry().await;
    let base_a = registry.models["a-logit"].base.clone();
    let rep = service.residency.report().await.unwrap();
    assert!(!rep.shared_memory, "two devices are two memories");
    let copies: Vec<_> = rep
        .entries
        .iter()
        .filter(|e| e.resource == ResourceKey::Base(base_a.clone()))
        .map(|e| (e.tier, e.device))
        .collect();
    assert_eq!(
        copies,
        [(Tier::Device, Some(DeviceId(1)))],
        "group a is pinned to device 1"
    );
    assert!(engine
        .base_at(&base_a, Place::Device(DeviceId(1)))
        .is_some());
    assert!(engine
        .base_at(&base_a, Place::Device(DeviceId(0)))
        .is_none());
    assert!(
        rep.invariant_violations.is_empty(),
        "{:?}",
        rep.invariant_violations
    );

    // The same numbers as on a one-device engine.
    let single = Service::start(&config(dir.path(), None)).await.unwrap();
    assert_eq!(run(&single, "a-logit").await, a);
    assert_eq!(run(&single, "b-logit").await, b);

    // Demoted to the host: the device's copy goes, a host copy stays.
    let loads = engine.base_loads();
    let mut changes = service.residency.changes();
    service.residency.unload("a", Tier::Host).await.unwrap();
    // The copy to the host runs in the background; wait until nothing is moving.
    while changes.recv().await.unwrap().in_flight > 0 {}
    assert!(engine.base_at(&base_a, Place::Host).is_some());
    assert!(engine
        .base_at(&base_a, Place::Device(DeviceId(1)))
        .is_none());
    // Asked for again, it is copied back from the host, not read from the disk.
    assert_eq!(run(&service, "a-logit").await, a);
    assert!(engine
        .base_at(&base_a, Place::Device(DeviceId(1)))
        .is_some());
    assert_eq!(
        engine.base_loads(),
        loads,
        "no base was read from the disk again"
    );
    let rep = service.residency.report().await.unwrap();
    assert!(
        rep.invariant_violations.is_empty(),
        "{:?}",
        rep.invariant_violations
    );
}

#[tokio::test]
async fn a_pin_to_a_device_the_engine_lacks_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), Some(1));
    let err = Service::start(&cfg).await.err().expect("one device only");
    let text = format!("{err:#}");
    assert!(
        text.contains("model_groups[0].devices[0]") && text.contains("device 1 does not exist"),
        "{text}"
    );
}
