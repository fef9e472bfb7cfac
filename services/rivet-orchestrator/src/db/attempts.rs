//! The life of attempts after submit: how one ends (and whether another follows), cancel, a
//! manual retry, and what the reaper needs. Every change is conditional on the state it expects
//! and takes the job's row lock first, so orchestrators can race on the same job safely: exactly
//! one of them changes it.

use rivet_core::definition::RetrySpec;
use rivet_core::JobOutcome;
use rivet_protocol::http::JobState;
use rivet_protocol::messages::JobDispatch;
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};
use std::time::Duration;
use uuid::Uuid;

/// What ending an attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The job took its final state.
    Final(JobState),
    /// Another attempt is queued (published once its backoff has passed).
    Retrying {
        /// The new attempt's number.
        attempt: u32,
    },
    /// The job is not at that attempt in one of the expected states: nothing changed.
    Stale,
}

/// The job row's fields that decide an attempt's end, as read (or written) by a transaction
/// that holds the row's lock: they cannot change before it ends, except by its own statements.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Locked {
    /// The job's state.
    pub state: String,
    /// Its current attempt.
    pub attempt: i32,
    /// The runner of its current attempt.
    pub runner_id: Option<String>,
    /// Its retry rule.
    pub retry: Json<RetrySpec>,
    /// Whether someone asked to cancel it.
    pub cancel_requested: bool,
}

async fn lock(tx: &mut PgConnection, job_id: Uuid) -> sqlx::Result<Option<Locked>> {
    sqlx::query_as(
        "SELECT state, attempt, runner_id, retry, cancel_requested_at IS NOT NULL AS cancel_requested \
         FROM jobs WHERE id = $1 FOR UPDATE",
    )
    .bind(job_id)
    .fetch_optional(tx)
    .await
}

/// Which attempt states an ending applies to, and whether it may lead to a retry.
#[derive(Debug, Clone, Copy)]
pub struct Ending<'a> {
    /// The job must be in one of these states (`queued`, `running`).
    pub from: &'a [&'a str],
    /// When set, the job's runner must be this one.
    pub runner: Option<&'a str>,
    /// Whether the job's retry rule is consulted (a queue timeout or a cancel never retries).
    pub may_retry: bool,
}

/// Ends `attempt` with `outcome`, in the caller's transaction. When the job's retry rule covers
/// the outcome (and nobody asked to cancel), queues the next attempt: a new attempt row and an
/// outbox row that becomes available after the backoff. Otherwise the job takes the outcome's
/// final state.
pub async fn end(
    tx: &mut PgConnection,
    job_id: Uuid,
    attempt: u32,
    outcome: &JobOutcome,
    ending: Ending<'_>,
) -> sqlx::Result<Ended> {
    let Some(cur) = lock(tx, job_id).await? else {
        return Ok(Ended::Stale);
    };
    end_locked(tx, job_id, attempt, outcome, ending, cur).await
}

/// [`end`], for a transaction that already holds the job's row lock and read (or wrote) `cur`
/// under it: a report's `Started` or its check that the attempt is running took the lock, so
/// ending the attempt in the same transaction need not read the row again.
pub async fn end_locked(
    tx: &mut PgConnection,
    job_id: Uuid,
    attempt: u32,
    outcome: &JobOutcome,
    ending: Ending<'_>,
    cur: Locked,
) -> sqlx::Result<Ended> {
    if cur.attempt as u32 != attempt
        || !ending.from.contains(&cur.state.as_str())
        || ending
            .runner
            .is_some_and(|r| cur.runner_id.as_deref() != Some(r))
    {
        return Ok(Ended::Stale);
    }
    let retry = ending.may_retry && !cur.cancel_requested && cur.retry.0.retries(attempt, outcome);
    if retry {
        close(tx, job_id, attempt, outcome, None).await?;
        let next = attempt + 1;
        queue_attempt(tx, job_id, next, cur.retry.0.backoff).await?;
        return Ok(Ended::Retrying { attempt: next });
    }
    close(tx, job_id, attempt, outcome, Some(outcome)).await?;
    Ok(Ended::Final(JobState::from_outcome(outcome)))
}

