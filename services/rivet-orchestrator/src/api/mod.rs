//! The HTTP API: `/healthz`, `/readyz`, and `/api/v1/*` behind bearer tokens.

mod body;
pub(crate) mod fleet;
mod jobs;
mod pipelines;
mod projects;
mod registrations;
mod tokens;

use crate::auth;
use crate::error::ApiError;
use crate::AppState;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use axum::{middleware, Json, Router};

/// Largest request body (a pipeline definition is at most 1 MiB of Lua).
pub const MAX_BODY: usize = 2 << 20;

/// The whole router.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/pipelines", post(pipelines::push).get(pipelines::list))
        .route("/pipelines/{name}", get(pipelines::show))
        .route("/jobs", get(jobs::list))
        .route("/jobs/{id}", get(jobs::show))
        .route("/jobs/{id}/logs", get(jobs::logs))
        .route("/jobs/{id}/cancel", post(jobs::cancel))
        .route("/jobs/{id}/retry", post(jobs::retry))
        .route("/runners", get(fleet::runners))
        .route("/runners/{id}/drain", post(fleet::drain))
        .route(
            "/runners/registrations",
            post(registrations::create).get(registrations::list),
        )
        .route("/runners/registrations/{id}", delete(registrations::revoke))
        .route("/queues", get(fleet::queues))
        .route("/projects", post(projects::create).get(projects::list))
        .route("/tokens", post(tokens::create).get(tokens::list))
        .route("/tokens/{id}", delete(tokens::revoke))
        .fallback(|| async { ApiError::NotFound("no such API route".into()) })
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    // Submitting a run checks the token in the statement that inserts the job (one round trip
    // less on the busiest route); only that route may use this middleware.
    let submit = Router::new()
        .route("/pipelines/{name}/runs", post(pipelines::run))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token_checked_by_route,
        ));
    // Runners authenticate with their own token (`registrations::RunnerToken`), not an API
    // token, so this route is outside `require_token`.
    let runner_api = Router::new().route("/runners/register", post(registrations::register));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/dashboard", get(dashboard))
        .nest("/api/v1", runner_api.merge(submit).merge(api))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Ready when PostgreSQL, Redis and RabbitMQ answer.
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let db = sqlx::query("SELECT 1").execute(&state.db).await.is_ok();
    let mut conn = state.redis.clone();
    let redis = redis::cmd("PING")
        .query_async::<String>(&mut conn)
        .await
        .is_ok();
    let amqp = state
        .broker
        .queue_stats(&state.broker.topology().reports_queue())
        .await
        .is_ok();
    let body = serde_json::json!({ "postgres": db, "redis": redis, "rabbitmq": amqp });
    let status = if db && redis && amqp {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// The operators' dashboard: one static page (no data in it) that asks for a token and polls
/// `/api/v1/queues`, `/runners` and `/jobs` every 2 s, rendering text only.
async fn dashboard() -> impl IntoResponse {
    (
        [
            (axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                axum::http::header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'",
            ),
            (axum::http::header::X_FRAME_OPTIONS, "DENY"),
            (axum::http::header::CACHE_CONTROL, "no-store"),
        ],
        include_str!("dashboard.html"),
    )
}
