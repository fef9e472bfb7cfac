//! Runners and queues.

use crate::error::ApiError;
use crate::fleet::{live_runners, schedulability};
use crate::AppState;
use axum::extract::State;
use axum::Json;
use rivet_protocol::http::{QueueView, RunnerView};

pub async fn runners(State(state): State<AppState>) -> Result<Json<Vec<RunnerView>>, ApiError> {
    let live = live_runners(&state).await?;
    let mut views: Vec<RunnerView> = live
        .iter()
        .map(|r| RunnerView {
            id: r.id.clone(),
            status: if r.draining { "draining" } else { "online" }.into(),
            capabilities: r.capabilities.clone(),
            labels: r.labels.clone(),
            slots: r.slots,
            running: r.running.iter().map(|j| j.job_id).collect(),
            last_seen_ms: r.updated_at_ms,
        })
        .collect();
    // Remember every runner seen, so one that went away shows as offline.
    for r in &live {
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
                id,
                status: "offline".into(),
                capabilities,
                labels: labels.0,
                slots: slots as u32,
                running: Vec::new(),
                last_seen_ms,
            });
        }
    }
    views.sort_by(|a, b| a.id.cmp(&b.id));
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

/// `POST /runners/{id}/drain`: the runner stops taking jobs, lets running ones finish within its
/// grace period and exits. 202; 404 when no live runner has that id. Admin tokens only: it acts
/// on the fleet, not on a job.
pub async fn drain(
    _: crate::auth::Admin,
    State(state): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<(axum::http::StatusCode, Json<RunnerView>), ApiError> {
    let live = live_runners(&state).await?;
    let Some(runner) = live.into_iter().find(|r| r.id == id) else {
        return Err(ApiError::NotFound(format!("no live runner `{id}`")));
    };
    let order = rivet_protocol::messages::RunnerControl {
        schema: rivet_protocol::SCHEMA_VERSION,
        runner_id: id.clone(),
        command: rivet_protocol::messages::ControlCommand::Drain {
            reason: "drain requested through the API".into(),
        },
    };
    state
        .broker
        .publish_control(&order)
        .await
        .map_err(|e| ApiError::Unavailable(e.into()))?;
    tracing::info!(runner = %id, "Drain sent.");
    Ok((
        axum::http::StatusCode::ACCEPTED,
        Json(RunnerView {
            id: runner.id.clone(),
            status: "draining".into(),
            capabilities: runner.capabilities.clone(),
            labels: runner.labels.clone(),
            slots: runner.slots,
            running: runner.running.iter().map(|j| j.job_id).collect(),
            last_seen_ms: runner.updated_at_ms,
        }),
    ))
}
