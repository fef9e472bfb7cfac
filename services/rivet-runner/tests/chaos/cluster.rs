//! A cluster of real processes for fault injection: an orchestrator (this test binary started
//! again in the orchestrator role, so it is always the code under test) and `rivet-runner`
//! processes, against the machine's PostgreSQL, Redis and RabbitMQ. Processes can be killed
//! with SIGKILL and the services restarted.

use rivet_protocol::http::{JobView, RunnerView};
use sqlx::Connection;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use uuid::Uuid;

pub const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const REDIS: &str = "redis://127.0.0.1:6379/";

/// The policy every chaos runner uses: the defaults, which allow `sleep`.
const POLICY: &str = "[limits]\nstage_timeout = \"60s\"\n";

pub use rivet_orchestrator::testing::GATED;

pub struct Cluster {
    pub namespace: String,
    pub database_url: String,
    database: String,
    pub token: String,
    port: u16,
    pub http: reqwest::Client,
    orchestrator: Option<Child>,
    runners: BTreeMap<String, Child>,
    dir: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Cluster {
    /// A database, a namespace and a running orchestrator.
    pub async fn start(name: &str) -> Cluster {
        let database = format!("rivet_test_{}", Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(PG_ADMIN)
            .await
            .expect("PostgreSQL must run on 127.0.0.1:5432 (scripts/services.sh starts it)");
        sqlx::query(&format!("CREATE DATABASE {database}"))
            .execute(&mut admin)
            .await
            .expect("creating a test database");
        let namespace = format!("rivet-test-{}", Uuid::new_v4().simple());
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("chaos-{name}-{}", &namespace[11..19]));
        std::fs::create_dir_all(&dir).expect("creating the scenario directory");
        std::fs::write(dir.join("policy.toml"), POLICY).expect("writing the policy");
        let mut c = Cluster {
            database_url: format!("postgres://postgres@127.0.0.1:5432/{database}"),
            database,
            token: format!("chaos-{}", Uuid::new_v4().simple()),
            namespace,
            port: free_port(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("an HTTP client"),
            orchestrator: None,
            runners: BTreeMap::new(),
            dir,
        };
        c.start_orchestrator().await;
        c
    }

    fn log_file(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))
            .expect("opening a log file")
    }

