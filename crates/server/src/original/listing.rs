//! What the original's clients read about groups, models, the queue and the devices, built from
//! lensd's views: `model_groups_list`, `model_info`, `queue_update` and `/api/gpu_stats`.
//! Hidden and backend-only models are left out as lensd's views leave them out; lens file
//! names go to admins only, and no path ever leaves the server.

use lensd_core::config::{Group, HubId, ModelEntry};
use lensd_sched::residency::MemoryReport;
use serde_json::{json, Value};

use crate::api::Who;
use crate::auth::Role;
use crate::state::Shared;
use crate::tracker::Status;
use crate::views::{self, ModelView, Snapshot};

/// The device the original's clients are told about: lensd computes on the CPU.
pub const DEVICE: &str = "cpu";

const GIB: f64 = (1u64 << 30) as f64;

/// The base as the original showed it: a hub id as written, else the file or folder name.
pub fn base_model(g: &Group) -> String {
    let p = &g.base_path;
    if p.is_relative() && p.to_str().and_then(HubId::parse).is_some() {
        return p.display().to_string();
    }
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| g.name.clone())
}

/// A lens's checkpoint file name, for admins.
fn checkpoint(role: Role, m: &ModelEntry) -> Option<String> {
    (role == Role::Admin)
        .then(|| m.lens_path.as_ref()?.file_name())
        .flatten()
        .map(|n| n.to_string_lossy().into_owned())
}

fn on_device(v: &ModelView) -> bool {
    v.residency.base_tier == "device"
        && v.residency
            .lens_tier
            .as_deref()
            .is_none_or(|t| t == "device")
}

fn cached(v: &ModelView) -> bool {
    !on_device(v)
        && (v.residency.base_tier != "disk"
            || v.residency
                .lens_tier
                .as_deref()
                .is_some_and(|t| t != "disk"))
}

/// The body of `model_groups_list` for `who`, whose current model is `current`.
pub async fn groups_list(state: &Shared, who: &Who, current: Option<&str>) -> Value {
    let snap = state.snapshot();
    let report = state.report().await;
    let role = who.caller.role;
    let current_group = current
        .and_then(|m| views::find(&snap, role, m))
        .map(|(g, _)| g.id.clone());
    let mut groups = Vec::new();
    let mut groups_loaded = Vec::new();
    let mut models_cached = Vec::new();
    let mut base_locations = serde_json::Map::new();
    for g in &snap.config.groups {
        let models: Vec<(&ModelEntry, ModelView)> = g
            .models
            .iter()
            .filter(|m| views::may_use(role, g, m))
            .map(|m| {
                let v = views::model_view(&snap, report.as_ref(), g, m, state.bytes_per_ms());
                (m, v)
            })
            .collect();
        if models.is_empty() {
            continue;
        }
        let base_tier = models[0].1.residency.base_tier.clone();
        if base_tier != "disk" {
            groups_loaded.push(json!(g.id));
            let place = if base_tier == "device" { "cuda" } else { "cpu" };
            base_locations.insert(g.id.clone(), json!(place));
        }
        let mut rows = Vec::new();
        for (m, v) in &models {
            if on_device(v) || cached(v) {
                models_cached.push(json!(m.id));
            }
            rows.push(model_row(role, g, m, v, current));
        }
        groups.push(json!({
            "group_id": g.id,
            "group_name": g.name,
            "base_model": base_model(g),
            "description": g.description,
            "visible": g.visible,
            "backend_only": g.backend_only,
            "is_cpu_cached": base_tier == "host",
            "models": rows,
        }));
    }
    let memory = memory(report.as_ref());
    json!({
        "type": "model_groups_list",
        "groups": groups,
        "current_group": current_group,
        "current_model": current,
        "is_switching": false,
        "model_status": {
            "cache_info": {
                "groups_loaded": groups_loaded,
                "models_cached": models_cached,
                "base_locations": base_locations,
            },
            "memory": memory,
            "device_states": {},
        },
        "memory_info": memory,
    })
}

fn model_row(role: Role, g: &Group, m: &ModelEntry, v: &ModelView, current: Option<&str>) -> Value {
    let loaded = on_device(v);
    let mut row = json!({
        "id": m.id,
        "name": m.name,
        "description": m.description,
        "layer": m.layer,
        "group_id": g.id,
        "lens": v.lens,
        "is_loaded": loaded,
        "is_gpu_loaded": loaded,
        "is_cpu_cached": cached(v),
        "is_current": current == Some(m.id.as_str()),
        "visible": g.visible && m.visible,
        "backend_only": g.backend_only || m.backend_only,
        "batch_size": m.batch_size,
        "auto_batch_size_max": m.auto_batch_size_max,
    });
    if let Some(c) = checkpoint(role, m) {
        row["checkpoint_filename"] = json!(c);
    }
    row
}

/// The original's memory figures: accounted bytes on the device tier and its budget, in GiB.
fn memory(report: Option<&MemoryReport>) -> Value {
    match report {
        Some(r) => {
            let d = r.tier(lensd_core::residency::Tier::Device);
            json!({
                "allocated_memory_gb": d.used as f64 / GIB,
                "reserved_memory_gb": d.budget as f64 / GIB,
            })
        }
        None => json!({}),
    }
}

