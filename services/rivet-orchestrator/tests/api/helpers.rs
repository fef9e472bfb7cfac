//! The shared harness (`rivet_orchestrator::testing`) plus an HTTP client.

use crate::TOKEN_A;
use redis::AsyncCommands;
use rivet_orchestrator::testing::TestOrchestrator;
pub use rivet_orchestrator::testing::{self, AMQP, REDIS};
pub use rivet_orchestrator::RunnerUsersMode;
use rivet_protocol::http::JobView;
use rivet_protocol::messages::{ReportBody, RunnerControl, RunnerReport};
use rivet_protocol::redis_keys::{lease_value, Keys};
use rivet_protocol::SCHEMA_VERSION;
use serde_json::json;
use std::time::Duration;

pub struct TestApp {
    pub base: String,
    pub token: String,
    pub namespace: String,
    pub database_url: String,
    pub http: reqwest::Client,
    orchestrator: TestOrchestrator,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with_broker_users(RunnerUsersMode::Managed).await
}

/// [`spawn_app`], with runners' broker users made per runner (`Managed`) or shared.
pub async fn spawn_app_with_broker_users(broker_users: RunnerUsersMode) -> TestApp {
    let orchestrator = rivet_orchestrator::testing::start_with_broker_users(
        env!("CARGO_BIN_EXE_rivet-orchestrator").as_ref(),
        broker_users,
    )
    .await;
    TestApp {
        base: orchestrator.base_url.clone(),
        token: orchestrator.token.clone(),
        namespace: orchestrator.namespace.clone(),
        database_url: orchestrator.database_url.clone(),
        http: reqwest::Client::new(),
        orchestrator,
    }
}

impl TestApp {
    /// Whole attempts the orchestrator applied against a remembered registration.
    pub fn remembered_starts(&self) -> u64 {
        *self.orchestrator.remembered_starts.borrow()
    }

    /// Waits, for at most 10 s, until the orchestrator applied `n` whole attempts against a
    /// remembered registration.
    pub async fn wait_for_remembered_starts(&self, n: u64) {
        let mut starts = self.orchestrator.remembered_starts.clone();
        tokio::time::timeout(Duration::from_secs(10), starts.wait_for(|&have| have >= n))
            .await
            .unwrap_or_else(|_| panic!("{n} whole attempts applied as remembered"))
            .expect("the orchestrator is running");
    }