    /// Starts the orchestrator process and waits until it is ready.
    pub async fn start_orchestrator(&mut self) {
        let log = self.log_file("orchestrator");
        let child = Command::new(std::env::current_exe().expect("the test binary"))
            .env("RIVET_CHAOS_ROLE", "orchestrator")
            .env("RIVET_LISTEN", format!("127.0.0.1:{}", self.port))
            .env("RIVET_DATABASE_URL", &self.database_url)
            .env("RIVET_REDIS_URL", REDIS)
            .env("RIVET_AMQP_URL", AMQP)
            .env("RIVET_NAMESPACE", &self.namespace)
            .env("RIVET_BOOTSTRAP_TOKEN", &self.token)
            .env("RIVET_WORKER_PROGRAM", env!("CARGO_BIN_EXE_rivet-runner"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("a log handle"))
            .stderr(log)
            .spawn()
            .expect("starting the orchestrator");
        self.orchestrator = Some(child);
        self.wait_ready(Duration::from_secs(60)).await;
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self, within: Duration) {
        let url = format!("http://127.0.0.1:{}/readyz", self.port);
        let ready = async {
            loop {
                if let Ok(r) = self.http.get(&url).send().await {
                    if r.status() == 200 {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(within, ready)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the orchestrator was not ready within {within:?}; see {}",
                    self.dir.display()
                )
            });
    }

    /// SIGKILL to the orchestrator.
    pub fn kill_orchestrator(&mut self) {
        if let Some(mut child) = self.orchestrator.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Creates a registration for a runner (its own, through the API), starts the runner
    /// process with its token and waits until it shows as online; returns its id.
    pub async fn start_runner(&mut self, name: &str, slots: u32) -> String {
        let id = format!("{name}-{}", &Uuid::new_v4().simple().to_string()[..6]);
        let registration = self
            .post("/runners/registrations", serde_json::json!({ "name": id }))
            .await;
        let token = registration["secret"]
            .as_str()
            .expect("a new registration carries its token")
            .to_owned();
        let log = self.log_file(&id);
        let child = Command::new(env!("CARGO_BIN_EXE_rivet-runner"))
            .args(["--slots", &slots.to_string(), "--drain-grace", "10s"])
            .arg("--namespace")
            .arg(&self.namespace)
            .arg("--work-dir")
            .arg(self.dir.join("work").join(&id))
            .arg("--policy")
            .arg(self.dir.join("policy.toml"))
            .env("RIVET_AMQP_URL", AMQP)
            .env("RIVET_REDIS_URL", REDIS)
            .env("RIVET_URL", format!("http://127.0.0.1:{}", self.port))
            .env("RIVET_RUNNER_TOKEN", token)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("a log handle"))
            .stderr(log)
            .spawn()
            .expect("starting a runner");
        self.runners.insert(id.clone(), child);
        let online = async {
            loop {
                if let Ok(runners) = self.get::<Vec<RunnerView>>("/runners").await {
                    if runners.iter().any(|r| r.id == id && r.status == "online") {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), online)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "runner {id} did not come online; see {}",
                    self.dir.display()
                )
            });
        id
    }

    /// SIGKILL to a runner (its workers die with it: they have a parent-death signal).
    pub fn kill_runner(&mut self, id: &str) {
        if let Some(mut child) = self.runners.remove(id) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM to a runner process of this cluster, and returns at once.
    pub fn sigterm(&self, id: &str) {
        let child = self.runners.get(id).expect("a runner of this cluster");
        // SAFETY: kill(2) on a child we own and have not reaped.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
    }

    /// Waits for a runner process of this cluster to exit (at most `within`); its exit code.
    pub async fn wait_exit(&mut self, id: &str, within: Duration) -> Option<i32> {
        let mut child = self.runners.remove(id).expect("a runner of this cluster");
        let exited = async {
            loop {
                if let Some(status) = child.try_wait().expect("waiting for the runner") {
                    return status.code();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(within, exited)
            .await
            .unwrap_or_else(|_| panic!("runner {id} did not exit within {within:?} after SIGTERM"))
    }

    /// Lets a running job whose script is [`GATED`] go on.
    pub fn open_gate(&self, job: &JobView) {
        rivet_orchestrator::testing::open_gate(&self.dir.join("work"), job);
    }

    pub fn runner_ids(&self) -> Vec<String> {
        self.runners.keys().cloned().collect()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/api/v1{path}", self.port)
    }

    pub async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, String> {
        let r = self
            .http
            .get(self.url(path))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            return Err(format!("GET {path}: {}", r.status()));
        }
        r.json().await.map_err(|e| e.to_string())
    }

    /// POSTs, retrying while the orchestrator is unreachable or degraded (a client would).
    pub async fn post(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let sent = self
                .http
                .post(self.url(path))
                .bearer_auth(&self.token)
                .json(&body)
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => return r.json().await.expect("a JSON answer"),
                Ok(r) if r.status().is_client_error() => {
                    panic!(
                        "POST {path}: {} {}",
                        r.status(),
                        r.text().await.unwrap_or_default()
                    )
                }
                other => {
                    assert!(
                        Instant::now() < deadline,
                        "POST {path} kept failing: {other:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    pub async fn push(&self, source: &str) {
        self.post("/pipelines", serde_json::json!({ "source": source }))
            .await;
    }

    pub async fn submit(&self, pipeline: &str, inputs: serde_json::Value) -> Uuid {
        let job: JobView = serde_json::from_value(
            self.post(
                &format!("/pipelines/{pipeline}/runs"),
                serde_json::json!({ "inputs": inputs }),
            )
            .await,
        )
        .expect("a job");
        job.id
    }

    /// A database connection, retried while PostgreSQL restarts.
    pub async fn db(&self) -> sqlx::PgConnection {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match sqlx::PgConnection::connect(&self.database_url).await {
                Ok(c) => return c,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "PostgreSQL did not come back: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Jobs not yet in a final state, straight from the database.
    pub async fn unfinished(&self) -> i64 {
        loop {
            let mut db = self.db().await;
            match sqlx::query_scalar(
                "SELECT count(*) FROM jobs WHERE state IN ('queued', 'running')",
            )
            .fetch_one(&mut db)
            .await
            {
                Ok(n) => return n,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Jobs in a final state.
    pub async fn finished(&self) -> i64 {
        loop {
            let mut db = self.db().await;
            match sqlx::query_scalar(
                "SELECT count(*) FROM jobs WHERE state NOT IN ('queued', 'running')",
            )
            .fetch_one(&mut db)
            .await
            {
                Ok(n) => return n,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Waits until the job `id` runs (at most `within`); its view then.
    pub async fn wait_running(&self, id: Uuid, within: Duration) -> JobView {
        let running = async {
            loop {
                if let Ok(job) = self.get::<JobView>(&format!("/jobs/{id}")).await {
                    if job.state == rivet_protocol::http::JobState::Running {
                        return job;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(within, running)
            .await
            .unwrap_or_else(|_| panic!("job {id} did not start within {within:?}"))
    }

    /// Waits until `count` jobs are final; returns how long it took.
    pub async fn wait_finished(&self, count: i64, within: Duration) -> Duration {
        let started = Instant::now();
        let done = async {
            while self.finished().await < count {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        if tokio::time::timeout(within, done).await.is_err() {
            let left = self.unfinished().await;
            panic!(
                "{left} job(s) not final after {within:?}; logs in {}",
                self.dir.display()
            );
        }
        started.elapsed()
    }

    /// Waits until more than `count` jobs are final (progress after a fault); returns the wait.
    pub async fn wait_progress(&self, count: i64, within: Duration) -> Duration {
        let started = Instant::now();
        let moved = async {
            while self.finished().await <= count {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(within, moved)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no job finished within {within:?} after the fault; logs in {}",
                    self.dir.display()
                )
            });
        started.elapsed()
    }

    /// The invariants after a run of jobs whose script logs `lines(n)` for input `n`: every
    /// job succeeded, none has two successful attempts, and every successful attempt's log is
    /// complete (all lines, in order, sequence numbers without gaps).
    pub async fn verify(
        &self,
        jobs: &[(i64, Uuid)],
        lines: impl Fn(i64) -> Vec<String>,
    ) -> Verdict {
        let mut db = self.db().await;
        let states: Vec<(Uuid, String, i32)> =
            sqlx::query_as("SELECT id, state, attempt FROM jobs")
                .fetch_all(&mut db)
                .await
                .expect("reading jobs");
        let by_id: BTreeMap<Uuid, (String, i32)> =
            states.into_iter().map(|(id, s, a)| (id, (s, a))).collect();
        let twice: Vec<(Uuid,)> = sqlx::query_as(
            "SELECT job_id FROM attempts WHERE state = 'succeeded' GROUP BY job_id HAVING count(*) > 1",
        )
        .fetch_all(&mut db)
        .await
        .expect("reading attempts");
        let mut v = Verdict {
            duplicated: twice.len(),
            ..Verdict::default()
        };
        for (n, id) in jobs {
            let Some((state, attempt)) = by_id.get(id) else {
                v.lost += 1;
                v.problems.push(format!("job {n} ({id}) is missing"));
                continue;
            };
            if *attempt > 1 {
                v.retried += 1;
            }
            if state != "succeeded" {
                v.lost += 1;
                v.problems.push(format!("job {n} ({id}) is {state}"));
                continue;
            }
            let rows: Vec<(i64, String, String)> = sqlx::query_as(
                "SELECT seq, source, line FROM log_lines WHERE job_id = $1 AND attempt = $2 ORDER BY seq",
            )
            .bind(id)
            .bind(attempt)
            .fetch_all(&mut db)
            .await
            .expect("reading logs");
            let seqs: Vec<i64> = rows.iter().map(|r| r.0).collect();
            let script: Vec<String> = rows
                .iter()
                .filter(|r| r.1 == "script")
                .map(|r| r.2.clone())
                .collect();
            if seqs != (0..seqs.len() as i64).collect::<Vec<_>>() || script != lines(*n) {
                v.incomplete_logs += 1;
                v.problems
                    .push(format!("job {n} ({id}): log {seqs:?} {script:?}"));
            }
        }
        v
    }

    /// Stops everything and removes the database, queues and files (the logs stay with
    /// `RIVET_CHAOS_KEEP=1`).
    pub async fn stop(mut self) {
        for (_, mut child) in std::mem::take(&mut self.runners) {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.kill_orchestrator();
        rivet_orchestrator::testing::remove(&self.database, &self.namespace).await;
        if std::env::var_os("RIVET_CHAOS_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.runners.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(child) = self.orchestrator.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What a scenario found.
#[derive(Debug, Default)]
pub struct Verdict {
    pub lost: usize,
    pub duplicated: usize,
    pub incomplete_logs: usize,
    pub retried: usize,
    pub problems: Vec<String>,
}

impl Verdict {
    pub fn assert_clean(&self) {
        assert!(
            self.lost == 0 && self.duplicated == 0 && self.incomplete_logs == 0,
            "{} lost, {} with two successful attempts, {} with incomplete logs; first problems: {:?}",
            self.lost,
            self.duplicated,
            self.incomplete_logs,
            &self.problems[..self.problems.len().min(5)]
        );
    }
}

/// Runs a command, panicking with its output when it fails.
pub fn sh(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Stops and starts the RabbitMQ application: every connection drops; durable queues and
/// persistent messages stay.
pub fn restart_rabbitmq() {
    sh("rabbitmqctl", &["stop_app"]);
    sh("rabbitmqctl", &["start_app"]);
}

/// Restarts the PostgreSQL cluster: the newest version's, the one `scripts/services.sh`
/// starts.
pub fn restart_postgres() {
    let version = std::fs::read_dir("/etc/postgresql")
        .expect("/etc/postgresql lists the cluster versions")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .max_by_key(|v| v.parse::<u32>().unwrap_or(0))
        .expect("a PostgreSQL cluster");
    sh(
        "pg_ctlcluster",
        &["--skip-systemctl-redirect", &version, "main", "restart"],
    );
}

/// Restarts Redis as this machine runs it: nothing kept on disk, so every key is gone.
pub async fn restart_redis() {
    // `SHUTDOWN NOSAVE` closes the connection that sent it: no answer is expected.
    let _ = Command::new("redis-cli")
        .args(["shutdown", "nosave"])
        .output();
    let gone = async {
        while Command::new("redis-cli")
            .arg("ping")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG")
            .unwrap_or(false)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), gone)
        .await
        .expect("Redis stopped");
    sh(
        "redis-server",
        &[
            "--daemonize",
            "yes",
            "--bind",
            "127.0.0.1",
            "-::1",
            "--port",
            "6379",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            "/var/lib/redis",
            "--logfile",
            "/var/log/redis/ci.log",
        ],
    );
    let up = async {
        while !Command::new("redis-cli")
            .arg("ping")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG")
            .unwrap_or(false)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), up)
        .await
        .expect("Redis started again");
}
