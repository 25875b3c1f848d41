//! `/v1/uploaders/{uploader_id}/usage`: an uploader's footprint and quota.

use axum::Json;
use axum::extract::State;
use serde::Serialize;

use crate::http::error::ApiError;
use crate::http::extract::{ApiPath, ServiceAuth};
use crate::http::state::HttpState;
use crate::lifecycle::refs::Usage;

#[derive(Serialize, utoipa::ToSchema)]
pub struct UsageView {
    #[serde(flatten)]
    usage: Usage,
    /// The configured byte quota per uploader; null when unlimited.
    quota_bytes: Option<u64>,
    /// The configured file-count quota per uploader; null when unlimited.
    quota_files: Option<u64>,
}

/// `GET /v1/uploaders/{uploader_id}/usage`
#[utoipa::path(
    get,
    path = "/v1/uploaders/{uploader_id}/usage",
    tag = "media",
    params(("uploader_id" = i64, Path, minimum = 0, description = "Uploader id")),
    responses(
        (status = 200, description = "Footprint and quota", body = UsageView),
        (status = 400, description = "bad_path", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "unauthorized: missing or wrong bearer token", body = crate::http::openapi::ErrorBody),
        (status = "5XX", description = "index_unavailable (503), disk_full or quota_exceeded (507), internal (500)", body = crate::http::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn get_usage(
    _: ServiceAuth,
    State(state): State<HttpState>,
    ApiPath(uploader_id): ApiPath<i64>,
) -> Result<Json<UsageView>, ApiError> {
    if uploader_id < 0 {
        return Err(ApiError::bad_request(
            "bad_path",
            format!(
                "`{uploader_id}` in the path is not an uploader id: {}",
                crate::http::extract::UPLOADER_ID_IS
            ),
        ));
    }
    let usage = state.refs().usage(uploader_id).await?;
    let quota = state.media().quota();
    let limit = |v: u64| (v > 0).then_some(v);
    Ok(Json(UsageView {
        usage,
        quota_bytes: limit(quota.bytes),
        quota_files: limit(quota.files),
    }))
}
