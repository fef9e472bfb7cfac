//! Runner registrations (API-02): admins create them (with the labels the runner gets), list and
//! revoke them; a runner joins with its registration's token and gets its identity, labels and
//! a session key.

use super::body::Body;
use crate::auth::{self, Admin};
use crate::db::registrations::{self as db, Created, Joined};
use crate::error::ApiError;
use crate::AppState;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::Json;
use rivet_core::requirement::Requirement;
use rivet_protocol::http::{
    CreateRunnerRegistration, Credentials, RegisterRunner, RunnerRegistrationView, RunnerSession,
};
use rivet_protocol::identity::is_runner_name;
use rivet_protocol::redis_keys::{RunnerPresence, PRESENCE_TTL_MS};
use std::collections::BTreeMap;

/// Most labels one registration may carry.
const MAX_LABELS: usize = 32;

/// `POST /runners/registrations`: a new registration; its token is in the answer, once.
pub async fn create(
    State(state): State<AppState>,
    _: Admin,
    Body(body): Body<CreateRunnerRegistration>,
) -> Result<(StatusCode, Json<RunnerRegistrationView>), ApiError> {
    let name = body.name.trim();
    if !is_runner_name(name) {
        return Err(ApiError::BadRequest(format!(
            "`{name}` cannot name a runner: use 1-64 letters, digits, `_`, `-` and `.` \
             (not starting with `-` or `.`, and not `registrations`)"
        )));
    }
    check_labels(&body.labels)?;
    let secret = auth::generate_runner_token();
    match db::create(&state.db, name, &body.labels, &auth::hash(&secret)).await? {
        Created::Created(mut view) => {
            tracing::info!(runner = %name, labels = ?body.labels, "Runner registration created.");
            view.secret = Some(secret);
            Ok((StatusCode::CREATED, Json(view)))
        }
        Created::NameTaken => Err(ApiError::Conflict(
            "registration_exists",
            format!("a registration named `{name}` exists; revoke it first to reuse the name"),
        )),
    }
}

/// Labels are checked with the requirement parser, so every label can be required by a job.
fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if labels.len() > MAX_LABELS {
        return Err(ApiError::BadRequest(format!(
            "a runner has at most {MAX_LABELS} labels"
        )));
    }
    for (k, v) in labels {
        match Requirement::parse(&format!("label:{k}={v}")) {
            Ok(Requirement::Label { .. }) => {}
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "label `{k}={v}`: keys and values are 1-64 letters, digits, `_`, `-` and `.`"
                )))
            }
        }
    }
    Ok(())
}

/// `GET /runners/registrations`: every registration, revoked ones included, without tokens.
pub async fn list(
    State(state): State<AppState>,
    _: Admin,
) -> Result<Json<Vec<RunnerRegistrationView>>, ApiError> {
    Ok(Json(db::list(&state.db).await?))
}

