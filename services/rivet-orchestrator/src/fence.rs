//! Fences in Redis: which attempt of a job a runner may start (`0`: none, the job is over).
//! PostgreSQL decides; the fence lets a runner drop a stale or cancelled job's message before
//! running anything. Writing one is best effort: when Redis cannot be reached the reaper writes
//! every fence again (see [`crate::reaper`]), and reports from a runner that started a job it
//! should not have are refused and the runner is told to stop it.

use crate::AppState;
use rivet_protocol::messages::{ControlCommand, RunnerControl};
use rivet_protocol::SCHEMA_VERSION;
use std::sync::atomic::Ordering;
use uuid::Uuid;

/// How long a fence outlives its job's end (stale copies of a message arrive within minutes).
pub const FINAL_TTL_S: u64 = 24 * 3600;
/// How long the fence of a job that is not over lives (refreshed by the reaper after data loss).
pub const ACTIVE_TTL_S: u64 = 7 * 24 * 3600;

/// Deletes the lease only if it still holds the given value.
const RELEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

/// Lets `attempt` start.
pub async fn open(state: &AppState, job_id: Uuid, attempt: u32) {
    write(state, job_id, attempt, ACTIVE_TTL_S).await;
}

/// Lets no attempt start any more.
pub async fn close(state: &AppState, job_id: Uuid) {
    write(state, job_id, 0, FINAL_TTL_S).await;
}

async fn write(state: &AppState, job_id: Uuid, attempt: u32, ttl_s: u64) {
    let mut conn = state.redis.clone();
    let result: redis::RedisResult<()> = redis::cmd("SET")
        .arg(state.keys.fence(job_id))
        .arg(attempt)
        .arg("EX")
        .arg(ttl_s)
        .query_async(&mut conn)
        .await;
    if let Err(e) = result {
        tracing::warn!(job_id = %job_id, error = %e, "Writing a fence failed; the reaper writes them all again.");
        state.fences_dirty.store(true, Ordering::SeqCst);
    }
}

/// Releases a finished attempt's lease (if the runner still holds it).
pub async fn release_lease(state: &AppState, job_id: Uuid, lease_value: &str) {
    let mut conn = state.redis.clone();
    let result: redis::RedisResult<i64> = redis::Script::new(RELEASE)
        .key(state.keys.lease(job_id))
        .arg(lease_value)
        .invoke_async(&mut conn)
        .await;
    if let Err(e) = result {
        tracing::warn!(job_id = %job_id, error = %e, "Releasing a lease failed; it expires by itself.");
    }
}

/// Tells `runner_id` to kill an attempt (best effort; the reaper repeats unanswered requests).
pub async fn order_cancel(
    state: &AppState,
    runner_id: &str,
    job_id: Uuid,
    attempt: u32,
    reason: &str,
) {
    let order = RunnerControl {
        schema: SCHEMA_VERSION,
        runner_id: runner_id.to_owned(),
        command: ControlCommand::Cancel {
            job_id,
            attempt,
            reason: reason.to_owned(),
        },
    };
    if let Err(e) = state.broker.publish_control(&order).await {
        tracing::warn!(job_id = %job_id, runner = runner_id, error = %e, "Sending a cancel order failed.");
    }
}