/// Ends attempt `$2` of job `$1` with state `$3` and outcome `$4`. Outbox rows of the attempt
/// not published yet (a queued job cancelled, timed out or refused) are never published.
const CLOSE_ATTEMPT: &str = "attempt AS (\
       UPDATE attempts SET state = $3, outcome = $4, finished_at = now(), lease_missing_since = NULL \
       WHERE job_id = $1 AND attempt = $2), \
     outbox AS (\
       UPDATE outbox SET published_at = now() WHERE job_id = $1 AND attempt = $2 AND published_at IS NULL)";

/// Ends attempt `attempt` with `outcome` and, when `job` is given, gives the job that final
/// outcome (its state: `JobState::from_outcome`), in one statement: the end of nearly every
/// job.
async fn close(
    tx: &mut PgConnection,
    job_id: Uuid,
    attempt: u32,
    outcome: &JobOutcome,
    job: Option<&JobOutcome>,
) -> sqlx::Result<()> {
    let sql = match job {
        None => format!("WITH {CLOSE_ATTEMPT} SELECT 1"),
        Some(_) => format!(
            "WITH {CLOSE_ATTEMPT} UPDATE jobs SET state = $5, outcome = $6, finished_at = now() WHERE id = $1"
        ),
    };
    let mut query = sqlx::query(&sql)
        .bind(job_id)
        .bind(attempt as i32)
        .bind(JobState::from_outcome(outcome).as_str())
        .bind(Json(outcome));
    if let Some(job) = job {
        query = query
            .bind(JobState::from_outcome(job).as_str())
            .bind(Json(job));
    }
    query.execute(&mut *tx).await?;
    Ok(())
}

/// Queues attempt `next` of a job (its row locked by the caller): the attempt row, the job back
/// to `queued`, and an outbox row with the previous dispatch's content, available after `delay`.
async fn queue_attempt(
    tx: &mut PgConnection,
    job_id: Uuid,
    next: u32,
    delay: Duration,
) -> sqlx::Result<()> {
    let (Json(mut dispatch),): (Json<JobDispatch>,) =
        sqlx::query_as("SELECT payload FROM outbox WHERE job_id = $1 ORDER BY id DESC LIMIT 1")
            .bind(job_id)
            .fetch_one(&mut *tx)
            .await?;
    dispatch.attempt = next;
    sqlx::query(
        "INSERT INTO attempts (job_id, attempt, state, queued_at) VALUES ($1, $2, 'queued', now())",
    )
    .bind(job_id)
    .bind(next as i32)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO outbox (job_id, attempt, payload, available_at) \
         VALUES ($1, $2, $3, now() + $4 * interval '1 millisecond')",
    )
    .bind(job_id)
    .bind(next as i32)
    .bind(Json(&dispatch))
    .bind(delay.as_millis() as f64)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE jobs SET state = 'queued', attempt = $2, runner_id = NULL, started_at = NULL, \
         finished_at = NULL, outcome = NULL, cancel_requested_at = NULL, cancel_reason = NULL WHERE id = $1",
    )
    .bind(job_id)
    .bind(next as i32)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// How many starts of one job may be refused (API-02) before the job ends `lost` instead of
/// queueing yet another attempt.
pub const MAX_REFUSED_STARTS: i32 = 5;

