//! Request and response bodies of the orchestrator's HTTP API (`/api/v1`). Timestamps are Unix
//! milliseconds.

use rivet_core::input::InputError;
use rivet_core::{JobOutcome, PipelineSpec, Problem, StageOutcome};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

/// Every error response: a stable machine `code`, a message, and details where they help.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ApiError {
    /// Stable, machine-readable (`unauthorized`, `invalid_inputs`, `invalid_definition`, ...).
    pub code: String,
    /// For people.
    pub message: String,
    /// One entry per wrong input field (`invalid_inputs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<InputError>,
    /// Every problem of a definition (`invalid_definition`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<Problem>,
}

/// `POST /api/v1/pipelines`: push a definition; every push is a new version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PushPipeline {
    /// The pipeline's name (letters, digits, `-`, `_`); default: the definition's `name`,
    /// lower-cased with spaces as `-`.
    #[serde(default)]
    pub name: Option<String>,
    /// The file name, for messages.
    #[serde(default = "default_file_name")]
    pub file_name: String,
    /// The Lua source.
    pub source: String,
}

fn default_file_name() -> String {
    "pipeline.lua".into()
}

/// A pipeline version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PipelineView {
    /// The project it belongs to.
    #[serde(default)]
    pub project: String,
    /// Name.
    pub name: String,
    /// Version, from 1.
    pub version: i32,
    /// The parsed definition.
    pub definition: PipelineSpec,
    /// Class key of its requirement set (plugins' requirements included).
    pub class_key: String,
    /// Its requirement set (plugins' requirements included).
    pub requires: Vec<String>,
    /// When this version was pushed.
    pub created_at_ms: i64,
}

/// One row of `GET /api/v1/pipelines`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PipelineSummary {
    /// Name.
    pub name: String,
    /// Latest version.
    pub latest_version: i32,
    /// The definition's display name.
    pub display_name: String,
    /// When the latest version was pushed.
    pub updated_at_ms: i64,
}

/// `POST /api/v1/pipelines/{name}/runs`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CreateRun {
    /// Input values as text; checked against the definition (422 with one error per field).
    #[serde(default)]
    pub inputs: BTreeMap<String, String>,
    /// The version to run; default: the latest.
    #[serde(default)]
    pub version: Option<i32>,
}

/// A job's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for a runner.
    Queued,
    /// A runner is running it.
    Running,
    /// Finished successfully.
    Succeeded,
    /// A stage failed.
    Failed,
    /// Ran out of time.
    TimedOut,
    /// The worker died.
    Crashed,
    /// Stopped on request.
    Cancelled,
    /// Its runner disappeared and no retry was left.
    Lost,
}

impl JobState {
    /// Every state, as stored.
    pub const ALL: [JobState; 8] = [
        Self::Queued,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::TimedOut,
        Self::Crashed,
        Self::Cancelled,
        Self::Lost,
    ];

    /// The stored and displayed word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::Crashed => "crashed",
            Self::Cancelled => "cancelled",
            Self::Lost => "lost",
        }
    }

    /// Parses a stored word.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether the job is over.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Queued | Self::Running)
    }

    /// The final state for an outcome.
    pub fn from_outcome(outcome: &JobOutcome) -> Self {
        match outcome {
            JobOutcome::Succeeded => Self::Succeeded,
            JobOutcome::Failed { .. } => Self::Failed,
            JobOutcome::TimedOut { .. } => Self::TimedOut,
            JobOutcome::Crashed { .. } => Self::Crashed,
            JobOutcome::Cancelled => Self::Cancelled,
            JobOutcome::Lost { .. } => Self::Lost,
        }
    }
}

/// Whether any live runner can take a queued job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Schedulability {
    /// True when at least one live runner covers the requirement set.
    pub schedulable: bool,
    /// When not: what the best-matching live runner lacks (everything, with no runner at all).
    pub missing: Vec<String>,
    /// A sentence for people.
    pub reason: String,
}

/// A stage of an attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StageView {
    /// 0-based position.
    pub index: u32,
    /// Name.
    pub name: String,
    /// `running`, or how it ended.
    pub state: String,
    /// How it ended, once it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<StageOutcome>,
    /// Duration, once finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i64>,
    /// Why it failed or was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One attempt of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AttemptView {
    /// From 1.
    pub attempt: u32,
    /// The runner that ran it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner_id: Option<String>,
    /// Its state.
    pub state: JobState,
    /// How it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<JobOutcome>,
    /// Start, Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<i64>,
    /// End, Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<i64>,
    /// Its stages.
    pub stages: Vec<StageView>,
}

