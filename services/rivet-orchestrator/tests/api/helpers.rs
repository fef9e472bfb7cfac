//! A real orchestrator on a random port, with its own database, broker namespace and Redis keys.

use rivet_orchestrator::Config;
use sqlx::Connection;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const REDIS: &str = "redis://127.0.0.1:6379/";

pub struct TestApp {
    pub base: String,
    pub token: String,
    pub namespace: String,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    database: String,
}

/// Creates a fresh database; fails loudly with a hint when PostgreSQL is not there.
pub async fn fresh_database() -> (String, String) {
    let name = format!("rivet_test_{}", Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(PG_ADMIN)
        .await
        .expect("PostgreSQL must run on 127.0.0.1:5432 (scripts/services.sh starts it)");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    (
        name.clone(),
        format!("postgres://postgres@127.0.0.1:5432/{name}"),
    )
}

pub async fn spawn_app() -> TestApp {
    let (database, database_url) = fresh_database().await;
    let namespace = format!("rivet-test-{}", Uuid::new_v4().simple());
    let token = format!("test-admin-{}", Uuid::new_v4().simple());
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: database_url.clone(),
        redis_url: REDIS.into(),
        amqp_url: AMQP.into(),
        namespace: namespace.clone(),
        bootstrap_token: Some(token.clone()),
        plugin_dir: None,
        worker_program: Some(env!("CARGO_BIN_EXE_rivet-orchestrator").into()),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(rivet_orchestrator::run(config, listener, shutdown.clone()));
    let http = reqwest::Client::new();
    // Ready when /readyz says so (or the task failed: then show why).
    let ready = async {
        loop {
            if let Ok(r) = http.get(format!("{base}/readyz")).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            tokio::task::yield_now().await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(30), ready)
        .await
        .is_err()
    {
        panic!("the orchestrator did not become ready; is RabbitMQ/Redis/PostgreSQL running? (scripts/services.sh)");
    }
    TestApp {
        base,
        token,
        namespace,
        http,
        shutdown,
        task: Some(task),
        database,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        if let Ok(broker) = rivet_amqp::Broker::connect(
            AMQP,
            rivet_protocol::topology::Topology::new(&self.namespace),
            Duration::from_secs(5),
        )
        .await
        {
            let _ = broker.delete_topology(&["any", "process"]).await;
            broker.close().await;
        }
        if let Ok(mut admin) = sqlx::PgConnection::connect(PG_ADMIN).await {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.database
            ))
            .execute(&mut admin)
            .await;
        }
    }
}
