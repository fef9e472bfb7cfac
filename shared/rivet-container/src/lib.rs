//! The container executor: runs a job's containers through the Docker-compatible API of Podman
//! or Docker, on the **parent** side of a sandbox worker.
//!
//! The worker (pipeline code) never touches the engine's socket: whoever controls that API is
//! root on the host. It sends a [`ContainerCall`] to its parent; the parent hands it to the
//! [`JobContainers`] of that worker, which checks it against the policy ([`spec`]), builds the
//! host configuration itself, performs it with bollard, and answers with a [`ContainerReply`].
//! Every container a job created is removed when the job ends, however it ends
//! ([`JobContainers::cleanup`], also on drop), and a runner sweeps its label at start
//! ([`Engine::sweep_runner`]).
//!
//! This is the only crate that depends on `bollard`. It must not depend on `mlua` or on any
//! service crate.

pub mod engine;
pub mod spec;

pub use engine::{Engine, EngineKind, JobContainers, OutputStream};
pub use spec::Options;

/// The address `scripts/podman-setup.sh` serves Podman's API on.
pub const SETUP_HOST: &str = "unix:///run/rivet-podman/podman.sock";

/// `RIVET_CONTAINER_HOST`, else [`SETUP_HOST`]: the engine tests and development tools use.
pub fn host_from_env() -> String {
    std::env::var("RIVET_CONTAINER_HOST").unwrap_or_else(|_| SETUP_HOST.into())
}

use serde::{Deserialize, Serialize};

/// A container operation a worker asks its parent to perform.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ContainerCall {
    /// `container.run{...}`: create, start, stream output, wait, remove.
    Run {
        /// The job's options, unchecked.
        options: Options,
    },
    /// Start a long-lived container for `container.with` (or a stage's `container`).
    Start {
        /// The job's options (`image`, `env`, `workdir`), unchecked.
        options: Options,
    },
    /// Run one command in a container started by this job.
    Exec {
        /// The handle [`ContainerReply::Started`] returned.
        handle: String,
        /// `command`, `args`, `env`, `workdir`, `timeout`, unchecked.
        options: Options,
    },
    /// Remove a container started by this job.
    Remove {
        /// The handle [`ContainerReply::Started`] returned.
        handle: String,
    },
}

/// The answer to a [`ContainerCall`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum ContainerReply {
    /// A command ran to its end.
    Exited {
        /// Exit status.
        code: i64,
        /// Captured standard output (capped by `container.max_output`).
        stdout: String,
        /// Captured standard error.
        stderr: String,
        /// Wall-clock time.
        duration_ms: u64,
    },
    /// A container was started; later calls name it by this handle.
    Started {
        /// Opaque to the worker; valid only for the job that started it.
        handle: String,
    },
    /// The container is gone.
    Removed,
}

/// Why a container call failed.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The policy refuses the call.
    #[error("policy violation [{rule}]: {message}")]
    Policy {
        /// `container.hostconfig`, `container.image`, ...
        rule: &'static str,
        /// What and why.
        message: String,
    },
    /// The options are malformed.
    #[error("{0}")]
    Invalid(String),
    /// The image is not on this runner and may not be pulled.
    #[error("image `{image}` is not present on this runner, and pulling images is off (container.pull = false)")]
    MissingImage {
        /// The reference asked for.
        image: String,
    },
    /// The command did not finish in time; its container was removed.
    #[error("{what} timed out after {secs}s; its container was removed")]
    TimedOut {
        /// What timed out.
        what: String,
        /// The limit.
        secs: u64,
    },
    /// The engine cannot be reached.
    #[error("the container engine at `{host}` does not answer")]
    Unreachable {
        /// Its address.
        host: String,
        /// Why.
        #[source]
        err: bollard::errors::Error,
    },
    /// The engine refused or failed an operation.
    #[error("{action}")]
    Engine {
        /// What was being done.
        action: String,
        /// The engine's error.
        #[source]
        err: bollard::errors::Error,
    },
    /// The engine ran the command but did not return its output.
    #[error("{0}")]
    Output(String),
    /// The job has ended; its containers are being removed.
    #[error("the job has ended; no more containers can be started for it")]
    Closed,
}

impl ContainerError {
    /// A policy violation.
    pub fn policy(rule: &'static str, message: impl Into<String>) -> Self {
        Self::Policy {
            rule,
            message: message.into(),
        }
    }

    /// The whole message, causes included, as the job's log shows it.
    pub fn describe(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        text
    }
}