/// A job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobView {
    /// Id.
    pub id: Uuid,
    /// The project it belongs to (its pipeline's).
    #[serde(default)]
    pub project: String,
    /// Pipeline name.
    pub pipeline: String,
    /// Pipeline version.
    pub pipeline_version: i32,
    /// State.
    pub state: JobState,
    /// Current attempt number.
    pub attempt: u32,
    /// Inputs as given.
    pub inputs: BTreeMap<String, String>,
    /// Class key.
    pub class_key: String,
    /// Requirement set.
    pub requires: Vec<String>,
    /// When submitted, Unix ms.
    pub created_at_ms: i64,
    /// When the current attempt started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<i64>,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<i64>,
    /// How it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<JobOutcome>,
    /// The runner of the current attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner_id: Option<String>,
    /// For queued jobs: whether any live runner can take it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedulability: Option<Schedulability>,
    /// Attempts with their stages (in `show`; empty in lists).
    #[serde(default)]
    pub attempts: Vec<AttemptView>,
}

/// A page of log lines: `GET /api/v1/jobs/{id}/logs?attempt=N&after=SEQ&limit=M`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LogPage {
    /// The attempt these lines belong to.
    pub attempt: u32,
    /// Lines in order.
    pub lines: Vec<crate::messages::LogLine>,
    /// Pass as `after` for the next page; `None` when this page was empty.
    #[serde(default)]
    pub next_after: Option<u64>,
    /// Whether the attempt is over (no more lines will come).
    pub complete: bool,
}

/// A runner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunnerView {
    /// Id.
    pub id: String,
    /// `online`, `draining` or `offline`.
    pub status: String,
    /// Capabilities.
    pub capabilities: Vec<String>,
    /// Labels: the ones an admin gave its registration (never what the runner says).
    pub labels: BTreeMap<String, String>,
    /// The registration it runs as (its id is the registration's name); `None` for a runner
    /// whose registration was revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration: Option<Uuid>,
    /// Slots.
    pub slots: u32,
    /// Running jobs.
    pub running: Vec<Uuid>,
    /// Last heard of, Unix ms.
    pub last_seen_ms: i64,
}

/// A class queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct QueueView {
    /// Class key.
    pub class_key: String,
    /// Requirement set.
    pub requires: Vec<String>,
    /// Messages ready in the broker.
    pub depth: u64,
    /// Consumers attached in the broker.
    pub consumers: u64,
    /// Age of the oldest queued job, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_age_ms: Option<i64>,
    /// Whether any live runner can serve it.
    pub schedulability: Schedulability,
}

/// `POST /api/v1/tokens`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CreateToken {
    /// What the token is for.
    pub name: String,
    /// The project the token is scoped to (default: `default`). Every token made through the
    /// API is a project token; admin tokens exist only from the orchestrator's first start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
}

/// A token; `secret` is present only in the response that created it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TokenView {
    /// Id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// The project it is scoped to; absent for an admin token (every project).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// The bearer token itself, shown once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Created, Unix ms.
    pub created_at_ms: i64,
    /// Revoked, Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at_ms: Option<i64>,
}

/// `POST /api/v1/projects` (admin tokens only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CreateProject {
    /// 1-100 letters, digits, `-` or `_`.
    pub name: String,
}

/// A project: pipelines and their jobs belong to one, project tokens see only theirs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProjectView {
    /// Id.
    pub id: Uuid,
    /// Name (what `?project=` and `rivet token create --project` take).
    pub name: String,
    /// Created, Unix ms.
    pub created_at_ms: i64,
}

/// `POST /api/v1/runners/registrations` (admin tokens only): a runner identity with the labels
/// it gets. The answer carries the runner's token, shown once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CreateRunnerRegistration {
    /// The runner's name, which is also its runner id (1-64 letters, digits, `_`, `-`, `.`);
    /// unique among registrations that are not revoked.
    pub name: String,
    /// The labels its runner advertises and may take jobs by (`region` → `eu`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A runner registration; `secret` (the runner's token) is present only in the answer that
