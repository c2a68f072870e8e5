//! The original's REST routes: `/analyze`, `/status/{id}`, `/health`, `/reset`,
//! `/api/gpu_stats`, the JSON `/metrics` (for clients that ask for JSON), and its unified
//! `/api/v2` routes that do not collide with lensd's. Errors carry the original's `detail`
//! beside lensd's `error_type` and `message`.

use std::sync::atomic::Ordering;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use lensd_core::residency::Tier;
use lensd_sched::residency::{MemoryReport, PreloadEvent};
use serde::Deserialize;
use serde_json::{json, Value};
use time::format_description::well_known::Iso8601;

use super::jobs::{Kind, Record};
use super::listing::{self, DEVICE};
use super::messages::{AnalyzeMessage, AnalyzeOptions, TextInput};
use super::ws::{self as session, Conn, Ctx};
use crate::api::{Body, Who};
use crate::auth::Role;
use crate::error::ApiError;
use crate::state::Shared;
use crate::tracker::Status;
use crate::views;

/// An error as the original's routes answered it: `detail`, with lensd's fields beside.
pub struct Detail(pub ApiError);

impl From<ApiError> for Detail {
    fn from(e: ApiError) -> Self {
        Detail(e)
    }
}

impl IntoResponse for Detail {
    fn into_response(self) -> Response {
        let body = self.0.body();
        let v = json!({"detail": body.message, "error_type": body.error_type,
            "message": body.message});
        (self.0.status(), Json(v)).into_response()
    }
}

pub type Answer = Result<Json<Value>, Detail>;

/// The context a REST request runs its work in: the caller, with the frames of its work folded
/// into a record that [`Job::keep`] makes pollable.
pub(crate) fn job_ctx(state: &Shared, who: &Who, kind: Kind) -> Job {
    let (out, record) = state.original_jobs.start(&who.owner, kind);
    let ctx = Ctx {
        state: state.clone(),
        who: who.clone(),
        out,
    };
    Job { ctx, record }
}

pub(crate) struct Job {
    pub ctx: Ctx,
    record: std::sync::Arc<std::sync::Mutex<Record>>,
}

impl Job {
    /// Makes the record pollable under the request's id; returns the queued answer's place.
    pub fn keep(self, id: &str) -> (usize, usize) {
        self.ctx.state.original_jobs.keep(id, self.record);
        place(&self.ctx.state, id)
    }
}

/// Where a queued request stands: its 1-based place and the queue's length.
pub(crate) fn place(state: &Shared, id: &str) -> (usize, usize) {
    let mut queued: Vec<(usize, String)> = state
        .requests
        .active()
        .iter()
        .filter_map(|t| match t.status() {
            Status::Queued { position } => Some((position, t.id.clone())),
            _ => None,
        })
        .collect();
    queued.sort();
    let at = queued
        .iter()
        .position(|(_, q)| q == id)
        .map_or(0, |p| p + 1);
    (at, queued.len())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalyzeBody {
    pub text: String,
    #[serde(default)]
    pub options: Option<AnalyzeOptions>,
    #[serde(default)]
    pub model_id: Option<String>,
}

/// `POST /analyze`: queues an analysis; poll `/status/{id}`.
pub async fn analyze(State(state): State<Shared>, who: Who, Body(b): Body<AnalyzeBody>) -> Answer {
    if b.text.trim().is_empty() {
        return Err(ApiError::BadRequest("Text cannot be empty or just whitespace".into()).into());
    }
    let job = job_ctx(&state, &who, Kind::Analysis);
    let a = AnalyzeMessage {
        text: TextInput::Text(b.text),
        options: b.options,
        model_id: b.model_id,
        client_request_id: None,
    };
    let id = session::analyze(&job.ctx, &mut Conn::default(), &a, None).await?;
    let (position, size) = job.keep(&id);
    Ok(Json(
        json!({"request_id": id, "status": "queued", "queue_position": position,
        "queue_size": size}),
    ))
}

fn iso(t: Option<time::OffsetDateTime>) -> Value {
    t.and_then(|t| t.format(&Iso8601::DEFAULT).ok())
        .map_or(Value::Null, Value::from)
}

/// A job's record if `who` may read it.
pub(crate) fn record(state: &Shared, who: &Who, id: &str) -> Result<Record, ApiError> {
    state
        .original_jobs
        .get(id)
        .filter(|r| who.caller.role == Role::Admin || r.owner == who.owner)
        .ok_or_else(|| ApiError::NotFound("Request not found".into()))
}

/// `GET /status/{id}`: a request made over `/analyze` or the slim API.
pub async fn status(State(state): State<Shared>, who: Who, Path(id): Path<String>) -> Answer {
    let r = record(&state, &who, &id)?;
    Ok(Json(json!({
        "request_id": id,
        "status": r.status,
        "created_at": iso(r.created_at),
        "started_at": iso(r.started_at),
        "completed_at": iso(r.completed_at),
        "processing_time": r.processing_time(),
        "result": r.result,
        "error": r.error,
    })))
}

/// `GET /health`.
pub async fn health(State(state): State<Shared>) -> Json<Value> {
    let report = state.report().await;
    let loaded = report
        .as_ref()
        .is_some_and(|r| r.entries.iter().any(|e| e.tier == Tier::Device));
    let (_, size) = place(&state, "");
    Json(json!({
        "status": if state.is_closing() { "degraded" } else { "healthy" },
        "model_loaded": loaded,
        "gpu_available": false,
        "gpu_name": Value::Null,
        "device": DEVICE,
        "queue_size": size,
    }))
}

/// True when the client asks for JSON rather than Prometheus's text.
pub fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json"))
}

