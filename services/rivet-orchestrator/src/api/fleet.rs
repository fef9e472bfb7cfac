//! Runners and queues.

use crate::error::ApiError;
use crate::fleet::{live_runners, presences, schedulability};
use crate::AppState;
use axum::extract::State;
use axum::Json;
use rivet_protocol::http::{QueueView, RunnerView};
use rivet_protocol::redis_keys::RunnerPresence;

fn view(r: &RunnerPresence, registration: Option<uuid::Uuid>) -> RunnerView {
    RunnerView {
        id: r.id.clone(),
        status: match (registration, r.draining) {
            (None, _) => "unregistered",
            (Some(_), true) => "draining",
            (Some(_), false) => "online",
        }
        .into(),
        capabilities: r.capabilities.clone(),
        labels: r.labels.clone(),
        registration,
        slots: r.slots,
        running: r.running.iter().map(|j| j.job_id).collect(),
        last_seen_ms: r.updated_at_ms,
    }
}

/// `GET /runners`: live runners with their registration's labels; a presence record without a
/// live registration (revoked, or written by something that never registered) shows as
/// `unregistered` with no labels; then the runners seen before and gone (`offline`).
/// Fleet-wide for every token, but a project token sees in `running` only its project's jobs
/// (API-01: no other project's job ids).
pub async fn runners(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
) -> Result<Json<Vec<RunnerView>>, ApiError> {
    let live = presences(&state).await?;
    let registered = crate::db::registrations::live(&state.db).await?;
    let mut views = Vec::with_capacity(live.len());
    for mut r in live.iter().cloned() {
        let registration = registered.get(&r.id).map(|(id, labels)| {
            r.labels = labels.clone();
            *id
        });
        if registration.is_none() {
            r.labels.clear();
        }
        // Remember every registered runner seen, so one that went away shows as offline.
        if registration.is_some() {
            sqlx::query(
                "INSERT INTO runners (id, capabilities, labels, slots) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (id) DO UPDATE SET capabilities = $2, labels = $3, slots = $4, last_seen = now()",
            )
            .bind(&r.id)
            .bind(&r.capabilities)
            .bind(sqlx::types::Json(&r.labels))
            .bind(r.slots as i32)
            .execute(&state.db)
            .await?;
        }
        views.push(view(&r, registration));
    }
    #[allow(clippy::type_complexity)]
    let seen: Vec<(String, Vec<String>, sqlx::types::Json<std::collections::BTreeMap<String, String>>, i32, i64)> =
        sqlx::query_as(
            "SELECT id, capabilities, labels, slots, (extract(epoch FROM last_seen) * 1000)::bigint FROM runners ORDER BY id",
        )
        .fetch_all(&state.db)
        .await?;
    for (id, capabilities, labels, slots, last_seen_ms) in seen {
        if !live.iter().any(|r| r.id == id) {
            views.push(RunnerView {
                registration: registered.get(&id).map(|(reg, _)| *reg),
                labels: registered
                    .get(&id)
                    .map_or(labels.0, |(_, labels)| labels.clone()),
                id,
                status: "offline".into(),
                capabilities,
                slots: slots as u32,
                running: Vec::new(),
                last_seen_ms,
            });
        }
    }
    views.sort_by(|a, b| a.id.cmp(&b.id));
    if let Some(project_id) = caller.project_id {
        let running: Vec<uuid::Uuid> = views.iter().flat_map(|v| v.running.clone()).collect();
        let own = crate::db::jobs::of_project(&state.db, &running, project_id).await?;
        for v in &mut views {
            v.running.retain(|id| own.contains(id));
        }
    }
    Ok(Json(views))
}

pub async fn queues(State(state): State<AppState>) -> Result<Json<Vec<QueueView>>, ApiError> {
    let live = live_runners(&state).await?;
    let oldest = crate::db::jobs::oldest_queued(&state.db).await?;
    let mut out = Vec::new();
    for (class_key, requires) in crate::db::jobs::classes(&state.db).await? {
        let queue = state.broker.topology().class_queue(&class_key);
        let stats = state
            .broker
            .queue_stats(&queue)
            .await
            .map_err(|e| ApiError::Internal(e.into()))?;
        out.push(QueueView {
            depth: stats.as_ref().map_or(0, |s| s.messages),
            consumers: stats.as_ref().map_or(0, |s| s.consumers),
            oldest_age_ms: oldest.get(&class_key).copied(),
            schedulability: schedulability(&requires, &live),
            class_key,
            requires,
        });
    }
    Ok(Json(out))
}

/// `POST /runners/{id}/drain`: the runner stops taking jobs, lets running jobs finish within its
/// grace period and exits. 202; 404 when no live runner has that id. Admin tokens only: it acts
/// on the fleet, not on a job.
pub async fn drain(
    _: crate::auth::Admin,
    State(state): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<(axum::http::StatusCode, Json<RunnerView>), ApiError> {
    let registered = crate::db::registrations::live(&state.db).await?;
    let live = presences(&state).await?;
    let Some(mut runner) = live.into_iter().find(|r| r.id == id) else {
        return Err(ApiError::NotFound(format!("no live runner `{id}`")));
    };
    send_drain(&state, &id, "drain requested through the API")
        .await
        .map_err(ApiError::Unavailable)?;
    tracing::info!(runner = %id, "Drain sent.");
    let registration = registered.get(&id).map(|(reg, labels)| {
        runner.labels = labels.clone();
        *reg
    });
    if registration.is_none() {
        runner.labels.clear();
    }
    runner.draining = true;
    Ok((
        axum::http::StatusCode::ACCEPTED,
        Json(view(&runner, registration)),
    ))
}

/// Orders runner `id` to drain.
pub async fn send_drain(state: &AppState, id: &str, reason: &str) -> anyhow::Result<()> {
    let order = rivet_protocol::messages::RunnerControl {
        schema: rivet_protocol::SCHEMA_VERSION,
        runner_id: id.to_owned(),
        command: rivet_protocol::messages::ControlCommand::Drain {
            reason: reason.into(),
        },
    };
    state.broker.publish_control(&order).await?;
    Ok(())
}
