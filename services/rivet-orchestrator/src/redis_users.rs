//! Per-runner Redis users (ACL), so a runner can touch only what a runner needs.
//!
//! Each runner session gets the ACL user `NAMESPACE.runner.REGISTRATION` with the rules of
//! [`Keys::runner_acl`](rivet_protocol::redis_keys::Keys::runner_acl): leases, its own presence
//! record, fences and the class table read-only, and the few commands a runner sends. Its
//! password is derived from the session key ([`rivet_protocol::identity::redis_password`]), so
//! the reaper can make the user again, unchanged, when Redis lost it (a restart without an ACL
//! file): every round it compares `ACL USERS` with the live registrations. Revoking deletes the
//! user, and Redis closes its connections.

use crate::config::RunnerUsersMode;
use crate::AppState;
use rivet_protocol::http::Credentials;
use sha2::Digest;
use std::collections::BTreeSet;
use uuid::Uuid;

/// Takes the registration's lock for the rest of `tx`: making, restoring and deleting a
/// registration's Redis user, and starting its session, happen one at a time, each deciding from
/// what the database says under the lock. (Without it, a restore that read a registration as live
/// could recreate its user just after a revocation deleted it, or reset it to the previous
/// session's password just after a new session began.)
pub async fn lock_registration(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    id: Uuid,
) -> sqlx::Result<()> {
    // A key of its own space: the registration id's high bits, with the top bit set (the
    // permissions lock's key has it clear).
    let key = ((id.as_u128() >> 64) as u64 | (1 << 63)) as i64;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(key)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Deletes one Redis user (gone already is fine); Redis closes its connections.
pub async fn delete_user(state: &AppState, user: &str) -> anyhow::Result<()> {
    let mut redis = state.redis.clone();
    let _: i64 = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(user)
        .query_async(&mut redis)
        .await?;
    Ok(())
}

/// Whether runners get Redis users of their own.
pub fn managed(state: &AppState) -> bool {
    state.redis_users == RunnerUsersMode::Managed
}

/// The Redis user of registration `id` for the session with `session_key`; `None` with shared
/// Redis users.
pub fn credentials(state: &AppState, id: Uuid, session_key: &str) -> Option<Credentials> {
    managed(state).then(|| Credentials {
        username: state.keys.runner_user(&id.to_string()),
        password: rivet_protocol::identity::redis_password(session_key),
    })
}

/// Creates (or resets) the user of runner `runner_id` and closes the connections of an earlier
/// session of it (they hold the old password and must not go on).
pub async fn create_user(
    state: &AppState,
    runner_id: &str,
    credentials: &Credentials,
) -> anyhow::Result<()> {
    let mut redis = state.redis.clone();
    set_user(&mut redis, state, runner_id, credentials).await?;
    let _closed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("USER")
        .arg(&credentials.username)
        .query_async(&mut redis)
        .await?;
    Ok(())
}

async fn set_user(
    redis: &mut redis::aio::ConnectionManager,
    state: &AppState,
    runner_id: &str,
    credentials: &Credentials,
) -> anyhow::Result<()> {
    let digest = sha2::Sha256::digest(credentials.password.as_bytes());
    let hash: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER")
        .arg(&credentials.username)
        .arg("reset")
        .arg("on")
        .arg(format!("#{hash}"));
    for rule in state.keys.runner_acl(runner_id) {
        cmd.arg(rule);
    }
    let _: () = cmd.query_async(redis).await?;
    Ok(())
}

/// Makes again the users of live registrations that Redis does not have (it restarted without
/// an ACL file, or someone deleted them). Returns how many were made.
pub async fn restore(state: &AppState) -> anyhow::Result<usize> {
    if !managed(state) {
        return Ok(0);
    }
    let live: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT id, redis_user FROM runner_registrations \
         WHERE revoked_at IS NULL AND redis_user IS NOT NULL AND session_key IS NOT NULL",
    )
    .fetch_all(&state.db)
    .await?;
    if live.is_empty() {
        return Ok(0);
    }
    let mut redis = state.redis.clone();
    let users: BTreeSet<String> = redis::cmd("ACL")
        .arg("USERS")
        .query_async::<Vec<String>>(&mut redis)
        .await?
        .into_iter()
        .collect();
    let mut made = 0;
    for (id, user) in live {
        if users.contains(&user) {
            continue;
        }
        // Decided again under the registration's lock: still live, and with which session.
        let mut tx = state.db.begin().await?;
        lock_registration(&mut tx, id).await?;
        let now: Option<(String, String, String)> = sqlx::query_as(
            "SELECT name, redis_user, session_key FROM runner_registrations \
             WHERE id = $1 AND revoked_at IS NULL AND redis_user IS NOT NULL \
             AND session_key IS NOT NULL",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((name, user, session_key)) = now else {
            continue;
        };
        // Made meanwhile (a join under this lock) is made: only a user still missing is restored.
        let exists: Option<redis::Value> = redis::cmd("ACL")
            .arg("GETUSER")
            .arg(&user)
            .query_async(&mut redis)
            .await?;
        if exists.is_some() {
            continue;
        }
        let credentials = Credentials {
            username: user,
            password: rivet_protocol::identity::redis_password(&session_key),
        };
        set_user(&mut redis, state, &name, &credentials).await?;
        tx.commit().await?;
        tracing::info!(registration = %id, runner = %name, "Made a runner's Redis user again (Redis had lost it).");
        made += 1;
    }
    Ok(made)
}

/// Deletes the Redis users of revoked registrations (Redis closes their connections) and
/// forgets them; what fails is tried again on the reaper's next round.
pub async fn retire_revoked(state: &AppState) -> anyhow::Result<usize> {
    let revoked: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT id, redis_user FROM runner_registrations \
         WHERE revoked_at IS NOT NULL AND redis_user IS NOT NULL",
    )
    .fetch_all(&state.db)
    .await?;
    let mut deleted = 0;
    for (id, user) in revoked {
        let mut tx = state.db.begin().await?;
        lock_registration(&mut tx, id).await?;
        delete_user(state, &user).await?;
        sqlx::query("UPDATE runner_registrations SET redis_user = NULL WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(registration = %id, user = %user, "Deleted the Redis user of a revoked runner registration.");
        deleted += 1;
    }
    Ok(deleted)
}

/// Deletes the Redis users whose names start with `prefix` (tests sweep their runners' users).
pub async fn delete_users_with_prefix(
    redis: &mut redis::aio::ConnectionManager,
    prefix: &str,
) -> redis::RedisResult<()> {
    let users: Vec<String> = redis::cmd("ACL").arg("USERS").query_async(redis).await?;
    for user in users.into_iter().filter(|u| u.starts_with(prefix)) {
        let _: i64 = redis::cmd("ACL")
            .arg("DELUSER")
            .arg(&user)
            .query_async(redis)
            .await?;
    }
    Ok(())
}
