//! `GET /metrics`: Prometheus text exposition of the process's metrics.
//!
//! Open to anyone unless `[metrics]` says otherwise: `token` asks for
//! `Authorization: Bearer <metrics token>`, `loopback_only` hides the route
//! (404) from clients that are not on the loopback interface.

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::error::ErrorKind;
use crate::http::error::ApiError;
use crate::http::server::Peer;
use crate::http::state::HttpState;

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus text exposition", content_type = "text/plain", body = String),
        (status = 503, description = "No metrics recorder in this process", content_type = "text/plain", body = String),
        (status = 401, description = "`metrics.token` is set and was not presented", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "`metrics.loopback_only` and the caller is not on loopback", body = crate::http::openapi::ErrorBody),
    ),
)]
pub async fn metrics(
    State(state): State<HttpState>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
) -> Response {
    let settings = state.settings();
    let config = &settings.metrics;
    if config.loopback_only && !peer.is_some_and(|Extension(p)| p.loopback) {
        return ApiError::new(ErrorKind::NotFound, "no_route", "no such route").into_response();
    }
    if !config.token.is_empty() {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or("");
        if !bool::from(presented.as_bytes().ct_eq(config.token.as_bytes())) {
            return ApiError::unauthorized().into_response();
        }
    }
    state.observe_gauges().await;
    match crate::telemetry::prometheus() {
        Some(handle) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            "# metrics recorder unavailable\n".to_owned(),
        )
            .into_response(),
    }
}