    pub fn url(&self, path: &str) -> String {
        self.orchestrator.api(path)
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

    /// Creates a runner registration named `name` with `labels` (a JSON object) as an admin, and
    /// registers a runner with its token, as a runner does at start: returns the token and the
    /// session (runner id, assigned labels, session key).
    pub async fn register_runner(
        &self,
        name: &str,
        labels: serde_json::Value,
    ) -> (String, rivet_protocol::http::RunnerSession) {
        let r = self
            .post(
                "/runners/registrations",
                serde_json::json!({"name": name, "labels": labels}),
            )
            .await;
        assert_eq!(r.status(), 201, "registering {name}");
        let reg: rivet_protocol::http::RunnerRegistrationView = r.json().await.unwrap();
        let token = reg.secret.expect("a new registration carries its token");
        let r = self
            .http
            .post(self.url("/runners/register"))
            .bearer_auth(&token)
            .json(&serde_json::json!({"capabilities": ["process"], "slots": 1, "version": "test"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{name} registers");
        (token, r.json().await.unwrap())
    }

    /// A connection to the orchestrator's own database, to check what the API does not show.
    pub async fn db(&self) -> sqlx::PgConnection {
        use sqlx::Connection;
        sqlx::PgConnection::connect(&self.database_url)
            .await
            .expect("connecting to the test database")
    }

    /// Revokes token `id` as the admin; the orchestrator must answer 204.
    pub async fn revoke_token(&self, id: uuid::Uuid) {
        let r = self
            .http
            .delete(self.url(&format!("/tokens/{id}")))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }

    pub async fn stop(self) {
        self.orchestrator.stop().await;
    }
}

/// The job `id` as the API shows it.
pub async fn job(app: &TestApp, id: uuid::Uuid) -> JobView {
    app.get(&format!("/jobs/{id}")).await.json().await.unwrap()
}

/// Polls `check` until it yields, for at most 10 s: for state that sends no signal (Redis
/// keys). State in PostgreSQL is waited on with [`wait_for_rows`].
pub async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let poll = async {
        loop {
            if let Some(v) = check().await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Waits until `check` yields, for at most 10 s: checked at once and again after every
/// statement that changed the `jobs`, `attempts` or `log_lines` table of `app`'s database (a trigger this
/// installs there notifies `rivet_test_rows` at each commit).
pub async fn wait_for_rows<T, F, Fut>(app: &TestApp, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let mut listener = sqlx::postgres::PgListener::connect(&app.database_url)
        .await
        .expect("listening to the test database");
    listener.listen("rivet_test_rows").await.unwrap();
    let mut db = app.db().await;
    for sql in [
        "CREATE OR REPLACE FUNCTION rivet_test_rows() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN PERFORM pg_notify('rivet_test_rows', TG_TABLE_NAME); RETURN NULL; END $$",
        "CREATE OR REPLACE TRIGGER rivet_test_jobs AFTER INSERT OR UPDATE ON jobs \
         FOR EACH STATEMENT EXECUTE FUNCTION rivet_test_rows()",
        "CREATE OR REPLACE TRIGGER rivet_test_attempts AFTER INSERT OR UPDATE ON attempts \
         FOR EACH STATEMENT EXECUTE FUNCTION rivet_test_rows()",
        "CREATE OR REPLACE TRIGGER rivet_test_log_lines AFTER INSERT ON log_lines \
         FOR EACH STATEMENT EXECUTE FUNCTION rivet_test_rows()",
    ] {
        sqlx::query(sql).execute(&mut db).await.unwrap();
    }
    let wait = async {
        loop {
            if let Some(v) = check().await {
                return v;
            }
            listener.recv().await.expect("a notification");
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// The live registration named `name`, as the database has it: session key, broker user.
pub async fn registration(app: &TestApp, name: &str) -> (String, Option<String>) {
    let mut db = app.db().await;
    sqlx::query_as(
        "SELECT session_key, broker_user FROM runner_registrations \
         WHERE name = $1 AND revoked_at IS NULL",
    )
    .bind(name)
    .fetch_one(&mut db)
    .await
    .expect("a live registration with a session")
}

/// The next message of `class_key` on `broker`, checked to be `job`'s, not yet acknowledged
/// (the subscription that received it is cancelled).
pub async fn next_job(
    broker: &rivet_amqp::Broker,
    class_key: &str,
    job: &JobView,
) -> rivet_amqp::Incoming<rivet_protocol::messages::JobDispatch> {
    let mut sub = testing::consume_class(broker, class_key, 1, "test-runner").await;
    let delivery = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("a job arrives")
        .unwrap()
        .unwrap();
    assert_eq!(delivery.message.job_id, job.id);
    sub.cancel().await.ok();
    delivery
}

/// Takes `job` from its class queue on `broker` as `runner-a` does: acknowledges it and holds its
/// lease for attempt 1 with token A. Returns the message and its `reply_to`.
pub async fn take(
    app: &TestApp,
    broker: &rivet_amqp::Broker,
    job: &JobView,
) -> (rivet_protocol::messages::JobDispatch, String) {
    let delivery = next_job(broker, &job.class_key, job).await;
    let reply_to = delivery.reply_to.clone().expect("jobs carry reply_to");
    let dispatch = delivery.message.clone();
    delivery.ack().await.unwrap();
    let mut redis = redis::aio::ConnectionManager::new(redis::Client::open(REDIS).unwrap())
        .await
        .unwrap();
    let _: () = redis
        .set(
            Keys::new(&app.namespace).lease(job.id),
            lease_value("runner-a", 1, TOKEN_A),
        )
        .await
        .unwrap();
    (dispatch, reply_to)
}

/// A job taken as `runner-a` with lease token A: what a runner has between the delivery and its
/// first report.
pub struct Taken {
    pub id: uuid::Uuid,
    pub session_key: String,
    pub broker: rivet_amqp::Broker,
    pub reply_to: String,
    /// The orders the orchestrator sends `runner-a`.
    pub orders: rivet_amqp::Subscription<RunnerControl>,
}

impl Taken {
    /// Pushes the test pipeline, submits a run with `n = 1` and takes its job as `runner-a`.
    pub async fn new(app: &TestApp) -> Self {
        crate::push_pipeline(app).await;
        let submitted: JobView = app
            .post("/pipelines/hello-fleet/runs", json!({"inputs": {"n": "1"}}))
            .await
            .json()
            .await
            .unwrap();
        let (_, session) = app.register_runner("runner-a", json!({})).await;
        let broker = testing::runner_broker(&app.namespace, &session).await;
        let orders = broker.subscribe_control("runner-a").await.unwrap();
        let (dispatch, reply_to) = take(app, &broker, &submitted).await;
        assert_eq!(dispatch.inputs["n"], "1");
        Taken {
            id: submitted.id,
            session_key: session.session_key,
            broker,
            reply_to,
            orders,
        }
    }

    /// A report of attempt 1 with token A, signed over `signed_body` (normally `body`).
    pub fn report(&self, body: ReportBody, signed_body: &ReportBody) -> RunnerReport {
        RunnerReport {
            schema: SCHEMA_VERSION,
            job_id: self.id,
            attempt: 1,
            runner_id: "runner-a".into(),
            token: TOKEN_A.into(),
            session_mac: rivet_protocol::identity::session_mac(
                &self.session_key,
                self.id,
                1,
                "runner-a",
                TOKEN_A,
                signed_body,
            ),
            body,
        }
    }

    /// Publishes a report of attempt 1 with `body`, signed over it.
    pub async fn send(&self, body: ReportBody) {
        let report = self.report(body.clone(), &body);
        self.publish(&report).await;
    }

    pub async fn publish(&self, report: &RunnerReport) {
        self.broker
            .publish_report(&self.reply_to, report)
            .await
            .unwrap();
    }
}
