//! `/healthz`: read-only probes of the index and the data folder; never repairs.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::http::state::HttpState;

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses(
        (status = 200, description = "Healthy", body = crate::http::openapi::Health),
        (status = 503, description = "The index, data folder or archive is not usable", body = crate::http::openapi::Health),
    ),
)]
pub async fn healthz(State(state): State<HttpState>) -> (StatusCode, Json<Value>) {
    let index_ok = state.media().index().read(|r| r.ping()).await.is_ok();
    let store = state.media().store().clone();
    let (data_ok, archive_ok) = crate::tasks::blocking(move || store.writable())
        .await
        .unwrap_or((false, None));
    let backlog = state
        .media()
        .index()
        .read(|r| r.outbox_backlog())
        .await
        .ok();
    // Archived blobs are live data: an archive disk that cannot be used is
    // an outage for them.
    let healthy = index_ok && data_ok && archive_ok != Some(false);
    let word = |ok: bool| if ok { "ok" } else { "failing" };
    let mut checks = json!({ "index": word(index_ok), "data_dir": word(data_ok) });
    if let Some(ok) = archive_ok {
        checks["archive"] = json!(word(ok));
    }
    let body = json!({
        "status": if healthy { "ok" } else { "unavailable" },
        "checks": checks,
        // Detail only: MySQL being down does not make media-store unhealthy.
        "mysql": state.mysql().health(backlog),
    });
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}