/// The original's JSON `/metrics`.
pub fn metrics_json(state: &Shared) -> Value {
    let active = state.requests.active();
    let (_, size) = place(state, "");
    let c = &state.requests.counts;
    let completed = c.completed.load(Ordering::Relaxed);
    let compute_ms = state.requests.completed_compute_ms.load(Ordering::Relaxed);
    json!({
        "total_requests": c.accepted.load(Ordering::Relaxed),
        "completed_requests": completed,
        "failed_requests": c.failed.load(Ordering::Relaxed),
        "cancelled_requests": c.cancelled.load(Ordering::Relaxed),
        "average_processing_time": (compute_ms as f64 / 1e3) / completed.max(1) as f64,
        "queue_size": size,
        "processing_requests": active.iter().filter(|t| matches!(t.status(), Status::Running { .. })).count(),
        "active_websocket_connections": state.connections.load(Ordering::Relaxed),
    })
}

/// `POST /reset`: cancels the caller's queued and running work and forgets its current model
/// and polled results. With an admin key it also cancels everyone's queued work (running work
/// finishes) and moves every base and lens that is not in use out of memory.
pub async fn reset(State(state): State<Shared>, who: Who) -> Answer {
    let admin = who.caller.role == Role::Admin;
    let mut cancelled = 0;
    for t in state.requests.active() {
        let queued = matches!(t.status(), Status::Queued { .. });
        let mine_or_queued = t.owner == who.owner || (admin && queued);
        if mine_or_queued && state.scheduler.cancel_because(t.internal, "reset").await {
            cancelled += 1;
        }
    }
    state
        .defaults
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|client, _| client != &who.client);
    if admin {
        state.original_jobs.clear(|_| false);
        let snap = state.snapshot();
        for g in &snap.config.groups {
            let _ = state.residency.unload(&g.id, Tier::Disk).await;
        }
        state.residency_changed("reset");
    } else {
        state.original_jobs.clear(|owner| owner != who.owner);
    }
    let message = if admin {
        format!("Model cleared from memory; {cancelled} requests cancelled. Models load again with the next request.")
    } else {
        format!("{cancelled} of your requests cancelled; your current model was reset. Only an admin key also clears models and others' queued work.")
    };
    Ok(Json(
        json!({"status": "reset", "message": message, "cancelled": cancelled}),
    ))
}

/// `GET /api/gpu_stats`.
pub async fn gpu_stats(State(state): State<Shared>) -> Json<Value> {
    Json(listing::device_stats(&state).await)
}

