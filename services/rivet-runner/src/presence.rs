//! The runner's presence record in Redis, refreshed until shutdown, then removed.

use crate::Runner;
use redis::AsyncCommands;
use rivet_protocol::redis_keys::{
    RunnerPresence, RunningJob, PRESENCE_REFRESH_MS, PRESENCE_TTL_MS,
};
use rivet_protocol::SCHEMA_VERSION;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Writes the presence record now.
pub async fn publish(
    runner: &Runner,
    started_at_ms: i64,
    draining: bool,
) -> redis::RedisResult<()> {
    let record = RunnerPresence {
        schema: SCHEMA_VERSION,
        id: runner.id.clone(),
        capabilities: runner.capabilities.clone(),
        labels: runner.labels.clone(),
        slots: runner.slots,
        running: runner
            .running
            .lock()
            .expect("the running list's lock is never poisoned")
            .keys()
            .map(|&(job_id, attempt)| RunningJob { job_id, attempt })
            .collect(),
        draining,
        version: env!("CARGO_PKG_VERSION").into(),
        started_at_ms,
        updated_at_ms: now_ms(),
    };
    let value = serde_json::to_string(&record).expect("presence records serialise");
    let mut conn = runner.redis.clone();
    conn.pset_ex(runner.keys.runner(&runner.id), value, PRESENCE_TTL_MS)
        .await
}

/// Writes the presence record now, from any task (a drain shows at once).
pub async fn publish_now(runner: &Runner) -> redis::RedisResult<()> {
    let started = runner.started_at_ms;
    let draining = runner.draining.load(std::sync::atomic::Ordering::SeqCst);
    publish(runner, started, draining).await
}

/// Refreshes the record until `shutdown`, then deletes it.
pub async fn run(runner: Arc<Runner>, shutdown: CancellationToken) {
    let started = runner.started_at_ms;
    loop {
        let draining = runner.draining.load(std::sync::atomic::Ordering::SeqCst);
        if let Err(e) = publish(&runner, started, draining).await {
            tracing::warn!(error = %e, "Refreshing presence failed.");
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(PRESENCE_REFRESH_MS)) => {}
        }
    }
    let mut conn = runner.redis.clone();
    let _: redis::RedisResult<()> = conn.del(runner.keys.runner(&runner.id)).await;
}
