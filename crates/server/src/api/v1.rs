//! REST v1: the original's flat model list and the switch of the caller's current model.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Body, Who};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::state::Shared;
use crate::views::{self, ModelView};

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelsResponse {
    pub models: Vec<ModelView>,
    pub current_model: Option<String>,
}

/// Every model the caller may use, flat.
#[utoipa::path(get, path = "/api/v1/models", responses((status = 200, body = ModelsResponse)))]
pub async fn models(State(state): State<Shared>, who: Who) -> ApiResult<Json<ModelsResponse>> {
    let snap = state.snapshot();
    let report = state.report().await;
    Ok(Json(ModelsResponse {
        models: views::models(
            &snap,
            report.as_ref(),
            who.caller.role,
            state.load_bytes_per_ms.load(Ordering::Relaxed),
        ),
        current_model: state.default_model(&who.client),
    }))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SwitchRequest {
    pub model_id: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SwitchResponse {
    pub model_id: String,
    pub group_id: String,
    /// The model's base is already on the device.
    pub fast_switch: bool,
    /// A preload of its group started.
    pub preloading: bool,
}

/// Sets the caller's current model, used by requests that name none. Affects nobody else.
#[utoipa::path(post, path = "/api/v1/models/switch", request_body = SwitchRequest,
    responses((status = 200, body = SwitchResponse), (status = 404, body = ErrorBody)))]
pub async fn switch(
    State(state): State<Shared>,
    who: Who,
    Body(req): Body<SwitchRequest>,
) -> ApiResult<Json<SwitchResponse>> {
    Ok(Json(switch_to(&state, &who, &req.model_id, false).await?))
}

/// Switches the client's current model; shared with the WebSocket `switch_model` messages.
pub async fn switch_to(
    state: &Shared,
    who: &Who,
    model: &str,
    preload: bool,
) -> ApiResult<SwitchResponse> {
    let snap = state.snapshot();
    views::find(&snap, who.caller.role, model)
        .ok_or_else(|| ApiError::UnknownModel(model.into()))?;
    let admin = who.caller.role == crate::auth::Role::Admin;
    let s = state
        .scheduler
        .switch_model(
            &lensd_core::work::ClientId(who.client.clone()),
            model,
            preload,
            admin,
        )
        .await?;
    state.set_default_model(&who.client, model);
    let report = state.report().await;
    // Fast when the base is on the device now.
    let fast = report
        .as_ref()
        .zip(snap.registry.models.get(model))
        .and_then(|(r, m)| r.entry(&lensd_core::registry::ResourceKey::Base(m.base.clone())))
        .is_some_and(|e| e.tier == lensd_core::residency::Tier::Device);
    Ok(SwitchResponse {
        model_id: s.model,
        group_id: s.group,
        fast_switch: fast || s.fast_switch,
        preloading: s.preloading,
    })
}
