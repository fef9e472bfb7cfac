//! A test harness, for this workspace's tests only: a real orchestrator on a random port with
//! its own database, broker namespace and Redis key prefix, against the services on 127.0.0.1
//! (`scripts/services.sh` starts them). Tests of the orchestrator, the runner and the CLI share it.

use crate::Config;
use rivet_amqp::{Broker, Subscription};
use rivet_protocol::http::RunnerSession;
use rivet_protocol::messages::JobDispatch;
use rivet_protocol::redis_keys::Keys;
use rivet_protocol::topology::Topology;
use sqlx::Connection;
use std::path::Path;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The PostgreSQL server, as its superuser.
pub const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// A stage body (requires `process`) that runs until the test calls [`open_gate`] for its job:
/// a job that is surely still running whatever the machine's speed, where a `sleep` would only
/// probably be. It gives up after 60 s.
pub const GATED: &str = "process.run{command = 'python3', args = {'-c', \
    'import os, time\\nwhile not os.path.exists(\"gate\"): time.sleep(0.01)'}, timeout = 60}";

/// Lets a running job whose script is [`GATED`] go on: makes the file it waits for in its
/// workspace, which its runner keeps under `work/<runner id>/<job>-<attempt>`.
pub fn open_gate(work: &Path, job: &rivet_protocol::http::JobView) {
    let runner = job
        .runner_id
        .as_deref()
        .expect("a running job has a runner");
    let gate = work
        .join(runner)
        .join(format!("{}-{}", job.id, job.attempt))
        .join("gate");
    std::fs::write(&gate, "").unwrap_or_else(|e| panic!("opening {}: {e}", gate.display()));
}

/// The RabbitMQ server.
pub const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The Redis server.
pub const REDIS: &str = "redis://127.0.0.1:6379/";

/// A running orchestrator for one test.
#[derive(Debug)]
pub struct TestOrchestrator {
    /// `http://127.0.0.1:PORT`.
    pub base_url: String,
    /// Its admin token.
    pub token: String,
    /// Broker and Redis namespace.
    pub namespace: String,
    /// Its database.
    pub database_url: String,
    /// Whole attempts it applied against a remembered registration (`AppState::remembered_starts`).
    pub remembered_starts: tokio::sync::watch::Receiver<u64>,
    database: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Starts an orchestrator whose definition checks run in workers started from `worker_program`
/// (a binary that calls `maybe_run_worker()` first). Panics, with a hint, when a service is
/// missing: a test without its services fails, it never skips.
pub async fn start(worker_program: &Path) -> TestOrchestrator {
    start_with_broker_users(worker_program, crate::config::RunnerUsersMode::Managed).await
}

/// [`start`], with runners' broker users made per runner (`Managed`) or shared.
pub async fn start_with_broker_users(
    worker_program: &Path,
    broker_users: crate::config::RunnerUsersMode,
) -> TestOrchestrator {
    // Silent unless RIVET_TEST_LOG is set (to a filter such as `rivet_orchestrator=debug`).
    if let Ok(filter) = std::env::var("RIVET_TEST_LOG") {
        std::env::set_var("RUST_LOG", filter);
        rivet_telemetry::init("rivet-test", "info");
    }
    let database = format!("rivet_test_{}", Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(PG_ADMIN)
        .await
        .expect("PostgreSQL must run on 127.0.0.1:5432 (scripts/services.sh starts it)");
    sqlx::query(&format!("CREATE DATABASE {database}"))
        .execute(&mut admin)
        .await
        .expect("creating a test database");
    let namespace = format!("rivet-test-{}", Uuid::new_v4().simple());
    let token = format!("test-admin-{}", Uuid::new_v4().simple());
    let database_url = format!("postgres://postgres@127.0.0.1:5432/{database}");
    let mut config = config(
        &namespace,
        &database_url,
        Some(token.clone()),
        Some(worker_program),
    );
    config.broker_users = broker_users;
    let orchestrator = crate::start(&config).await.unwrap_or_else(|e| {
        panic!("starting the orchestrator (RabbitMQ, Redis running? scripts/services.sh): {e:#}")
    });
    let remembered_starts = orchestrator.state.remembered_starts.subscribe();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding a port");
    let base_url = format!("http://{}", listener.local_addr().expect("a bound address"));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(orchestrator.serve(listener, shutdown.clone()));
    TestOrchestrator {
        base_url,
        token,
        namespace,
        database_url,
        remembered_starts,
        database,
        shutdown,
        task,
    }
}

/// A test orchestrator's configuration: the services on 127.0.0.1, managed broker users.
fn config(
    namespace: &str,
    database_url: &str,
    token: Option<String>,
    worker_program: Option<&Path>,
) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().expect("a valid address"),
        database_url: database_url.to_owned(),
        redis_url: REDIS.into(),
        amqp_url: AMQP.into(),
        namespace: namespace.to_owned(),
        bootstrap_token: token,
        plugin_dir: None,
        worker_program: worker_program.map(Path::to_path_buf),
        queue_timeout: Duration::from_secs(24 * 3600),
        broker_users: crate::config::RunnerUsersMode::Managed,
        redis_users: crate::config::RunnerUsersMode::Managed,
        broker_management_url: None,
    }
}

