//! `/v1/messages` and `/v1/groups`: which message carries which media.
//! Parse, call `lifecycle::refs`, serialize.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::http::error::ApiError;
use crate::http::extract::{ApiPath, ServiceAuth};
use crate::http::state::HttpState;
use crate::http::views::MediaView;
use crate::lifecycle::refs::{Attached, Released};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachBody {
    group_id: i64,
}

/// `PUT /v1/messages/{message_id}/media/{media_id}` with `{"group_id": G}`.
/// Idempotent: 201 when the reference is new, 200 when it already existed.
#[utoipa::path(
    put,
    path = "/v1/messages/{message_id}/media/{media_id}",
    tag = "messages",
    params(
        ("message_id" = i64, Path, description = "The chat backend's message id"),
        ("media_id" = i64, Path, description = "Media id"),
    ),
    request_body(content = AttachBody, content_type = "application/json"),
    responses(
        (status = 201, description = "The reference is new", body = Attached),
        (status = 200, description = "The reference already existed", body = Attached),
        (status = 400, description = "bad_path, bad_body", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "unauthorized: missing or wrong bearer token", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "media_not_found", body = crate::http::openapi::ErrorBody),
        (status = 409, description = "group_mismatch", body = crate::http::openapi::ErrorBody),
        (status = "5XX", description = "index_unavailable (503), disk_full or quota_exceeded (507), internal (500)", body = crate::http::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn attach_media(
    _: ServiceAuth,
    State(state): State<HttpState>,
    ApiPath((message_id, media_id)): ApiPath<(i64, i64)>,
    body: Result<Json<AttachBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Attached>), ApiError> {
    let Json(body) = body.map_err(|e| match e {
        JsonRejection::MissingJsonContentType(_) => ApiError::bad_request(
            "bad_body",
            "send the body as JSON with `Content-Type: application/json`",
        ),
        _ => ApiError::bad_request(
            "bad_body",
            "the body must be the JSON object `{\"group_id\": N}` with a whole number N",
        ),
    })?;
    let attached = state
        .refs()
        .attach(message_id, media_id, body.group_id)
        .await?;
    let status = if attached.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(attached)))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct MessageReleased {
    message_id: i64,
    #[serde(flatten)]
    released: Released,
}

/// `DELETE /v1/messages/{message_id}`: releases the message's references;
/// media left without any are deleted. Idempotent (an unknown message releases 0).
#[utoipa::path(
    delete,
    path = "/v1/messages/{message_id}",
    tag = "messages",
    params(("message_id" = i64, Path, description = "The chat backend's message id")),
    responses(
        (status = 200, description = "Released (0 for an unknown message)", body = MessageReleased),
        (status = 400, description = "bad_path", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "unauthorized: missing or wrong bearer token", body = crate::http::openapi::ErrorBody),
        (status = "5XX", description = "index_unavailable (503), disk_full or quota_exceeded (507), internal (500)", body = crate::http::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn delete_message(
    _: ServiceAuth,
    State(state): State<HttpState>,
    ApiPath(message_id): ApiPath<i64>,
) -> Result<Json<MessageReleased>, ApiError> {
    let released = state.refs().delete_message(message_id).await?;
    tracing::info!(
        message.id = message_id,
        references = released.references,
        media_deleted = released.media_deleted,
        "released message"
    );
    Ok(Json(MessageReleased {
        message_id,
        released,
    }))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct GroupReleased {
    group_id: i64,
    #[serde(flatten)]
    released: Released,
}

/// `DELETE /v1/groups/{group_id}`: releases every message of the group, in one
/// set-based transaction.
#[utoipa::path(
    delete,
    path = "/v1/groups/{group_id}",
    tag = "messages",
    params(("group_id" = i64, Path, description = "The chat backend's group id")),
    responses(
        (status = 200, description = "Released", body = GroupReleased),
        (status = 400, description = "bad_path", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "unauthorized: missing or wrong bearer token", body = crate::http::openapi::ErrorBody),
        (status = "5XX", description = "index_unavailable (503), disk_full or quota_exceeded (507), internal (500)", body = crate::http::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn delete_group(
    _: ServiceAuth,
    State(state): State<HttpState>,
    ApiPath(group_id): ApiPath<i64>,
) -> Result<Json<GroupReleased>, ApiError> {
    let released = state.refs().delete_group(group_id).await?;
    tracing::info!(
        group.id = group_id,
        messages = released.messages,
        references = released.references,
        media_deleted = released.media_deleted,
        "released group"
    );
    Ok(Json(GroupReleased { group_id, released }))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct MessageMedia {
    message_id: i64,
    /// Null when the message carries no media.
    group_id: Option<i64>,
    items: Vec<MediaView>,
}

/// `GET /v1/messages/{message_id}/media`: the media a message carries (an empty
/// list for a message that carries none).
#[utoipa::path(
    get,
    path = "/v1/messages/{message_id}/media",
    tag = "messages",
    params(("message_id" = i64, Path, description = "The chat backend's message id")),
    responses(
        (status = 200, description = "The media the message carries", body = MessageMedia),
        (status = 400, description = "bad_path", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "unauthorized: missing or wrong bearer token", body = crate::http::openapi::ErrorBody),
        (status = "5XX", description = "index_unavailable (503), disk_full or quota_exceeded (507), internal (500)", body = crate::http::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn list_message_media(
    _: ServiceAuth,
    State(state): State<HttpState>,
    ApiPath(message_id): ApiPath<i64>,
) -> Result<Json<MessageMedia>, ApiError> {
    let (group_id, rows) = state.refs().message_media(message_id).await?;
    let base = state.public_base_url();
    Ok(Json(MessageMedia {
        message_id,
        group_id,
        items: rows.iter().map(|r| MediaView::new(r, &base)).collect(),
    }))
}