/// `GET /api/v2/models`: every model the caller may use, as the original's unified list.
pub async fn v2_models(State(state): State<Shared>, who: Who) -> Json<Value> {
    let snap = state.snapshot();
    let report = state.report().await;
    let mut out = Vec::new();
    for g in &snap.config.groups {
        for m in g
            .models
            .iter()
            .filter(|m| views::may_use(who.caller.role, g, m))
        {
            let v = views::model_view(&snap, report.as_ref(), g, m, state.bytes_per_ms());
            let r = &v.residency;
            let locations: Vec<Value> = [("base", &r.base_tier)]
                .into_iter()
                .filter(|(_, t)| t.as_str() != "disk")
                .map(|(_, t)| json!({"device_id": if t == "device" { DEVICE } else { "host" }, "group_id": g.id, "status": if t == "device" { "loaded" } else { "cached" }}))
                .collect();
            out.push(json!({
                "id": m.id,
                "name": m.name,
                "description": m.description,
                "group_id": g.id,
                "layer": m.layer,
                "dataset": "unknown",
                "architecture": listing::base_model(g),
                "memory_estimate": (r.base_bytes + r.lens_bytes) as f64 / (1u64 << 30) as f64,
                "locations": locations,
            }));
        }
    }
    Json(Value::Array(out))
}

