//! An orchestrator and runners in this process, against the real PostgreSQL, Redis and RabbitMQ,
//! each test under its own database, broker namespace and Redis key prefix.

use rivet_protocol::http::{JobView, PipelineView};
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use rivet_orchestrator::testing::TestOrchestrator;

pub use rivet_orchestrator::testing::{AMQP, REDIS};

/// The pause between two polls of the API: short beside any wait, long enough that a waiting
/// test leaves the machine's two cores to the orchestrator and runners it waits on.
pub const POLL: Duration = Duration::from_millis(10);

pub struct Fleet {
    pub database_url: String,
    pub token: String,
    pub namespace: String,
    pub http: reqwest::Client,
    orchestrator: TestOrchestrator,
    runners: Vec<(
        String,
        CancellationToken,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    )>,
    work: PathBuf,
}

/// The runner's own executable, or `RIVET_TEST_WORKER_PROGRAM` (the fleet bench compares the
/// bare `rivet-sandbox-worker` with it).
fn worker_program() -> PathBuf {
    std::env::var_os("RIVET_TEST_WORKER_PROGRAM")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_rivet-runner").into())
}

pub async fn start() -> Fleet {
    // Silent unless RUST_LOG asks for output (debugging a failing test).
    rivet_telemetry::init("fleet-test", "off");
    let orchestrator = rivet_orchestrator::testing::start(&worker_program()).await;
    let work = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(&orchestrator.namespace);
    Fleet {
        database_url: orchestrator.database_url.clone(),
        token: orchestrator.token.clone(),
        namespace: orchestrator.namespace.clone(),
        http: reqwest::Client::new(),
        orchestrator,
        runners: Vec::new(),
        work,
    }
}

impl Fleet {
    pub fn url(&self, path: &str) -> String {
        self.orchestrator.api(path)
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

    /// Creates a runner registration named `name` with these labels (`KEY=VALUE`) through the
    /// API, as an admin does; the answer carries the runner's token.
    pub async fn register(
        &self,
        name: &str,
        labels: &[&str],
    ) -> rivet_protocol::http::RunnerRegistrationView {
        let labels: std::collections::BTreeMap<&str, &str> = labels
            .iter()
            .map(|l| l.split_once('=').expect("labels are KEY=VALUE"))
            .collect();
        let r = self
            .post(
                "/runners/registrations",
                serde_json::json!({ "name": name, "labels": labels }),
            )
            .await;
        assert_eq!(r.status(), 201, "register: {}", r.text().await.unwrap());
        r.json().await.unwrap()
    }

    /// The configuration of a runner using `token`, with the fleet's services.
    pub fn runner_config(&self, token: Option<&str>, work: &str) -> rivet_runner::Config {
        rivet_runner::Config {
            amqp_url: AMQP.into(),
            redis_url: REDIS.into(),
            namespace: self.namespace.clone(),
            url: self.orchestrator.base_url.clone(),
            token: token.map(|t| rivet_runner::RunnerToken(t.into())),
            slots: 2,
            labels: Vec::new(),
            plugin_dir: None,
            policy: None,
            work_dir: self.work.join(work),
            worker_program: Some(worker_program()),
            container_host: None,
            drain_grace: Duration::from_secs(10),
        }
    }

    /// Starts a runner with a registration of its own (created through the API) carrying these
    /// labels, and extra policy TOML; returns its id once it is online.
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
        self.runner_with_engine(name, labels, policy_toml, slots, None)
            .await
    }

