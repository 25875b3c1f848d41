//! `/healthz`: read-only probes of the index and the data folder; never repairs.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use crate::http::extract::has_service_token;
use crate::http::state::HttpState;

/// What callers without the service token see instead of the mirror's error
/// text, which may name internal hosts and addresses.
pub const HIDDEN_ERROR: &str = "failing (the details need the service token)";

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses(
        (status = 200, description = "Healthy", body = crate::http::openapi::Health),
        (status = 503, description = "The index, data folder or archive is not usable", body = crate::http::openapi::Health),
    ),
)]
pub async fn healthz(
    State(state): State<HttpState>,
    headers: HeaderMap,
) -> (StatusCode, Json<Value>) {
    let index_ok = state.media().index().read(|r| r.ping()).await.is_ok();
    let store = state.media().store().clone();
    let ((data_ok, archive_ok), remote_ok, backend) = crate::tasks::blocking(move || {
        (
            store.writable(),
            store.remote_reachable(),
            store.describe_backend(),
        )
    })
    .await
    .unwrap_or(((false, None), Some(false), String::new()));
    let backlog = state
        .media()
        .index()
        .read(|r| r.outbox_backlog())
        .await
        .ok();
    // Archived blobs are live data: an archive disk that cannot be used is
    // an outage for them.
    let healthy = index_ok && data_ok && archive_ok != Some(false) && remote_ok != Some(false);
    let word = |ok: bool| if ok { "ok" } else { "failing" };
    let mut checks = json!({ "index": word(index_ok), "data_dir": word(data_ok) });
    if let Some(ok) = archive_ok {
        checks["archive"] = json!(word(ok));
    }
    if let Some(ok) = remote_ok {
        checks["s3"] = json!(word(ok));
    }
    let mut mysql = state.mysql().health(backlog);
    if !has_service_token(&headers, &state) && mysql["last_error"].is_string() {
        mysql["last_error"] = json!(HIDDEN_ERROR);
    }
    let body = json!({
        "status": if healthy { "ok" } else { "unavailable" },
        "checks": checks,
        // `local`, or `s3 <endpoint>/<bucket>/<prefix>`.
        "backend": backend,
        // Detail only: MySQL being down does not make media-store unhealthy.
        "mysql": mysql,
    });
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}
