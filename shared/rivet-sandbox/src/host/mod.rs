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
pub mod destination;
// The limits and the http handler's state are wired up with the handler itself.
#[allow(dead_code)]
pub mod http;
#[allow(dead_code)]
mod limit;

pub use channel::HostChannel;
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
}

impl HostCall {
    /// The core module a job must have been granted to make this call.
    pub fn module(&self) -> CoreModule {
        match self {
            Self::Http(_) => CoreModule::Http,
        }
    }
}

/// The parent's answer to a successful call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HostResponse {
    /// The final response of an HTTP call.
    Http(http::HttpResponse),
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
}

impl HostServices {
    /// Services whose runner-wide limits come from `policy` (the runner's own policy).
    pub fn new(policy: &Policy) -> Self {
        Self {
            http: http::RunnerLimits::new(&policy.http),
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
}

impl JobHost {
    /// A handler for a job run under `policy` (the parent's copy).
    pub(crate) fn new(services: Arc<HostServices>, policy: &Policy) -> Self {
        Self {
            services,
            http: Arc::new(http::JobLimits::new(&policy.http)),
            policy: Arc::new(policy.clone()),
        }
    }

    /// Runs `call`, which must end by `deadline`.
    pub(crate) fn dispatch(
        &self,
        call: HostCall,
        deadline: Instant,
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
        }
    }
}
