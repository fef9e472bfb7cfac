//! Applies runner reports: in order, idempotently (by job, attempt and sequence), and only from
//! the runner that holds the job's lease for that attempt.

use crate::db;
use crate::AppState;
use redis::AsyncCommands;
use rivet_protocol::messages::{ReportBody, RunnerReport};
use rivet_protocol::redis_keys::lease_value;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Deletes the lease only if it still holds the given value.
const RELEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

/// What became of a report.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// Stored.
    Stored,
    /// Ignored: a stale attempt, a runner without the lease, or a duplicate.
    Ignored(&'static str),
}

/// Reports applied at once, each lane in order: a job's reports always take the same lane.
const LANES: usize = 8;

/// Consumes the reports queue until `shutdown`. Reports are spread over [`LANES`] tasks by job,
/// so jobs are applied in parallel and each job's reports in order.
pub async fn run(state: AppState, shutdown: CancellationToken) -> anyhow::Result<()> {
    let queue = state.broker.topology().reports_queue();
    let mut sub = state
        .broker
        .consume::<RunnerReport>(&queue, 400, "orchestrator-reports")
        .await?;
    let mut lanes = Vec::with_capacity(LANES);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..LANES {
        let (tx, rx) = tokio::sync::mpsc::channel(128);
        lanes.push(tx);
        tasks.spawn(lane(state.clone(), rx, shutdown.clone()));
    }
    let result = loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            next = sub.next() => next,
        };
        match next {
            Some(Ok(incoming)) => {
                let lane = (incoming.message.job_id.as_u128() % LANES as u128) as usize;
                if lanes[lane].send(incoming).await.is_err() {
                    break Ok(());
                }
            }
            Some(Err(e)) => tracing::warn!(error = %e, "Receiving a report failed."),
            None => break Err(anyhow::anyhow!("the reports consumer ended")),
        }
    };
    drop(lanes);
    while tasks.join_next().await.is_some() {}
    result
}

/// Applies one lane's reports in order. Infrastructure trouble is retried in place (never
/// requeued, which would reorder a job's reports) until it clears or the orchestrator stops.
async fn lane(
    state: AppState,
    mut rx: tokio::sync::mpsc::Receiver<rivet_amqp::Incoming<RunnerReport>>,
    shutdown: CancellationToken,
) {
    while let Some(incoming) = rx.recv().await {
        let mut delay = Duration::from_millis(100);
        loop {
            match apply(&state, &incoming.message).await {
                Ok(applied) => {
                    if let Applied::Ignored(why) = applied {
                        tracing::warn!(job_id = %incoming.message.job_id, attempt = incoming.message.attempt,
                            runner = %incoming.message.runner_id, why, "Ignored a runner report.");
                    }
                    if let Err(e) = incoming.ack().await {
                        tracing::warn!(error = %e, "Acknowledging a report failed.");
                    }
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "Applying a report failed; retrying.");
                    tokio::select! {
                        _ = shutdown.cancelled() => {
                            let _ = incoming.reject(true).await;
                            return;
                        }
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// Applies one report.
pub async fn apply(state: &AppState, report: &RunnerReport) -> anyhow::Result<Applied> {
    let mut redis = state.redis.clone();
    let lease_key = state.keys.lease(report.job_id);
    let expected = lease_value(&report.runner_id, report.attempt);
    let holder: Option<String> = redis.get(&lease_key).await?;
    if holder.as_deref() != Some(expected.as_str()) {
        return Ok(Applied::Ignored(
            "the runner does not hold the job's lease for this attempt",
        ));
    }
    let (job, attempt, runner) = (report.job_id, report.attempt, report.runner_id.as_str());
    if let ReportBody::Started = report.body {
        return Ok(if db::jobs::start(&state.db, job, attempt, runner).await? {
            Applied::Stored
        } else {
            Applied::Ignored("the job is not waiting for this attempt")
        });
    }
    // One transaction per report, however many stage events and log lines it carries: every
    // commit waits for the disk.
    let mut tx = state.db.begin().await?;
    if !db::jobs::is_running(&mut tx, job, attempt, runner).await? {
        return Ok(Applied::Ignored(
            "the attempt is not running on this runner",
        ));
    }
    let bodies = match &report.body {
        ReportBody::Batch { bodies } => bodies.as_slice(),
        body => std::slice::from_ref(body),
    };
    let mut finished = false;
    for body in bodies {
        finished |= apply_body(&mut tx, report, body).await?;
    }
    tx.commit().await?;
    if finished {
        let _: i64 = redis::Script::new(RELEASE)
            .key(&lease_key)
            .arg(&expected)
            .invoke_async(&mut redis)
            .await?;
    }
    Ok(Applied::Stored)
}

/// Applies one report body of a running attempt in `tx`. Returns whether the attempt finished.
async fn apply_body(
    tx: &mut sqlx::PgConnection,
    report: &RunnerReport,
    body: &ReportBody,
) -> anyhow::Result<bool> {
    let (job, attempt) = (report.job_id, report.attempt);
    match body {
        // `Started` comes alone, and batches do not nest: either inside a batch is ignored.
        ReportBody::Started | ReportBody::Batch { .. } => {}
        ReportBody::StageStarted { index, name, .. } => {
            let update = db::jobs::StageUpdate {
                job_id: job,
                attempt,
                index: *index,
                name,
                state: "running",
                duration_ms: None,
                error: None,
            };
            db::jobs::stage(tx, &update).await?;
        }
        ReportBody::StageFinished {
            index,
            name,
            outcome,
            duration_ms,
            error,
        } => {
            let word = serde_json::to_value(outcome)?
                .as_str()
                .unwrap_or("failed")
                .to_owned();
            let update = db::jobs::StageUpdate {
                job_id: job,
                attempt,
                index: *index,
                name,
                state: &word,
                duration_ms: Some(*duration_ms),
                error: error.as_deref(),
            };
            db::jobs::stage(tx, &update).await?;
        }
        ReportBody::Logs { lines } => db::logs::insert(tx, job, attempt, lines).await?,
        ReportBody::Finished { outcome } => {
            db::jobs::finish(tx, job, attempt, outcome).await?;
            return Ok(true);
        }
    }
    Ok(false)
}
