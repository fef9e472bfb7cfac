//! The parent's handler for `container` calls: the runner-wide engine connection, and per job
//! the [`JobContainers`] that own what the job created and remove it when the worker is gone.
//!
//! Every check (allowed keys, image allow-list, handles, limits) happens in `rivet-container`,
//! in this process; the worker's Lua side only shapes the request.

use super::{CallError, HostResponse, OutputLine};
use rivet_container::{ContainerCall, ContainerError, Engine, JobContainers, OutputStream};
use rivet_core::policy::ContainerPolicy;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Where the container engine comes from: nowhere, an address to connect to on first use (the
/// CLI), or a connection made at start (the runner, which also advertises it).
#[derive(Debug, Default)]
pub(crate) enum EngineSource {
    /// No engine configured.
    #[default]
    None,
    /// Connect on first use.
    Lazy {
        /// `unix:///...`.
        host: String,
        /// Labels containers.
        runner_id: String,
    },
    /// Connected.
    Ready(Arc<Engine>),
    /// Connecting failed; the reason, for every later call.
    Failed(String),
}

impl EngineSource {
    /// The engine, connecting first if needed.
    pub(crate) fn engine(&mut self) -> Result<Arc<Engine>, CallError> {
        if let Self::Lazy { host, runner_id } = self {
            *self = match Engine::connect(host, runner_id) {
                Ok(e) => Self::Ready(e),
                Err(e) => Self::Failed(e.describe()),
            };
        }
        match self {
            Self::Ready(e) => Ok(e.clone()),
            Self::Failed(why) => Err(CallError::failed(format!("container: {why}"))),
            _ => Err(CallError::failed(
                "container: this runner has no container engine configured (set RIVET_CONTAINER_HOST)",
            )),
        }
    }
}

/// One job's containers, created on the first container call.
#[derive(Debug)]
pub(crate) struct JobSlot {
    job_id: String,
    workspace: PathBuf,
    policy: ContainerPolicy,
    /// The job's containers once created; `Err(())` once the job is finished (no more calls).
    containers: Mutex<Result<Option<Arc<JobContainers>>, ()>>,
}

impl JobSlot {
    pub(crate) fn new(job_id: String, workspace: PathBuf, policy: ContainerPolicy) -> Self {
        Self {
            job_id,
            workspace,
            policy,
            containers: Mutex::new(Ok(None)),
        }
    }

    fn get(&self, source: &Mutex<EngineSource>) -> Result<Arc<JobContainers>, CallError> {
        let mut slot = self
            .containers
            .lock()
            .map_err(|_| CallError::failed("container: internal state poisoned"))?;
        let existing = match &*slot {
            Ok(existing) => existing.clone(),
            Err(()) => return Err(CallError::failed("container: the job has ended")),
        };
        if let Some(c) = existing {
            return Ok(c);
        }
        let engine = source
            .lock()
            .map_err(|_| CallError::failed("container: internal state poisoned"))?
            .engine()?;
        let c = Arc::new(engine.job(&self.job_id, self.workspace.clone(), self.policy.clone()));
        *slot = Ok(Some(c.clone()));
        Ok(c)
    }

    /// Removes every container of the job (after the worker is gone, whatever its outcome) and
    /// refuses later calls, so a call still in flight cannot start a new set.
    pub(crate) fn finish(&self) -> usize {
        let taken = match self.containers.lock() {
            Ok(mut s) => std::mem::replace(&mut *s, Err(())).ok().flatten(),
            Err(_) => None,
        };
        taken.map_or(0, |c| c.cleanup())
    }
}

fn call_error(e: ContainerError) -> CallError {
    match e {
        ContainerError::Policy { rule, message } => CallError::policy(rule, message),
        e @ ContainerError::TimedOut { .. } => CallError::timeout(e.describe()),
        e => CallError::failed(format!("container: {}", e.describe())),
    }
}

/// Runs one container call for the job, streaming output lines through `progress`.
pub(crate) fn handle(
    source: &Mutex<EngineSource>,
    slot: &JobSlot,
    call: ContainerCall,
    deadline: Instant,
    progress: &mut dyn FnMut(HostResponse),
) -> Result<HostResponse, CallError> {
    let containers = slot.get(source)?;
    containers
        .call_until(call, Some(deadline), &mut |stream, line| {
            progress(HostResponse::Output(OutputLine {
                stderr: stream == OutputStream::Stderr,
                line: line.to_owned(),
            }))
        })
        .map(HostResponse::Container)
        .map_err(call_error)
}
