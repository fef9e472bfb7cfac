//! The one error type of the HTTP boundary: a status and a stable machine `code`. The full
//! cause chain of an internal error is logged once, here, and never sent to the client.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use rivet_core::input::InputError;
use rivet_core::Problem;
use rivet_protocol::http::ApiError as Body;

/// An API error.
#[derive(Debug)]
pub enum ApiError {
    /// 401: no or a wrong bearer token.
    Unauthorized,
    /// 403: the token may not do this.
    Forbidden(&'static str),
    /// 404.
    NotFound(String),
    /// 400: the request is malformed.
    BadRequest(String),
    /// 413: the request body is over the API's cap.
    PayloadTooLarge(String),
    /// 400, 415 or 422 (the status axum chose): the JSON body is missing, not JSON, or does not
    /// fit the request type.
    InvalidBody(StatusCode, String),
    /// 422: the definition has problems.
    InvalidDefinition(Vec<Problem>),
    /// 422: inputs do not fit the definition.
    InvalidInputs(Vec<InputError>),
    /// A security rule refused the request (`status`, rule as `area.rule`, message): the body's
    /// code is `policy_violation` and its message reads `policy violation [rule]: message`.
    Policy(StatusCode, &'static str, String),
    /// 409: the request does not fit the resource's state (`code`, message).
    Conflict(&'static str, String),
    /// 503: a service the orchestrator depends on cannot be reached right now.
    Unavailable(anyhow::Error),
    /// 500: infrastructure trouble.
    Internal(anyhow::Error),
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        let unreachable = matches!(
            e,
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed
        );
        let e = anyhow::Error::new(e).context("querying PostgreSQL");
        if unreachable {
            Self::Unavailable(e)
        } else {
            Self::Internal(e)
        }
    }
}

impl From<redis::RedisError> for ApiError {
    fn from(e: redis::RedisError) -> Self {
        Self::Internal(anyhow::Error::new(e).context("querying Redis"))
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        Self::Internal(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            Self::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                body(
                    "unauthorized",
                    "a valid `Authorization: Bearer <token>` header is required",
                ),
            ),
            Self::Forbidden(why) => (StatusCode::FORBIDDEN, body("forbidden", why)),
            Self::NotFound(what) => (StatusCode::NOT_FOUND, body("not_found", &what)),
            Self::BadRequest(why) => (StatusCode::BAD_REQUEST, body("bad_request", &why)),
            Self::PayloadTooLarge(why) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                body("payload_too_large", &why),
            ),
            Self::InvalidBody(status, why) => (status, body("invalid_body", &why)),
            Self::InvalidDefinition(problems) => {
                let mut b = body(
                    "invalid_definition",
                    &format!("the definition has {} problem(s)", problems.len()),
                );
                b.problems = problems;
                (StatusCode::UNPROCESSABLE_ENTITY, b)
            }
            Self::InvalidInputs(fields) => {
                let mut b = body(
                    "invalid_inputs",
                    &format!("{} input error(s)", fields.len()),
                );
                b.fields = fields;
                (StatusCode::UNPROCESSABLE_ENTITY, b)
            }
            Self::Policy(status, rule, why) => (
                status,
                body(
                    "policy_violation",
                    &format!("policy violation [{rule}]: {why}"),
                ),
            ),
            Self::Conflict(code, why) => (StatusCode::CONFLICT, body(code, &why)),
            Self::Unavailable(e) => {
                tracing::warn!(error = %format!("{e:#}"), "Request failed: a dependency is unavailable.");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    body(
                        "unavailable",
                        "a service the orchestrator needs is unavailable; retry shortly",
                    ),
                )
            }
            Self::Internal(e) => {
                tracing::error!(error = %format!("{e:#}"), "Request failed.");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    body("internal", "internal error; see the orchestrator's log"),
                )
            }
        };
        (status, Json(body)).into_response()
    }
}

fn body(code: &str, message: &str) -> Body {
    Body {
        code: code.into(),
        message: message.into(),
        fields: Vec::new(),
        problems: Vec::new(),
    }
}
