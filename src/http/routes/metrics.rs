//! `GET /metrics`: Prometheus text exposition of the process's metrics.

use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus text exposition", content_type = "text/plain", body = String),
        (status = 503, description = "No metrics recorder in this process", content_type = "text/plain", body = String),
    ),
)]
pub async fn metrics() -> impl IntoResponse {
    match crate::telemetry::prometheus() {
        Some(handle) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        ),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            "# metrics recorder unavailable\n".to_owned(),
        ),
    }
}
