//! REST bodies through the real router: any bytes POSTed to the endpoints that read a body
//! (analyze, generate, switch) get a structured answer (accepted, or an error with its
//! `error_type` and message), never a panic or a 500.
#![no_main]

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::Request;
use lensd_core::config::{self, BaseFacts, Budgets, Resolved};
use lensd_core::registry::Registry;
use lensd_sched::fake::FakeEngine;
use lensd_sched::queue::{QueueConfig, Scheduler};
use lensd_sched::residency::{Options, Residency};
use lensd_server::auth::Keys;
use lensd_server::limits::Limits;
use lensd_server::views::Snapshot;
use lensd_server::{AppState, Parts, Shared};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

const CONFIG: &str = r#"{"model_groups": [
  {"group_id": "g", "group_name": "G", "base_model_path": "/nonexistent/base.gguf",
   "models": [{"id": "m", "name": "M", "lens": "logit"}]}]}"#;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

/// A server over the scheduler's fake engine, as the server's own tests build it.
fn state() -> &'static Shared {
    static STATE: OnceLock<Shared> = OnceLock::new();
    STATE.get_or_init(|| {
        runtime().block_on(async {
            let (config, report) = config::parse(CONFIG);
            let config = config.unwrap_or_else(|| panic!("{report}"));
            let mut resolved = Resolved::default();
            resolved.bases.insert(
                "g".into(),
                BaseFacts {
                    content_id: "id-base".into(),
                    n_layers: 4,
                    d_model: 8,
                    resident_bytes: 1 << 20,
                    shape: Default::default(),
                },
            );
            let registry = Registry::build(&config, &resolved);
            let engine = FakeEngine::new(true);
            let budgets = Budgets {
                device: 1 << 30,
                host: 1 << 30,
            };
            let residency = Residency::start(
                registry.clone(),
                budgets,
                Arc::new(engine.clone()),
                Options::default(),
            );
            let scheduler = Scheduler::start(
                QueueConfig::default(),
                registry.clone(),
                residency.clone(),
                Arc::new(engine),
            );
            AppState::new(Parts {
                scheduler,
                residency,
                snapshot: Snapshot { config, registry },
                control: None,
                keys: Keys::default(),
                limits: Limits::default(),
                store: None,
                log: None,
                allowed_origins: Vec::new(),
                web_dir: None,
            })
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let path = ["/api/v2/analyze", "/api/v2/generate", "/api/v1/models/switch"][which as usize % 3];
    let req = Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_vec()))
        .expect("a request");
    let state = state().clone();
    runtime().block_on(async move {
        let resp = lensd_server::api::router(state.clone())
            .oneshot(req)
            .await
            .expect("infallible");
        assert_ne!(resp.status().as_u16(), 500, "{path}");
        // Cancel whatever was accepted, so the queue never fills across inputs.
        for t in state.requests.active() {
            state.scheduler.cancel(t.internal).await;
        }
    });
});
