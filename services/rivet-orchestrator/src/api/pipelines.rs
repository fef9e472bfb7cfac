//! Pipelines: push, list, show, run.

use super::body::Body;
use crate::auth::Scope;
use crate::error::ApiError;
use crate::{db, AppState};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use rivet_protocol::http::{
    CreateRun, JobState, JobView, PipelineSummary, PipelineView, PushPipeline,
};
use rivet_protocol::messages::JobDispatch;
use rivet_protocol::SCHEMA_VERSION;
use serde::Deserialize;
use uuid::Uuid;

/// A pipeline name: what `rivet run NAME` types.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The default name of a definition: its display name, lower-cased, spaces as `-`.
fn slug(display: &str) -> String {
    let mut out = String::new();
    for c in display.trim().chars() {
        if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_owned()
}

pub async fn push(
    State(state): State<AppState>,
    scope: Scope,
    Body(body): Body<PushPipeline>,
) -> Result<(StatusCode, Json<PipelineView>), ApiError> {
    let spec = state
        .linter
        .check(&body.file_name, &body.source)
        .await
        .map_err(ApiError::InvalidDefinition)?;
    let name = body.name.clone().unwrap_or_else(|| slug(&spec.name));
    if !valid_name(&name) {
        return Err(ApiError::BadRequest(format!(
            "pipeline name `{name}` must be 1-100 letters, digits, `-` or `_` (pass `name` to choose one)"
        )));
    }
    let version = db::pipelines::push(
        &state.db,
        scope.project_id,
        &name,
        &body.file_name,
        &body.source,
        &spec,
    )
    .await?;
    tracing::info!(pipeline = %name, version = version.view.version, "Pipeline pushed.");
    Ok((StatusCode::CREATED, Json(version.view)))
}

pub async fn list(
    State(state): State<AppState>,
    scope: Scope,
) -> Result<Json<Vec<PipelineSummary>>, ApiError> {
    Ok(Json(
        db::pipelines::list(&state.db, scope.project_id).await?,
    ))
}

#[derive(Debug, Deserialize)]
pub struct VersionQuery {
    version: Option<i32>,
}

pub async fn show(
    State(state): State<AppState>,
    scope: Scope,
    Path(name): Path<String>,
    Query(q): Query<VersionQuery>,
) -> Result<Json<PipelineView>, ApiError> {
    let version = db::pipelines::get(&state.db, scope.project_id, &name, q.version)
        .await?
        .ok_or_else(|| {
            ApiError::NotFound(format!("no pipeline `{name}`{}", version_suffix(q.version)))
        })?;
    Ok(Json(version.view))
}

fn version_suffix(v: Option<i32>) -> String {
    v.map(|v| format!(" version {v}")).unwrap_or_default()
}

pub async fn run(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    scope: Scope,
    Path(name): Path<String>,
    Body(body): Body<CreateRun>,
) -> Result<(StatusCode, Json<JobView>), ApiError> {
    // First with this orchestrator's guess of the latest version; if the insert finds a newer
    // one was pushed since, once more with the latest as PostgreSQL says (its inputs may differ).
    let mut guess = true;
    let (version, dispatch, created_at_ms) = loop {
        let (version, guessed) = state
            .pipeline_version(scope.project_id, &name, body.version, guess)
            .await?
            .ok_or_else(|| {
                ApiError::NotFound(format!(
                    "no pipeline `{name}`{}",
                    version_suffix(body.version)
                ))
            })?;
        let spec = &version.view.definition;
        let values = match rivet_core::input::resolve(&spec.inputs, &body.inputs) {
            Ok(values) => values,
            // The inputs may be right for a newer version than the guess: ask which is the
            // latest before saying they are wrong.
            Err(_) if guessed => {
                guess = false;
                continue;
            }
            Err(errors) => return Err(ApiError::InvalidInputs(errors)),
        };
        // The job carries every value as text, defaults included, so a runner needs no
        // definition knowledge beyond the source.
        let inputs = values
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect();
        let dispatch = JobDispatch {
            schema: SCHEMA_VERSION,
            job_id: Uuid::new_v4(),
            attempt: 1,
            pipeline: version.view.name.clone(),
            pipeline_version: version.view.version,
            file_name: version.file_name.clone(),
            source: version.source.clone(),
            inputs,
            class_key: version.view.class_key.clone(),
            requires: version.view.requires.clone(),
            timeout_ms: spec.timeout.map(|t| t.as_millis() as u64),
        };
        let queue_timeout = spec.queue_timeout.unwrap_or(state.queue_timeout);
        let created = state
            .inserts
            .create(db::jobs::NewJob::new(
                version.pipeline_id,
                &dispatch,
                &spec.retries,
                queue_timeout,
                guessed,
                caller.unchecked.as_deref(),
            ))
            .await?;
        match created {
            db::jobs::Created::At(at) => break (version, dispatch, at),
            db::jobs::Created::Revoked => return Err(ApiError::Unauthorized),
            db::jobs::Created::NewerVersion if guessed => guess = false,
            db::jobs::Created::NewerVersion => {
                return Err(ApiError::Internal(anyhow::anyhow!(
                    "the job insert refused a version it was not asked to check"
                )))
            }
        }
    };
    let runners = state.recent_runners().await?;
    let job = JobView {
        id: dispatch.job_id,
        project: version.view.project.clone(),
        pipeline: dispatch.pipeline,
        pipeline_version: dispatch.pipeline_version,
        state: JobState::Queued,
        attempt: dispatch.attempt,
        inputs: dispatch.inputs,
        schedulability: Some(crate::fleet::schedulability(&dispatch.requires, &runners)),
        class_key: dispatch.class_key,
        requires: dispatch.requires,
        created_at_ms,
        started_at_ms: None,
        finished_at_ms: None,
        outcome: None,
        runner_id: None,
        attempts: Vec::new(),
    };
    Ok((StatusCode::CREATED, Json(job)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn slugs() {
        assert_eq!(super::slug("Build and Deploy"), "build-and-deploy");
        assert_eq!(super::slug("  a/b: c  "), "a-b-c");
        assert!(super::valid_name("build-and-deploy"));
        assert!(!super::valid_name("a b"));
    }
}
