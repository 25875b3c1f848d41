//! `/healthz`: read-only probes of the index and the data folder; never repairs.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::app::AppState;

pub async fn healthz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let index_ok = state
        .media()
        .index()
        .read(|c| Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?))
        .await
        .is_ok();
    let store = state.media().store().clone();
    let data_ok = crate::tasks::blocking(move || {
        [Some(store.blobs_dir()), Some(store.tmp_dir())]
            .into_iter()
            .chain([store.archive_blobs_dir(), store.archive_tmp_dir()])
            .flatten()
            .all(|d| {
                nix::unistd::access(
                    d,
                    nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
                )
                .is_ok()
            })
    })
    .await
    .unwrap_or(false);
    let backlog = state
        .media()
        .index()
        .read(crate::sync::outbox::backlog)
        .await
        .ok();
    let healthy = index_ok && data_ok;
    let word = |ok: bool| if ok { "ok" } else { "failing" };
    let body = json!({
        "status": if healthy { "ok" } else { "unavailable" },
        "checks": { "index": word(index_ok), "data_dir": word(data_ok) },
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
