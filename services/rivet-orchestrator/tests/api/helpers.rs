//! The shared harness (`rivet_orchestrator::testing`) plus an HTTP client.

use rivet_orchestrator::testing::TestOrchestrator;
pub use rivet_orchestrator::testing::{AMQP, REDIS};

pub struct TestApp {
    pub base: String,
    pub token: String,
    pub namespace: String,
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

    pub async fn stop(self) {
        self.orchestrator.stop().await;
    }
}
