//! Extractors whose rejections are `ApiError`s, so every failure is JSON and a 4xx.

use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::http::state::HttpState;

/// Proof that the request carried the service token.
pub struct ServiceAuth;

impl FromRequestParts<HttpState> for ServiceAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &HttpState) -> Result<Self, ApiError> {
        if has_service_token(&parts.headers, state) {
            Ok(ServiceAuth)
        } else {
            Err(ApiError::unauthorized())
        }
    }
}

/// Whether `headers` carry the service token (for routes that answer
/// everyone but tell the backend more, such as `/healthz`).
pub fn has_service_token(headers: &axum::http::HeaderMap, state: &HttpState) -> bool {
    let Some(presented) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
    else {
        return false;
    };
    let expected = state.api_token();
    // Constant time, so the token cannot be guessed byte by byte from timing.
    !expected.is_empty() && bool::from(presented.as_bytes().ct_eq(expected.as_bytes()))
}

/// `Query<T>` with a JSON 400 on malformed or missing parameters.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| ApiQuery(v))
            .map_err(|e| ApiError::bad_request("bad_query", e.body_text()))
    }
}

/// `Path<T>` with a JSON 400 on a malformed segment (e.g. a non-numeric id).
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| ApiPath(v))
            .map_err(|e| ApiError::bad_request("bad_path", e.body_text()))
    }
}
