//! `/v1/uploaders/{uploader_id}/usage`: an uploader's footprint and quota.

use axum::Json;
use axum::extract::State;
use serde::Serialize;

use crate::app::AppState;
use crate::http::error::ApiError;
use crate::http::extract::{ApiPath, ServiceAuth};
use crate::lifecycle::refs::{self, Usage};

#[derive(Serialize)]
pub struct UsageView {
    #[serde(flatten)]
    usage: Usage,
    /// The configured byte quota per uploader; null when unlimited.
    quota_bytes: Option<u64>,
    /// The configured file-count quota per uploader; null when unlimited.
    quota_files: Option<u64>,
}

/// `GET /v1/uploaders/{uploader_id}/usage`
pub async fn get_usage(
    _: ServiceAuth,
    State(state): State<AppState>,
    ApiPath(uploader_id): ApiPath<i64>,
) -> Result<Json<UsageView>, ApiError> {
    let usage = refs::usage_async(state.media().index(), uploader_id).await?;
    let retention = &state.config().retention;
    let limit = |v: u64| (v > 0).then_some(v);
    Ok(Json(UsageView {
        usage,
        quota_bytes: limit(retention.quota_bytes),
        quota_files: limit(retention.quota_files),
    }))
}
