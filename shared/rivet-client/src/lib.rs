//! Typed async client of the orchestrator's HTTP API (`/api/v1`): one method per route, taking
//! and returning the `rivet_protocol::http` bodies, so no caller spells a path or parses JSON.
//! The `rivet` CLI's remote commands and the services' tests use it.
//!
//! Every error answer keeps the orchestrator's [`ApiError`] body ([`ClientError::Api`]), so a
//! caller can show field errors and definition problems; a failed connection names the URL it
//! tried ([`ClientError::Unreachable`]).
//!
//! Depends on `rivet-protocol` and an HTTP client only. It must not depend on a service crate
//! (services depend on shared crates, never the reverse), nor on the sandbox.

mod error;

pub use error::ClientError;

use reqwest::{Method, RequestBuilder, StatusCode, Url};
use rivet_protocol::http::{
    ApiError, CreateProject, CreateRun, CreateRunnerRegistration, CreateToken, JobState, JobView,
    LogPage, PipelineSummary, PipelineView, ProjectView, PushPipeline, QueueView, RegisterRunner,
    RunnerRegistrationView, RunnerSession, RunnerView, TokenView,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;
use uuid::Uuid;

/// A result with a [`ClientError`].
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// How long to wait for a TCP connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one request may take, answer included. Pushing a definition evaluates it in a
/// sandbox worker on the orchestrator, which takes well under this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection to one orchestrator with one token. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    token: String,
    project: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a credential: never in logs or panic messages.
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .field("token", &"***")
            .field("project", &self.project)
            .finish()
    }
}

/// Filters of `GET /api/v1/jobs`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct JobFilter {
    /// Only jobs in this state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<JobState>,
    /// Only jobs of this pipeline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
    /// At most this many (the orchestrator's default is 50).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// Which log lines `GET /api/v1/jobs/{id}/logs` returns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LogQuery {
    /// The attempt (default: the job's current one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// Only lines after this sequence number (a [`LogPage::next_after`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
    /// At most this many lines (the orchestrator's default is 1000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// The answer of `GET /readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// Whether the orchestrator can serve requests.
    pub ready: bool,
    /// Each dependency (`postgres`, `redis`, `rabbitmq`) and whether it answered.
    pub components: BTreeMap<String, bool>,
}

