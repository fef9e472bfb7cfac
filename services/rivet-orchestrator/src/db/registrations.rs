//! Runner registrations (API-02): who may run as a runner, with which labels, and the key of
//! its current session.

use rivet_protocol::http::RunnerRegistrationView;
use sqlx::types::Json;
use sqlx::{PgPool, Row};
use std::collections::BTreeMap;
use uuid::Uuid;

const VIEW: &str =
    "SELECT id, name, labels, (extract(epoch FROM created_at) * 1000)::bigint AS created_at_ms, \
    (extract(epoch FROM revoked_at) * 1000)::bigint AS revoked_at_ms, \
    (extract(epoch FROM registered_at) * 1000)::bigint AS registered_at_ms, \
    capabilities, slots, version, refused_starts FROM runner_registrations";

fn view(row: &sqlx::postgres::PgRow) -> sqlx::Result<RunnerRegistrationView> {
    let labels: Json<BTreeMap<String, String>> = row.try_get("labels")?;
    Ok(RunnerRegistrationView {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        labels: labels.0,
        secret: None,
        created_at_ms: row.try_get("created_at_ms")?,
        revoked_at_ms: row.try_get("revoked_at_ms")?,
        registered_at_ms: row.try_get("registered_at_ms")?,
        capabilities: row.try_get("capabilities")?,
        slots: row.try_get::<Option<i32>, _>("slots")?.map(|s| s as u32),
        version: row.try_get("version")?,
        refused_starts: row.try_get("refused_starts")?,
    })
}

/// What creating a registration did.
#[derive(Debug)]
pub enum Created {
    /// Created (without its secret, which the caller holds).
    Created(RunnerRegistrationView),
    /// A registration that is not revoked already has this name.
    NameTaken,
}

/// Creates a registration with the hash of its runner token.
pub async fn create(
    db: &PgPool,
    name: &str,
    labels: &BTreeMap<String, String>,
    token_hash: &str,
) -> sqlx::Result<Created> {
    let id = Uuid::new_v4();
    let inserted = sqlx::query(
        "INSERT INTO runner_registrations (id, name, labels, token_hash) VALUES ($1, $2, $3, $4)",
    )
    .bind(id)
    .bind(name)
    .bind(Json(labels))
    .bind(token_hash)
    .execute(db)
    .await;
    match inserted {
        Ok(_) => {}
        Err(e)
            if e.as_database_error()
                .is_some_and(|d| d.constraint() == Some("runner_registrations_live_name")) =>
        {
            return Ok(Created::NameTaken)
        }
        Err(e) => return Err(e),
    }
    let row = sqlx::query(&format!("{VIEW} WHERE id = $1"))
        .bind(id)
        .fetch_one(db)
        .await?;
    Ok(Created::Created(view(&row)?))
}

/// Every registration, oldest first.
pub async fn list(db: &PgPool) -> sqlx::Result<Vec<RunnerRegistrationView>> {
    sqlx::query(&format!("{VIEW} ORDER BY created_at, name"))
        .fetch_all(db)
        .await?
        .iter()
        .map(view)
        .collect()
}

/// Revokes the live registration with this id (when it reads as a UUID) or else this name,
/// ending its session: never both, so one call revokes at most one registration. Returns it, or
/// `None` when no live registration matches.
pub async fn revoke(db: &PgPool, id_or_name: &str) -> sqlx::Result<Option<RunnerRegistrationView>> {
    let id = Uuid::parse_str(id_or_name).ok();
    let row: Option<(Uuid,)> = sqlx::query_as(
        "UPDATE runner_registrations SET revoked_at = now(), session_key = NULL \
         WHERE revoked_at IS NULL AND CASE WHEN $1::uuid IS NULL THEN name = $2 ELSE id = $1 END \
         RETURNING id",
    )
    .bind(id)
    .bind(id_or_name)
    .fetch_optional(db)
    .await?;
    let Some((id,)) = row else {
        return Ok(None);
    };
    let row = sqlx::query(&format!("{VIEW} WHERE id = $1"))
        .bind(id)
        .fetch_one(db)
        .await?;
    Ok(Some(view(&row)?))
}

/// A registration as its runner's token finds it.
#[derive(Debug, sqlx::FromRow)]
pub struct ByToken {
    /// Id.
    pub id: Uuid,
    /// Name (the runner id).
    pub name: String,
    /// Assigned labels.
    pub labels: Json<BTreeMap<String, String>>,
    /// Whether it was revoked.
    pub revoked: bool,
}

