//! The shared harness (`rivet_orchestrator::testing`) plus an HTTP client.

use crate::TOKEN_A;
use redis::AsyncCommands;
use rivet_orchestrator::testing::TestOrchestrator;
pub use rivet_orchestrator::testing::{self, AMQP, REDIS};
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
    let orchestrator =
        rivet_orchestrator::testing::start(env!("CARGO_BIN_EXE_rivet-orchestrator").as_ref()).await;
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
        let mut sub = testing::consume_class(&broker, "process", 1, "test-runner").await;
        let delivery = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("a job arrives")
            .unwrap()
            .unwrap();
        assert_eq!(delivery.message.job_id, submitted.id);
        assert_eq!(delivery.message.inputs["n"], "1");
        sub.cancel().await.ok();
        let reply_to = delivery.reply_to.clone().expect("jobs carry reply_to");
        delivery.ack().await.unwrap();
        let mut redis = redis::aio::ConnectionManager::new(redis::Client::open(REDIS).unwrap())
            .await
            .unwrap();
        let _: () = redis
            .set(
                Keys::new(&app.namespace).lease(submitted.id),
                lease_value("runner-a", 1, TOKEN_A),
            )
            .await
            .unwrap();
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
