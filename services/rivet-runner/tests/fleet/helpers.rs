//! An orchestrator and runners in this process, against the real PostgreSQL, Redis and RabbitMQ,
//! each test under its own database, broker namespace and Redis key prefix.

use rivet_protocol::http::{JobView, PipelineView};
use sqlx::Connection;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const REDIS: &str = "redis://127.0.0.1:6379/";

pub struct Fleet {
    pub database_url: String,
    pub base: String,
    pub token: String,
    pub namespace: String,
    pub http: reqwest::Client,
    database: String,
    orchestrator: (
        CancellationToken,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    ),
    runners: Vec<(
        String,
        CancellationToken,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    )>,
    work: PathBuf,
}

fn worker_program() -> PathBuf {
    env!("CARGO_BIN_EXE_rivet-runner").into()
}

pub async fn start() -> Fleet {
    let database = format!("rivet_test_{}", Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(PG_ADMIN)
        .await
        .expect("PostgreSQL must run on 127.0.0.1:5432 (scripts/services.sh starts it)");
    sqlx::query(&format!("CREATE DATABASE {database}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let namespace = format!("rivet-test-{}", Uuid::new_v4().simple());
    let token = format!("test-{}", Uuid::new_v4().simple());
    let config = rivet_orchestrator::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: format!("postgres://postgres@127.0.0.1:5432/{database}"),
        redis_url: REDIS.into(),
        amqp_url: AMQP.into(),
        namespace: namespace.clone(),
        bootstrap_token: Some(token.clone()),
        plugin_dir: None,
        worker_program: Some(worker_program()),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let task = tokio::spawn(rivet_orchestrator::run(config, listener, stop.clone()));
    let http = reqwest::Client::new();
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
    tokio::time::timeout(Duration::from_secs(30), ready)
        .await
        .expect("the orchestrator became ready (RabbitMQ, Redis, PostgreSQL running?)");
    let work = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(&namespace);
    let database_url = format!("postgres://postgres@127.0.0.1:5432/{database}");
    Fleet {
        database_url,
        base,
        token,
        namespace,
        http,
        database,
        orchestrator: (stop, task),
        runners: Vec::new(),
        work,
    }
}

impl Fleet {
    pub fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
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

    pub async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        let r = self
            .http
            .get(self.url(path))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.unwrap()
    }

    pub async fn push(&self, source: &str) -> PipelineView {
        let r = self
            .post("/pipelines", serde_json::json!({ "source": source }))
            .await;
        assert_eq!(r.status(), 201, "push: {}", r.text().await.unwrap());
        r.json().await.unwrap()
    }

    pub async fn submit(&self, pipeline: &str, inputs: serde_json::Value) -> JobView {
        let r = self
            .post(
                &format!("/pipelines/{pipeline}/runs"),
                serde_json::json!({ "inputs": inputs }),
            )
            .await;
        assert_eq!(r.status(), 201, "run: {}", r.text().await.unwrap());
        r.json().await.unwrap()
    }

    /// Starts a runner with these labels and extra policy TOML; returns its id once it is online.
    pub async fn runner(&mut self, name: &str, labels: &[&str], policy_toml: &str) -> String {
        self.runner_with_slots(name, labels, policy_toml, 2).await
    }

    /// Like [`Fleet::runner`], with a number of slots.
    pub async fn runner_with_slots(
        &mut self,
        name: &str,
        labels: &[&str],
        policy_toml: &str,
        slots: u32,
    ) -> String {
        let id = format!("{name}-{}", &Uuid::new_v4().simple().to_string()[..6]);
        let policy = if policy_toml.is_empty() {
            None
        } else {
            std::fs::create_dir_all(&self.work).unwrap();
            let path = self.work.join(format!("{id}.toml"));
            std::fs::write(&path, policy_toml).unwrap();
            Some(path)
        };
        let config = rivet_runner::Config {
            amqp_url: AMQP.into(),
            redis_url: REDIS.into(),
            namespace: self.namespace.clone(),
            id: Some(id.clone()),
            slots,
            labels: labels
                .iter()
                .map(|l| {
                    let (k, v) = l.split_once('=').unwrap();
                    (k.into(), v.into())
                })
                .collect(),
            plugin_dir: None,
            policy,
            work_dir: self.work.join(&id),
            worker_program: Some(worker_program()),
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(rivet_runner::run(config, stop.clone()));
        self.runners.push((id.clone(), stop, task));
        let online = async {
            loop {
                let runners: Vec<rivet_protocol::http::RunnerView> = self.get("/runners").await;
                if runners.iter().any(|r| r.id == id && r.status == "online") {
                    return;
                }
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(20), online)
            .await
            .expect("the runner came online");
        id
    }

    /// Waits until the job is in a final state.
    pub async fn wait_final(&self, id: Uuid, within: Duration) -> JobView {
        let done = async {
            loop {
                let job: JobView = self.get(&format!("/jobs/{id}")).await;
                if job.state.is_final() {
                    return job;
                }
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(within, done)
            .await
            .unwrap_or_else(|_| panic!("job {id} did not finish within {within:?}"))
    }

    pub async fn stop(self) {
        let queues: Vec<rivet_protocol::http::QueueView> = self.get("/queues").await;
        let classes: Vec<String> = queues.into_iter().map(|q| q.class_key).collect();
        for (_, stop, task) in self.runners {
            stop.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
        }
        self.orchestrator.0.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.orchestrator.1).await;
        if let Ok(broker) = rivet_amqp::Broker::connect(
            AMQP,
            rivet_protocol::topology::Topology::new(&self.namespace),
            Duration::from_secs(5),
        )
        .await
        {
            let keys: Vec<&str> = classes.iter().map(String::as_str).collect();
            let _ = broker.delete_topology(&keys).await;
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
        let _ = std::fs::remove_dir_all(&self.work);
    }
}
