//! Rivet's orchestrator: the HTTP API under `/api/v1`, state in PostgreSQL, runner presence and
//! leases in Redis, jobs published to RabbitMQ through a transactional outbox, runner reports
//! applied idempotently.
//!
//! - [`api`]: the axum router and handlers; [`error`]: the one `ApiError` response.
//! - [`db`]: plain query functions per table (no repository trait).
//! - [`inserts`]: submissions' job inserts, grouped into shared statements.
//! - [`relay`]: publishes outbox rows with publisher confirms.
//! - [`reports`]: applies runner reports (fenced by attempt and runner in PostgreSQL).
//! - [`reaper`]: declares attempts lost when their lease is gone, expires queued jobs, repairs
//!   fences after Redis lost its data.
//! - [`fleet`]: live runners from Redis, and whether a requirement set can be scheduled.
//! - [`lint`]: checks pushed definitions in sandbox workers.
//! - [`broker_users`]: each runner's own RabbitMQ user and its permissions (API-03);
//!   [`redis_users`]: its own Redis ACL user.
//!
//! Depends on shared crates only. The only `sqlx` user in the workspace.

pub mod api;
mod auth;
pub mod broker_users;
mod config;
pub mod db;
mod error;
mod fence;
pub mod fleet;
pub mod inserts;
mod lint;
pub mod reaper;
pub mod redis_users;
pub mod relay;
pub mod reports;
pub mod testing;

pub use config::{Cli, Command, Config, RunnerUsersMode};

use anyhow::Context;
use rivet_amqp::Broker;
use rivet_protocol::redis_keys::Keys;
use rivet_protocol::topology::Topology;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Migrations, embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// Everything handlers and background tasks share.
#[derive(Clone)]
pub struct AppState {
    /// PostgreSQL.
    pub db: PgPool,
    /// Job inserts, grouped.
    pub inserts: inserts::Inserts,
    /// Redis.
    pub redis: redis::aio::ConnectionManager,
    /// RabbitMQ.
    pub broker: Arc<Broker>,
    /// Redis key names.
    pub keys: Keys,
    /// Wakes the outbox relay after a commit.
    pub relay_wakeup: Arc<Notify>,
    /// Checks definitions.
    pub linter: Arc<lint::Linter>,
    /// Set when writing a fence failed: the reaper writes them all again.
    pub fences_dirty: Arc<std::sync::atomic::AtomicBool>,
    /// Queue timeout of jobs whose pipeline sets none.
    pub queue_timeout: Duration,
    /// Pipeline versions by (project, name, version): stored versions never change.
    pub versions: Arc<std::sync::Mutex<VersionCache>>,
    /// The latest version of each pipeline by (project, name), as this orchestrator last found
    /// it: a guess that the job's insert checks.
    pub latest: Arc<std::sync::Mutex<HashMap<(uuid::Uuid, String), i32>>>,
    /// Project ids by name.
    pub projects: Arc<std::sync::Mutex<HashMap<String, uuid::Uuid>>>,
    /// What each token hash this orchestrator found live names (admin, project), which never
    /// changes; whether it is revoked is not kept (`auth::require_token_checked_by_route`).
    pub tokens: Arc<std::sync::Mutex<TokenCache>>,
    /// Live runners as last read for a submission's schedulability, and when.
    pub runners_seen: Arc<tokio::sync::Mutex<Option<RunnersSeen>>>,
    /// RabbitMQ's management API, making each runner's broker user (`None`: shared users).
    pub broker_users: Option<broker_users::BrokerUsers>,
    /// Whether each runner gets a Redis user of its own.
    pub redis_users: RunnerUsersMode,
    /// Runners' registrations as their last `Started` found them: a guess that the statement
    /// applying a whole attempt checks (`reports::KnownRunner`).
    pub known_runners: Arc<std::sync::Mutex<reports::KnownRunners>>,
    /// Whole attempts applied against a remembered registration, without the identity check's
    /// own statement (watched by tests).
    pub remembered_starts: Arc<tokio::sync::watch::Sender<u64>>,
}