/// `DELETE /runners/registrations/{id}` (an id or a name): revokes the live registration. Its
/// session ends at once (no report of its runner is accepted any more) and its token no longer
/// registers. Its runner is cut off: with managed broker users its user is deleted, which
/// closes its broker connections (the runner sees its login refused, cancels its jobs and
/// exits); otherwise, or when the broker cannot be reached (the reaper deletes the user later),
/// it is ordered to drain.
pub async fn revoke(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<Json<RunnerRegistrationView>, ApiError> {
    let Some(view) = db::revoke(&state.db, &id).await? else {
        return Err(ApiError::NotFound(format!(
            "no live runner registration `{id}`"
        )));
    };
    tracing::info!(runner = %view.name, registration = %view.id, "Runner registration revoked.");
    if let Err(e) = crate::redis_users::retire_revoked(&state).await {
        tracing::warn!(runner = %view.name, error = %format!("{e:#}"), "Deleting a revoked runner's Redis user failed; the reaper tries again.");
    }
    let cut_off = match crate::broker_users::retire_revoked(&state).await {
        Ok(_) => state.broker_users.is_some(),
        Err(e) => {
            tracing::warn!(runner = %view.name, error = %format!("{e:#}"), "Deleting a revoked runner's broker user failed; the reaper tries again.");
            false
        }
    };
    if !cut_off {
        if let Err(e) = super::fleet::send_drain(
            &state,
            &view.name,
            "its registration was revoked by an admin",
        )
        .await
        {
            tracing::warn!(runner = %view.name, error = %format!("{e:#}"), "Ordering a revoked runner to drain failed; its starts are refused anyway.");
        }
    }
    Ok(Json(view))
}

/// The registration a runner's bearer token names. Read from the request's parts, so a request
/// without a valid runner token is refused before its body is read. API tokens are not runner
/// tokens (different table): an admin token cannot register a runner.
pub struct RunnerToken(db::ByToken);

impl FromRequestParts<AppState> for RunnerToken {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(secret) = auth::bearer(&parts.headers) else {
            return Err(ApiError::Policy(
                StatusCode::UNAUTHORIZED,
                "runner.identity",
                "a runner needs its token (RIVET_RUNNER_TOKEN); an admin creates one with \
                 `rivet runner register NAME`"
                    .into(),
            ));
        };
        match db::by_token(&state.db, &auth::hash(secret)).await? {
            None => Err(ApiError::Policy(
                StatusCode::UNAUTHORIZED,
                "runner.identity",
                "unknown runner token; an admin creates one with `rivet runner register NAME`"
                    .into(),
            )),
            Some(r) if r.revoked => Err(ApiError::Policy(
                StatusCode::UNAUTHORIZED,
                "runner.identity",
                format!("the registration of runner `{}` was revoked", r.name),
            )),
            Some(r) => Ok(RunnerToken(r)),
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `POST /runners/register` (bearer: a runner token): a runner joins. It gets its runner id
/// (the registration's name), the labels an admin assigned, and a new session key; the previous
/// session of the registration ends. One token is one runner: while a runner of this
/// registration is online (its presence record lives), another one is refused with 409.
/// A body declaring labels is refused (403): labels are assigned, never declared.
pub async fn register(
    State(state): State<AppState>,
    RunnerToken(registration): RunnerToken,
    Body(raw): Body<serde_json::Value>,
) -> Result<Json<RunnerSession>, ApiError> {
    let name = registration.name.clone();
    if raw.get("labels").is_some() {
        tracing::warn!(security = true, runner = %name,
            "policy violation [runner.labels]: a runner declared its own labels when registering; refused.");
        return Err(ApiError::Policy(
            StatusCode::FORBIDDEN,
            "runner.labels",
            "a runner cannot declare its labels; an admin assigns them \
             (`rivet runner register NAME --label KEY=VALUE`)"
                .into(),
        ));
    }
    let body: RegisterRunner = serde_json::from_value(raw).map_err(|e| {
        ApiError::InvalidBody(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("not a runner registration: {e}"),
        )
    })?;
    if body.slots == 0
        || body.capabilities.len() > 256
        || body.capabilities.iter().any(|c| c.len() > 128)
        || body.version.len() > 64
    {
        return Err(ApiError::BadRequest(
            "a runner has at least one slot, at most 256 capabilities of at most 128 bytes, and \
             a version of at most 64 bytes"
                .into(),
        ));
    }
    // The presence record is written here first, with SET NX: of two processes using one token
    // at once, exactly one gets through; the other is told the runner is already online.
    let now = now_ms();
    let presence = RunnerPresence {
        schema: rivet_protocol::SCHEMA_VERSION,
        id: name.clone(),
        capabilities: body.capabilities.clone(),
        labels: registration.labels.0.clone(),
        slots: body.slots,
        running: Vec::new(),
        draining: false,
        version: body.version.clone(),
        started_at_ms: now,
        updated_at_ms: now,
    };
    let key = state.keys.runner(&name);
    let mut redis = state.redis.clone();
    let claimed: Option<String> = redis::cmd("SET")
        .arg(&key)
        .arg(serde_json::to_string(&presence).map_err(anyhow::Error::from)?)
        .arg("NX")
        .arg("PX")
        .arg(PRESENCE_TTL_MS)
        .query_async(&mut redis)
        .await?;
    if claimed.is_none() {
        return Err(ApiError::Conflict(
            "runner_online",
            format!(
                "runner `{name}` is already online: one token is one runner. Stop the other \
                 process, or wait {} s for the presence of one that died to expire",
                PRESENCE_TTL_MS / 1000
            ),
        ));
    }
    let session_key = auth::generate_session_key()?;
    let (broker, redis_user) = match open_session(&state, &registration, &body, &session_key).await
    {
        Ok(Some(users)) => users,
        failed => {
            let _: redis::RedisResult<()> = redis::AsyncCommands::del(&mut redis, &key).await;
            failed?;
            return Err(ApiError::Policy(
                StatusCode::UNAUTHORIZED,
                "runner.identity",
                format!("the registration of runner `{name}` was revoked"),
            ));
        }
    };
    tracing::info!(runner = %name, registration = %registration.id, capabilities = ?body.capabilities,
        slots = body.slots, "Runner registered.");
    Ok(Json(RunnerSession {
        runner_id: name,
        registration_id: registration.id,
        labels: registration.labels.0,
        session_key,
        broker,
        redis: redis_user,
    }))
}

/// The users a session gets on the broker and on Redis (each `None` when shared).
type SessionUsers = (Option<Credentials>, Option<Credentials>);

/// Starts a session of `registration`: its broker and Redis users (when managed: new
/// passwords, the earlier session's connections closed), the session in the database, then the
/// broker user's permissions (written from the database, so after the session is recorded).
/// `None` when the registration was revoked meanwhile.
async fn open_session(
    state: &AppState,
    registration: &db::ByToken,
    body: &RegisterRunner,
    session_key: &str,
) -> anyhow::Result<Option<SessionUsers>> {
    // Under the registration's lock: the reaper's restore of a lost Redis user decides from the
    // session recorded here, never from the one before it.
    let mut tx = state.db.begin().await?;
    crate::redis_users::lock_registration(&mut tx, registration.id).await?;
    let broker = crate::broker_users::new_credentials(state, registration.id)?;
    if let Some(credentials) = &broker {
        crate::broker_users::create_user(state, credentials).await?;
    }
    let redis = crate::redis_users::credentials(state, registration.id, session_key);
    if let Some(credentials) = &redis {
        crate::redis_users::create_user(state, &registration.name, credentials).await?;
    }
    let joined = Joined {
        capabilities: &body.capabilities,
        slots: body.slots,
        version: &body.version,
        broker_user: broker.as_ref().map(|b| b.username.as_str()),
        redis_user: redis.as_ref().map(|r| r.username.as_str()),
    };
    if !db::begin_session(&mut tx, registration.id, session_key, &joined).await? {
        // Revoked in between: nobody got these users' passwords; delete them here (the row
        // does not name them).
        if let Some(credentials) = &broker {
            crate::broker_users::delete_user(state, &credentials.username).await?;
        }
        if let Some(credentials) = &redis {
            crate::redis_users::delete_user(state, &credentials.username).await?;
        }
        return Ok(None);
    }
    tx.commit().await?;
    crate::broker_users::sync_permissions(state, Some(registration.id)).await?;
    Ok(Some((broker, redis)))
}
