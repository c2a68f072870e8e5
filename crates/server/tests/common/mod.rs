//! A server over the fake engine: a configuration with public, hidden and backend-only
//! models on file paths that must never reach a client, two API keys, and helpers to call it.

#![allow(dead_code)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use lensd_core::config::{self, BaseFacts, Budgets, LensFacts, Resolved};
use lensd_core::registry::Registry;
use lensd_sched::fake::FakeEngine;
use lensd_sched::queue::{QueueConfig, Scheduler};
use lensd_sched::residency::{Options, Residency};
use lensd_server::auth::{Keys, Role};
use lensd_server::limits::Limits;
use lensd_server::store::Store;
use lensd_server::views::Snapshot;
use lensd_server::{AppState, Parts, Shared};
use tower::ServiceExt;

pub const USER: &str = "user-key-0123456789abcdef";
pub const ADMIN: &str = "admin-key-0123456789abcdef";
/// Every configured path starts with this; no response may contain it.
pub const SECRET: &str = "/srv/secret";

pub const CONFIG: &str = r#"{
  "model_groups": [
    {"group_id": "public", "group_name": "Public", "base_model_path": "/srv/secret/models/base.gguf",
     "models": [
       {"id": "pub-logit", "name": "Logit lens", "lens": "logit", "layer": 4},
       {"id": "pub-tuned", "name": "Tuned lens", "lens": "tuned", "lens_checkpoint_path": "/srv/secret/lenses/tuned"}
     ]},
    {"group_id": "backend", "group_name": "Backend", "base_model_path": "/srv/secret/models/base.gguf", "backend_only": true,
     "models": [{"id": "be", "name": "Backend lens", "lens": "logit"}]},
    {"group_id": "hidden", "group_name": "Hidden", "base_model_path": "/srv/secret/models/other.gguf", "visible": false,
     "models": [{"id": "hid", "name": "Hidden lens", "lens": "logit"}]}
  ],
  "settings": {"device_budget": "3GiB", "host_budget": "1GiB"}
}"#;

pub fn snapshot() -> Snapshot {
    let (cfg, report) = config::parse(CONFIG);
    let config = cfg.unwrap_or_else(|| panic!("{report}"));
    let mut resolved = Resolved::default();
    for (group, base) in [("public", "base"), ("backend", "base"), ("hidden", "other")] {
        resolved.bases.insert(
            group.into(),
            BaseFacts {
                content_id: format!("id-{base}"),
                n_layers: 4,
                d_model: 8,
                resident_bytes: 1 << 30,
                shape: Default::default(),
            },
        );
    }
    resolved.lenses.insert(
        "pub-tuned".into(),
        LensFacts {
            content_id: "id-tuned".into(),
            d_model: Some(8),
            n_layers: Some(4),
            layer: None,
            bytes: 8 << 20,
        },
    );
    let registry = Registry::build(&config, &resolved);
    Snapshot { config, registry }
}

pub struct TestServer {
    pub state: Shared,
    pub engine: FakeEngine,
}

pub fn server_with(limits: Limits, queue: QueueConfig, engine: FakeEngine) -> TestServer {
    server_full(limits, queue, engine, None)
}

/// A server whose web page is read from `web_dir` (the built-in copy when `None`).
pub fn server_full(
    limits: Limits,
    queue: QueueConfig,
    engine: FakeEngine,
    web_dir: Option<std::path::PathBuf>,
) -> TestServer {
    let store = Arc::new(Store::open_in_memory().unwrap());
    server_parts(limits, queue, engine, web_dir, store)
}

/// A server that keeps its results in `store`.
pub fn server_with_store(store: Arc<Store>) -> TestServer {
    let engine = FakeEngine::new(true);
    server_parts(
        Limits::default(),
        QueueConfig::default(),
        engine,
        None,
        store,
    )
}

fn server_parts(
    limits: Limits,
    queue: QueueConfig,
    engine: FakeEngine,
    web_dir: Option<std::path::PathBuf>,
    store: Arc<Store>,
) -> TestServer {
    let snap = snapshot();
    let residency = Residency::start(
        snap.registry.clone(),
        Budgets {
            device: 3 << 30,
            host: 1 << 30,
        },
        Arc::new(engine.clone()),
        Options::default(),
    );
    let scheduler = Scheduler::start(
        queue,
        snap.registry.clone(),
        residency.clone(),
        Arc::new(engine.clone()),
    );
    let mut keys = Keys::default();
    keys.insert(USER, Role::User, "alice");
    keys.insert(ADMIN, Role::Admin, "root");
    let state = AppState::new(Parts {
        scheduler,
        residency,
        snapshot: snap,
        control: None,
        keys,
        limits,
        store: Some(store),
        log: None,
        allowed_origins: vec!["http://localhost:8000".into()],
        web_dir,
    });
    TestServer { state, engine }
}

pub fn server() -> TestServer {
    let engine = FakeEngine::new(true);
    server_with(Limits::default(), QueueConfig::default(), engine)
}

/// One request to the router: status and the JSON body (or the text as a JSON string).
pub async fn call(
    state: &Shared,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&str>,
) -> (StatusCode, serde_json::Value) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let req = match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    }
    .unwrap();
    let resp = lensd_server::api::router(state.clone())
        .oneshot(req)
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes).to_string();
    assert!(
        !text.contains(SECRET),
        "{path} leaked a server path: {text}"
    );
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, json)
}

/// The request's server-sent events, read until the stream ends after the terminal event.
pub async fn events(state: &Shared, id: &str, key: Option<&str>) -> Vec<serde_json::Value> {
    let (status, body) = call(
        state,
        "GET",
        &format!("/api/v2/requests/{id}/events"),
        key,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let text = body.as_str().expect("an event stream").to_string();
    text.split("\n\n")
        .filter_map(|block| block.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}