impl AppState {
    /// A pipeline version: `version`, or the latest, and whether "the latest" is a guess. The
    /// content comes from a cache (versions are immutable). Which version is the latest is asked
    /// of PostgreSQL, unless `guess` allows the one this orchestrator last found: then the answer
    /// says so, and the job's insert checks the guess (`db::jobs::create` refuses to insert when
    /// a newer version exists, and the submission asks again).
    pub async fn pipeline_version(
        &self,
        project_id: uuid::Uuid,
        name: &str,
        version: Option<i32>,
        guess: bool,
    ) -> sqlx::Result<Option<(Arc<db::pipelines::Version>, bool)>> {
        let (number, guessed) = match version {
            Some(v) => (v, false),
            None => {
                let key = (project_id, name.to_owned());
                let known = guess
                    .then(|| lock(&self.latest).get(&key).copied())
                    .flatten();
                match known {
                    Some(v) => (v, true),
                    None => {
                        match db::pipelines::latest_version(&self.db, project_id, name).await? {
                            Some(v) => {
                                remember(&self.latest, key, v);
                                (v, false)
                            }
                            None => return Ok(None),
                        }
                    }
                }
            }
        };
        let key = (project_id, name.to_owned(), number);
        if let Some(v) = lock(&self.versions).get(&key) {
            return Ok(Some((v.clone(), guessed)));
        }
        let Some(found) = db::pipelines::get(&self.db, project_id, name, Some(number)).await?
        else {
            return Ok(None);
        };
        let found = Arc::new(found);
        remember(&self.versions, key, found.clone());
        Ok(Some((found, guessed)))
    }

    /// The caller a token hash names, if this orchestrator found it live before (it may have
    /// been revoked since: the caller is not checked).
    pub fn known_token(&self, hash: &str) -> Option<auth::Caller> {
        lock(&self.tokens).get(hash).cloned()
    }

    /// Remembers what a live token names.
    pub fn remember_token(&self, hash: String, caller: auth::Caller) {
        remember(&self.tokens, hash, caller);
    }

    /// The id of project `name`, if it exists: from memory once found (projects are never
    /// renamed or deleted, so a found id stays right; a missing one is asked again each time).
    pub async fn project_id(&self, name: &str) -> sqlx::Result<Option<uuid::Uuid>> {
        if let Some(id) = lock(&self.projects).get(name) {
            return Ok(Some(*id));
        }
        let id: Option<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM projects WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.db)
            .await?;
        if let Some(id) = id {
            remember(&self.projects, name.to_owned(), id);
        }
        Ok(id)
    }

    /// Live runners, read from Redis at most every 500 ms (for the schedulability a submission
    /// reports; listings read Redis every time).
    pub async fn recent_runners(
        &self,
    ) -> anyhow::Result<Arc<Vec<rivet_protocol::redis_keys::RunnerPresence>>> {
        let mut seen = self.runners_seen.lock().await;
        if let Some((at, runners)) = seen.as_ref() {
            if at.elapsed() < Duration::from_millis(500) {
                return Ok(runners.clone());
            }
        }
        let runners = Arc::new(fleet::live_runners(self).await?);
        *seen = Some((std::time::Instant::now(), runners.clone()));
        Ok(runners)
    }
}

/// Pipeline versions by (project, name, version).
pub type VersionCache = HashMap<(uuid::Uuid, String, i32), Arc<db::pipelines::Version>>;

/// Token hash → the caller of a token found live.
pub type TokenCache = HashMap<String, auth::Caller>;

/// Entries each in-memory cache keeps at most (emptied when full: every entry can be read
/// again from PostgreSQL).
const CACHE_ENTRIES: usize = 1024;

fn lock<T>(cache: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    cache.lock().expect("a cache lock is never poisoned")
}

fn remember<K: std::hash::Hash + Eq, V>(cache: &std::sync::Mutex<HashMap<K, V>>, key: K, value: V) {
    let mut cache = lock(cache);
    if cache.len() >= CACHE_ENTRIES {
        cache.clear();
    }
    cache.insert(key, value);
}
/// Live runners and when they were read.
pub type RunnersSeen = (
    std::time::Instant,
    Arc<Vec<rivet_protocol::redis_keys::RunnerPresence>>,
);

/// Backoff for retrying infrastructure calls: 100 ms doubling to 5 s, with jitter, forever.
pub fn backoff() -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

/// Runs the binary's command.
pub async fn main(cli: Cli) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Migrate => {
            let db = connect_db(&cli.config.database_url).await?;
            MIGRATOR.run(&db).await.context("applying migrations")?;
            tracing::info!("Migrations applied.");
            Ok(())
        }
        Command::Serve => {
            let listener = TcpListener::bind(cli.config.listen)
                .await
                .with_context(|| format!("listening on {}", cli.config.listen))?;
            let shutdown = CancellationToken::new();
            let signal = shutdown.clone();
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                signal.cancel();
            });
            run(cli.config, listener, shutdown).await
        }
    }
}

async fn connect_db(url: &str) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .with_context(|| format!("connecting to PostgreSQL at {}", redact(url)))
}

/// A URL with its password replaced by `***`, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Connects everything, applies migrations, starts the background tasks and serves the API on
/// `listener` until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    start(&config).await?.serve(listener, shutdown).await
}