    /// Like [`Fleet::runner_with_slots`], with a container engine (`unix:///...`).
    pub async fn runner_with_engine(
        &mut self,
        name: &str,
        labels: &[&str],
        policy_toml: &str,
        slots: u32,
        container_host: Option<String>,
    ) -> String {
        let id = format!("{name}-{}", &Uuid::new_v4().simple().to_string()[..6]);
        let registration = self.register(&id, labels).await;
        let policy = if policy_toml.is_empty() {
            None
        } else {
            std::fs::create_dir_all(&self.work).unwrap();
            let path = self.work.join(format!("{id}.toml"));
            std::fs::write(&path, policy_toml).unwrap();
            Some(path)
        };
        let config = rivet_runner::Config {
            slots,
            policy,
            container_host,
            ..self.runner_config(registration.secret.as_deref(), &id)
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(rivet_runner::run(config, stop.clone()));
        self.runners.push((id.clone(), stop, task));
        // Online, and joined: the orchestrator writes the presence record first (one token, one
        // runner) and commits the session after it.
        let online = async {
            loop {
                let runners: Vec<rivet_protocol::http::RunnerView> = self.get("/runners").await;
                if runners.iter().any(|r| r.id == id && r.status == "online") {
                    let registrations: Vec<rivet_protocol::http::RunnerRegistrationView> =
                        self.get("/runners/registrations").await;
                    if registrations
                        .iter()
                        .any(|r| r.name == id && r.registered_at_ms.is_some())
                    {
                        return;
                    }
                }
                tokio::time::sleep(POLL).await;
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
                tokio::time::sleep(POLL).await;
            }
        };
        tokio::time::timeout(within, done)
            .await
            .unwrap_or_else(|_| panic!("job {id} did not finish within {within:?}"))
    }

    /// Waits until `check` holds for the job (its latest view), or panics after `within`.
    pub async fn wait_job(
        &self,
        id: Uuid,
        within: Duration,
        what: &str,
        check: impl Fn(&JobView) -> bool,
    ) -> JobView {
        let done = async {
            loop {
                let job: JobView = self.get(&format!("/jobs/{id}")).await;
                if check(&job) {
                    return job;
                }
                tokio::time::sleep(POLL).await;
            }
        };
        tokio::time::timeout(within, done)
            .await
            .unwrap_or_else(|_| panic!("job {id}: {what}: not within {within:?}"))
    }

    /// The log lines of one attempt.
    pub async fn logs(&self, id: Uuid, attempt: u32) -> Vec<rivet_protocol::messages::LogLine> {
        let page: rivet_protocol::http::LogPage = self
            .get(&format!("/jobs/{id}/logs?attempt={attempt}"))
            .await;
        page.lines
    }

    /// Waits until the runner's task has returned (after a drain), with its result.
    pub async fn runner_exit(&mut self, id: &str, within: Duration) -> anyhow::Result<()> {
        let i = self
            .runners
            .iter()
            .position(|(r, _, _)| r == id)
            .expect("a runner of this fleet");
        let (_, _, task) = self.runners.remove(i);
        tokio::time::timeout(within, task)
            .await
            .unwrap_or_else(|_| panic!("runner {id} did not exit within {within:?}"))
            .expect("the runner task did not panic")
    }

    /// Stops one runner as SIGTERM would (a drain), without waiting.
    pub fn terminate(&self, id: &str) {
        let (_, stop, _) = self
            .runners
            .iter()
            .find(|(r, _, _)| r == id)
            .expect("a runner of this fleet");
        stop.cancel();
    }

    /// Where runner `runner` (an id [`Fleet::runner`] returned) keeps that attempt's workspace.
    pub fn workspace(&self, runner: &str, job: Uuid, attempt: u32) -> PathBuf {
        self.work.join(runner).join(format!("{job}-{attempt}"))
    }

    /// Lets a running job whose script is [`GATED`](rivet_orchestrator::testing::GATED) go on.
    pub fn open_gate(&self, job: &JobView) {
        rivet_orchestrator::testing::open_gate(&self.work, job);
    }

    pub async fn stop(self) {
        for (_, stop, task) in self.runners {
            stop.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
        }
        self.orchestrator.stop().await;
        let _ = std::fs::remove_dir_all(&self.work);
    }
}
