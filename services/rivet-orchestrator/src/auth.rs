//! Bearer tokens: stored as SHA-256 hashes, checked on every `/api/v1` request.

use crate::error::ApiError;
use crate::AppState;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

/// The caller, as its token says.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Whether it is an admin token (managing tokens, draining runners).
    pub is_admin: bool,
    /// The project of a project token; `None` for an admin token (every project).
    pub project_id: Option<Uuid>,
    /// The hash of a token not yet checked against revocation, on a route whose own statement
    /// checks it ([`require_token_checked_by_route`]); `None`: checked already.
    pub unchecked: Option<String>,
}

/// The project a request acts on (API-01). A project token's is its own: naming another
/// project with `?project=NAME` is 404, as if it did not exist. An admin token acts on
/// `?project=NAME`, or on `default` when the request names none.
#[derive(Debug, Clone, Copy)]
pub struct Scope {
    /// The project pipelines are pushed to, looked up in and listed from, and jobs listed from.
    pub project_id: Uuid,
    /// Whether the caller is an admin: job routes by id (show, logs, cancel, retry) then reach
    /// a job of any project.
    pub admin: bool,
}

impl Scope {
    /// The project a job must belong to for this caller to see it by id; `None`: any.
    pub fn job_project(&self) -> Option<Uuid> {
        (!self.admin).then_some(self.project_id)
    }
}

#[derive(Debug, serde::Deserialize)]
struct ProjectParam {
    project: Option<String>,
}

/// The project every pipeline belonged to before projects existed, and the one an admin token
/// acts on unless a request names another.
pub const DEFAULT_PROJECT: &str = "default";

impl FromRequestParts<AppState> for Scope {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let caller = parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or(ApiError::Unauthorized)?;
        let named = axum::extract::Query::<ProjectParam>::try_from_uri(&parts.uri)
            .map_err(|e| ApiError::BadRequest(format!("query string: {e}")))?
            .0
            .project;
        let lookup = |name: String| async move {
            let id = state.project_id(&name).await?;
            Ok::<_, ApiError>((name, id))
        };
        match caller.project_id {
            Some(own) => {
                if let Some(name) = named {
                    // The same answer whether the project exists or not: no existence leak.
                    let (name, id) = lookup(name).await?;
                    if id != Some(own) {
                        return Err(ApiError::NotFound(format!("no project `{name}`")));
                    }
                }
                Ok(Scope {
                    project_id: own,
                    admin: false,
                })
            }
            None => {
                let (name, id) = lookup(named.unwrap_or_else(|| DEFAULT_PROJECT.into())).await?;
                let project_id =
                    id.ok_or_else(|| ApiError::NotFound(format!("no project `{name}`")))?;
                Ok(Scope {
                    project_id,
                    admin: true,
                })
            }
        }
    }
}

/// Extractor of admin-only routes: answers 403 unless the caller's token is an admin token.
/// It reads request parts only, so it runs (and refuses) before the body is read or checked.
#[derive(Debug, Clone, Copy)]
pub struct Admin;

impl<S: Send + Sync> FromRequestParts<S> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<Caller>() {
            Some(caller) if caller.is_admin => Ok(Admin),
            Some(_) => Err(ApiError::Forbidden("this route needs an admin token")),
            // Only routes behind `require_token` use it; without a caller, nobody is let in.
            None => Err(ApiError::Unauthorized),
        }
    }
}

/// Hex SHA-256 of a token secret.
pub fn hash(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A new random token secret: `rvt_` and 256 random bits in hex.
pub fn generate() -> String {
    format!("rvt_{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple())
}

/// A new runner token: `rvr_` and 256 random bits in hex (a prefix of its own, so a leaked one
/// is recognisable and never mistaken for an API token).
pub fn generate_runner_token() -> String {
    format!("rvr_{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple())
}

/// A new session key: 256 bits from the operating system's random source, in hex
/// ([`rivet_protocol::identity::SESSION_KEY_LEN`]).
pub fn generate_session_key() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| anyhow::anyhow!("drawing a session key from the OS random source: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The bearer secret of a request, if it has one.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// Creates the admin token when no token exists: `given`, or a generated one printed once.
pub async fn bootstrap(db: &PgPool, given: Option<&str>) -> anyhow::Result<()> {
    let mut tx = db.begin().await?;
    // One orchestrator at a time decides, even when several start together.
    sqlx::query("LOCK TABLE tokens IN EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await?;
    let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM tokens")
        .fetch_one(&mut *tx)
        .await?;
    if count == 0 {
        let secret = given.map(str::to_owned).unwrap_or_else(generate);
        sqlx::query("INSERT INTO tokens (id, name, hash, is_admin) VALUES ($1, 'admin', $2, TRUE)")
            .bind(Uuid::new_v4())
            .bind(hash(&secret))
            .execute(&mut *tx)
            .await?;
        if given.is_none() {
            // Printed once, on stdout, so an operator can capture it; it is stored hashed.
            println!("rivet-orchestrator: created the admin token (shown once): {secret}");
        }
        tracing::info!("Created the admin token.");
    }
    tx.commit().await?;
    Ok(())
}

/// Middleware: resolves the bearer token or answers 401.
pub async fn require_token(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let secret = bearer(req.headers()).ok_or(ApiError::Unauthorized)?;
    let caller = lookup(&state, hash(secret)).await?;
    req.extensions_mut().insert(caller);
    Ok(next.run(req).await)
}

/// Middleware of a route whose one statement checks the token itself (submitting a run: the
/// job is inserted only while the token is not revoked, `Caller::unchecked`). A token this
/// orchestrator has seen is not looked up first: what a token is (admin, project) never
/// changes, only whether it is revoked. Any answer but a success is given only after the
/// token is looked up, so a revoked token learns nothing but 401.
pub async fn require_token_checked_by_route(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let secret = bearer(req.headers()).ok_or(ApiError::Unauthorized)?;
    let hash = hash(secret);
    let (caller, checked) = match state.known_token(&hash) {
        Some(caller) => (
            Caller {
                unchecked: Some(hash.clone()),
                ..caller
            },
            false,
        ),
        None => (lookup(&state, hash.clone()).await?, true),
    };
    req.extensions_mut().insert(caller);
    let response = next.run(req).await;
    if !checked && !response.status().is_success() {
        lookup(&state, hash).await?;
    }
    Ok(response)
}

/// The caller a live token names (remembered for [`require_token_checked_by_route`]), or 401.
async fn lookup(state: &AppState, hash: String) -> Result<Caller, ApiError> {
    let row: Option<(bool, Option<Uuid>)> = sqlx::query_as(
        "SELECT is_admin, project_id FROM tokens WHERE hash = $1 AND revoked_at IS NULL",
    )
    .bind(&hash)
    .fetch_optional(&state.db)
    .await?;
    let (is_admin, project_id) = row.ok_or(ApiError::Unauthorized)?;
    let caller = Caller {
        is_admin,
        project_id,
        unchecked: None,
    };
    state.remember_token(hash, caller.clone());
    Ok(caller)
}
