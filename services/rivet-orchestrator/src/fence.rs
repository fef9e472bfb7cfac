//! Fences in Redis: which attempt of a job a runner may start: `N` (attempt N may start) or `-N`
//! (the job ended at attempt N; nothing may start). Fences only move forward: a write for an
//! older attempt than the fence holds, or reopening a closed attempt, changes nothing, so late or
//! racing writers (a rebuild, a lane, the API) cannot undo a newer decision.
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

/// The body of [`WRITE`], shared with [`END`].
macro_rules! write_body {
    () => {
        "local cur = tonumber(redis.call('GET', KEYS[1]) or '') \
    local new = tonumber(ARGV[1]) \
    if cur then \
      local ca, na = math.abs(cur), math.abs(new) \
      if na < ca or (na == ca and (cur <= 0 or new > 0)) then return 0 end \
    end \
    redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) return 1"
    };
}

/// Writes fence KEYS[1] = ARGV[1] (`N` or `-N`) with TTL ARGV[2] s, only forward: when nothing
/// is there, for a later attempt than the fence's, or to close the fence's own attempt.
pub const WRITE: &str = write_body!();

/// The end of an attempt in one round trip: moves fence KEYS[1] as [`WRITE`] does (ARGV[1],
/// ARGV[2]; skipped when ARGV[1] is empty), then deletes lease KEYS[2] if it still holds
/// ARGV[3]. The fence moves first, as two separate calls would do it: a duplicate of the
/// attempt's message claimed in between must find the attempt over, not a free lease. Returns
/// whether the fence was written.
const END: &str = concat!(
    "local moved = 0 \
    if ARGV[1] ~= '' then moved = (function() ",
    write_body!(),
    " end)() end \
    if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end \
    return moved"
);

/// The value that lets `attempt` start.
pub fn open_value(attempt: u32) -> i64 {
    i64::from(attempt)
}

/// The value that ends a job whose last attempt was `attempt`.
pub fn closed_value(attempt: u32) -> i64 {
    -i64::from(attempt.max(1))
}

/// Lets `attempt` start.
pub async fn open(state: &AppState, job_id: Uuid, attempt: u32) {
    write(state, job_id, open_value(attempt), ACTIVE_TTL_S).await;
}

/// Lets no attempt start any more (the job ended at `attempt`).
pub async fn close(state: &AppState, job_id: Uuid, attempt: u32) {
    write(state, job_id, closed_value(attempt), FINAL_TTL_S).await;
}

async fn write(state: &AppState, job_id: Uuid, value: i64, ttl_s: u64) {
    let mut conn = state.redis.clone();
    let result: redis::RedisResult<i64> = redis::Script::new(WRITE)
        .key(state.keys.fence(job_id))
        .arg(value)
        .arg(ttl_s)
        .invoke_async(&mut conn)
        .await;
    if let Err(e) = result {
        tracing::warn!(job_id = %job_id, error = %e, "Writing a fence failed; the reaper writes them all again.");
        state.fences_dirty.store(true, Ordering::SeqCst);
    }
}

/// What an attempt's end does to its job's fence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Move {
    /// Lets attempt N start (the job is retried at N).
    Open(u32),
    /// Lets no attempt start any more (the job ended at attempt N).
    Close(u32),
    /// Leaves the fence as it is (the attempt was already over).
    Stay,
}

