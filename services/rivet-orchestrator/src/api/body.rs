//! Request bodies: axum's `Json` with its rejections turned into [`ApiError`]s, so a body that
//! is too large or malformed gets the same JSON error shape, with a stable code, as every other
//! refusal (axum's own rejections are plain text).

use crate::error::ApiError;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, OptionalFromRequest, Request};
use axum::http::StatusCode;
use axum::Json;
use serde::de::DeserializeOwned;

/// A JSON request body.
#[derive(Debug, Clone)]
pub struct Body<T>(pub T);

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(format!(
                "the request body is larger than the limit of {} bytes",
                super::MAX_BODY
            ))
        } else {
            ApiError::InvalidBody(rejection.status(), rejection.body_text())
        }
    }
}

impl<T, S> FromRequest<S> for Body<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(value) = <Json<T> as FromRequest<S>>::from_request(req, state).await?;
        Ok(Body(value))
    }
}

impl<T, S> OptionalFromRequest<S> for Body<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Option<Self>, Self::Rejection> {
        let value = <Json<T> as OptionalFromRequest<S>>::from_request(req, state).await?;
        Ok(value.map(|Json(v)| Body(v)))
    }
}