/// A started orchestrator: connected, migrated, with its admin token and class queues, not yet
/// serving.
#[derive(Debug)]
pub struct Orchestrator {
    state: AppState,
}

/// Connects PostgreSQL, Redis and RabbitMQ, applies migrations, creates the admin token if none
/// exists and declares every known class. Errors here are start-up errors, reported at once.
pub async fn start(config: &Config) -> anyhow::Result<Orchestrator> {
    if !Topology::is_namespace(&config.namespace) {
        anyhow::bail!(
            "--namespace `{}`: use 1-64 letters, digits, `-`, `_` and `.`",
            config.namespace
        );
    }
    let db = connect_db(&config.database_url).await?;
    MIGRATOR.run(&db).await.context("applying migrations")?;
    let redis_client = redis::Client::open(config.redis_url.as_str())
        .with_context(|| format!("parsing the Redis URL {}", redact(&config.redis_url)))?;
    // Bounded, as the runner's: a command sent while Redis restarts must fail (and be retried
    // by its caller), never hang a request or the reaper. Longer than the runner's 5 s, for the
    // reaper's pipelines of fence writes.
    let redis_config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Duration::from_secs(10))
        .set_response_timeout(Duration::from_secs(10))
        .set_max_delay(2_000);
    let redis = redis::aio::ConnectionManager::new_with_config(redis_client, redis_config)
        .await
        .with_context(|| format!("connecting to Redis at {}", redact(&config.redis_url)))?;
    let broker = Broker::connect(
        &config.amqp_url,
        Topology::new(&config.namespace),
        Duration::from_secs(30),
    )
    .await
    .context("connecting to RabbitMQ")?;
    let linter = lint::Linter::new(config)?;
    let broker_users = broker_users::BrokerUsers::from_config(config)?;
    match &broker_users {
        Some(users) => users.check().await?,
        None => tracing::warn!(
            "Runners share the broker user of their URLs (--broker-users shared): any runner can \
             read every class queue, and reports are not tied to a broker user (API-03)."
        ),
    }
    match config.redis_users {
        RunnerUsersMode::Managed => {
            let mut conn = redis.clone();
            let _: Vec<String> = redis::cmd("ACL")
                .arg("USERS")
                .query_async(&mut conn)
                .await
                .context(
                    "listing Redis ACL users: the orchestrator's Redis user makes each runner's \
                     own (it needs the ACL commands), or run with `--redis-users shared`",
                )?;
        }
        RunnerUsersMode::Shared => tracing::warn!(
            "Runners share the Redis user of their URLs (--redis-users shared): any runner can \
             write every key, other runners' presence and fences included."
        ),
    }
    let relay_wakeup = Arc::new(Notify::new());
    let state = AppState {
        inserts: inserts::Inserts::start(&db, relay_wakeup.clone()),
        db,
        redis,
        broker: Arc::new(broker),
        keys: Keys::new(&config.namespace),
        relay_wakeup,
        linter: Arc::new(linter),
        fences_dirty: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        queue_timeout: config.queue_timeout,
        versions: Default::default(),
        latest: Default::default(),
        projects: Default::default(),
        tokens: Default::default(),
        runners_seen: Default::default(),
        broker_users,
        redis_users: config.redis_users,
        known_runners: Default::default(),
        remembered_starts: Arc::new(tokio::sync::watch::Sender::new(0)),
    };
    auth::bootstrap(&state.db, config.bootstrap_token.as_deref()).await?;
    relay::sync_classes(&state)
        .await
        .context("declaring class queues")?;
    Ok(Orchestrator { state })
}

impl Orchestrator {
    /// Starts the background tasks and serves the API on `listener` until `shutdown`.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let state = self.state;
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(relay::run(state.clone(), shutdown.clone()));
        tasks.spawn(reports::run(state.clone(), shutdown.clone()));
        tasks.spawn(reaper::run(state.clone(), shutdown.clone()));
        let app = api::router(state.clone());
        let serve_shutdown = shutdown.clone();
        tracing::info!(address = %listener.local_addr()?, "Orchestrator listening.");
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { serve_shutdown.cancelled().await })
            .await;
        shutdown.cancel();
        while let Some(done) = tasks.join_next().await {
            if let Ok(Err(e)) = done {
                tracing::warn!(error = %format!("{e:#}"), "A background task ended with an error.");
            }
        }
        state.broker.close().await;
        served.context("serving HTTP")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_passwords() {
        assert_eq!(
            super::redact("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            super::redact("redis://127.0.0.1:6379/"),
            "redis://127.0.0.1:6379/"
        );
        assert_eq!(
            super::redact("postgres://postgres@h/db"),
            "postgres://postgres@h/db"
        );
    }
}
