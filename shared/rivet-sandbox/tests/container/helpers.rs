//! The container tests' harness: the security harness's shape (policy, canary, follow-up job),
//! with the parent connected to the real container engine (Podman's API, started by
//! `scripts/podman-setup.sh`; a missing engine is a loud failure with that hint).

use rivet_container::Engine;
use rivet_core::policy::NamespaceMode;
use rivet_core::{JobOutcome, Policy};
use rivet_sandbox::events::{Event, Source};
use rivet_sandbox::job::resolve_binaries;
use rivet_sandbox::{run_worker, HostServices, JobRequest, Mode, WorkerOptions, WorkerReport};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The local test image built by `scripts/podman-setup.sh`.
pub const BUSYBOX: &str = "rivet-test/busybox";

/// The engine's address: `RIVET_CONTAINER_HOST`, else the setup script's socket.
pub fn host() -> String {
    rivet_container::host_from_env()
}

/// The engine every job of this test binary uses (one per process, as in a runner).
pub fn engine() -> Arc<Engine> {
    static ENGINE: OnceLock<Arc<Engine>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            Engine::connect(&host(), "rivet-sandbox-container-tests").unwrap_or_else(|e| {
                panic!(
                    "the container engine is not reachable ({}); run `scripts/podman-setup.sh` (it starts Podman's API on {})",
                    e.describe(),
                    host()
                )
            })
        })
        .clone()
}

/// Small limits, namespaces required, the test images allowed.
pub fn policy() -> Policy {
    let mut p = Policy::default();
    p.limits.instructions = 20_000_000;
    p.limits.stage_timeout = Duration::from_secs(20);
    p.limits.kill_grace = Duration::from_secs(1);
    p.limits.memory = 64 << 20;
    p.limits.job_timeout = Duration::from_secs(60);
    p.sandbox.namespaces = NamespaceMode::Required;
    p.container.images = vec!["rivet-test/*".into(), "python:3.11".into()];
    p
}

/// A pipeline requiring `requires`, with one stage `attack` (extra stage fields allowed).
pub fn pipeline(requires: &str, stage_fields: &str, script: &str) -> String {
    format!(
        "return {{\n  name = \"containers\",\n  requires = {{{requires}}},\n  stages = {{\n    {{\n      name = \"attack\",\n      {stage_fields}\n      script = function()\n{script}\n      end,\n    }},\n  }},\n}}\n"
    )
}

/// One finished job.
#[derive(Debug)]
pub struct Job {
    pub report: WorkerReport,
    pub events: Vec<Event>,
    pub job_id: String,
}

impl Job {
    pub fn error(&self) -> &str {
        match &self.report.outcome {
            JobOutcome::Failed { error, .. } | JobOutcome::TimedOut { error, .. } => error,
            JobOutcome::Crashed { reason } | JobOutcome::Lost { reason } => reason,
            JobOutcome::Succeeded | JobOutcome::Cancelled => "",
        }
    }

    pub fn lines(&self, source: Source) -> Vec<&str> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Log {
                    source: s, line, ..
                } if *s == source => Some(line.as_str()),
                _ => None,
            })
            .collect()
    }

    pub fn describe(&self) -> String {
        let logs: Vec<String> = self
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Log { source, line, .. } => Some(format!("  [{source:?}] {line}")),
                _ => None,
            })
            .collect();
        format!(
            "outcome: {:?}\nstderr: {}\nlog:\n{}",
            self.report.outcome,
            self.report.stderr.trim(),
            logs.join("\n")
        )
    }

    /// Containers of this job still on the engine.
    pub fn containers_left(&self) -> Vec<String> {
        engine()
            .job_containers(&self.job_id)
            .expect("listing containers")
    }
}

/// A workspace and a canary outside it, under the target directory (jobs see a private /tmp).
pub struct Fixture {
    pub workspace: PathBuf,
    pub canary: PathBuf,
    pub name: String,
}

pub const CANARY: &str = "CANARY_SECRET=container-canary\n";

