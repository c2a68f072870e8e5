//! Operations: health and readiness, Prometheus metrics, the OpenAPI document, and the
//! read-only share page of a stored result.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use crate::error::{ApiError, ApiResult};
use crate::metrics as m;
use crate::share;
use crate::state::Shared;

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`, or for readiness `ready` / `starting` / `shutting_down`.
    pub status: String,
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// The server accepts work: its actors answer and it is not shutting down.
#[utoipa::path(get, path = "/readyz", responses((status = 200, body = Health), (status = 503, body = Health)))]
pub async fn readyz(State(state): State<Shared>) -> (StatusCode, Json<Health>) {
    if state.is_closing() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "shutting_down".into(),
            }),
        );
    }
    let queue = state.scheduler.status().await;
    let memory = state.report().await;
    if queue.is_some() && memory.is_some() {
        (
            StatusCode::OK,
            Json(Health {
                status: "ready".into(),
            }),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "starting".into(),
            }),
        )
    }
}

/// Prometheus metrics in the text exposition format; a client that asks for JSON (`Accept:
/// application/json`) gets the original's request counts instead.
pub async fn metrics(
    State(state): State<Shared>,
    headers: axum::http::HeaderMap,
) -> ApiResult<Response> {
    if let Some(json) = crate::original::rest::metrics(&state, &headers) {
        return Ok(json);
    }
    let handle = state
        .metrics
        .clone()
        .ok_or_else(|| ApiError::Unavailable("metrics are not enabled in this process".into()))?;
    if let Some(q) = state.scheduler.status().await {
        metrics::gauge!(m::QUEUE_DEPTH).set(q.queued as f64);
    }
    if let Some(r) = state.report().await {
        for t in &r.tiers {
            metrics::gauge!(m::TIER_BYTES, "tier" => t.tier.as_str()).set(t.used as f64);
            metrics::gauge!(m::TIER_BUDGET, "tier" => t.tier.as_str()).set(t.budget as f64);
        }
        for d in &r.devices {
            let device = d.name.clone();
            metrics::gauge!(m::DEVICE_BYTES, "device" => device.clone()).set(d.used as f64);
            metrics::gauge!(m::DEVICE_BUDGET, "device" => device.clone()).set(d.budget as f64);
            if let Some(used) = d.driver_used {
                metrics::gauge!(m::DEVICE_DRIVER_USED, "device" => device.clone()).set(used as f64);
            }
            if let Some(total) = d.driver_total {
                metrics::gauge!(m::DEVICE_DRIVER_TOTAL, "device" => device.clone())
                    .set(total as f64);
            }
            metrics::gauge!(m::DEVICE_FAILED, "device" => device)
                .set(f64::from(u8::from(d.failed)));
        }
        if let Some(rss) = r.process_resident_bytes {
            metrics::gauge!(m::RESIDENT_BYTES).set(rss as f64);
        }
        if let Some(h) = r.process_heap {
            metrics::gauge!(m::HEAP_IN_USE).set(h.in_use_bytes as f64);
            metrics::gauge!(m::HEAP_FREE).set(h.free_bytes as f64);
        }
    }
    metrics::gauge!(m::CONNECTIONS)
        .set(state.connections.load(std::sync::atomic::Ordering::Relaxed) as f64);
    metrics::gauge!(m::HTTP_CONNECTIONS).set(state.http.open() as f64);
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response())
}

/// This API's OpenAPI document.
pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(crate::openapi::ApiDoc::openapi())
}

/// A stored result as a page anyone with the link can read.
pub async fn share(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    let Some(store) = state.store.clone() else {
        return (StatusCode::NOT_FOUND, Html(share::not_found(&id))).into_response();
    };
    let key = id.clone();
    match tokio::task::spawn_blocking(move || store.get(&key)).await {
        Ok(Ok(Some(r))) => Html(share::render(&r)).into_response(),
        Ok(Ok(None)) => (StatusCode::NOT_FOUND, Html(share::not_found(&id))).into_response(),
        Ok(Err(e)) => ApiError::Internal(e.to_string()).into_response(),
        Err(e) => ApiError::Internal(e.to_string()).into_response(),
    }
}