impl TestOrchestrator {
    /// The URL of an API path (`/jobs` → `http://.../api/v1/jobs`).
    pub fn api(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base_url)
    }

    /// Stops it and removes its database, exchanges and queues.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        remove(&self.database, &self.namespace).await;
    }
}

/// Removes a test's database `database` and the exchanges and queues of `namespace` (the class
/// queues found in that database). Best effort: a test's leftovers are also swept by
/// `scripts/test.sh`.
pub async fn remove(database: &str, namespace: &str) {
    let url = format!("postgres://postgres@127.0.0.1:5432/{database}");
    let classes: Vec<String> = match sqlx::PgConnection::connect(&url).await {
        Ok(mut db) => sqlx::query_scalar("SELECT class_key FROM classes")
            .fetch_all(&mut db)
            .await
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    if let Ok(broker) =
        Broker::connect(AMQP, Topology::new(namespace), Duration::from_secs(5)).await
    {
        let keys: Vec<&str> = classes.iter().map(String::as_str).collect();
        let _ = broker.delete_topology(&keys).await;
        broker.close().await;
    }
    // The broker users its runners got (deleting one closes its connections).
    let users = crate::broker_users::BrokerUsers::from_config(&config(namespace, &url, None, None))
        .ok()
        .flatten();
    if let Some(users) = users {
        let prefix = Topology::new(namespace).runner_broker_user_prefix();
        let _ = users.delete_users_with_prefix(&prefix).await;
    }
    if let Ok(client) = redis::Client::open(REDIS) {
        if let Ok(mut redis) = redis::aio::ConnectionManager::new(client).await {
            let prefix = Keys::new(namespace).runner_user_prefix();
            let _ = crate::redis_users::delete_users_with_prefix(&mut redis, &prefix).await;
        }
    }
    if let Ok(mut admin) = sqlx::PgConnection::connect(PG_ADMIN).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
            .execute(&mut admin)
            .await;
    }
}

/// Connects to the broker as the runner of `session` does: with the broker user its session
/// gave it, declaring nothing (what test doubles of runners use).
pub async fn runner_broker(namespace: &str, session: &RunnerSession) -> Broker {
    let url = match &session.broker {
        Some(user) => rivet_amqp::with_credentials(AMQP, &user.username, &user.password)
            .expect("the test broker URL takes credentials"),
        None => AMQP.to_owned(),
    };
    Broker::connect_client(&url, Topology::new(namespace), Duration::from_secs(10))
        .await
        .expect("a runner's broker user connects (scripts/services.sh starts RabbitMQ)")
}

/// Consumes the queue of class `class_key` as a runner does: once the class is known (in the
/// Redis class table, or announced), which is when the runner's broker user may read it.
pub async fn consume_class(
    broker: &Broker,
    class_key: &str,
    prefetch: u16,
    tag: &str,
) -> Subscription<JobDispatch> {
    let mut announcements = broker
        .subscribe_announcements()
        .await
        .expect("subscribing to class announcements");
    let keys = Keys::new(broker.topology().namespace());
    let mut redis = redis::aio::ConnectionManager::new(
        redis::Client::open(REDIS).expect("the Redis URL parses"),
    )
    .await
    .expect("Redis must run on 127.0.0.1:6379 (scripts/services.sh starts it)");
    let known: bool = redis::AsyncCommands::hexists(&mut redis, keys.classes(), class_key)
        .await
        .expect("reading the class table");
    if !known {
        let announced = async {
            while let Some(a) = announcements.next().await {
                let a = a.expect("an announcement decodes");
                let _ = a.ack().await;
                if a.message.class_key == class_key {
                    return;
                }
            }
            panic!("the announcement subscription ended");
        };
        tokio::time::timeout(Duration::from_secs(10), announced)
            .await
            .unwrap_or_else(|_| panic!("class `{class_key}` was not announced within 10 s"));
    }
    let _ = announcements.cancel().await;
    broker
        .consume(&broker.topology().class_queue(class_key), prefetch, tag)
        .await
        .expect("a runner consumes a class queue its labels cover")
}
