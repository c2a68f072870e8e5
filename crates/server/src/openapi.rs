//! The OpenAPI document, generated from the handlers' annotations and the types they use.

use utoipa::OpenApi;

use crate::api::{ops, v1, v2};
use crate::auth::Role;
use crate::error::ErrorBody;
use crate::protocol::{AnalyzeOptions, AnalyzeRequest, GenerateRequest, LimitsView, QueueEntry};
use crate::tracker::Status;
use crate::views::{GroupView, ModelView, ResidencyView};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "lensd",
        description = "Interpretability lenses over transformer language models: model groups sharing a base, per-request lens choice, and streamed results. The original site's REST routes and slim API (`/analyze`, `/status/{id}`, `/health`, `/reset`, `/api/gpu_stats`, `/api/v2/system/state`, `/api/v2/models`, `/api/v2/models/load`, `/api/v2/groups/load`, `/api/v2/devices/{id}/memory`, `/api/v2/current`, `/api/v2/switch`, `/api/slim/*`) are served beside this API in the original's shapes and described in docs/protocol.md; none of lensd's paths moved for them."
    ),
    paths(
        ops::healthz,
        ops::readyz,
        v1::models,
        v1::switch,
        v2::groups,
        v2::group,
        v2::preload,
        v2::unload,
        v2::model,
        v2::memory,
        v2::analyze,
        v2::generate,
        v2::request,
        v2::cancel,
        v2::events,
        v2::reload,
    ),
    components(schemas(
        ErrorBody,
        Role,
        ModelView,
        GroupView,
        ResidencyView,
        Status,
        AnalyzeRequest,
        AnalyzeOptions,
        GenerateRequest,
        LimitsView,
        QueueEntry,
        ops::Health,
        v1::ModelsResponse,
        v1::SwitchRequest,
        v1::SwitchResponse,
        v2::GroupsResponse,
        v2::PreloadResponse,
        v2::UnloadResponse,
        v2::MemoryEntry,
        v2::TierView,
        v2::DeviceView,
        v2::MemoryResponse,
        v2::Accepted,
        v2::RequestView,
        v2::CancelResponse,
        v2::ReloadResponse,
    ))
)]
pub struct ApiDoc;