/// The registration whose runner token hashes to `token_hash`, revoked or not.
pub async fn by_token(db: &PgPool, token_hash: &str) -> sqlx::Result<Option<ByToken>> {
    sqlx::query_as(
        "SELECT id, name, labels, revoked_at IS NOT NULL AS revoked FROM runner_registrations WHERE token_hash = $1",
    )
    .bind(token_hash)
    .fetch_optional(db)
    .await
}

/// What the runner said when it joined.
#[derive(Debug)]
pub struct Joined<'a> {
    /// Capabilities it detected.
    pub capabilities: &'a [String],
    /// Slots.
    pub slots: u32,
    /// Version.
    pub version: &'a str,
    /// The RabbitMQ user made for the session, if any.
    pub broker_user: Option<&'a str>,
    /// The Redis user made for the session, if any.
    pub redis_user: Option<&'a str>,
}

/// Starts a new session of a live registration with `session_key` (the previous one ends).
/// False when the registration was revoked in the meantime.
pub async fn begin_session(
    db: &mut sqlx::PgConnection,
    id: Uuid,
    session_key: &str,
    joined: &Joined<'_>,
) -> sqlx::Result<bool> {
    Ok(sqlx::query(
        "UPDATE runner_registrations SET session_key = $2, registered_at = now(), capabilities = $3, \
         slots = $4, version = $5, broker_user = $6, redis_user = $7 \
         WHERE id = $1 AND revoked_at IS NULL",
    )
    .bind(id)
    .bind(session_key)
    .bind(joined.capabilities)
    .bind(joined.slots as i32)
    .bind(joined.version)
    .bind(joined.broker_user)
    .bind(joined.redis_user)
    .execute(db)
    .await?
    .rows_affected()
        == 1)
}

/// What deciding a `Started` report needs: the live registration named like its runner (if
/// any) and the job's requirement set.
#[derive(Debug, sqlx::FromRow)]
pub struct StartCheck {
    /// The job's requirements (its class's).
    pub requires: Vec<String>,
    /// The live registration's id, when one has the runner's name.
    pub registration: Option<Uuid>,
    /// Its labels.
    pub labels: Option<Json<BTreeMap<String, String>>>,
    /// Its current session key (none before its runner joined).
    pub session_key: Option<String>,
    /// Its RabbitMQ user (none: shared broker users).
    pub broker_user: Option<String>,
    /// The job's retry rule (it never changes after submit), as stored: decoded only where it
    /// is used, so that a value that would not decode cannot stop the identity checks.
    pub retry: Json<serde_json::Value>,
}

/// The job's requirements and the live registration of `runner_id`; `None` without such a job.
pub async fn start_check(
    db: &PgPool,
    job_id: Uuid,
    runner_id: &str,
) -> sqlx::Result<Option<StartCheck>> {
    sqlx::query_as(
        "SELECT c.requires, r.id AS registration, r.labels, r.session_key, r.broker_user, j.retry FROM jobs j \
         JOIN classes c ON c.class_key = j.class_key \
         LEFT JOIN runner_registrations r ON r.name = $2 AND r.revoked_at IS NULL \
         WHERE j.id = $1",
    )
    .bind(job_id)
    .bind(runner_id)
    .fetch_optional(db)
    .await
}

/// Counts a refused `Started` on the registration named `runner_id` (the live one, else the
/// latest revoked one), if there is one.
pub async fn record_refusal(
    db: &mut sqlx::PgConnection,
    runner_id: &str,
    why: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE runner_registrations SET refused_starts = refused_starts + 1, last_refusal = $2 \
         WHERE id = (SELECT id FROM runner_registrations WHERE name = $1 \
                     ORDER BY revoked_at IS NULL DESC, created_at DESC LIMIT 1)",
    )
    .bind(runner_id)
    .bind(why)
    .execute(db)
    .await?;
    Ok(())
}

/// Labels by key.
pub type Labels = BTreeMap<String, String>;

/// Every registered runner name, live or revoked.
pub async fn names(db: &PgPool) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar("SELECT DISTINCT name FROM runner_registrations ORDER BY name")
        .fetch_all(db)
        .await
}

/// Live registrations: name → (id, labels).
pub async fn live(db: &PgPool) -> sqlx::Result<BTreeMap<String, (Uuid, Labels)>> {
    let rows: Vec<(String, Uuid, Json<Labels>)> = sqlx::query_as(
        "SELECT name, id, labels FROM runner_registrations WHERE revoked_at IS NULL",
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(name, id, labels)| (name, (id, labels.0)))
        .collect())
}
