//! The HTTP API: the router, how a caller is recognised, and the handlers by area.

pub mod ops;
pub mod v1;
pub mod v2;

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method};
use axum::routing::{get, post};
use axum::Router;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::Shared;

/// The caller of a request, the client it counts as for fairness (its key's name, else its
/// address; a WebSocket session is a client of its own), and the owner of what it submits
/// (its key's name, else `ip:` and its address).
#[derive(Clone)]
pub struct Who {
    pub caller: Caller,
    pub client: String,
    pub owner: String,
    /// Where the caller connects from (none for calls made inside the process).
    pub addr: Option<SocketAddr>,
}

impl Who {
    /// `caller` connecting from `addr`.
    pub fn new(caller: Caller, addr: Option<SocketAddr>) -> Who {
        let place = match addr {
            Some(a) => format!("ip:{}", a.ip()),
            None => "local".to_string(),
        };
        let (client, owner) = if caller.label.is_empty() {
            let owner = match addr {
                Some(a) => format!("{}{}", crate::auth::ANONYMOUS_OWNER, a.ip()),
                None => crate::auth::ANONYMOUS_OWNER.to_string(),
            };
            (place, owner)
        } else {
            (format!("key:{}", caller.label), caller.label.clone())
        };
        Who {
            caller,
            client,
            owner,
            addr,
        }
    }
}

/// The caller behind `headers`, from `addr`, with the throttle on failed authentication.
pub fn authenticate(
    state: &Shared,
    headers: &axum::http::HeaderMap,
    addr: Option<SocketAddr>,
) -> Result<Caller, ApiError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or("\u{fffd}"));
    if presented.is_none() {
        return Ok(Caller::anonymous());
    }
    state
        .auth
        .check(addr.map(|a| a.ip()), || state.keys.caller(presented))
}

impl FromRequestParts<Shared> for Who {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Shared,
    ) -> Result<Self, Self::Rejection> {
        let addr = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(a)| *a);
        let caller = authenticate(state, &parts.headers, addr)?;
        Ok(Who::new(caller, addr))
    }
}

/// A JSON body whose rejections (malformed JSON, a missing field, too many bytes) become the
/// server's structured errors.
pub struct Body<T>(pub T);

impl<T: serde::de::DeserializeOwned> axum::extract::FromRequest<Shared> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(
        req: axum::extract::Request,
        state: &Shared,
    ) -> Result<Self, Self::Rejection> {
        use axum::extract::rejection::JsonRejection;
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Body(v)),
            Err(JsonRejection::BytesRejection(e))
                if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Err(ApiError::TooLarge(format!(
                    "the body is larger than the limit of {} bytes",
                    state.limits.max_message_bytes
                )))
            }
            Err(e) => Err(ApiError::BadRequest(e.body_text())),
        }
    }
}

/// The original's REST routes and slim API (`crate::original`); none shares a path with
/// lensd's own.
fn original_routes() -> Router<Shared> {
    use crate::original::{rest, slim};
    Router::new()
        .route("/health", get(rest::health))
        .route("/analyze", post(rest::analyze))
        .route("/status/{id}", get(rest::status))
        .route("/reset", post(rest::reset))
        .route("/api/gpu_stats", get(rest::gpu_stats))
        .route("/api/v2/system/state", get(rest::v2_system_state))
        .route("/api/v2/models", get(rest::v2_models))
        .route("/api/v2/models/load", post(rest::v2_load_model))
        .route("/api/v2/groups/load", post(rest::v2_load_group))
        .route("/api/v2/devices/{id}/memory", get(rest::v2_device_memory))
        .route("/api/v2/current", get(rest::v2_current))
        .route("/api/v2/switch", post(rest::v2_switch))
        .route("/api/slim/", get(slim::index))
        .route("/api/slim/generate", post(slim::generate))
        .route("/api/slim/analyze", post(slim::analyze))
        .route("/api/slim/send_message", post(slim::send_message))
        .route("/api/slim/status/{id}", get(slim::status))
        .route("/api/slim/models", get(slim::models))
        .route("/api/slim/models/{id}/layers", get(slim::layers))
}

pub fn router(state: Shared) -> Router {
    let cors = if state.allowed_origins.iter().any(|o| o == "*") {
        CorsLayer::new().allow_origin(AllowOrigin::any())
    } else {
        let origins: Vec<HeaderValue> = state
            .allowed_origins
            .iter()
            .filter_map(|o| o.parse().ok())
            .collect();
        CorsLayer::new().allow_origin(origins)
    }
    .allow_methods([Method::GET, Method::POST])
    .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE]);
    let body_limit = state.limits.max_message_bytes;
    Router::new()
        .route("/", get(crate::web::index))
        .route("/static/{*path}", get(crate::web::asset))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/api/openapi.json", get(ops::openapi))
        .route("/share/{id}", get(ops::share))
        .route("/api/v1/models", get(v1::models))
        .route("/api/v1/models/switch", post(v1::switch))
        .route("/api/v2/groups", get(v2::groups))
        .route("/api/v2/groups/{id}", get(v2::group))
        .route("/api/v2/groups/{id}/preload", post(v2::preload))
        .route("/api/v2/groups/{id}/unload", post(v2::unload))
        .route("/api/v2/models/{id}", get(v2::model))
        .route("/api/v2/memory", get(v2::memory))
        .route("/api/v2/analyze", post(v2::analyze))
        .route("/api/v2/generate", post(v2::generate))
        .route("/api/v2/requests/{id}", get(v2::request))
        .route("/api/v2/requests/{id}/cancel", post(v2::cancel))
        .route("/api/v2/requests/{id}/events", get(v2::events))
        .route("/api/v2/admin/reload", post(v2::reload))
        .route("/ws", get(crate::ws::upgrade))
        .merge(original_routes())
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .layer(cors)
        .with_state(state)
}