impl Client {
    /// A client of the orchestrator at `base_url` (`http://host:port`, optionally with a path
    /// prefix) that sends `token` as `Authorization: Bearer`.
    pub fn new(base_url: &str, token: impl Into<String>) -> Result<Self> {
        let token = token.into();
        let invalid = |reason: &str| ClientError::InvalidUrl {
            url: base_url.to_owned(),
            reason: reason.to_owned(),
        };
        let mut base = Url::parse(base_url).map_err(|e| invalid(&e.to_string()))?;
        match base.scheme() {
            "http" => {}
            "https" => {
                return Err(invalid(
                    "this build speaks plain http only; put the orchestrator behind a local \
                     TLS-terminating proxy or use an http:// URL",
                ))
            }
            other => return Err(invalid(&format!("the scheme must be http, not `{other}`"))),
        }
        if base.cannot_be_a_base() || base.host().is_none() {
            return Err(invalid("it has no host"));
        }
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ClientError::InvalidToken);
        }
        base.set_query(None);
        base.set_fragment(None);
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("rivet-client/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| invalid(&e.to_string()))?;
        Ok(Self {
            http,
            base,
            token,
            project: None,
        })
    }

    /// The same client, naming project `project` in every API call (`?project=NAME`). An admin
    /// token then acts on that project instead of `default`; a project token may name only its
    /// own (another is 404).
    pub fn with_project(mut self, project: Option<String>) -> Self {
        self.project = project;
        self
    }

    /// The orchestrator's base URL.
    pub fn base_url(&self) -> &str {
        self.base.as_str()
    }

    /// `POST /api/v1/pipelines`: pushes a definition as a new version. A definition with
    /// problems is [`ClientError::Api`] with code `invalid_definition` and `problems`.
    pub async fn push_pipeline(&self, body: &PushPipeline) -> Result<PipelineView> {
        self.json(self.http.post(self.api(&["pipelines"])).json(body))
            .await
    }

    /// `GET /api/v1/pipelines`: every pipeline's latest version.
    pub async fn pipelines(&self) -> Result<Vec<PipelineSummary>> {
        self.json(self.http.get(self.api(&["pipelines"]))).await
    }

    /// `GET /api/v1/pipelines/{name}`: one version (default: the latest).
    pub async fn pipeline(&self, name: &str, version: Option<i32>) -> Result<PipelineView> {
        let mut req = self.http.get(self.api(&["pipelines", name]));
        if let Some(v) = version {
            req = req.query(&[("version", v)]);
        }
        self.json(req).await
    }

    /// `POST /api/v1/pipelines/{name}/runs`: queues a job. Wrong inputs are
    /// [`ClientError::Api`] with code `invalid_inputs` and one entry per field in `fields`.
    pub async fn create_run(&self, name: &str, body: &CreateRun) -> Result<JobView> {
        self.json(
            self.http
                .post(self.api(&["pipelines", name, "runs"]))
                .json(body),
        )
        .await
    }

    /// `GET /api/v1/jobs`: jobs, newest first.
    pub async fn jobs(&self, filter: &JobFilter) -> Result<Vec<JobView>> {
        self.json(self.http.get(self.api(&["jobs"])).query(filter))
            .await
    }

    /// `GET /api/v1/jobs/{id}`: one job with its attempts and stages.
    pub async fn job(&self, id: Uuid) -> Result<JobView> {
        self.json(self.http.get(self.api(&["jobs", &id.to_string()])))
            .await
    }

    /// `GET /api/v1/jobs/{id}/logs`: a page of one attempt's log lines.
    pub async fn logs(&self, id: Uuid, query: &LogQuery) -> Result<LogPage> {
        self.json(
            self.http
                .get(self.api(&["jobs", &id.to_string(), "logs"]))
                .query(query),
        )
        .await
    }

    /// `POST /api/v1/jobs/{id}/cancel`: cancels a queued job at once, a running one through its
    /// runner. A finished job is [`ClientError::Api`] with code `job_final`.
    pub async fn cancel_job(&self, id: Uuid, reason: Option<&str>) -> Result<JobView> {
        let body = serde_json::json!({ "reason": reason });
        self.json(
            self.http
                .post(self.api(&["jobs", &id.to_string(), "cancel"]))
                .json(&body),
        )
        .await
    }

    /// `POST /api/v1/jobs/{id}/retry`: runs a finished job again as a new attempt. A job that is
    /// not over is [`ClientError::Api`] with code `job_not_final`.
    pub async fn retry_job(&self, id: Uuid) -> Result<JobView> {
        self.json(
            self.http
                .post(self.api(&["jobs", &id.to_string(), "retry"])),
        )
        .await
    }

    /// `POST /api/v1/runners/{id}/drain`: the runner stops taking jobs and exits once its
    /// running jobs ended (or its grace period ran out).
    pub async fn drain_runner(&self, id: &str) -> Result<RunnerView> {
        self.json(self.http.post(self.api(&["runners", id, "drain"])))
            .await
    }

    /// `GET /api/v1/runners`: live runners, then the ones seen before and gone.
    pub async fn runners(&self) -> Result<Vec<RunnerView>> {
        self.json(self.http.get(self.api(&["runners"]))).await
    }

    /// `GET /api/v1/queues`: one entry per class queue.
    pub async fn queues(&self) -> Result<Vec<QueueView>> {
        self.json(self.http.get(self.api(&["queues"]))).await
    }

    /// `POST /api/v1/tokens` (admin tokens only): a new token scoped to `project` (default:
    /// `default`), its `secret` shown this once.
    pub async fn create_token(&self, name: &str, project: Option<&str>) -> Result<TokenView> {
        let body = CreateToken {
            name: name.to_owned(),
            project: project.map(str::to_owned),
        };
        self.json(self.http.post(self.api(&["tokens"])).json(&body))
            .await
    }

    /// `POST /api/v1/projects` (admin tokens only): a new project.
    pub async fn create_project(&self, name: &str) -> Result<ProjectView> {
        let body = CreateProject {
            name: name.to_owned(),
        };
        self.json(self.http.post(self.api(&["projects"])).json(&body))
            .await
    }

    /// `GET /api/v1/projects` (admin tokens only): every project.
    pub async fn projects(&self) -> Result<Vec<ProjectView>> {
        self.json(self.http.get(self.api(&["projects"]))).await
    }

    /// `GET /api/v1/tokens` (admin tokens only): every token, without secrets.
    pub async fn tokens(&self) -> Result<Vec<TokenView>> {
        self.json(self.http.get(self.api(&["tokens"]))).await
    }

    /// `DELETE /api/v1/tokens/{id}` (admin tokens only): revokes a token.
    pub async fn revoke_token(&self, id: Uuid) -> Result<()> {
        self.send(self.http.delete(self.api(&["tokens", &id.to_string()])))
            .await
            .map(drop)
    }

    /// `POST /api/v1/runners/registrations` (admin tokens only): a runner identity with the
    /// labels it gets; its token (`secret`) is shown this once.
    pub async fn create_runner_registration(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<RunnerRegistrationView> {
        let body = CreateRunnerRegistration {
            name: name.to_owned(),
            labels: labels.clone(),
        };
        self.json(
            self.http
                .post(self.api(&["runners", "registrations"]))
                .json(&body),
        )
        .await
    }

    /// `GET /api/v1/runners/registrations` (admin tokens only): every registration, without
    /// tokens.
    pub async fn runner_registrations(&self) -> Result<Vec<RunnerRegistrationView>> {
        self.json(self.http.get(self.api(&["runners", "registrations"])))
            .await
    }

    /// `DELETE /api/v1/runners/registrations/{id}` (admin tokens only; an id or a name): revokes
    /// a registration, ending its runner's session.
    pub async fn revoke_runner_registration(
        &self,
        id_or_name: &str,
    ) -> Result<RunnerRegistrationView> {
        self.json(
            self.http
                .delete(self.api(&["runners", "registrations", id_or_name])),
        )
        .await
    }

    /// `POST /api/v1/runners/register`, for a client made with a runner token (not an API
    /// token): the runner joins and gets its id, its assigned labels and a session key.
    pub async fn register_runner(&self, body: &RegisterRunner) -> Result<RunnerSession> {
        self.json(
            self.http
                .post(self.api(&["runners", "register"]))
                .json(body),
        )
        .await
    }

    /// `GET /healthz` (no token): whether the process answers.
    pub async fn healthz(&self) -> Result<()> {
        self.send_without_token(self.http.get(self.root(&["healthz"])))
            .await
            .map(drop)
    }

    /// `GET /readyz` (no token): whether PostgreSQL, Redis and RabbitMQ answer the
    /// orchestrator. "Not ready" is an answer, not an error.
    pub async fn readyz(&self) -> Result<Readiness> {
        let (method, url, resp) = self.exchange(self.http.get(self.root(&["readyz"]))).await?;
        let status = resp.status();
        if status != StatusCode::SERVICE_UNAVAILABLE && !status.is_success() {
            return Err(error_answer(&method, &url, resp).await);
        }
        let components = decode(&method, &url, resp).await?;
        Ok(Readiness {
            ready: status.is_success(),
            components,
        })
    }

    /// The URL of `/api/v1/SEGMENTS...`, each segment percent-encoded (`/` included), so a name
    /// can never reach another route.
    fn api(&self, segments: &[&str]) -> Url {
        let mut all = vec!["api", "v1"];
        all.extend_from_slice(segments);
        let mut url = self.root(&all);
        if let Some(project) = &self.project {
            url.query_pairs_mut().append_pair("project", project);
        }
        url
    }

    fn root(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("checked in `new`: the base URL has a host, so it can be a base")
            .pop_if_empty()
            .extend(segments);
        url
    }

    async fn json<T: DeserializeOwned>(&self, req: RequestBuilder) -> Result<T> {
        let (method, url, resp) = self.execute(req.bearer_auth(&self.token)).await?;
        decode(&method, &url, resp).await
    }

    async fn send(&self, req: RequestBuilder) -> Result<reqwest::Response> {
        self.send_without_token(req.bearer_auth(&self.token)).await
    }

    async fn send_without_token(&self, req: RequestBuilder) -> Result<reqwest::Response> {
        Ok(self.execute(req).await?.2)
    }

    /// Sends the request; an error status becomes [`ClientError::Api`].
    async fn execute(&self, req: RequestBuilder) -> Result<(Method, Url, reqwest::Response)> {
        let (method, url, resp) = self.exchange(req).await?;
        if resp.status().is_success() {
            Ok((method, url, resp))
        } else {
            Err(error_answer(&method, &url, resp).await)
        }
    }

    /// Sends the request and returns whatever answer came.
    async fn exchange(&self, req: RequestBuilder) -> Result<(Method, Url, reqwest::Response)> {
        let req = req.build().map_err(|err| ClientError::Request { err })?;
        let (method, url) = (req.method().clone(), req.url().clone());
        let resp = self
            .http
            .execute(req)
            .await
            .map_err(|err| self.transport_error(&method, url.as_str(), err))?;
        Ok((method, url, resp))
    }

    fn transport_error(&self, method: &Method, url: &str, err: reqwest::Error) -> ClientError {
        if err.is_connect() {
            ClientError::Unreachable {
                url: self.base.as_str().trim_end_matches('/').to_owned(),
                err,
            }
        } else {
            ClientError::Transport {
                method: method.to_string(),
                url: url.to_owned(),
                err,
            }
        }
    }
}

/// Reads an error answer: the orchestrator's [`ApiError`], or what there is.
async fn error_answer(method: &Method, url: &Url, resp: reqwest::Response) -> ClientError {
    let status = resp.status();
    // A body that cannot be read still leaves the status to report.
    let text = resp.text().await.unwrap_or_default();
    let error = serde_json::from_str::<ApiError>(&text)
        .unwrap_or_else(|_| error::foreign_body(status.as_u16(), status.canonical_reason(), &text));
    ClientError::Api {
        method: method.to_string(),
        path: url.path().to_owned(),
        status: status.as_u16(),
        error: Box::new(error),
    }
}

async fn decode<T: DeserializeOwned>(
    method: &Method,
    url: &Url,
    resp: reqwest::Response,
) -> Result<T> {
    let bytes = resp.bytes().await.map_err(|err| ClientError::Transport {
        method: method.to_string(),
        url: url.to_string(),
        err,
    })?;
    serde_json::from_slice(&bytes).map_err(|err| ClientError::Decode {
        method: method.to_string(),
        url: url.to_string(),
        err,
    })
}

#[cfg(test)]
mod tests;
