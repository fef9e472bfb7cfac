//! Tokens: create (shown once), list, revoke. Admin tokens only. A token made here is a project
//! token (API-01): `project` names its project, `default` when absent.

use super::body::Body;
use crate::auth::{self, Admin};
use crate::error::ApiError;
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use rivet_protocol::http::{CreateToken, TokenView};
use uuid::Uuid;

pub async fn create(
    State(state): State<AppState>,
    _: Admin,
    Body(body): Body<CreateToken>,
) -> Result<(StatusCode, Json<TokenView>), ApiError> {
    let name = body.name.trim();
    if name.is_empty() || name.len() > 100 {
        return Err(ApiError::BadRequest(
            "a token needs a name of 1-100 characters".into(),
        ));
    }
    let project = body
        .project
        .unwrap_or_else(|| auth::DEFAULT_PROJECT.to_owned());
    let project_id: Uuid = sqlx::query_scalar("SELECT id FROM projects WHERE name = $1")
        .bind(&project)
        .fetch_optional(&state.db)
        .await?
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "no project `{project}` (create it with `rivet project create`)"
            ))
        })?;
    let secret = auth::generate();
    let id = Uuid::new_v4();
    let (created_at_ms,): (i64,) = sqlx::query_as(
        "INSERT INTO tokens (id, name, hash, project_id) VALUES ($1, $2, $3, $4) \
         RETURNING (extract(epoch FROM created_at) * 1000)::bigint",
    )
    .bind(id)
    .bind(name)
    .bind(auth::hash(&secret))
    .bind(project_id)
    .fetch_one(&state.db)
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(TokenView {
            id,
            name: name.into(),
            project: Some(project),
            secret: Some(secret),
            created_at_ms,
            revoked_at_ms: None,
        }),
    ))
}

pub async fn list(
    State(state): State<AppState>,
    _: Admin,
) -> Result<Json<Vec<TokenView>>, ApiError> {
    /// Id, name, project, created, revoked.
    type Row = (Uuid, String, Option<String>, i64, Option<i64>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT t.id, t.name, p.name, (extract(epoch FROM t.created_at) * 1000)::bigint, \
         (extract(epoch FROM t.revoked_at) * 1000)::bigint \
         FROM tokens t LEFT JOIN projects p ON p.id = t.project_id ORDER BY t.created_at",
    )
    .fetch_all(&state.db)
    .await?;
    Ok(Json(
        rows.into_iter()
            .map(
                |(id, name, project, created_at_ms, revoked_at_ms)| TokenView {
                    id,
                    name,
                    project,
                    secret: None,
                    created_at_ms,
                    revoked_at_ms,
                },
            )
            .collect(),
    ))
}

pub async fn revoke(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::NotFound(format!("no token `{id}`")))?;
    let done =
        sqlx::query("UPDATE tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL")
            .bind(id)
            .execute(&state.db)
            .await?
            .rows_affected();
    if done == 0 {
        return Err(ApiError::NotFound(format!("no active token `{id}`")));
    }
    Ok(StatusCode::NO_CONTENT)
}
