//! REST v2: groups with residency, one group's status, preload and unload, model info, the
//! memory report, submitting work, a request's status, result, cancellation and event stream,
//! and configuration reload.

use std::sync::atomic::Ordering;

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use futures_util::stream::{self, Stream, StreamExt};
use lensd_core::registry::ResourceKey;
use lensd_core::residency::Tier;
use lensd_core::work::{RequestEvent, Text};
use serde::{Deserialize, Serialize};
use tokio_stream::wrappers::UnboundedReceiverStream;
use utoipa::{IntoParams, ToSchema};

use super::{Body, Who};
use crate::auth::Role;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::protocol::{AnalyzeRequest, GenerateRequest};
use crate::state::Shared;
use crate::tracker::{self, Status, Tracked};
use crate::views::{self, GroupView, ModelView};

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GroupsResponse {
    pub groups: Vec<GroupView>,
    pub current_model: Option<String>,
}

/// Groups of models sharing a base, with residency and switch estimates.
#[utoipa::path(get, path = "/api/v2/groups", responses((status = 200, body = GroupsResponse)))]
pub async fn groups(State(state): State<Shared>, who: Who) -> ApiResult<Json<GroupsResponse>> {
    let current = state.default_model(&who.client);
    Ok(Json(GroupsResponse {
        groups: group_views(&state, &who, current.as_deref()).await,
        current_model: current,
    }))
}

pub async fn group_views(state: &Shared, who: &Who, current: Option<&str>) -> Vec<GroupView> {
    let snap = state.snapshot();
    let report = state.report().await;
    views::groups(
        &snap,
        report.as_ref(),
        who.caller.role,
        current,
        state.bytes_per_ms(),
    )
}

/// One group's status.
#[utoipa::path(get, path = "/api/v2/groups/{id}", params(("id" = String, Path)),
    responses((status = 200, body = GroupView), (status = 404, body = ErrorBody)))]
pub async fn group(
    State(state): State<Shared>,
    who: Who,
    Path(id): Path<String>,
) -> ApiResult<Json<GroupView>> {
    let current = state.default_model(&who.client);
    group_views(&state, &who, current.as_deref())
        .await
        .into_iter()
        .find(|g| g.group_id == id)
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no group `{id}`")))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct TierQuery {
    /// `device` or `host` for preload; `host` or `disk` for unload.
    pub tier: Option<String>,
}

fn tier(name: Option<&str>, default: Tier, allowed: &[Tier]) -> ApiResult<Tier> {
    let t = match name {
        None => default,
        Some("device") => Tier::Device,
        Some("host") => Tier::Host,
        Some("disk") => Tier::Disk,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "unknown tier `{other}`: use device, host or disk"
            )))
        }
    };
    if !allowed.contains(&t) {
        let names: Vec<&str> = allowed.iter().map(|t| t.as_str()).collect();
        return Err(ApiError::BadRequest(format!(
            "tier `{}` is not allowed here: use {}",
            t.as_str(),
            names.join(" or ")
        )));
    }
    Ok(t)
}

