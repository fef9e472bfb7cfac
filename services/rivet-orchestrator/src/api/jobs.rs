//! Jobs: list, show, logs, cancel, retry.

use super::body::Body;
use crate::auth::Scope;
use crate::error::ApiError;
use crate::{db, AppState};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use rivet_protocol::http::{JobState, JobView, LogPage};
use serde::Deserialize;
use uuid::Uuid;

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    state: Option<String>,
    pipeline: Option<String>,
    limit: Option<i64>,
}

pub async fn list(
    State(state): State<AppState>,
    scope: Scope,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<JobView>>, ApiError> {
    let job_state = match q.state.as_deref() {
        None => None,
        Some(s) => Some(JobState::parse(s).ok_or_else(|| {
            let all: Vec<&str> = JobState::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::BadRequest(format!("unknown state `{s}`; one of: {}", all.join(", ")))
        })?),
    };
    let filter = db::jobs::Filter {
        project_id: scope.project_id,
        state: job_state,
        pipeline: q.pipeline,
        limit: q.limit.unwrap_or(50).clamp(1, 1000),
    };
    let mut jobs = db::jobs::list(&state.db, &filter).await?;
    annotate(&state, &mut jobs).await?;
    Ok(Json(jobs))
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::NotFound(format!("no job `{id}`")))
}

/// The job's id, when the caller may see it: a job of another project is 404 with the words of
/// a job that does not exist (API-01: no existence leak).
async fn visible(state: &AppState, scope: &Scope, id: &str) -> Result<Uuid, ApiError> {
    let id = parse_id(id)?;
    if let Some(own) = scope.job_project() {
        if db::jobs::project_of(&state.db, id).await? != Some(own) {
            return Err(ApiError::NotFound(format!("no job `{id}`")));
        }
    }
    Ok(id)
}

/// Adds schedulability to queued jobs.
async fn annotate(state: &AppState, jobs: &mut [JobView]) -> Result<(), ApiError> {
    if jobs.iter().any(|j| j.state == JobState::Queued) {
        let runners = crate::fleet::live_runners(state).await?;
        for job in jobs.iter_mut().filter(|j| j.state == JobState::Queued) {
            job.schedulability = Some(crate::fleet::schedulability(&job.requires, &runners));
        }
    }
    Ok(())
}

pub async fn show(
    State(state): State<AppState>,
    scope: Scope,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let id = visible(&state, &scope, &id).await?;
    let mut job = db::jobs::get_with_attempts(&state.db, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no job `{id}`")))?;
    annotate(&state, std::slice::from_mut(&mut job)).await?;
    Ok(Json(job))
}

#[derive(Debug, Deserialize)]
pub struct LogQuery {
    attempt: Option<u32>,
    after: Option<u64>,
    limit: Option<i64>,
}

pub async fn logs(
    State(state): State<AppState>,
    scope: Scope,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<Json<LogPage>, ApiError> {
    let id = visible(&state, &scope, &id).await?;
    let job = db::jobs::get(&state.db, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no job `{id}`")))?;
    let attempt = q.attempt.unwrap_or(job.attempt);
    if attempt == 0 || attempt > job.attempt {
        return Err(ApiError::NotFound(format!(
            "job `{id}` has no attempt {attempt}"
        )));
    }
    let lines = db::logs::page(
        &state.db,
        id,
        attempt,
        q.after,
        q.limit.unwrap_or(1000).clamp(1, 10_000),
    )
    .await?;
    let complete = attempt < job.attempt || job.state.is_final();
    let next_after = lines.last().map(|l| l.seq).or(q.after);
    Ok(Json(LogPage {
        attempt,
        lines,
        next_after,
        complete,
    }))
}

#[derive(Debug, Default, Deserialize)]
pub struct CancelBody {
    reason: Option<String>,
}

/// `POST /jobs/{id}/cancel`: a queued job is cancelled at once; a running one is killed by its
/// runner (202 either way, with the job as it is now). A finished job: 409.
pub async fn cancel(
    State(state): State<AppState>,
    scope: Scope,
    Path(id): Path<String>,
    body: Option<Body<CancelBody>>,
) -> Result<(StatusCode, Json<JobView>), ApiError> {
    let id = visible(&state, &scope, &id).await?;
    let reason = body
        .and_then(|Body(b)| b.reason)
        .map(|r| r.chars().take(500).collect::<String>())
        .unwrap_or_else(|| "cancelled on request".into());
    match db::attempts::cancel(&state.db, id, &reason).await? {
        db::attempts::Cancel::NotFound => return Err(ApiError::NotFound(format!("no job `{id}`"))),
        db::attempts::Cancel::AlreadyFinal(s) => {
            return Err(ApiError::Conflict(
                "job_final",
                format!("job `{id}` is already {}", s.as_str()),
            ))
        }
        db::attempts::Cancel::Cancelled { attempt } => {
            tracing::info!(job_id = %id, attempt, "Queued job cancelled.");
            crate::fence::close(&state, id, attempt).await;
        }
        db::attempts::Cancel::Requested { runner_id, attempt } => {
            tracing::info!(job_id = %id, attempt, runner = %runner_id, "Cancel sent to the runner.");
            crate::fence::order_cancel(&state, &runner_id, id, attempt, &reason).await;
        }
    }
    Ok((StatusCode::ACCEPTED, Json(current(&state, id).await?)))
}

/// `POST /jobs/{id}/retry`: a finished job runs again as a new attempt with the same inputs.
pub async fn retry(
    State(state): State<AppState>,
    scope: Scope,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<JobView>), ApiError> {
    let id = visible(&state, &scope, &id).await?;
    match db::attempts::retry(&state.db, id).await? {
        db::attempts::Retry::NotFound => return Err(ApiError::NotFound(format!("no job `{id}`"))),
        db::attempts::Retry::NotFinal(s) => {
            return Err(ApiError::Conflict(
                "job_not_final",
                format!(
                    "job `{id}` is {}; only a finished job can be retried",
                    s.as_str()
                ),
            ))
        }
        db::attempts::Retry::Queued { attempt } => {
            tracing::info!(job_id = %id, attempt, "Job retried on request.");
            crate::fence::open(&state, id, attempt).await;
            state.relay_wakeup.notify_one();
        }
    }
    Ok((StatusCode::CREATED, Json(current(&state, id).await?)))
}

async fn current(state: &AppState, id: Uuid) -> Result<JobView, ApiError> {
    let mut job = db::jobs::get_with_attempts(&state.db, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no job `{id}`")))?;
    annotate(state, std::slice::from_mut(&mut job)).await?;
    Ok(job)
}
