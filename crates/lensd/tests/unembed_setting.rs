//! `lensd serve --unembed bf16` reaches the analyses the scheduler runs: after
//! `LocalEngine::set_unembed`, a job's unembedding runs in bf16 where the CPU has AVX-512 BF16
//! (its statistics move, within the bf16 bounds) and stays f32 elsewhere (identical results).

mod common;

use std::path::PathBuf;

use lensd::runtime::LocalEngine;
use lensd::service::Service;
use lensd_core::analysis::Analysis;
use lensd_core::layers::LayerSpec;
use lensd_core::work::{AnalyzeWork, Prompt, Text, Work};
use lensd_engine::lens::analyze::Unembed;
use lensd_sched::queue::QueueConfig;

fn config(dir: &std::path::Path) -> PathBuf {
    let base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/tiny-llama");
    let doc = serde_json::json!({
        "model_groups": [{"group_id": "a", "group_name": "A", "base_model_path": base,
            "models": [{"id": "a-logit", "name": "Logit", "lens": "logit"}]}]
    });
    let path = dir.join("model_groups.json");
    std::fs::write(&path, doc.to_string()).unwrap();
    path
}

async fn run(service: &Service) -> Analysis {
    let work = Work::Analyze(AnalyzeWork {
        models: vec!["a-logit".into()],
        text: Text::Given(Prompt::plain("one two three four five six seven eight")),
        layers: "all".parse::<LayerSpec>().unwrap(),
        top_k: 3,
        explain: Default::default(),
    });
    common::analysis_of(service, work, "a-logit").await
}

fn entropies(a: &Analysis) -> Vec<f32> {
    a.layers
        .iter()
        .flat_map(|l| l.positions.iter().map(|c| c.entropy))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bf16_unembedding_set_on_the_engine_reaches_the_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let engine = LocalEngine::new();
    let service = Service::start_on(&config(dir.path()), QueueConfig::default(), engine.clone())
        .await
        .unwrap();
    let f32 = entropies(&run(&service).await);
    let now = engine.set_unembed(Unembed::Bf16);
    assert_eq!(now, Unembed::Bf16.effective());
    let bf16 = entropies(&run(&service).await);
    assert_eq!(f32.len(), bf16.len());
    let moved = f32.iter().zip(&bf16).filter(|(a, b)| a != b).count();
    if now == Unembed::Bf16 {
        assert!(moved > 0, "no statistic moved with the unembedding in bf16");
        for (a, b) in f32.iter().zip(&bf16) {
            assert!((a - b).abs() < 0.12, "entropy {a} in f32, {b} in bf16");
        }
    } else {
        eprintln!("this CPU lacks AVX-512 BF16: both analyses unembed in f32");
        assert_eq!(moved, 0);
    }
    assert_eq!(engine.set_unembed(Unembed::F32), Unembed::F32);
    assert_eq!(entropies(&run(&service).await), f32);
}