/// Refuses attempt `attempt` of a queued job before it ran (API-02: its `Started` came from a
/// runner that may not run it): the attempt ends `lost` with `reason` and, in the same
/// transaction, the refusal is counted on the registration named `runner` (the live one, else
/// its latest revoked one). The next attempt is queued at once whatever the job's retry rule
/// says (the job never ran, so no retry is used up; a legitimate runner takes it), up to
/// [`MAX_REFUSED_STARTS`] refusals per job; the last one ends the job `lost`. [`Ended::Stale`]
/// (nothing changed, nothing counted) when the job is not waiting for that attempt.
pub async fn refuse_start(
    db: &PgPool,
    job_id: Uuid,
    attempt: u32,
    runner: &str,
    reason: &str,
) -> sqlx::Result<Ended> {
    let mut tx = db.begin().await?;
    let Some(cur) = lock(&mut tx, job_id).await? else {
        return Ok(Ended::Stale);
    };
    if cur.attempt as u32 != attempt || cur.state != "queued" {
        return Ok(Ended::Stale);
    }
    let (refused,): (i32,) = sqlx::query_as(
        "UPDATE jobs SET refused_starts = refused_starts + 1 WHERE id = $1 RETURNING refused_starts",
    )
    .bind(job_id)
    .fetch_one(&mut *tx)
    .await?;
    crate::db::registrations::record_refusal(&mut tx, runner, reason).await?;
    let outcome = JobOutcome::Lost {
        reason: reason.to_owned(),
    };
    if refused >= MAX_REFUSED_STARTS {
        let last = JobOutcome::Lost {
            reason: format!(
                "{reason} (the job's start was refused {refused} times; it is not queued again)"
            ),
        };
        close(&mut tx, job_id, attempt, &outcome, Some(&last)).await?;
        tx.commit().await?;
        return Ok(Ended::Final(JobState::from_outcome(&last)));
    }
    close(&mut tx, job_id, attempt, &outcome, None).await?;
    let next = attempt + 1;
    queue_attempt(&mut tx, job_id, next, Duration::ZERO).await?;
    tx.commit().await?;
    Ok(Ended::Retrying { attempt: next })
}

/// What a cancel request did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancel {
    /// The job was queued: it is cancelled now and will never start.
    Cancelled {
        /// Its attempt.
        attempt: u32,
    },
    /// The job is running: its runner must kill it (it reports `cancelled`).
    Requested {
        /// The runner.
        runner_id: String,
        /// Its attempt.
        attempt: u32,
    },
    /// Already over.
    AlreadyFinal(JobState),
    /// No such job.
    NotFound,
}

/// Cancels a job: at once when queued, through its runner when running.
pub async fn cancel(db: &PgPool, job_id: Uuid, reason: &str) -> sqlx::Result<Cancel> {
    let mut tx = db.begin().await?;
    let Some(cur) = lock(&mut tx, job_id).await? else {
        return Ok(Cancel::NotFound);
    };
    let attempt = cur.attempt as u32;
    let result = match cur.state.as_str() {
        "queued" => {
            let ending = Ending {
                from: &["queued"],
                runner: None,
                may_retry: false,
            };
            end(&mut tx, job_id, attempt, &JobOutcome::Cancelled, ending).await?;
            Cancel::Cancelled { attempt }
        }
        "running" => {
            sqlx::query(
                "UPDATE jobs SET cancel_requested_at = coalesce(cancel_requested_at, now()), cancel_reason = $2 WHERE id = $1",
            )
            .bind(job_id)
            .bind(reason)
            .execute(&mut *tx)
            .await?;
            Cancel::Requested {
                runner_id: cur.runner_id.unwrap_or_default(),
                attempt,
            }
        }
        other => Cancel::AlreadyFinal(JobState::parse(other).unwrap_or(JobState::Failed)),
    };
    tx.commit().await?;
    Ok(result)
}

/// What a manual retry did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retry {
    /// A new attempt is queued.
    Queued {
        /// Its number.
        attempt: u32,
    },
    /// The job is not over yet.
    NotFinal(JobState),
    /// No such job.
    NotFound,
}

/// Re-runs a finished job as a new attempt with the same inputs (`rivet job retry`).
pub async fn retry(db: &PgPool, job_id: Uuid) -> sqlx::Result<Retry> {
    let mut tx = db.begin().await?;
    let Some(cur) = lock(&mut tx, job_id).await? else {
        return Ok(Retry::NotFound);
    };
    let state = JobState::parse(&cur.state).unwrap_or(JobState::Failed);
    if !state.is_final() {
        return Ok(Retry::NotFinal(state));
    }
    let next = cur.attempt as u32 + 1;
    queue_attempt(&mut tx, job_id, next, Duration::ZERO).await?;
    tx.commit().await?;
    Ok(Retry::Queued { attempt: next })
}

