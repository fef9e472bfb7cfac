//! Checking pushed definitions: the same evaluation `rivet lint` does, in a sandbox worker
//! process started from the orchestrator's executable, so hostile Lua never runs in the server.

use crate::Config;
use anyhow::Context;
use rivet_core::{PipelineSpec, Policy, Problem};
use rivet_sandbox::{JobRequest, Mode, WorkerOptions};
use std::collections::BTreeMap;

/// Checks definitions.
#[derive(Debug)]
pub struct Linter {
    options: WorkerOptions,
    plugins: BTreeMap<String, String>,
    policy: Policy,
}

impl Linter {
    /// A linter with the configured worker program and plugins.
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let program = match &config.worker_program {
            Some(p) => p.clone(),
            None => std::env::current_exe().context("locating the orchestrator executable")?,
        };
        let plugins = rivet_sandbox::plugins::catalog(config.plugin_dir.as_deref())
            .with_context(|| format!("reading plugins from {:?}", config.plugin_dir))?;
        Ok(Self {
            options: WorkerOptions::new(program),
            plugins,
            policy: Policy::default(),
        })
    }

    /// Evaluates and validates `source`. `Err` carries every problem; infrastructure failures
    /// are reported as a problem too, since the definition could not be accepted either way.
    pub async fn check(&self, file_name: &str, source: &str) -> Result<PipelineSpec, Vec<Problem>> {
        if source.as_bytes().first() == Some(&0x1b) {
            return Err(vec![Problem::new(
                None,
                "policy violation [lua.bytecode]: precompiled Lua bytecode is refused; push source text",
            )]);
        }
        if source.len() as u64 > self.policy.limits.max_source {
            return Err(vec![Problem::new(
                None,
                format!(
                    "the definition is {} bytes, over the limit of {} bytes (`limits.max_source`)",
                    source.len(),
                    self.policy.limits.max_source
                ),
            )]);
        }
        let request = JobRequest {
            mode: Mode::Lint,
            file_name: file_name.to_owned(),
            source: source.to_owned(),
            inputs: BTreeMap::new(),
            secrets: BTreeMap::new(),
            metadata: BTreeMap::new(),
            workspace: "/".into(),
            policy: self.policy.clone(),
            binaries: BTreeMap::new(),
            plugins: self.plugins.clone(),
        };
        let options = self.options.clone();
        let report = tokio::task::spawn_blocking(move || {
            rivet_sandbox::run_worker(&request, &options, |_| {})
        })
        .await
        .map_err(|e| {
            vec![Problem::new(
                None,
                format!("the definition check did not complete: {e}"),
            )]
        })?
        .map_err(|e| {
            vec![Problem::new(
                None,
                format!("the definition check could not start: {e}"),
            )]
        })?;
        match (report.definition, report.outcome.is_success()) {
            (Some(spec), true) => Ok(spec),
            _ if !report.problems.is_empty() => Err(report.problems),
            _ => Err(vec![Problem::new(None, report.outcome.to_string())]),
        }
    }
}