/// created it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunnerRegistrationView {
    /// Id.
    pub id: Uuid,
    /// Name: the runner id of the runner that uses it.
    pub name: String,
    /// Labels assigned by an admin.
    pub labels: BTreeMap<String, String>,
    /// The runner's token (`RIVET_RUNNER_TOKEN`), shown once. Stored as a SHA-256 hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Created, Unix ms.
    pub created_at_ms: i64,
    /// Revoked, Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at_ms: Option<i64>,
    /// When a runner last joined with it, Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered_at_ms: Option<i64>,
    /// What that runner detected about its machine (capabilities are not trust: they are not
    /// assigned).
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Its slots, as it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<u32>,
    /// Its Rivet version, as it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// How many `Started` reports naming this runner were refused (`policy violation
    /// [runner.identity]` or `[runner.labels]`).
    #[serde(default)]
    pub refused_starts: i64,
}

/// `POST /api/v1/runners/register`, with the runner's token as bearer: what the runner detected
/// about its machine. Labels are not part of it: an admin assigns them (a body carrying
/// `labels` is refused).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RegisterRunner {
    /// Capabilities it detected (`process`, `plugin.git`, `container.podman`).
    pub capabilities: Vec<String>,
    /// Jobs it runs at once.
    pub slots: u32,
    /// Its Rivet version.
    pub version: String,
}

/// The answer to [`RegisterRunner`]: who the runner is and what it may take.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunnerSession {
    /// The runner id to use everywhere (presence, reports, leases): the registration's name.
    pub runner_id: String,
    /// The registration.
    pub registration_id: Uuid,
    /// The labels an admin assigned: the only ones the runner advertises and consumes by.
    pub labels: BTreeMap<String, String>,
    /// 256 random bits in hex, valid until the runner registers again or the registration is
    /// revoked: signs `Started` reports (`rivet_protocol::identity`). Never sent on the broker.
    pub session_key: String,
    /// The runner's own RabbitMQ user, made for this session (API-03): the runner connects with
    /// it instead of the user in its broker URL. Absent when the orchestrator runs with
    /// `--broker-users shared` (every runner uses the URL's user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<Credentials>,
    /// The runner's own Redis user, made for this session: the runner connects with it instead
    /// of the user in its Redis URL. Absent with `--redis-users shared`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<Credentials>,
}

/// A user of a service (RabbitMQ, Redis) and its password.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Credentials {
    /// The user (`NAMESPACE.runner.REGISTRATION`).
    pub username: String,
    /// Its password: 256 bits in hex, valid for this session.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"***")
            .finish()
    }
}

impl std::fmt::Debug for RunnerSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The session key is a credential: never in logs or panic messages.
        f.debug_struct("RunnerSession")
            .field("runner_id", &self.runner_id)
            .field("registration_id", &self.registration_id)
            .field("labels", &self.labels)
            .field("session_key", &"***")
            .field("broker", &self.broker)
            .field("redis", &self.redis)
            .finish()
    }
}

/// All HTTP bodies, for one generated schema file.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct ApiSchemas {
    /// Error body.
    pub api_error: ApiError,
    /// Push body.
    pub push_pipeline: PushPipeline,
    /// Pipeline view.
    pub pipeline_view: PipelineView,
    /// Pipeline list row.
    pub pipeline_summary: PipelineSummary,
    /// Run body.
    pub create_run: CreateRun,
    /// Job view.
    pub job_view: JobView,
    /// Log page.
    pub log_page: LogPage,
    /// Runner view.
    pub runner_view: RunnerView,
    /// Queue view.
    pub queue_view: QueueView,
    /// Token body.
    pub create_token: CreateToken,
    /// Token view.
    pub token_view: TokenView,
    /// Project body.
    pub create_project: CreateProject,
    /// Project view.
    pub project_view: ProjectView,
    /// Registration body.
    pub create_runner_registration: CreateRunnerRegistration,
    /// Registration view.
    pub runner_registration_view: RunnerRegistrationView,
    /// A runner joining.
    pub register_runner: RegisterRunner,
    /// What a joining runner gets.
    pub runner_session: RunnerSession,
    /// Input errors as `rivet run` shows them.
    pub input_errors: Vec<InputError>,
}
