//! The harness of the security regression tests: a small, fast policy, pipelines built from a
//! stage script, one worker run per job, canaries outside the workspace, host-side trap paths,
//! and the follow-up job that proves the runner slot recovered.

use rivet_core::policy::NamespaceMode;
use rivet_core::{JobOutcome, Policy};
use rivet_sandbox::events::{Event, Source};
use rivet_sandbox::job::resolve_binaries;
use rivet_sandbox::{run_worker, JobRequest, Mode, WorkerOptions, WorkerReport};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tempfile::TempDir;

/// How long the follow-up job (and any job that must not hang) may take.
pub const FOLLOW_UP_LIMIT: Duration = Duration::from_secs(5);

/// Where test directories live. Not `/tmp`: the worker mounts a private tmpfs there, which
/// would hide the canaries from the job and make the jail checks pass for the wrong reason.
/// Under the target directory the job sees them (read-only), so the module's own jail is what
/// is tested.
fn test_root() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("security")
}

fn tempdir(prefix: &str) -> TempDir {
    let root = test_root();
    std::fs::create_dir_all(&root).expect("creating the test root");
    tempfile::Builder::new()
        .prefix(&format!("{prefix}-"))
        .tempdir_in(root)
        .expect("creating a test directory")
}

/// The test policy: small limits so attacks end fast, namespaces required (the tests rely on
/// a private `/tmp`; where namespaces are unavailable they fail with the reason instead of
/// passing silently), and the default allow-list plus `extra` programs.
pub fn policy(extra: &[&str]) -> Policy {
    let mut p = Policy::default();
    p.limits.instructions = 20_000_000;
    p.limits.stage_timeout = Duration::from_secs(2);
    p.limits.kill_grace = Duration::from_secs(1);
    p.limits.memory = 64 << 20;
    p.limits.job_timeout = Duration::from_secs(30);
    p.process.default_timeout = Duration::from_secs(10);
    p.sandbox.namespaces = NamespaceMode::Required;
    for name in extra {
        if !p.process.allow.iter().any(|a| a == name) {
            p.process.allow.push((*name).to_owned());
        }
    }
    p
}

/// A pipeline with one stage named `attack` running `script`.
pub fn pipeline(script: &str) -> String {
    pipeline_with("", script)
}

/// A pipeline with one stage named `attack` that requires exactly `requires`.
pub fn pipeline_requiring(requires: &[&str], script: &str) -> String {
    let list: Vec<String> = requires.iter().map(|r| lua_str(r)).collect();
    format!(
        "return {{\n  name = \"security\",\n  requires = {{{}}},\n  stages = {{\n    {{\n      name = \"attack\",\n      script = function()\n{script}\n      end,\n    }},\n  }},\n}}\n",
        list.join(", ")
    )
}

/// A pipeline with one stage named `attack`, with extra stage fields (Lua, ending in a comma).
pub fn pipeline_with(stage_fields: &str, script: &str) -> String {
    format!(
        "return {{\n  name = \"security\",\n  requires = {{\"process\", \"filesystem\"}},\n  stages = {{\n    {{\n      name = \"attack\",\n      {stage_fields}\n      script = function()\n{script}\n      end,\n    }},\n  }},\n}}\n"
    )
}

/// `s` as a Lua string literal.
pub fn lua_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\0' => out.push_str("\\000"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One finished job: the worker's report and every event it sent.
#[derive(Debug)]
pub struct Job {
    /// The report.
    pub report: WorkerReport,
    /// Every event, in order.
    pub events: Vec<Event>,
}

impl Job {
    /// The outcome's error text (the crash reason for a crash; empty on success or cancel).
    pub fn error(&self) -> &str {
        match &self.report.outcome {
            JobOutcome::Failed { error, .. } | JobOutcome::TimedOut { error, .. } => error,
            JobOutcome::Crashed { reason } | JobOutcome::Lost { reason } => reason,
            JobOutcome::Succeeded | JobOutcome::Cancelled => "",
        }
    }

