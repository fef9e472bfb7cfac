//! The reconciler: once a second it compares what PostgreSQL says runs with the leases in Redis.
//!
//! - A running attempt whose lease has been missing (or held for another attempt, runner or
//!   attempt token) for longer than [`LOST_GRACE`] is `lost`; the job's retry rule decides
//!   whether another attempt follows (twice by default). The attempt number fences anything the
//!   lost runner still says.
//! - A queued attempt older than its job's queue timeout is `timed_out`.
//! - A cancel request a runner has not answered is sent again.
//! - After Redis lost its data (the epoch key is gone), every fence and the class table are
//!   written again; live runners' Redis users it lost are made again (every round).
//!
//! Every change is conditional in PostgreSQL ([`crate::db::attempts`]), so several orchestrators
//! can run this at once. A Redis error skips the round: a lease that cannot be read is never
//! taken for a missing one.

use crate::db::attempts::{self, Ended, Ending};
use crate::{fence, AppState};
use rivet_core::JobOutcome;
use rivet_protocol::redis_keys::{lease_holder, lease_value, LEASE_RENEW_MS, LEASE_TTL_MS};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long a lease may be missing before its attempt is lost: longer than a runner needs to
/// write it again after Redis lost it (one renewal period), with room for a slow round.
pub const LOST_GRACE: Duration = Duration::from_millis(LEASE_RENEW_MS * 2 + 1_000);
/// Time between rounds.
const PERIOD: Duration = Duration::from_secs(1);

/// Runs rounds until `shutdown`.
pub async fn run(state: AppState, shutdown: CancellationToken) -> anyhow::Result<()> {
    loop {
        if let Err(e) = round(&state).await {
            tracing::warn!(error = %format!("{e:#}"), "A reaper round failed; the next one retries.");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(PERIOD) => {}
        }
    }
}

/// One round (public for tests).
pub async fn round(state: &AppState) -> anyhow::Result<()> {
    refresh_fences(state).await?;
    // Live runners' Redis users that Redis lost (restarted without an ACL file): before their
    // leases are judged, which they cannot renew without them.
    crate::redis_users::restore(state).await?;
    reap_lost(state).await?;
    expire_queued(state).await?;
    unregistered(state).await?;
    // A revoked registration's users that could not be deleted at revocation (each service on
    // its own: a broker that does not answer must not keep Redis users alive).
    let broker = crate::broker_users::retire_revoked(state).await;
    crate::redis_users::retire_revoked(state).await?;
    broker?;
    Ok(())
}

/// Orders every runner that is present but has no live registration (revoked, or never
/// registered) to drain, every round until it says it drains or goes away: the order sent at
/// revocation is lost when the runner was not listening yet. Its starts are refused anyway
/// (API-02); this makes an honest one leave. Also forgets the remembered registrations of
/// runners without a live one (`reports::forget_unregistered`).
async fn unregistered(state: &AppState) -> anyhow::Result<()> {
    let presences = crate::fleet::presences(state).await?;
    if presences.is_empty() && !crate::reports::remembers_any(state) {
        return Ok(());
    }
    let live = crate::db::registrations::live(&state.db).await?;
    crate::reports::forget_unregistered(state, &live);
    for p in presences {
        if p.draining || live.contains_key(&p.id) {
            continue;
        }
        if let Err(e) = crate::api::fleet::send_drain(
            state,
            &p.id,
            "the runner has no live registration (revoked or unknown)",
        )
        .await
        {
            tracing::debug!(runner = %p.id, error = %format!("{e:#}"), "Ordering an unregistered runner to drain failed.");
        }
    }
    Ok(())
}

async fn refresh_fences(state: &AppState) -> anyhow::Result<()> {
    let mut conn = state.redis.clone();
    // `SET NX` succeeds only when the key is missing: the first round ever, or Redis lost its
    // data since the last round.
    let fresh: Option<String> = redis::cmd("SET")
        .arg(state.keys.epoch())
        .arg(chrono_ms())
        .arg("NX")
        .query_async(&mut conn)
        .await?;
    let lost_data = fresh.is_some();
    if !lost_data && !state.fences_dirty.swap(false, Ordering::SeqCst) {
        return Ok(());
    }
    // From here on, any failure leaves the work for the next round.
    let rebuilt = rebuild(state, &mut conn, lost_data).await;
    if rebuilt.is_err() {
        state.fences_dirty.store(true, Ordering::SeqCst);
    }
    rebuilt
}

