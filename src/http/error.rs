//! The one mapping from errors to HTTP responses.
//!
//! Every error leaves as `{"error": {"code": "...", "message": "..."}}` with a
//! status chosen from its [`ErrorKind`]. Client errors carry a message written
//! for the client; server errors are logged once here with their full cause
//! chain and answer with a generic message (no paths, no SQL).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::{Classify, ErrorKind};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ErrorKind, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status: status_of(kind),
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, code, message)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            ErrorKind::Unauthorized,
            "unauthorized",
            "a valid `Authorization: Bearer <token>` header is required",
        )
    }
}

pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
        ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Gone => StatusCode::GONE,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorKind::RangeNotSatisfiable => StatusCode::RANGE_NOT_SATISFIABLE,
        ErrorKind::InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Any classified domain error becomes an `ApiError`.
impl<E> From<E> for ApiError
where
    E: Classify + std::error::Error,
{
    fn from(e: E) -> Self {
        let kind = e.kind();
        let status = status_of(kind);
        if status.is_server_error() {
            let mut chain = e.to_string();
            let mut source = e.source();
            while let Some(s) = source {
                chain.push_str(": ");
                chain.push_str(&s.to_string());
                source = s.source();
            }
            tracing::error!(error = %chain, code = e.code(), "request failed");
            let message = match kind {
                ErrorKind::Unavailable => "the service is temporarily unavailable; retry later",
                ErrorKind::InsufficientStorage => "the media store is out of disk space",
                _ => "internal error",
            };
            return ApiError {
                status,
                code: e.code(),
                message: message.into(),
            };
        }
        ApiError {
            status,
            code: e.code(),
            message: e.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        // Browsers must not sniff an error body into something they would run.
        let nosniff = [(
            axum::http::header::X_CONTENT_TYPE_OPTIONS,
            axum::http::HeaderValue::from_static("nosniff"),
        )];
        (self.status, nosniff, Json(body)).into_response()
    }
}
