//! The server's one error type and the one place that maps it to an HTTP status, a stable
//! `error_type` string and the JSON body (also used for WebSocket error frames). Internal
//! details are logged, never sent.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use lensd_sched::queue::SubmitError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    BadRequest(String),
    Unauthorized(String),
    Forbidden(String),
    NotFound(String),
    UnknownModel(String),
    TooLarge(String),
    RateLimited(String),
    QueueFull(String),
    ClientLimit(String),
    Unavailable(String),
    /// Logged in full; the client sees only that something went wrong.
    Internal(String),
}

/// The JSON body of every error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Stable machine-readable kind: `bad_request`, `unauthorized`, `forbidden`, `not_found`,
    /// `unknown_model`, `payload_too_large`, `rate_limited`, `queue_full`, `client_limit`,
    /// `unavailable`, `internal`.
    pub error_type: String,
    pub message: String,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) | ApiError::UnknownModel(_) => StatusCode::NOT_FOUND,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RateLimited(_) | ApiError::QueueFull(_) | ApiError::ClientLimit(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn error_type(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::UnknownModel(_) => "unknown_model",
            ApiError::TooLarge(_) => "payload_too_large",
            ApiError::RateLimited(_) => "rate_limited",
            ApiError::QueueFull(_) => "queue_full",
            ApiError::ClientLimit(_) => "client_limit",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn body(&self) -> ErrorBody {
        let message = match self {
            ApiError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                "the server could not complete this request; it has been logged".to_string()
            }
            ApiError::BadRequest(m)
            | ApiError::Unauthorized(m)
            | ApiError::Forbidden(m)
            | ApiError::NotFound(m)
            | ApiError::TooLarge(m)
            | ApiError::RateLimited(m)
            | ApiError::QueueFull(m)
            | ApiError::ClientLimit(m)
            | ApiError::Unavailable(m) => m.clone(),
            ApiError::UnknownModel(m) => format!("unknown model `{m}`"),
        };
        ErrorBody {
            error_type: self.error_type().into(),
            message,
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::QueueFull { .. } => ApiError::QueueFull(e.to_string()),
            SubmitError::ClientLimit { .. } => ApiError::ClientLimit(e.to_string()),
            // Hidden and unknown models look the same from outside.
            SubmitError::UnknownModel(m) => ApiError::UnknownModel(m),
            SubmitError::Invalid(m) => ApiError::BadRequest(m),
            SubmitError::Stopped => ApiError::Unavailable("the server is shutting down".into()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status(), axum::Json(self.body())).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