/// Writes every fence again, and the class table (runners learn classes from it).
async fn rebuild(
    state: &AppState,
    conn: &mut redis::aio::ConnectionManager,
    lost_data: bool,
) -> anyhow::Result<()> {
    crate::relay::sync_classes(state).await?;
    let active = attempts::active(&state.db).await?;
    let finished =
        attempts::recently_final(&state.db, Duration::from_secs(fence::FINAL_TTL_S)).await?;
    let mut pipe = redis::pipe();
    for (job, attempt) in &active {
        pipe.cmd("EVAL")
            .arg(fence::WRITE)
            .arg(1)
            .arg(state.keys.fence(*job))
            .arg(fence::open_value(*attempt as u32))
            .arg(fence::ACTIVE_TTL_S)
            .ignore();
    }
    for (job, attempt) in &finished {
        pipe.cmd("EVAL")
            .arg(fence::WRITE)
            .arg(1)
            .arg(state.keys.fence(*job))
            .arg(fence::closed_value(*attempt as u32))
            .arg(fence::FINAL_TTL_S)
            .ignore();
    }
    pipe.query_async::<()>(conn).await?;
    tracing::info!(
        active = active.len(),
        finished = finished.len(),
        redis_lost_data = lost_data,
        "Fences written again."
    );
    Ok(())
}

fn chrono_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn reap_lost(state: &AppState) -> anyhow::Result<()> {
    let running = attempts::running(&state.db, LOST_GRACE).await?;
    if running.is_empty() {
        return Ok(());
    }
    let keys: Vec<String> = running.iter().map(|r| state.keys.lease(r.id)).collect();
    let mut conn = state.redis.clone();
    let leases: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
    for (r, lease) in running.iter().zip(leases) {
        let runner = r.runner_id.as_deref().unwrap_or_default();
        // The full value, token included: a lease taken by someone else for the same runner and
        // attempt (or a forged `Started` that won while Redis had lost the lease) is not ours.
        let expected = lease_value(runner, r.attempt as u32, r.token.as_deref().unwrap_or(""));
        let held = lease.as_deref() == Some(expected.as_str());
        if held {
            if r.missing {
                attempts::mark_lease(&state.db, r.id, r.attempt, false).await?;
            }
            if r.cancel_pending {
                let reason = r.cancel_reason.as_deref().unwrap_or("cancelled on request");
                fence::order_cancel(state, runner, r.id, r.attempt as u32, reason).await;
            }
            continue;
        }
        if !r.missing {
            attempts::mark_lease(&state.db, r.id, r.attempt, true).await?;
            continue;
        }
        if !r.overdue {
            continue;
        }
        let reason = match &lease {
            None => format!(
                "runner `{runner}` stopped renewing its lease (missing for more than {}s; lease time {}s)",
                LOST_GRACE.as_secs(),
                LEASE_TTL_MS / 1000
            ),
            Some(other) => format!(
                "runner `{runner}` lost its lease to `{}`",
                lease_holder(other)
            ),
        };
        let outcome = JobOutcome::Lost { reason };
        let ending = Ending {
            from: &["running"],
            runner: r.runner_id.as_deref(),
            may_retry: true,
        };
        let mut tx = state.db.begin().await?;
        let ended = attempts::end(&mut tx, r.id, r.attempt as u32, &outcome, ending).await?;
        tx.commit().await?;
        match ended {
            Ended::Retrying { attempt } => {
                tracing::warn!(job_id = %r.id, lost = r.attempt, next = attempt, runner, "Attempt lost; retrying.");
                fence::open(state, r.id, attempt).await;
                state.relay_wakeup.notify_one();
            }
            Ended::Final(s) => {
                tracing::warn!(job_id = %r.id, attempt = r.attempt, runner, state = s.as_str(), "Attempt lost; no retry left.");
                fence::close(state, r.id, r.attempt as u32).await;
            }
            Ended::Stale => {}
        }
        // Should the runner still be alive (a partition), it must stop.
        fence::order_cancel(
            state,
            runner,
            r.id,
            r.attempt as u32,
            "the orchestrator declared this attempt lost",
        )
        .await;
    }
    Ok(())
}

async fn expire_queued(state: &AppState) -> anyhow::Result<()> {
    for (job, attempt, timeout_ms) in attempts::queue_expired(&state.db).await? {
        let limit = rivet_sandbox::fmt_duration(Duration::from_millis(timeout_ms.max(0) as u64));
        let outcome = JobOutcome::TimedOut {
            stage: None,
            error: format!("no runner started the job within its queue timeout of {limit}"),
        };
        let ending = Ending {
            from: &["queued"],
            runner: None,
            may_retry: false,
        };
        let mut tx = state.db.begin().await?;
        let ended = attempts::end(&mut tx, job, attempt as u32, &outcome, ending).await?;
        tx.commit().await?;
        if let Ended::Final(_) = ended {
            tracing::warn!(job_id = %job, attempt, "Queue timeout: no runner took the job.");
            fence::close(state, job, attempt as u32).await;
        }
    }
    Ok(())
}