pub fn fixture(name: &str) -> Fixture {
    // One directory per call: tests run in parallel and several make the same fixture (every
    // `assert_follow_up`); a shared one was removed under another test's running container,
    // whose start then failed in runc ("current working directory is outside of container
    // mount namespace root").
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("container")
        .join(format!("{name}-{}-{seq}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let workspace = base.join("workspace");
    std::fs::create_dir_all(&workspace).unwrap();
    let canary = base.join("canary.env");
    std::fs::write(&canary, CANARY).unwrap();
    Fixture {
        workspace,
        canary,
        name: name.to_owned(),
    }
}

impl Fixture {
    pub fn run(&self, policy: &Policy, source: &str) -> Job {
        self.run_cancellable(policy, source, None, |_| {})
    }

    /// Runs a job; `on_event` sees each event as it arrives (a test may cancel from there).
    pub fn run_cancellable(
        &self,
        policy: &Policy,
        source: &str,
        cancel: Option<Arc<AtomicBool>>,
        mut on_event: impl FnMut(&Event),
    ) -> Job {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let job_id = format!(
            "ctest-{}-{}-{}",
            self.name,
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let request = JobRequest {
            mode: Mode::Run,
            file_name: "pipeline.lua".into(),
            source: source.into(),
            inputs: BTreeMap::new(),
            secrets: BTreeMap::new(),
            metadata: BTreeMap::from([("RIVET_JOB_ID".to_owned(), job_id.clone())]),
            workspace: self.workspace.clone(),
            policy: policy.clone(),
            binaries: resolve_binaries(&policy.process),
            plugins: rivet_sandbox::plugins::catalog(None).unwrap(),
        };
        let services = HostServices::new(policy).with_container_engine(engine());
        let mut options = WorkerOptions::new(env!("CARGO_BIN_EXE_rivet-sandbox-worker").into());
        options.host = Arc::new(services);
        options.cancel = cancel;
        let mut events = Vec::new();
        let report = run_worker(&request, &options, |ev| {
            on_event(ev);
            events.push(ev.clone());
        })
        .expect("the worker could not be started");
        Job {
            report,
            events,
            job_id,
        }
    }

    #[track_caller]
    pub fn assert_canary(&self) {
        assert_eq!(
            std::fs::read_to_string(&self.canary).unwrap(),
            CANARY,
            "the canary outside the workspace changed"
        );
    }
}

#[track_caller]
pub fn assert_rule(job: &Job, rule: &str, what: &str) {
    let needle = format!("policy violation [{rule}]");
    assert!(
        matches!(job.report.outcome, JobOutcome::Failed { .. }) && job.error().contains(&needle),
        "{what}: expected a failure naming `{needle}`\n{}",
        job.describe()
    );
}

#[track_caller]
pub fn assert_succeeded(job: &Job, what: &str) {
    assert!(
        job.report.outcome.is_success(),
        "{what}: expected success\n{}",
        job.describe()
    );
}

#[track_caller]
pub fn assert_no_containers(job: &Job, what: &str) {
    let left = job.containers_left();
    assert!(left.is_empty(), "{what}: containers left behind: {left:?}");
}

/// The same parent set-up runs a trivial container job within 10 s.
#[track_caller]
pub fn assert_follow_up(policy: &Policy) {
    let fx = fixture("follow-up");
    let job = fx.run(
        policy,
        &pipeline(
            "\"container\"",
            "",
            &format!("local r = container.run{{image = \"{BUSYBOX}\", command = {{\"echo\", \"follow-up ok\"}}}}\nassert(r.code == 0)"),
        ),
    );
    assert_succeeded(&job, "follow-up job");
    assert!(
        job.report.duration < Duration::from_secs(10),
        "the follow-up took {:?}",
        job.report.duration
    );
    assert!(
        job.lines(Source::Stdout).contains(&"follow-up ok"),
        "{}",
        job.describe()
    );
    assert_no_containers(&job, "follow-up job");
}

/// Where to write `what` into a workspace path.
pub fn ws_file(fx: &Fixture, name: &str) -> PathBuf {
    fx.workspace.join(name)
}

#[allow(dead_code)]
pub fn exists(p: &Path) -> bool {
    p.symlink_metadata().is_ok()
}