/// After an attempt ended: moves the fence, then releases the attempt's lease if the runner
/// still holds it with `lease_value`, in one script. Best effort: a fence write that fails
/// makes the reaper write every fence again, a lease left behind expires by itself.
pub async fn end_attempt(state: &AppState, job_id: Uuid, fence: Move, lease_value: &str) {
    let (value, ttl_s) = match fence {
        Move::Open(attempt) => (open_value(attempt).to_string(), ACTIVE_TTL_S),
        Move::Close(attempt) => (closed_value(attempt).to_string(), FINAL_TTL_S),
        Move::Stay => (String::new(), 0),
    };
    let mut conn = state.redis.clone();
    let result: redis::RedisResult<i64> = redis::Script::new(END)
        .key(state.keys.fence(job_id))
        .key(state.keys.lease(job_id))
        .arg(value)
        .arg(ttl_s)
        .arg(lease_value)
        .invoke_async(&mut conn)
        .await;
    if let Err(e) = result {
        tracing::warn!(job_id = %job_id, error = %e, "Moving a fence and releasing a lease failed; the reaper writes every fence again, the lease expires by itself.");
        if fence != Move::Stay {
            state.fences_dirty.store(true, Ordering::SeqCst);
        }
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

#[cfg(test)]
mod tests {
    use super::{closed_value, open_value, END, WRITE};

    /// The real Redis (scripts/services.sh starts it).
    async fn connect() -> redis::aio::MultiplexedConnection {
        redis::Client::open("redis://127.0.0.1:6379/")
            .expect("a Redis URL")
            .get_multiplexed_async_connection()
            .await
            .expect("Redis must run on 127.0.0.1:6379 (scripts/services.sh starts it)")
    }

    #[tokio::test]
    async fn fences_only_move_forward() {
        let mut conn = connect().await;
        let key = format!("rivet-test-fence-{}", uuid::Uuid::new_v4().simple());
        let write = |value: i64| {
            let key = key.clone();
            let mut conn = conn.clone();
            async move {
                let wrote: i64 = redis::Script::new(WRITE)
                    .key(&key)
                    .arg(value)
                    .arg(60)
                    .invoke_async(&mut conn)
                    .await
                    .expect("the script runs");
                let now: i64 = redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .expect("a fence");
                (wrote, now)
            }
        };
        assert_eq!(write(open_value(1)).await, (1, 1));
        assert_eq!(
            write(open_value(2)).await,
            (1, 2),
            "a retry opens the next attempt"
        );
        assert_eq!(
            write(open_value(1)).await,
            (0, 2),
            "never back to an older attempt"
        );
        assert_eq!(
            write(closed_value(1)).await,
            (0, 2),
            "a late close of an older attempt"
        );
        assert_eq!(
            write(closed_value(2)).await,
            (1, -2),
            "the job ends at attempt 2"
        );
        assert_eq!(
            write(open_value(2)).await,
            (0, -2),
            "a closed attempt stays closed"
        );
        assert_eq!(
            write(open_value(3)).await,
            (1, 3),
            "a manual retry opens attempt 3"
        );
        let _: () = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .expect("cleanup");
    }

    /// The end of an attempt (one script): the fence moves as [`WRITE`] moves it, then the lease
    /// goes only when it still holds the ending attempt's value.
    #[tokio::test]
    async fn an_attempts_end_moves_the_fence_forward_then_releases_only_its_own_lease() {
        let mut conn = connect().await;
        let id = uuid::Uuid::new_v4().simple();
        let (fence, lease) = (
            format!("rivet-test-fence-{id}"),
            format!("rivet-test-lease-{id}"),
        );
        // Sets the lease to `holder`, runs the end script, returns (fence written, fence, lease).
        let end = |fence_value: Option<i64>, holder: &'static str, ending: &'static str| {
            let (fence, lease, mut conn) = (fence.clone(), lease.clone(), conn.clone());
            async move {
                let _: () = redis::cmd("SET")
                    .arg(&lease)
                    .arg(holder)
                    .query_async(&mut conn)
                    .await
                    .expect("a lease");
                let moved: i64 = redis::Script::new(END)
                    .key(&fence)
                    .key(&lease)
                    .arg(fence_value.map(|v| v.to_string()).unwrap_or_default())
                    .arg(60)
                    .arg(ending)
                    .invoke_async(&mut conn)
                    .await
                    .expect("the script runs");
                let now: Option<i64> = redis::cmd("GET")
                    .arg(&fence)
                    .query_async(&mut conn)
                    .await
                    .expect("a fence");
                let held: Option<String> = redis::cmd("GET")
                    .arg(&lease)
                    .query_async(&mut conn)
                    .await
                    .expect("a lease read");
                (moved, now, held)
            }
        };
        let gone = None::<String>;
        assert_eq!(
            end(None, "r1:1:t", "r1:1:t").await,
            (0, None, gone.clone()),
            "no fence move: the lease alone goes"
        );
        assert_eq!(
            end(Some(open_value(2)), "r1:1:t", "r1:1:t").await,
            (1, Some(2), gone.clone()),
            "a retry opens the next attempt and frees the lease"
        );
        assert_eq!(
            end(Some(closed_value(1)), "r2:2:u", "r1:1:t").await,
            (0, Some(2), Some("r2:2:u".to_owned())),
            "a late end of attempt 1 moves nothing and keeps attempt 2's lease"
        );
        assert_eq!(
            end(Some(closed_value(2)), "r2:2:u", "r2:2:v").await,
            (1, Some(-2), Some("r2:2:u".to_owned())),
            "the job ends at attempt 2; a lease with another token stays"
        );
        assert_eq!(
            end(Some(open_value(2)), "r2:2:u", "r2:2:u").await,
            (0, Some(-2), gone),
            "a closed attempt stays closed; its own lease goes"
        );
        let _: () = redis::cmd("DEL")
            .arg(&fence)
            .arg(&lease)
            .query_async(&mut conn)
            .await
            .expect("cleanup");
    }
}
