//! The shared harness (`rivet_orchestrator::testing`) plus an HTTP client.

use rivet_orchestrator::testing::TestOrchestrator;
pub use rivet_orchestrator::testing::{self, AMQP, REDIS};

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

    pub async fn stop(self) {
        self.orchestrator.stop().await;
    }
}