fn known_group(state: &Shared, who: &Who, id: &str) -> ApiResult<()> {
    let snap = state.snapshot();
    let visible = snap.config.group(id).is_some_and(|g| {
        g.models
            .iter()
            .any(|m| views::may_use(who.caller.role, g, m))
    });
    if visible {
        Ok(())
    } else {
        Err(ApiError::NotFound(format!("no group `{id}`")))
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PreloadResponse {
    pub group_id: String,
    pub tier: String,
    /// `preloading`: the group is being brought in, in the background.
    pub status: String,
}

/// Admin: bring a group's base and lenses to the device (or host) in the background.
#[utoipa::path(post, path = "/api/v2/groups/{id}/preload", params(("id" = String, Path), TierQuery),
    responses((status = 202, body = PreloadResponse), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn preload(
    State(state): State<Shared>,
    who: Who,
    Path(id): Path<String>,
    Query(q): Query<TierQuery>,
) -> ApiResult<(StatusCode, Json<PreloadResponse>)> {
    who.caller.require(Role::Admin, "preloading a group")?;
    known_group(&state, &who, &id)?;
    let t = tier(q.tier.as_deref(), Tier::Device, &[Tier::Device, Tier::Host])?;
    let mut events = state
        .residency
        .preload(&id, t)
        .await
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    Ok((
        StatusCode::ACCEPTED,
        Json(PreloadResponse {
            group_id: id,
            tier: t.as_str().into(),
            status: "preloading".into(),
        }),
    ))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UnloadResponse {
    pub group_id: String,
    /// Resources moved, with the tier they are on now.
    pub moved: Vec<String>,
    /// Resources left in place, with why (in use, pinned, loading).
    pub kept: Vec<String>,
}

fn describe(key: &ResourceKey) -> String {
    match key {
        ResourceKey::Base(_) => "base".into(),
        ResourceKey::Lens(_) => "lens".into(),
    }
}

/// Admin: demote a group to the host, or free it.
#[utoipa::path(post, path = "/api/v2/groups/{id}/unload", params(("id" = String, Path), TierQuery),
    responses((status = 200, body = UnloadResponse), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn unload(
    State(state): State<Shared>,
    who: Who,
    Path(id): Path<String>,
    Query(q): Query<TierQuery>,
) -> ApiResult<Json<UnloadResponse>> {
    who.caller.require(Role::Admin, "unloading a group")?;
    known_group(&state, &who, &id)?;
    let t = tier(q.tier.as_deref(), Tier::Host, &[Tier::Host, Tier::Disk])?;
    let r = state
        .residency
        .unload(&id, t)
        .await
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(Json(UnloadResponse {
        group_id: id,
        moved: r
            .moved
            .iter()
            .map(|(k, t)| format!("{} → {}", describe(k), t.as_str()))
            .collect(),
        kept: r
            .kept
            .iter()
            .map(|(k, why)| format!("{}: {why}", describe(k)))
            .collect(),
    }))
}

/// One model's information.
#[utoipa::path(get, path = "/api/v2/models/{id}", params(("id" = String, Path)),
    responses((status = 200, body = ModelView), (status = 404, body = ErrorBody)))]
pub async fn model(
    State(state): State<Shared>,
    who: Who,
    Path(id): Path<String>,
) -> ApiResult<Json<ModelView>> {
    let snap = state.snapshot();
    let (g, m) = views::find(&snap, who.caller.role, &id)
        .ok_or_else(|| ApiError::UnknownModel(id.clone()))?;
    let report = state.report().await;
    Ok(Json(views::model_view(
        &snap,
        report.as_ref(),
        g,
        m,
        state.load_bytes_per_ms.load(Ordering::Relaxed),
    )))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MemoryEntry {
    /// `base` or `lens`.
    pub kind: String,
    /// Content id.
    pub id: String,
    pub tier: String,
    /// The device the copy is on (its number), for tier `device`. A resource with copies on
    /// two devices has an entry for each.
    pub device: Option<u16>,
    /// `ready`, `loading` or `moving`.
    pub state: String,
    pub bytes: u64,
    pub idle_ms: Option<u64>,
    pub leases: u32,
    pub pinned: bool,
    pub models: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TierView {
    pub tier: String,
    pub used: u64,
    pub budget: u64,
}

/// One compute device's memory: what lensd counts on it against its budget, and what the
/// driver reports beside it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeviceView {
    pub id: u16,
    /// `cpu`, `cuda:0`, ...
    pub name: String,
    /// Bytes of the copies on it, loads and copies in flight included.
    pub used: u64,
    pub budget: u64,
    /// The driver's count, where it has one (GPUs).
    pub driver_used: Option<u64>,
    pub driver_total: Option<u64>,
    /// The device was lost and takes no more work.
    pub failed: bool,
    pub failure: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MemoryResponse {
    /// Device and host are one memory (CPU).
    pub shared_memory: bool,
    /// The device tier is every working device together.
    pub tiers: Vec<TierView>,
    pub devices: Vec<DeviceView>,
    pub entries: Vec<MemoryEntry>,
    pub accounted_bytes: u64,
    pub process_resident_bytes: Option<u64>,
    /// Heap bytes the program holds, by the allocator's own count (glibc).
    pub process_heap_in_use_bytes: Option<u64>,
    /// Freed heap bytes the allocator keeps for reuse.
    pub process_heap_free_bytes: Option<u64>,
    /// Accounted weights mapped rather than held in the heap (GGUF files' blocks mapped from
    /// the page cache): the heap holds `accounted_bytes` less these.
    pub process_mapped_weight_bytes: Option<u64>,
}

/// The memory report: every base and lens with its tier (and device) and bytes, one entry per
/// copy, tiers and devices against their budgets, and the process's resident memory.
#[utoipa::path(get, path = "/api/v2/memory", responses((status = 200, body = MemoryResponse)))]
pub async fn memory(State(state): State<Shared>, who: Who) -> ApiResult<Json<MemoryResponse>> {
    let report = state
        .report()
        .await
        .ok_or_else(|| ApiError::Unavailable("the residency manager is not running".into()))?;
    let snap = state.snapshot();
    let usable = |id: &String| views::find(&snap, who.caller.role, id).is_some();
    let entries = report
        .entries
        .iter()
        .filter_map(|e| {
            let models: Vec<String> = e.models.iter().filter(|m| usable(m)).cloned().collect();
            if models.is_empty() {
                return None;
            }
            let (kind, id) = match &e.resource {
                ResourceKey::Base(b) => ("base", b.0.clone()),
                ResourceKey::Lens(l) => ("lens", l.0.clone()),
            };
            Some(MemoryEntry {
                kind: kind.into(),
                id,
                tier: e.tier.as_str().into(),
                device: e.device.map(|d| d.0),
                state: serde_json::to_value(&e.state)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
                bytes: e.bytes,
                idle_ms: e.idle_ms,
                leases: e.leases,
                pinned: e.pinned,
                models,
            })
        })
        .collect();
    Ok(Json(MemoryResponse {
        shared_memory: report.shared_memory,
        tiers: report
            .tiers
            .iter()
            .map(|t| TierView {
                tier: t.tier.as_str().into(),
                used: t.used,
                budget: t.budget,
            })
            .collect(),
        devices: report
            .devices
            .iter()
            .map(|d| DeviceView {
                id: d.id.0,
                name: d.name.clone(),
                used: d.used,
                budget: d.budget,
                driver_used: d.driver_used,
                driver_total: d.driver_total,
                failed: d.failed,
                failure: d.failure.clone(),
            })
            .collect(),
        entries,
        accounted_bytes: report.accounted_bytes,
        process_resident_bytes: report.process_resident_bytes,
        process_heap_in_use_bytes: report.process_heap.map(|h| h.in_use_bytes),
        process_heap_free_bytes: report.process_heap.map(|h| h.free_bytes),
        process_mapped_weight_bytes: report.process_mapped_weight_bytes,
    }))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    pub request_id: String,
    pub kind: String,
    pub status_url: String,
    pub events_url: String,
}

fn accepted(t: &Tracked) -> (StatusCode, Json<Accepted>) {
    (
        StatusCode::ACCEPTED,
        Json(Accepted {
            request_id: t.id.clone(),
            kind: t.kind.into(),
            status_url: format!("/api/v2/requests/{}", t.id),
            events_url: format!("/api/v2/requests/{}/events", t.id),
        }),
    )
}

/// Queue an analysis; follow it at `events_url`. Besides the fields of `AnalyzeRequest`, an
/// `after` field names a generation of yours whose prompt and reply to analyse.
#[utoipa::path(post, path = "/api/v2/analyze", request_body = AnalyzeRequest,
    responses((status = 202, body = Accepted), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn analyze(
    State(state): State<Shared>,
    who: Who,
    Body(body): Body<serde_json::Value>,
) -> ApiResult<(StatusCode, Json<Accepted>)> {
    // `after` is a REST-only field beside the shared request fields.
    let mut body = body;
    let after = body.as_object_mut().and_then(|o| o.remove("after"));
    let req: AnalyzeRequest = serde_path_to_error::deserialize(body).map_err(|e| {
        let at = e.path().to_string();
        let place = if at == "." {
            String::new()
        } else {
            format!(" at `{at}`")
        };
        ApiError::BadRequest(format!("invalid analyze request{place}: {}", e.inner()))
    })?;
    let given = req.text.is_some() || req.messages.is_some();
    let text = match after {
        Some(_) if given => {
            return Err(ApiError::BadRequest(
                "give `after` or `text` / `messages`, not both".into(),
            ))
        }
        Some(serde_json::Value::String(id)) => Text::Generated {
            request: tracker::chained(&state, &who, &id)?,
        },
        Some(_) => return Err(ApiError::BadRequest("`after` must be a request id".into())),
        None => req.given()?,
    };
    let work = req.work(text)?;
    let t = tracker::submit(
        &state,
        &who,
        work,
        req.deadline_ms.map(Duration::from_millis),
    )
    .await?;
    Ok(accepted(&t))
}

/// Queue a generation; its tokens stream at `events_url`.
#[utoipa::path(post, path = "/api/v2/generate", request_body = GenerateRequest,
    responses((status = 202, body = Accepted), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn generate(
    State(state): State<Shared>,
    who: Who,
    Body(req): Body<GenerateRequest>,
) -> ApiResult<(StatusCode, Json<Accepted>)> {
    let work = req.work()?;
    let t = tracker::submit(
        &state,
        &who,
        work,
        req.deadline_ms.map(Duration::from_millis),
    )
    .await?;
    Ok(accepted(&t))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RequestView {
    pub request_id: String,
    pub kind: String,
    pub models: Vec<String>,
    pub status: Status,
    /// The output once completed (an analysis grid or a generation).
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    /// Where the result can be shared, once stored.
    pub share_url: Option<String>,
}

fn may_see(t: &Tracked, who: &Who) -> bool {
    who.caller.role == Role::Admin || t.owner == who.owner
}

/// A request's status, and its result once completed (also after a restart).
#[utoipa::path(get, path = "/api/v2/requests/{id}", params(("id" = String, Path)),
    responses((status = 200, body = RequestView), (status = 404, body = ErrorBody)))]
pub async fn request(
    State(state): State<Shared>,
    who: Who,
    Path(id): Path<String>,
) -> ApiResult<Json<RequestView>> {
    let share = state.store.as_ref().map(|_| format!("/share/{id}"));
    if let Some(t) = state.requests.get(&id).filter(|t| may_see(t, &who)) {
        let result = match t.outcome() {
            Some(RequestEvent::Completed { output }) => crate::tracker::as_json(&output),
            _ => None,
        };
        let done = result.is_some();
        return Ok(Json(RequestView {
            request_id: t.id.clone(),
            kind: t.kind.into(),
            models: t.models.clone(),
            status: t.status(),
            result,
            share_url: share.filter(|_| done),
        }));
    }
    let Some(store) = state.store.clone() else {
        return Err(ApiError::NotFound(format!("no request `{id}`")));
    };
    let key = id.clone();
    let stored = tokio::task::spawn_blocking(move || store.get(&key))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let r = stored
        .filter(|r| who.caller.role == Role::Admin || r.client == who.owner)
        .ok_or_else(|| ApiError::NotFound(format!("no request `{id}`")))?;
    let status = crate::tracker::stored_status(&r);
    Ok(Json(RequestView {
        request_id: r.id,
        kind: r.kind,
        models: r.models,
        status,
        result: r.output,
        share_url: share,
    }))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CancelResponse {
    pub request_id: String,
    /// False when the request had already ended.
    pub cancelled: bool,
}

/// Cancel a request: at once when queued, at the next sub-batch when running.
#[utoipa::path(post, path = "/api/v2/requests/{id}/cancel", params(("id" = String, Path)),
    responses((status = 200, body = CancelResponse), (status = 404, body = ErrorBody)))]
pub async fn cancel(
    State(state): State<Shared>,
    who: Who,
    Path(id): Path<String>,
) -> ApiResult<Json<CancelResponse>> {
    let t = state
        .requests
        .get(&id)
        .filter(|t| may_see(t, &who))
        .ok_or_else(|| ApiError::NotFound(format!("no request `{id}`")))?;
    let cancelled = state.scheduler.cancel(t.internal).await;
    Ok(Json(CancelResponse {
        request_id: id,
        cancelled,
    }))
}

fn sse_event(ev: &RequestEvent) -> Event {
    let name = serde_json::to_value(ev)
        .ok()
        .and_then(|v| v.get("type").and_then(|t| t.as_str().map(String::from)))
        .unwrap_or_default();
    Event::default()
        .event(name)
        .data(serde_json::to_string(ev).unwrap_or_default())
}

/// Server-sent events of one request, from its first event to its terminal one.
#[utoipa::path(get, path = "/api/v2/requests/{id}/events", params(("id" = String, Path)),
    responses((status = 200, description = "text/event-stream of request events"), (status = 404, body = ErrorBody)))]
pub async fn events(
    State(state): State<Shared>,
    who: Who,
    Path(id): Path<String>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let t = state
        .requests
        .get(&id)
        .filter(|t| may_see(t, &who))
        .ok_or_else(|| ApiError::NotFound(format!("no request `{id}`")))?;
    let (past, rx) = t.subscribe();
    let stream = stream::iter(past)
        .chain(UnboundedReceiverStream::new(rx))
        .map(|ev| Ok(sse_event(&ev)));
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReloadResponse {
    pub added_models: Vec<String>,
    pub removed_models: Vec<String>,
    pub changed_models: Vec<String>,
}

/// Admin: read the configuration file again; unchanged models keep their weights.
#[utoipa::path(post, path = "/api/v2/admin/reload",
    responses((status = 200, body = ReloadResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn reload(State(state): State<Shared>, who: Who) -> ApiResult<Json<ReloadResponse>> {
    who.caller
        .require(Role::Admin, "reloading the configuration")?;
    let control = state.control.clone().ok_or_else(|| {
        ApiError::Unavailable("this server has no configuration file to reload".into())
    })?;
    let (snapshot, diff) = control
        .reload()
        .await
        // The paths of the configuration that failed are not the running one's: scrub every
        // absolute path.
        .map_err(|e| {
            let known = views::scrub(&state.snapshot(), &e);
            ApiError::BadRequest(views::scrub_absolute_paths(&known))
        })?;
    state
        .scheduler
        .set_registry(snapshot.registry.clone())
        .await;
    state.set_snapshot(snapshot);
    state.residency_changed("reloaded");
    Ok(Json(ReloadResponse {
        added_models: diff.added_models,
        removed_models: diff.removed_models,
        changed_models: diff.changed_models,
    }))
}