    /// Every log line with its source.
    pub fn logs(&self) -> Vec<(Source, &str)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Log { source, line, .. } => Some((*source, line.as_str())),
                _ => None,
            })
            .collect()
    }

    /// The log lines from one source.
    pub fn lines(&self, source: Source) -> Vec<&str> {
        self.logs()
            .into_iter()
            .filter(|(s, _)| *s == source)
            .map(|(_, l)| l)
            .collect()
    }

    /// A summary for assertion messages: outcome, duration, problems, stderr and the log tail.
    pub fn describe(&self) -> String {
        let logs = self.logs();
        let tail: Vec<String> = logs
            .iter()
            .skip(logs.len().saturating_sub(12))
            .map(|(s, l)| {
                let l: String = l.chars().take(160).collect();
                format!("    [{s:?}] {l}")
            })
            .collect();
        format!(
            "outcome: {:?}\nduration: {:?}\nproblems: {:?}\nworker stderr: {}\nlog tail ({} lines):\n{}",
            self.report.outcome,
            self.report.duration,
            self.report.problems,
            self.report.stderr.trim(),
            logs.len(),
            tail.join("\n")
        )
    }
}

/// Runs `source` in a fresh worker with `workspace` as the job's workspace.
pub fn run_job(policy: &Policy, source: &str, workspace: &Path) -> Job {
    run_job_with_secrets(policy, source, workspace, BTreeMap::new())
}

/// Like [`run_job`], with secrets readable through `env.get`.
pub fn run_job_with_secrets(
    policy: &Policy,
    source: &str,
    workspace: &Path,
    secrets: BTreeMap<String, String>,
) -> Job {
    let options = WorkerOptions::new(env!("CARGO_BIN_EXE_rivet-sandbox-worker").into());
    run_job_full(policy, source, workspace, secrets, &options)
}

/// Like [`run_job`], with the given worker options (to share one runner's host services).
pub fn run_job_with_options(
    policy: &Policy,
    source: &str,
    workspace: &Path,
    options: &WorkerOptions,
) -> Job {
    run_job_full(policy, source, workspace, BTreeMap::new(), options)
}

/// Worker options as a runner has them: one set of host services for every job.
pub fn shared_options(policy: &Policy) -> WorkerOptions {
    let mut o = WorkerOptions::new(env!("CARGO_BIN_EXE_rivet-sandbox-worker").into());
    o.host = std::sync::Arc::new(rivet_sandbox::HostServices::new(policy));
    o
}

fn run_job_full(
    policy: &Policy,
    source: &str,
    workspace: &Path,
    secrets: BTreeMap<String, String>,
    options: &WorkerOptions,
) -> Job {
    let request = request(policy, source, workspace, secrets);
    let mut events = Vec::new();
    let report = run_worker(&request, options, |ev| events.push(ev.clone()))
        .expect("the worker could not be started");
    Job { report, events }
}

/// The request a runner would send for `source` in `workspace`.
pub fn request(
    policy: &Policy,
    source: &str,
    workspace: &Path,
    secrets: BTreeMap<String, String>,
) -> JobRequest {
    JobRequest {
        mode: Mode::Run,
        file_name: "pipeline.lua".into(),
        source: source.into(),
        inputs: BTreeMap::new(),
        secrets,
        metadata: BTreeMap::from([("RIVET_JOB_ID".to_owned(), "security-test".to_owned())]),
        workspace: workspace.to_path_buf(),
        policy: policy.clone(),
        binaries: resolve_binaries(&policy.process),
        plugins: rivet_sandbox::plugins::catalog(None).expect("the built-in plugins"),
    }
}

/// A fresh, empty workspace (removed when dropped).
pub fn workspace(test: &str) -> TempDir {
    tempdir(&format!("ws-{test}"))
}

/// Every canary's content contains this; no log line may.
pub const CANARY_TOKEN: &str = "canary-secret";

/// A file with unique content in its own directory outside any workspace. The directory is
/// visible to jobs (read-only through the worker's mounts); nothing may change it.
#[derive(Debug)]
pub struct Canary {
    _root: TempDir,
    /// The canary's directory (contains only the canary file).
    pub dir: PathBuf,
    /// The canary file.
    pub file: PathBuf,
    content: String,
}

impl Canary {
    /// Plants a canary for `test`.
    pub fn new(test: &str) -> Self {
        let root = tempdir(&format!("canary-{test}"));
        let dir = root.path().to_path_buf();
        let file = dir.join("canary.env");
        let content = format!(
            "CANARY_SECRET=\"{CANARY_TOKEN}-{test}-{}-{:?}\"\n",
            std::process::id(),
            std::time::SystemTime::now()
        );
        std::fs::write(&file, &content).expect("writing the canary");
        Self {
            _root: root,
            dir,
            file,
            content,
        }
    }

    /// The canary file's exact content.
    pub fn content(&self) -> &str {
        &self.content
    }

