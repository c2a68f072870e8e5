//! The model-groups service on the tiny test checkpoint: start-up preloads place groups in
//! their tiers, and SIGHUP reloads the configuration, keeping what did not change.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use lensd::service::Service;
use lensd_core::registry::ResourceKey;
use lensd_core::residency::Tier;

fn testdata(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata")
        .join(rel)
}

fn write(path: &Path, with_tuned: bool) {
    let mut models = vec![serde_json::json!({"id": "logit", "name": "Logit", "lens": "logit"})];
    if with_tuned {
        models.push(serde_json::json!({"id": "tuned", "name": "Tuned", "lens": "tuned", "lens_checkpoint_path": testdata("tiny-llama/tuned-lens")}));
    }
    let doc = serde_json::json!({
        "model_groups": [
            {"group_id": "tiny", "group_name": "Tiny", "base_model_path": testdata("tiny-llama"), "models": models},
            {"group_id": "tiny-stored", "group_name": "Tiny, stored dtype", "base_model_path": testdata("tiny-llama"),
             "compute_dtype": "stored", "models": [{"id": "stored-logit", "name": "Logit", "lens": "logit"}]}
        ],
        "settings": {"default_group": "tiny", "preload_groups": ["tiny-stored"], "device_budget": "64MiB", "host_budget": "64MiB"}
    });
    std::fs::write(path, serde_json::to_string(&doc).unwrap()).unwrap();
}

fn tier(
    rep: &lensd_sched::residency::MemoryReport,
    pred: impl Fn(&lensd_sched::residency::EntryReport) -> bool,
) -> Tier {
    rep.entries.iter().find(|e| pred(e)).expect("entry").tier
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_preloads_then_sighup_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("model_groups.json");
    write(&cfg, true);
    let service = Arc::new(Service::start(&cfg).await.unwrap());
    let preloads = service.preloads.lock().unwrap().take().expect("started");
    let outcomes = preloads.await.unwrap();
    assert_eq!(
        outcomes,
        [
            ("tiny-stored".to_string(), Ok(())),
            ("tiny".to_string(), Ok(()))
        ],
        "preload_groups go to the host, the default group to the device"
    );
    let rep = service.residency.report().await.unwrap();
    let registry = service.registry().await;
    let (tiny, stored) = (
        registry.models["logit"].base.clone(),
        registry.models["stored-logit"].base.clone(),
    );
    assert_ne!(tiny, stored, "one file in two compute dtypes is two bases");
    assert_eq!(
        tier(&rep, |e| e.resource == ResourceKey::Base(tiny.clone())),
        Tier::Device
    );
    assert_eq!(
        tier(&rep, |e| e.resource == ResourceKey::Base(stored.clone())),
        Tier::Host
    );
    assert_eq!(
        tier(&rep, |e| matches!(e.resource, ResourceKey::Lens(_))),
        Tier::Device
    );

    let mut reloads = service.reload_on_sighup().unwrap();
    write(&cfg, false);
    // SAFETY: the handler is installed, so the signal is delivered to it, not fatal.
    unsafe { libc::raise(libc::SIGHUP) };
    let diff = reloads.recv().await.unwrap().unwrap();
    assert_eq!(diff.removed_models, ["tuned"]);
    assert_eq!(diff.dropped.len(), 1, "the lens is freed; both bases stay");
    let rep = service.residency.report().await.unwrap();
    assert_eq!(
        tier(&rep, |e| e.resource == ResourceKey::Base(tiny.clone())),
        Tier::Device,
        "not reloaded"
    );
    assert!(rep
        .entries
        .iter()
        .all(|e| !matches!(e.resource, ResourceKey::Lens(_))));

    std::fs::write(&cfg, "{ \"model_groups\": [ ").unwrap();
    unsafe { libc::raise(libc::SIGHUP) };
    let err = reloads.recv().await.unwrap().unwrap_err();
    assert!(
        err.contains("model_groups.json has errors") && err.contains("invalid JSON"),
        "{err}"
    );
    assert_eq!(
        service.registry().await.models.len(),
        2,
        "a broken file changes nothing"
    );
}