/// `GET /api/v2/system/state`.
pub async fn v2_system_state(State(state): State<Shared>, who: Who) -> Json<Value> {
    let snap = state.snapshot();
    let report = state.report().await;
    let list =
        listing::groups_list(&state, &who, state.default_model(&who.client).as_deref()).await;
    let groups = list["groups"].as_array().cloned().unwrap_or_default();
    let loaded: Vec<Value> = groups
        .iter()
        .flat_map(|g| g["models"].as_array().cloned().unwrap_or_default())
        .filter(|m| m["is_loaded"] == true)
        .map(|m| m["id"].clone())
        .collect();
    let summary: Vec<Value> = groups
        .iter()
        .map(|g| {
            let id = g["group_id"].as_str().unwrap_or("");
            let bytes = snap
                .registry
                .groups
                .get(id)
                .and_then(|ms| ms.first())
                .and_then(|m| snap.registry.models.get(m))
                .and_then(|r| snap.registry.bases.get(&r.base))
                .map_or(0, |b| b.bytes);
            json!({"id": id, "name": g["group_name"], "base_model": g["base_model"],
                "models": g["models"].as_array().map(|ms| ms.iter().map(|m| m["id"].clone()).collect::<Vec<_>>()),
                "memory_estimate_gb": bytes as f64 / (1u64 << 30) as f64})
        })
        .collect();
    let current_group = list["current_group"].clone();
    let memory = list["memory_info"].clone();
    let devices: Vec<Value> = match report.as_ref() {
        Some(r) if r.devices.len() > 1 => r
            .devices
            .iter()
            .map(|d| {
                json!({"device_id": d.id.0, "device": d.name, "current_group": current_group,
                "loaded_models": models_on(r, d.id.0), "is_switching": false,
                "failed": d.failed,
                "memory": {"used_gb": d.used as f64 / (1u64 << 30) as f64,
                    "budget_gb": d.budget as f64 / (1u64 << 30) as f64}})
            })
            .collect(),
        _ => vec![
            json!({"device_id": 0, "device": DEVICE, "current_group": current_group,
            "loaded_models": loaded, "is_switching": false, "memory": memory}),
        ],
    };
    Json(json!({
        "num_devices": devices.len(),
        "devices": devices,
        "groups": summary,
        "cpu_cached_groups": list["model_status"]["cache_info"]["groups_loaded"],
        "shared_memory": report.is_some_and(|r| r.shared_memory),
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadModel {
    pub model_id: String,
    #[serde(default)]
    pub device_id: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadGroup {
    pub group_id: String,
    #[serde(default)]
    pub device_id: Option<Value>,
}

/// lensd has one compute device; the original's clients name it `0`, `cuda:0` or `cpu`.
/// The models whose base, donor or lens has a ready copy on device `id`.
fn models_on(report: &MemoryReport, id: u16) -> Vec<String> {
    let mut models: Vec<String> = report
        .entries
        .iter()
        .filter(|e| e.device.is_some_and(|d| d.0 == id))
        .flat_map(|e| e.models.iter().cloned())
        .collect();
    models.sort();
    models.dedup();
    models
}

/// The device a request names (its number, as a number or text, or its name: `cpu`,
/// `cuda:1`), among those of `report`; `None` when it names none. lensd places groups by its
/// own rules, so a named device is checked, not obeyed.
fn check_device(
    report: Option<&MemoryReport>,
    d: &Option<Value>,
) -> Result<Option<usize>, ApiError> {
    let v = match d {
        None | Some(Value::Null) => return Ok(None),
        Some(v) => v,
    };
    let devices = report.map(|r| r.devices.as_slice()).unwrap_or_default();
    let named = |i: usize, name: &str| {
        let short = name.split_whitespace().next().unwrap_or(name);
        v == &json!(i) || v == &json!(i.to_string()) || v == &json!(short)
    };
    // A server on the CPU also answers to the original's usual `cuda:0`.
    let cpu_alias = devices.len() == 1 && devices[0].name == DEVICE && v == &json!("cuda:0");
    match devices.iter().position(|d| named(d.id.0 as usize, &d.name)) {
        Some(i) => Ok(Some(i)),
        None if cpu_alias => Ok(Some(0)),
        None => {
            let names: Vec<String> = devices
                .iter()
                .map(|d| format!("`{}` ({})", d.name, d.id.0))
                .collect();
            Err(ApiError::BadRequest(format!(
                "Unknown device: {v}; this server computes on {}",
                names.join(", ")
            )))
        }
    }
}

/// Brings a group to the device and waits until it is there.
async fn load(state: &Shared, group: &str) -> Result<(), ApiError> {
    let mut events = state
        .residency
        .preload(group, Tier::Device)
        .await
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    while let Some(ev) = events.recv().await {
        match ev {
            PreloadEvent::Done { .. } => return Ok(()),
            PreloadEvent::Failed { error, .. } => {
                return Err(ApiError::BadRequest(format!(
                    "Failed to load group: {}",
                    views::scrub(&state.snapshot(), &error)
                )))
            }
            _ => {}
        }
    }
    Err(ApiError::Unavailable(
        "the residency manager stopped".into(),
    ))
}

/// `POST /api/v2/models/load` (admin): loads the model's group and waits.
pub async fn v2_load_model(
    State(state): State<Shared>,
    who: Who,
    Body(b): Body<LoadModel>,
) -> Answer {
    who.caller.require(Role::Admin, "loading a model")?;
    check_device(state.report().await.as_ref(), &b.device_id)?;
    let snap = state.snapshot();
    let (g, _) = views::find(&snap, who.caller.role, &b.model_id)
        .ok_or_else(|| ApiError::BadRequest(format!("Unknown model ID: {}", b.model_id)))?;
    let group = g.id.clone();
    load(&state, &group).await?;
    Ok(Json(
        json!({"status": "success", "model_id": b.model_id, "device": DEVICE,
        "device_id": DEVICE, "group_id": group,
        "message": format!("Model {} loaded on {DEVICE}", b.model_id)}),
    ))
}

/// `POST /api/v2/groups/load` (admin): loads a group and waits.
pub async fn v2_load_group(
    State(state): State<Shared>,
    who: Who,
    Body(b): Body<LoadGroup>,
) -> Answer {
    who.caller.require(Role::Admin, "loading a group")?;
    check_device(state.report().await.as_ref(), &b.device_id)?;
    if state.snapshot().config.group(&b.group_id).is_none() {
        return Err(ApiError::BadRequest(format!("Unknown group ID: {}", b.group_id)).into());
    }
    load(&state, &b.group_id).await?;
    Ok(Json(json!({"group_id": b.group_id, "device_id": DEVICE,
        "message": format!("Group {} is ready on {DEVICE}", b.group_id)})))
}

/// `GET /api/v2/devices/{id}/memory`.
pub async fn v2_device_memory(
    State(state): State<Shared>,
    who: Who,
    Path(id): Path<String>,
) -> Answer {
    let report = state.report().await;
    let asked = Some(id.parse::<u64>().map_or(json!(id), |n| json!(n)));
    let index = check_device(report.as_ref(), &asked)?.unwrap_or(0);
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let device = report.as_ref().and_then(|r| r.devices.get(index));
    let (used, budget) = device.map_or((0, 0), |d| (d.used, d.budget));
    let list = listing::groups_list(&state, &who, None).await;
    let loaded: Vec<Value> = list["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["models"].as_array().cloned().unwrap_or_default())
        .filter(|m| m["is_loaded"] == true)
        .map(|m| m["id"].clone())
        .collect();
    Ok(Json(
        json!({"device_id": id, "total_gb": gib(budget), "free_gb": gib(budget.saturating_sub(used)),
        "allocated_gb": gib(used), "reserved_gb": gib(used), "models_loaded": loaded}),
    ))
}

/// `GET /api/v2/current`: the caller's current model and what the device holds.
pub async fn v2_current(State(state): State<Shared>, who: Who) -> Json<Value> {
    let current = state.default_model(&who.client);
    let list = listing::groups_list(&state, &who, current.as_deref()).await;
    Json(
        json!({"current_model": current, "current_group": list["current_group"],
        "devices": {DEVICE: {"current_group": list["current_group"],
            "groups_loaded": list["model_status"]["cache_info"]["groups_loaded"]}}}),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchBody {
    pub model_id: String,
    #[serde(default)]
    pub device_id: Option<Value>,
}

/// `POST /api/v2/switch`: sets the caller's current model (nobody else's).
pub async fn v2_switch(State(state): State<Shared>, who: Who, Body(b): Body<SwitchBody>) -> Answer {
    check_device(state.report().await.as_ref(), &b.device_id)?;
    let r = crate::api::v1::switch_to(&state, &who, &b.model_id, false).await?;
    Ok(Json(
        json!({"status": "success", "model_id": r.model_id, "group_id": r.group_id,
        "device": DEVICE, "device_id": DEVICE, "fast_switch": r.fast_switch,
        "message": format!("Model {} selected", r.model_id)}),
    ))
}

/// The JSON `/metrics` answer, or `None` when Prometheus's text is wanted.
pub fn metrics(state: &Shared, headers: &HeaderMap) -> Option<Response> {
    wants_json(headers).then(|| (StatusCode::OK, Json(metrics_json(state))).into_response())
}

#[cfg(test)]
mod tests {
    use lensd_core::residency::DeviceId;
    use lensd_sched::residency::DeviceUsage;

    use super::*;

    fn report(names: &[&str]) -> MemoryReport {
        MemoryReport {
            shared_memory: names == ["cpu"],
            tiers: Vec::new(),
            devices: names
                .iter()
                .enumerate()
                .map(|(i, n)| DeviceUsage {
                    id: DeviceId(i as u16),
                    name: n.to_string(),
                    used: 0,
                    budget: 0,
                    driver_used: None,
                    driver_total: None,
                    failed: false,
                    failure: None,
                })
                .collect(),
            entries: Vec::new(),
            accounted_bytes: 0,
            process_resident_bytes: None,
            process_heap: None,
            process_mapped_weight_bytes: None,
            invariant_violations: Vec::new(),
        }
    }

    #[test]
    fn a_named_device_is_found_by_number_or_name() {
        let gpus = report(&["cuda:0 (NVIDIA H100)", "cuda:1 (NVIDIA H100)"]);
        for (v, want) in [
            (json!(1), 1),
            (json!("1"), 1),
            (json!("cuda:1"), 1),
            (json!(0), 0),
        ] {
            assert_eq!(
                check_device(Some(&gpus), &Some(v.clone())).unwrap(),
                Some(want),
                "{v}"
            );
        }
        assert_eq!(check_device(Some(&gpus), &None).unwrap(), None);
        let e = check_device(Some(&gpus), &Some(json!("cuda:2"))).unwrap_err();
        let ApiError::BadRequest(m) = e else {
            panic!("a bad request, got {e:?}")
        };
        assert!(m.contains("`cuda:1 (NVIDIA H100)` (1)"), "{m}");
        // A CPU server answers to the original's usual `cuda:0`, and to nothing else.
        let cpu = report(&["cpu"]);
        assert_eq!(
            check_device(Some(&cpu), &Some(json!("cuda:0"))).unwrap(),
            Some(0)
        );
        assert!(check_device(Some(&cpu), &Some(json!(1))).is_err());
    }
}
