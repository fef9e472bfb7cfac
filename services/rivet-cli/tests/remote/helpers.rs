//! A real orchestrator on a random port (its own database, broker namespace and Redis keys),
//! the `rivet` binary pointed at it, and a test double of a runner that takes a job from its
//! class queue and reports on it the way a runner does.

use rivet_amqp::Broker;
use rivet_core::JobOutcome;
use rivet_protocol::messages::{JobDispatch, LogLine, ReportBody, RunnerReport};
use rivet_protocol::redis_keys::{lease_value, Keys};
use rivet_protocol::SCHEMA_VERSION;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use rivet_orchestrator::testing::TestOrchestrator;
pub use rivet_orchestrator::testing::REDIS;

/// The attempt token the fake runner puts in its leases and reports (a real runner draws one
/// per claim).
const FAKE_ATTEMPT_TOKEN: &str = "00112233445566778899aabbccddeeff";

/// How long anything in these tests may take before it counts as hung.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub struct TestApp {
    pub url: String,
    pub token: String,
    pub namespace: String,
    orchestrator: TestOrchestrator,
}

pub async fn spawn_app() -> TestApp {
    // The `rivet` binary is a sandbox worker too: the orchestrator lints pushes with it.
    let orchestrator =
        rivet_orchestrator::testing::start(env!("CARGO_BIN_EXE_rivet").as_ref()).await;
    TestApp {
        url: orchestrator.base_url.clone(),
        token: orchestrator.token.clone(),
        namespace: orchestrator.namespace.clone(),
        orchestrator,
    }
}

impl TestApp {
    /// The `rivet` command, pointed at this orchestrator through the environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rivet"));
        cmd.args(args)
            .current_dir(root())
            .env("RIVET_URL", &self.url)
            .env("RIVET_TOKEN", &self.token)
            .env_remove("RIVET_POLICY")
            .env_remove("RIVET_PLUGIN_DIR")
            .env_remove("RIVET_PROJECT")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `rivet ARGS` to completion.
    pub async fn rivet(&self, args: &[&str]) -> Output {
        let mut cmd = self.command(args);
        wait(
            cmd.stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        )
        .await
    }

    pub async fn stop(self) {
        self.orchestrator.stop().await;
    }
}

/// Waits for a `rivet` process (at most [`PATIENCE`]; then kills it and fails).
pub async fn wait(child: std::process::Child) -> Output {
    let pid = child.id();
    let waiting = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap());
    match tokio::time::timeout(PATIENCE, waiting).await {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("rivet did not finish within {PATIENCE:?}");
        }
    }
}

pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A directory for pipeline files.
pub fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

pub fn write(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    path.display().to_string()
}

/// Plays a runner: takes the next job of class `process` and reports what it is told to. It
/// has a registration of its own and a session, as a runner does (API-02).
pub struct FakeRunner {
    broker: Broker,
    redis: redis::aio::ConnectionManager,
    keys: Keys,
    id: String,
    session_key: String,
}

/// A job the fake runner took.
pub struct Taken {
    pub job: JobDispatch,
    reply_to: String,
}

impl FakeRunner {
    pub async fn connect(app: &TestApp) -> FakeRunner {
        let redis = redis::aio::ConnectionManager::new(redis::Client::open(REDIS).unwrap())
            .await
            .expect("Redis must run on 127.0.0.1:6379 (scripts/services.sh starts it)");
        let admin = rivet_client::Client::new(&app.url, app.token.as_str()).unwrap();
        let registration = admin
            .create_runner_registration("fake-runner", &Default::default())
            .await
            .expect("creating the fake runner's registration");
        let session = rivet_client::Client::new(&app.url, registration.secret.unwrap())
            .unwrap()
            .register_runner(&rivet_protocol::http::RegisterRunner {
                capabilities: vec!["process".into()],
                slots: 1,
                version: "test".into(),
            })
            .await
            .expect("the fake runner registers");
        let broker = rivet_orchestrator::testing::runner_broker(&app.namespace, &session).await;
        FakeRunner {
            broker,
            redis,
            keys: Keys::new(&app.namespace),
            id: session.runner_id,
            session_key: session.session_key,
        }
    }

    /// Takes the next job from the `process` class queue and holds its lease, as a runner does.
    pub async fn take(&mut self) -> Taken {
        // As a runner does: once the class is announced (or known), its broker user may read it.
        let mut sub =
            rivet_orchestrator::testing::consume_class(&self.broker, "process", 1, "fake-runner")
                .await;
        let delivery = tokio::time::timeout(PATIENCE, sub.next())
            .await
            .expect("a job reaches its class queue")
            .unwrap()
            .unwrap();
        let reply_to = delivery.reply_to.clone().expect("jobs carry reply_to");
        delivery.ack().await.unwrap();
        sub.cancel().await.ok();
        let job = delivery.message;
        let _: () = redis::AsyncCommands::set(
            &mut self.redis,
            self.keys.lease(job.job_id),
            lease_value(&self.id, job.attempt, FAKE_ATTEMPT_TOKEN),
        )
        .await
        .unwrap();
        Taken { job, reply_to }
    }

    /// Runs one stage named `stage` that logs `lines`, then ends with `outcome`.
    pub async fn run(&self, taken: &Taken, stage: &str, lines: &[&str], outcome: JobOutcome) {
        let stage_outcome = match &outcome {
            JobOutcome::Succeeded => rivet_core::StageOutcome::Succeeded,
            _ => rivet_core::StageOutcome::Failed,
        };
        let error = match &outcome {
            JobOutcome::Failed { error, .. } => Some(error.clone()),
            _ => None,
        };
        let logs = lines
            .iter()
            .enumerate()
            .map(|(i, text)| LogLine {
                seq: i as u64,
                at_ms: i as u64,
                stage: Some(stage.into()),
                level: "info".into(),
                source: "script".into(),
                line: (*text).into(),
            })
            .collect();
        let bodies = [
            ReportBody::Started { ago_ms: 0 },
            ReportBody::StageStarted {
                index: 0,
                name: stage.into(),
                timeout_ms: 60_000,
            },
            ReportBody::Logs { lines: logs },
            ReportBody::StageFinished {
                index: 0,
                name: stage.into(),
                outcome: stage_outcome,
                duration_ms: 1200,
                error,
            },
            ReportBody::Finished { outcome },
        ];
        for body in bodies {
            let session_mac = rivet_protocol::identity::session_mac(
                &self.session_key,
                taken.job.job_id,
                taken.job.attempt,
                &self.id,
                FAKE_ATTEMPT_TOKEN,
                &body,
            );
            let report = RunnerReport {
                schema: SCHEMA_VERSION,
                job_id: taken.job.job_id,
                attempt: taken.job.attempt,
                runner_id: self.id.clone(),
                token: FAKE_ATTEMPT_TOKEN.into(),
                session_mac,
                body,
            };
            self.broker
                .publish_report(&taken.reply_to, &report)
                .await
                .unwrap();
        }
    }

    pub async fn close(self) {
        self.broker.close().await;
    }
}
