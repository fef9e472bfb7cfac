//! Projects: create, list. Admin tokens only (API-01).

use super::body::Body;
use crate::auth::Admin;
use crate::error::ApiError;
use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use rivet_protocol::http::{CreateProject, ProjectView};
use uuid::Uuid;

/// A project name: what `?project=` and `--project` take.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub async fn create(
    State(state): State<AppState>,
    _: Admin,
    Body(body): Body<CreateProject>,
) -> Result<(StatusCode, Json<ProjectView>), ApiError> {
    let name = body.name.trim();
    if !valid_name(name) {
        return Err(ApiError::BadRequest(format!(
            "project name `{name}` must be 1-100 letters, digits, `-` or `_`"
        )));
    }
    let id = Uuid::new_v4();
    let created: Option<i64> = sqlx::query_scalar(
        "INSERT INTO projects (id, name) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING \
         RETURNING (extract(epoch FROM created_at) * 1000)::bigint",
    )
    .bind(id)
    .bind(name)
    .fetch_optional(&state.db)
    .await?;
    let Some(created_at_ms) = created else {
        return Err(ApiError::Conflict(
            "project_exists",
            format!("project `{name}` already exists"),
        ));
    };
    tracing::info!(project = %name, "Project created.");
    Ok((
        StatusCode::CREATED,
        Json(ProjectView {
            id,
            name: name.into(),
            created_at_ms,
        }),
    ))
}

pub async fn list(
    State(state): State<AppState>,
    _: Admin,
) -> Result<Json<Vec<ProjectView>>, ApiError> {
    let rows: Vec<(Uuid, String, i64)> = sqlx::query_as(
        "SELECT id, name, (extract(epoch FROM created_at) * 1000)::bigint FROM projects ORDER BY name",
    )
    .fetch_all(&state.db)
    .await?;
    Ok(Json(
        rows.into_iter()
            .map(|(id, name, created_at_ms)| ProjectView {
                id,
                name,
                created_at_ms,
            })
            .collect(),
    ))
}
