//! Commands that talk to the orchestrator over its HTTP API (through `rivet_client`): pipelines,
//! remote runs, jobs and their logs, runners and queues.
//!
//! The rest of the CLI is synchronous: each remote command builds a single-threaded tokio
//! runtime for itself ([`block_on`]), so local runs never start one (a worker must be started
//! by a process without extra threads).

pub mod access;
pub mod fleet;
pub mod follow;
pub mod job;
pub mod pipeline;
pub mod submit;
pub mod table;

use anyhow::{bail, Context, Result};
use clap::Args;
use rivet_client::{Client, ClientError};
use serde::Serialize;
use std::fmt::Write as _;
use std::future::Future;

/// Which orchestrator to talk to, and as whom. Shared by every remote command.
#[derive(Debug, Clone, Args)]
pub struct RemoteArgs {
    /// The orchestrator's URL.
    #[arg(
        long,
        env = "RIVET_URL",
        default_value = "http://127.0.0.1:8080",
        value_name = "URL",
        help_heading = "Orchestrator"
    )]
    pub url: String,
    /// API token, sent as `Authorization: Bearer`. Prefer the environment variable: command
    /// lines are visible to other users of the machine.
    #[arg(
        long,
        env = "RIVET_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        help_heading = "Orchestrator"
    )]
    pub token: Option<String>,
    /// The project to act on. An admin token acts on `default` unless this names another; a
    /// project token is always in its own project (naming another answers "not found"). For
    /// `rivet token create`, the project the new token is scoped to.
    #[arg(
        long,
        env = "RIVET_PROJECT",
        value_name = "NAME",
        help_heading = "Orchestrator"
    )]
    pub project: Option<String>,
}

impl RemoteArgs {
    /// A client for these settings.
    pub fn client(&self) -> Result<Client> {
        let Some(token) = self.token.as_deref() else {
            bail!("no API token: set RIVET_TOKEN or pass --token (an admin creates tokens)");
        };
        Ok(Client::new(&self.url, token)?.with_project(self.project.clone()))
    }
}

/// Runs a remote command on a fresh single-threaded runtime.
pub fn block_on<F: Future<Output = Result<i32>>>(fut: F) -> Result<i32> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(fut)
}

/// Prints a value as indented JSON on stdout.
pub fn print_json<T: Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints a value as one compact JSON line on stdout (for streams).
pub fn print_json_line<T: Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

/// The text of a command's error for people: for an orchestrator error, its details (field
/// errors, definition problems) and a hint; otherwise the error with its causes.
pub fn describe(err: &anyhow::Error) -> String {
    match err.downcast_ref::<ClientError>() {
        Some(client) => describe_client(client),
        None => format!("{err:#}"),
    }
}

fn describe_client(err: &ClientError) -> String {
    let mut out = err.to_string();
    match err {
        ClientError::Unreachable { err: cause, .. } => {
            // The transport's chain repeats the URL at every level; its last link says why.
            let mut root: &dyn std::error::Error = cause;
            while let Some(next) = root.source() {
                root = next;
            }
            let _ = write!(
                out,
                ": {root}\nhint: is the orchestrator running? Point --url or RIVET_URL at it"
            );
        }
        ClientError::Api { status, error, .. } => {
            for field in &error.fields {
                let _ = write!(out, "\n  {field}");
            }
            for problem in &error.problems {
                let _ = write!(out, "\n  {}", problem.render("definition"));
            }
            match status {
                401 => out.push_str(
                    "\nhint: set RIVET_TOKEN or pass --token with a token the orchestrator knows",
                ),
                403 => out.push_str("\nhint: this needs an admin token"),
                _ => {}
            }
        }
        _ => {
            let mut cause = std::error::Error::source(err);
            while let Some(c) = cause {
                let _ = write!(out, ": {c}");
                cause = c.source();
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rivet_protocol::http::ApiError;

    #[test]
    fn orchestrator_errors_show_their_details_and_a_hint() {
        let err = anyhow::Error::from(ClientError::Api {
            method: "GET".into(),
            path: "/api/v1/jobs".into(),
            status: 401,
            error: Box::new(ApiError {
                code: "unauthorized".into(),
                message: "a valid token is required".into(),
                fields: Vec::new(),
                problems: Vec::new(),
            }),
        });
        assert_eq!(
            describe(&err),
            "a valid token is required (401 unauthorized)\n\
             hint: set RIVET_TOKEN or pass --token with a token the orchestrator knows"
        );
        let other = anyhow::anyhow!("inner").context("outer");
        assert_eq!(describe(&other), "outer: inner");
    }

    #[test]
    fn a_missing_token_is_named() {
        let args = RemoteArgs {
            url: "http://127.0.0.1:8080".into(),
            token: None,
            project: None,
        };
        let err = args.client().unwrap_err();
        assert!(err.to_string().contains("RIVET_TOKEN"), "{err}");
    }
}
