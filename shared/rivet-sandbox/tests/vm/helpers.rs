//! Running jobs through a real worker process for these tests.

use rivet_core::{JobOutcome, Policy};
use rivet_sandbox::events::{Event, Source};
use rivet_sandbox::{JobRequest, Mode, WorkerOptions, WorkerReport};
use std::collections::BTreeMap;
use std::time::Duration;

pub struct Run {
    pub report: WorkerReport,
    pub events: Vec<Event>,
}

impl Run {
    pub fn outcome(&self) -> &JobOutcome {
        &self.report.outcome
    }

    /// Lines logged by the script (`log.*`, `print`), in order.
    pub fn script_lines(&self) -> Vec<String> {
        self.lines(Some(Source::Script))
    }

    pub fn lines(&self, source: Option<Source>) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Log {
                    line, source: s, ..
                } if source.is_none_or(|want| want == *s) => Some(line.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn error(&self) -> String {
        match &self.report.outcome {
            JobOutcome::Failed { error, .. } | JobOutcome::TimedOut { error, .. } => error.clone(),
            JobOutcome::Crashed { reason } => reason.clone(),
            other => panic!(
                "expected a failure, got {other:?}; logs: {:?}",
                self.lines(None)
            ),
        }
    }
}

pub fn policy() -> Policy {
    let mut p = Policy::default();
    p.limits.stage_timeout = Duration::from_secs(5);
    p.limits.kill_grace = Duration::from_millis(500);
    p.limits.instructions = 50_000_000;
    for extra in ["sh", "env", "id", "kill"] {
        p.process.allow.push(extra.into());
    }
    p
}

pub fn options() -> WorkerOptions {
    WorkerOptions::new(env!("CARGO_BIN_EXE_rivet-sandbox-worker").into())
}

pub struct Job {
    pub request: JobRequest,
    /// Keeps the workspace directory alive while the job may run.
    pub _workspace: tempfile::TempDir,
}

pub fn job(source: &str) -> Job {
    let workspace = tempfile::tempdir().expect("temp workspace");
    let policy = policy();
    let request = JobRequest {
        mode: Mode::Run,
        file_name: "pipeline.lua".into(),
        source: source.into(),
        inputs: BTreeMap::new(),
        secrets: BTreeMap::new(),
        metadata: BTreeMap::new(),
        workspace: workspace.path().to_path_buf(),
        binaries: rivet_sandbox::job::resolve_binaries(&policy.process),
        policy,
        plugins: rivet_sandbox::plugins::read_dir(&plugins_dir()).expect("reading plugins/"),
    };
    Job {
        request,
        _workspace: workspace,
    }
}

pub fn plugins_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../plugins")
}

impl Job {
    pub fn run(&self) -> Run {
        self.run_with(&options())
    }

    pub fn run_with(&self, options: &WorkerOptions) -> Run {
        let mut events = Vec::new();
        let report = rivet_sandbox::run_worker(&self.request, options, |e| events.push(e.clone()))
            .expect("worker starts");
        Run { report, events }
    }
}

/// A pipeline with one stage running `body`, granted `requires`.
pub fn stage(requires: &str, body: &str) -> String {
    format!("return {{ name = 't', requires = {{{requires}}}, stages = {{ {{ name = 'main', script = function()\n{body}\nend }} }} }}")
}

/// Runs one stage and returns the run.
pub fn run_stage(requires: &str, body: &str) -> Run {
    job(&stage(requires, body)).run()
}
