//! The outbox relay: publishes committed job messages with publisher confirms, then marks them
//! published. Safe to run in several orchestrators at once (`FOR UPDATE SKIP LOCKED`); a crash
//! between publish and mark republishes, and runners drop the duplicate at the lease.

use crate::AppState;
use anyhow::Context;
use redis::AsyncCommands;
use rivet_protocol::messages::{ClassAnnounce, JobDispatch};
use rivet_protocol::SCHEMA_VERSION;
use sqlx::types::Json;
use std::collections::HashSet;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Rows published per transaction.
const BATCH: i64 = 200;

/// Makes classes (committed in PostgreSQL) known everywhere, in this order: their durable
/// queues, read permission for the broker users of the runners whose labels cover them, the
/// Redis class table runners read at start, and an announcement to running runners. A runner
/// learns of a class only once it may consume its queue.
pub async fn ensure_classes(
    state: &AppState,
    classes: &[(String, Vec<String>)],
) -> anyhow::Result<()> {
    for (class_key, _) in classes {
        state
            .broker
            .declare_class(class_key)
            .await
            .with_context(|| format!("declaring class queue {class_key}"))?;
    }
    crate::broker_users::sync_permissions(state, None)
        .await
        .context("granting the runners' broker users their class queues")?;
    for (class_key, requires) in classes {
        let mut redis = state.redis.clone();
        let value = serde_json::to_string(requires).expect("a list of strings serialises");
        let _: () = redis
            .hset(state.keys.classes(), class_key, value)
            .await
            .context("recording the class in Redis")?;
        state
            .broker
            .announce_class(&ClassAnnounce {
                schema: SCHEMA_VERSION,
                class_key: class_key.to_owned(),
                requires: requires.to_vec(),
            })
            .await
            .context("announcing the class")?;
    }
    Ok(())
}

/// At start: every class in PostgreSQL gets its queue and its Redis entry (Redis may have lost it).
pub async fn sync_classes(state: &AppState) -> anyhow::Result<()> {
    ensure_classes(state, &crate::db::jobs::classes(&state.db).await?).await
}

/// Publishes outbox rows until `shutdown`: woken after each commit, and every second anyway.
pub async fn run(state: AppState, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut known: HashSet<String> = HashSet::new();
    loop {
        match publish_pending(&state, &mut known).await {
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "Publishing the outbox failed; retrying.");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = state.relay_wakeup.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Publishes everything pending; returns how many messages went out.
pub async fn publish_pending(
    state: &AppState,
    known: &mut HashSet<String>,
) -> anyhow::Result<usize> {
    let mut total = 0;
    loop {
        let mut tx = state.db.begin().await?;
        let rows: Vec<(i64, Json<JobDispatch>)> = sqlx::query_as(
            "SELECT id, payload FROM outbox WHERE published_at IS NULL AND available_at <= now() \
             ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(total);
        }
        let mut new_classes: Vec<(String, Vec<String>)> = Vec::new();
        for (_, Json(msg)) in &rows {
            if !known.contains(&msg.class_key)
                && !new_classes.iter().any(|(k, _)| k == &msg.class_key)
            {
                new_classes.push((msg.class_key.clone(), msg.requires.clone()));
            }
        }
        if !new_classes.is_empty() {
            ensure_classes(state, &new_classes).await?;
            known.extend(new_classes.into_iter().map(|(k, _)| k));
        }
        // Fences first: a runner taking the message must find its attempt allowed.
        let mut pipe = redis::pipe();
        for (_, Json(msg)) in &rows {
            pipe.cmd("EVAL")
                .arg(crate::fence::WRITE)
                .arg(1)
                .arg(state.keys.fence(msg.job_id))
                .arg(crate::fence::open_value(msg.attempt))
                .arg(crate::fence::ACTIVE_TTL_S)
                .ignore();
        }
        let mut redis = state.redis.clone();
        if let Err(e) = pipe.query_async::<()>(&mut redis).await {
            // A missing fence lets any attempt start; PostgreSQL still fences what it reports.
            tracing::warn!(error = %e, "Writing fences failed; publishing anyway.");
            state
                .fences_dirty
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        // Publish the batch at once (the broker client confirms on several channels) and mark
        // exactly the confirmed rows; the others stay for the next round.
        let results =
            futures_util::future::join_all(rows.iter().map(|(id, Json(msg))| async move {
                (*id, msg.job_id, state.broker.publish_job(msg).await)
            }))
            .await;
        let mut ids = Vec::with_capacity(results.len());
        let mut failure = None;
        for (id, job_id, result) in results {
            match result {
                Ok(()) => ids.push(id),
                Err(e) => {
                    failure =
                        Some(anyhow::Error::new(e).context(format!("publishing job {job_id}")))
                }
            }
        }
        sqlx::query("UPDATE outbox SET published_at = now() WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        total += ids.len();
        if let Some(e) = failure {
            return Err(e);
        }
    }
}
