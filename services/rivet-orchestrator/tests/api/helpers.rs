//! The shared harness (`rivet_orchestrator::testing`) plus an HTTP client.

use rivet_orchestrator::testing::TestOrchestrator;
pub use rivet_orchestrator::testing::{AMQP, REDIS};

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