    /// Asserts the canary file is unchanged and nothing was added next to it.
    #[track_caller]
    pub fn assert_intact(&self, what: &str) {
        let now = std::fs::read_to_string(&self.file)
            .unwrap_or_else(|e| panic!("{what}: the canary {} is gone: {e}", self.file.display()));
        assert_eq!(
            now,
            self.content,
            "{what}: the canary {} was changed",
            self.file.display()
        );
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .expect("listing the canary directory")
            .map(|e| {
                e.expect("reading a directory entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        assert_eq!(
            names,
            vec!["canary.env".to_owned()],
            "{what}: something was created next to the canary in {}",
            self.dir.display()
        );
    }
}

/// A host path an attack tries to create: `/tmp/rivet-pwn-<test>-<what>-<pid>`. The job's
/// `/tmp` is a private tmpfs, so nothing the job writes there may appear on the host.
pub fn trap(test: &str, what: &str) -> PathBuf {
    let p = PathBuf::from(format!(
        "/tmp/rivet-pwn-{test}-{what}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&p);
    p
}

/// Asserts none of `paths` exists (removing any that does, then failing).
#[track_caller]
pub fn assert_absent(paths: &[&Path], what: &str) {
    for p in paths {
        if p.symlink_metadata().is_ok() {
            let _ = std::fs::remove_file(p);
            let _ = std::fs::remove_dir_all(p);
            panic!("{what}: the attack created {}", p.display());
        }
    }
}

/// Asserts the job failed with `policy violation [<rule>]`.
#[track_caller]
pub fn assert_rule(job: &Job, rule: &str, what: &str) {
    let needle = format!("policy violation [{rule}]");
    assert!(
        matches!(job.report.outcome, JobOutcome::Failed { .. }) && job.error().contains(&needle),
        "{what}: expected a failure naming `{needle}`\n{}",
        job.describe()
    );
}

/// Asserts the job failed (not timed out, not crashed) with an error containing `needle`.
#[track_caller]
pub fn assert_failed_with(job: &Job, needle: &str, what: &str) {
    assert!(
        matches!(job.report.outcome, JobOutcome::Failed { .. }) && job.error().contains(needle),
        "{what}: expected a failure containing `{needle}`\n{}",
        job.describe()
    );
}

/// Asserts the job succeeded.
#[track_caller]
pub fn assert_succeeded(job: &Job, what: &str) {
    assert!(
        job.report.outcome.is_success(),
        "{what}: expected success\n{}",
        job.describe()
    );
}

/// Asserts the VM itself stopped a CPU loop: outcome `TimedOut` with the instruction budget or
/// the wall-clock deadline named, reported by the worker (not a hard kill by the parent), in
/// well under the hard deadline.
#[track_caller]
pub fn assert_vm_stopped_loop(job: &Job, policy: &Policy, what: &str) {
    let ok = matches!(job.report.outcome, JobOutcome::TimedOut { .. })
        && (job.error().contains("instruction budget exceeded")
            || job.error().contains("time limit exceeded"))
        && !job.error().contains("worker was killed");
    assert!(
        ok,
        "{what}: expected the VM to stop the loop (`instruction budget exceeded` or `time limit exceeded`, outcome TimedOut)\n{}",
        job.describe()
    );
    let hard = policy.limits.stage_timeout + policy.limits.kill_grace;
    assert!(
        job.report.duration < hard + Duration::from_secs(1),
        "{what}: the loop ran for {:?}",
        job.report.duration
    );
}

/// The same parent runs a trivial job successfully within [`FOLLOW_UP_LIMIT`]: the runner slot
/// recovered from whatever the attack did.
#[track_caller]
pub fn assert_follow_up(policy: &Policy) {
    let ws = workspace("follow-up");
    let job = run_job(
        policy,
        &pipeline(
            "log.info(\"follow-up ok \" .. ((\"abc\"):upper()))\nfilesystem.write(\"ok.txt\", \"ok\")\nprocess.run{command = \"true\"}",
        ),
        ws.path(),
    );
    assert_succeeded(&job, "follow-up job");
    assert!(
        job.report.duration < FOLLOW_UP_LIMIT,
        "the follow-up job took {:?}",
        job.report.duration
    );
    assert!(
        job.lines(Source::Script).contains(&"follow-up ok ABC"),
        "the follow-up job's log is missing its line\n{}",
        job.describe()
    );
    assert_eq!(
        std::fs::read_to_string(ws.path().join("ok.txt"))
            .ok()
            .as_deref(),
        Some("ok")
    );
}