/// Counts a report refused for a wrong or missing attempt token (API-03) on the attempt it
/// named, if that attempt exists.
pub async fn record_forged(db: &mut PgConnection, job_id: Uuid, attempt: u32) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE attempts SET forged_reports = forged_reports + 1 WHERE job_id = $1 AND attempt = $2",
    )
    .bind(job_id)
    .bind(attempt as i32)
    .execute(db)
    .await?;
    Ok(())
}

/// A running attempt as the reaper sees it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Running {
    /// The job.
    pub id: Uuid,
    /// Its current attempt.
    pub attempt: i32,
    /// The runner running it.
    pub runner_id: Option<String>,
    /// The attempt token stored at `Started`: the lease must hold exactly this one.
    pub token: Option<String>,
    /// Whether the lease has been missing for longer than the grace period.
    pub overdue: bool,
    /// Whether the lease was missing at the previous look.
    pub missing: bool,
    /// Reason of an unanswered cancel request, when one is older than a second.
    pub cancel_reason: Option<String>,
    /// Whether a cancel was requested more than a second ago and not answered yet.
    pub cancel_pending: bool,
}

/// Every running attempt, with the lease bookkeeping.
pub async fn running(db: &PgPool, grace: Duration) -> sqlx::Result<Vec<Running>> {
    sqlx::query_as(
        "SELECT j.id, j.attempt, j.runner_id, a.token, \
           coalesce(a.lease_missing_since < now() - $1 * interval '1 millisecond', false) AS overdue, \
           a.lease_missing_since IS NOT NULL AS missing, j.cancel_reason, \
           coalesce(j.cancel_requested_at < now() - interval '1 second', false) AS cancel_pending \
         FROM jobs j JOIN attempts a ON a.job_id = j.id AND a.attempt = j.attempt \
         WHERE j.state = 'running'",
    )
    .bind(grace.as_millis() as f64)
    .fetch_all(db)
    .await
}

/// Records whether an attempt's lease is missing (`Some(now)` once) or back (`None`).
pub async fn mark_lease(
    db: &PgPool,
    job_id: Uuid,
    attempt: i32,
    missing: bool,
) -> sqlx::Result<()> {
    let sql = if missing {
        "UPDATE attempts SET lease_missing_since = now() WHERE job_id = $1 AND attempt = $2 AND lease_missing_since IS NULL"
    } else {
        "UPDATE attempts SET lease_missing_since = NULL WHERE job_id = $1 AND attempt = $2"
    };
    sqlx::query(sql)
        .bind(job_id)
        .bind(attempt)
        .execute(db)
        .await?;
    Ok(())
}

/// Queued attempts that waited longer than their job's queue timeout: `(job, attempt, timeout)`.
pub async fn queue_expired(db: &PgPool) -> sqlx::Result<Vec<(Uuid, i32, i64)>> {
    sqlx::query_as(
        "SELECT j.id, j.attempt, j.queue_timeout_ms FROM jobs j \
         JOIN attempts a ON a.job_id = j.id AND a.attempt = j.attempt \
         WHERE j.state = 'queued' AND a.queued_at + j.queue_timeout_ms * interval '1 millisecond' < now()",
    )
    .fetch_all(db)
    .await
}

/// Every job that is not over, with its current attempt (the reaper re-writes their fences after
/// Redis lost its data).
pub async fn active(db: &PgPool) -> sqlx::Result<Vec<(Uuid, i32)>> {
    sqlx::query_as("SELECT id, attempt FROM jobs WHERE state IN ('queued', 'running')")
        .fetch_all(db)
        .await
}

/// Jobs that ended in the last `within`, with their last attempt.
pub async fn recently_final(db: &PgPool, within: Duration) -> sqlx::Result<Vec<(Uuid, i32)>> {
    sqlx::query_as(
        "SELECT id, attempt FROM jobs WHERE finished_at > now() - $1 * interval '1 millisecond' \
         AND state NOT IN ('queued', 'running')",
    )
    .bind(within.as_millis() as f64)
    .fetch_all(db)
    .await
}