/// `model_info` for a model `who` may use, flat as the original sent it.
pub async fn model_info(
    state: &Shared,
    who: &Who,
    snap: &Snapshot,
    g: &Group,
    m: &ModelEntry,
) -> Value {
    let report = state.report().await;
    let v = views::model_view(snap, report.as_ref(), g, m, state.bytes_per_ms());
    let role = who.caller.role;
    let cached_models: Vec<&str> = g
        .models
        .iter()
        .filter(|m| views::may_use(role, g, m))
        .filter(|m| {
            let v = views::model_view(snap, report.as_ref(), g, m, state.bytes_per_ms());
            on_device(&v) || cached(&v)
        })
        .map(|m| m.id.as_str())
        .collect();
    let mut info = json!({
        "type": "model_info",
        "model_id": m.id,
        "display_name": m.name,
        "name": m.name,
        "description": m.description,
        "layer": m.layer,
        "lens": v.lens,
        "group_id": g.id,
        "group_name": g.name,
        "base_model": base_model(g),
        "loaded": on_device(&v),
        "batch_size": m.batch_size,
        "auto_batch_size_max": m.auto_batch_size_max.unwrap_or(super::messages::AUTO_BATCH_SIZE_MAX as u32),
        "generation_config": {"temperature": 0.8, "top_p": 0.95, "max_new_tokens": 50},
        "cached_models": cached_models,
        "device": DEVICE,
    });
    if let Some(c) = checkpoint(role, m) {
        info["checkpoint_filename"] = json!(c);
    }
    info
}

/// The server-wide queue as the original's periodic `queue_update` told it. Ids of other
/// clients' requests are blanked: a client finds its own place without learning others' ids.
pub fn queue_update(state: &Shared, owner: &str, alias: impl Fn(&str) -> Option<String>) -> Value {
    let mut queued: Vec<(usize, String)> = Vec::new();
    let mut processing = 0;
    for t in state.requests.active() {
        match t.status() {
            Status::Queued { position } => {
                let id = if t.owner == owner {
                    alias(&t.id).unwrap_or_else(|| t.id.clone())
                } else {
                    String::new()
                };
                queued.push((position, id));
            }
            Status::Running { .. } => processing += 1,
            _ => {}
        }
    }
    queued.sort();
    let ids: Vec<String> = queued.into_iter().map(|(_, id)| id).collect();
    json!({
        "type": "queue_update",
        "queue_size": ids.len(),
        "queued_requests": ids.len(),
        "processing_requests": processing,
        "total_active": ids.len() + processing,
        "queued_ids": ids,
    })
}

/// `/api/gpu_stats`: every device lensd computes on, by name (`cpu`, `cuda:0`, ...). A GPU's
/// memory is what its driver reports used of its total; a device without driver figures (the
/// CPU) shows what its tier holds against its budget. GiB, as the original. Utilisation is
/// 100 while a request runs and 0 otherwise; the top-level figures add the devices' memory
/// up, as the original's page shows one machine.
pub async fn device_stats(state: &Shared) -> Value {
    let report = state.report().await;
    let busy = state
        .requests
        .active()
        .iter()
        .any(|t| matches!(t.status(), Status::Running { .. }));
    let utilization = if busy { 100 } else { 0 };
    let round2 = |x: f64| (x * 100.0).round() / 100.0;
    let percent = |used: f64, total: f64| {
        if total > 0.0 {
            (used / total * 1000.0).round() / 10.0
        } else {
            0.0
        }
    };
    let mut devices = serde_json::Map::new();
    let (mut used_all, mut total_all) = (0.0, 0.0);
    for d in report.iter().flat_map(|r| &r.devices) {
        let (used, total) = match (d.driver_used, d.driver_total) {
            (Some(u), Some(t)) => (u as f64 / GIB, t as f64 / GIB),
            _ => (d.used as f64 / GIB, d.budget as f64 / GIB),
        };
        used_all += used;
        total_all += total;
        let name = d.name.split_whitespace().next().unwrap_or(DEVICE);
        devices.insert(
            name.to_string(),
            json!({
                "utilization": utilization,
                "peak_utilization": utilization,
                "memory_used": round2(used),
                "memory_total": round2(total),
                "memory_percent": percent(used, total),
                "failed": d.failed,
            }),
        );
    }
    json!({
        "available": !devices.is_empty(),
        "num_devices": devices.len(),
        "devices": devices,
        "utilization": utilization,
        "peak_utilization": utilization,
        "memory_used": round2(used_all),
        "memory_total": round2(total_all),
        "memory_percent": percent(used_all, total_all),
    })
}

/// The original's `connection_established`, for a connection that named the dialect: the
/// model a request without one would read.
pub fn greeting(state: &Shared, who: &Who, session: &str) -> Value {
    let snap = state.snapshot();
    let model = state
        .default_model(&who.client)
        .or_else(|| super::ws::server_default(&snap, who.caller.role));
    let entry = model.as_deref().and_then(|m| snap.config.model(m));
    json!({
        "type": "connection_established",
        "message": "Connected to lensd",
        "session": session,
        "model_id": model,
        "model_name": entry.map(|(_, m)| m.name.clone()),
        "auto_batch_size_max": entry.map(|(_, m)| m.auto_batch_size_max
            .unwrap_or(super::messages::AUTO_BATCH_SIZE_MAX as u32)),
        "generation_config": {"temperature": 0.8, "top_p": 0.95},
    })
}
