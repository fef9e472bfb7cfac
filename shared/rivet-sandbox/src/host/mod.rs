//! Host calls: what the worker asks its parent to do on its behalf.
//!
//! The worker has no network by default (a fresh network namespace with only loopback), so
//! every network operation is **brokered by the parent** (the runner, or the `rivet run` CLI
//! process): the worker sends an [`Event::Call`](crate::events::Event::Call), the parent checks
//! the call against *its own copy* of the policy, runs it, and answers with a
//! [`Reply`](crate::events::Reply). Nothing the worker says about policy is trusted; the only
//! input taken from it is the call itself and the time its stage has left, which the parent
//! caps by its own deadline.
//!
//! One handler per [`HostCall`] variant, each in its own file; [`JobHost::dispatch`] is the
//! single `match`.

mod channel;
mod container;
pub mod destination;
pub mod http;
mod limit;

pub use channel::HostChannel;
pub use rivet_container::{ContainerCall, ContainerReply};
use rivet_core::requirement::CoreModule;
use rivet_core::Policy;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

/// A request from the worker to its parent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HostCall {
    /// One HTTP request (redirects are followed by the parent, each hop checked).
    Http(http::HttpRequest),
    /// A container operation (run, start, exec, remove), checked and performed by the parent.
    Container(rivet_container::ContainerCall),
}

impl HostCall {
    /// The core module a job must have been granted to make this call.
    pub fn module(&self) -> CoreModule {
        match self {
            Self::Http(_) => CoreModule::Http,
            Self::Container(_) => CoreModule::Container,
        }
    }
}

/// The parent's answer to a successful call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HostResponse {
    /// The final response of an HTTP call.
    Http(http::HttpResponse),
    /// The final answer of a container call.
    Container(rivet_container::ContainerReply),
    /// Not an answer: one line of output of the running call, sent before its answer (same id)
    /// for the worker to log as it arrives.
    Output(OutputLine),
}

/// One line of a container command's output, on its way to the job's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputLine {
    /// Whether it came from standard error.
    pub stderr: bool,
    /// The line, without its newline.
    pub line: String,
}

/// How a call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallErrorKind {
    /// The policy refused it; the message reads `policy violation [area.rule]: ...`.
    Policy,
    /// It ran out of time (its own timeout, or the stage's).
    Timeout,
    /// It was tried and failed (connection refused, bad input, ...).
    Failed,
    /// The worker broke the call protocol (malformed call, reused id, call while another runs).
    Protocol,
}

/// Why a call failed, as the pipeline author reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallError {
    /// The kind of failure.
    pub kind: CallErrorKind,
    /// The whole message.
    pub message: String,
}

impl CallError {
    /// A policy refusal: `policy violation [rule]: message`.
    pub fn policy(rule: &str, message: impl fmt::Display) -> Self {
        Self {
            kind: CallErrorKind::Policy,
            message: format!("policy violation [{rule}]: {message}"),
        }
    }

    /// A failure that is not a policy decision.
    pub fn failed(message: impl fmt::Display) -> Self {
        Self {
            kind: CallErrorKind::Failed,
            message: message.to_string(),
        }
    }

    /// A timeout.
    pub fn timeout(message: impl fmt::Display) -> Self {
        Self {
            kind: CallErrorKind::Timeout,
            message: message.to_string(),
        }
    }

    /// A protocol error by the worker.
    pub fn protocol(message: impl fmt::Display) -> Self {
        Self {
            kind: CallErrorKind::Protocol,
            message: message.to_string(),
        }
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// State shared by every job of one runner (or one CLI process): the runner-wide HTTP limits.
/// Create it once and share it through [`WorkerOptions`](crate::WorkerOptions).
#[derive(Debug)]
pub struct HostServices {
    http: http::RunnerLimits,
    containers: std::sync::Mutex<container::EngineSource>,
}

impl HostServices {
    /// Services whose runner-wide limits come from `policy` (the runner's own policy).
    pub fn new(policy: &Policy) -> Self {
        Self {
            http: http::RunnerLimits::new(&policy.http),
            containers: Default::default(),
        }
    }

    /// Container calls go to `engine` (connected, and swept, by the caller).
    pub fn with_container_engine(self, engine: Arc<rivet_container::Engine>) -> Self {
        Self {
            containers: std::sync::Mutex::new(container::EngineSource::Ready(engine)),
            ..self
        }
    }

    /// Container calls go to the engine at `host` (`unix:///...`), connected on first use;
    /// `runner_id` labels the containers.
    pub fn with_container_host(self, host: String, runner_id: String) -> Self {
        Self {
            containers: std::sync::Mutex::new(container::EngineSource::Lazy { host, runner_id }),
            ..self
        }
    }
}

impl Default for HostServices {
    fn default() -> Self {
        Self::new(&Policy::default())
    }
}

/// The parent's handler for one job: runner-wide services plus the job's own state. Cheap to
/// clone; each call runs on its own thread so the parent's watchdog keeps turning.
#[derive(Debug, Clone)]
pub(crate) struct JobHost {
    services: Arc<HostServices>,
    policy: Arc<Policy>,
    http: Arc<http::JobLimits>,
    containers: Arc<container::JobSlot>,
}

impl JobHost {
    /// A handler for `request` (the parent's copy of its policy, job id and workspace).
    pub(crate) fn new(services: Arc<HostServices>, request: &crate::JobRequest) -> Self {
        let policy = &request.policy;
        let job_id = request
            .metadata
            .get("RIVET_JOB_ID")
            .cloned()
            .unwrap_or_else(|| "local".into());
        Self {
            services,
            http: Arc::new(http::JobLimits::new(&policy.http)),
            containers: Arc::new(container::JobSlot::new(
                job_id,
                request.workspace.clone(),
                policy.container.clone(),
            )),
            policy: Arc::new(policy.clone()),
        }
    }

    /// Releases what the job still holds on the host: every container it created is removed.
    /// Called once the worker has exited, whatever its outcome.
    pub(crate) fn finish(&self) -> usize {
        self.containers.finish()
    }

    /// Runs `call`, which must end by `deadline`. `progress` sees output as the call runs.
    pub(crate) fn dispatch(
        &self,
        call: HostCall,
        deadline: Instant,
        progress: &mut dyn FnMut(HostResponse),
    ) -> Result<HostResponse, CallError> {
        match call {
            HostCall::Http(request) => http::handle(
                &http::Context {
                    policy: &self.policy.http,
                    runner: &self.services.http,
                    job: &self.http,
                },
                request,
                deadline,
            )
            .map(HostResponse::Http),
            HostCall::Container(call) => container::handle(
                &self.services.containers,
                &self.containers,
                call,
                deadline,
                progress,
            ),
        }
    }
}
