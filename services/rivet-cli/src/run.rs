//! `rivet run FILE|NAME`. A local run (FILE) validates inputs, runs the stages in a fresh
//! workspace, streams progress and logs, and exits non-zero naming the failing stage; a remote
//! run (NAME) is handed to `crate::remote::submit`.

use crate::prompt::prompt;
use crate::remote::RemoteArgs;
use crate::render::Renderer;
use crate::setup::{prepare, worker_options, PipelineOptions};
use crate::workspace::{given_dir, warn_if_root_jobs, TempWorkspace};
use anyhow::{bail, Context, Result};
use clap::Args;
use rivet_sandbox::{JobRequest, Mode};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

const RUN_HELP: &str = "\
Local or remote:
  If the argument is an existing file, ends in `.lua`, or contains a `/`, it is a local run: the
  file is evaluated and run on this machine, no server needed. Otherwise it is the NAME of a
  pipeline pushed to the orchestrator (`rivet pipeline push FILE`; names are letters, digits,
  `-` and `_`), and the run is queued there for a runner: rivet prints the job id, and with
  --follow streams its logs until it ends. --url and --token (or RIVET_URL and RIVET_TOKEN) say
  which orchestrator; --secret, --workspace, --keep-workspace, --policy and --plugins apply to
  local runs only.

Inputs:
  Each --input NAME=VALUE is checked against the definition's `inputs`: its type (string,
  number, boolean: true/false/yes/no/1/0), its `options`, and `required`. Declared defaults fill
  the rest. On a terminal, rivet asks for a missing required input; otherwise it is an error.

Secrets:
  --secret NAME reads the value of the environment variable NAME from rivet's own environment
  (never from the command line, where other users could see it). The job reads it with
  env.get(\"NAME\"); its value is replaced by *** in every log line.

Workspace:
  Without --workspace, each run gets a fresh temporary directory, removed afterwards unless
  --keep-workspace is given. With --workspace DIR, DIR is created if needed and kept. Run as
  root with sandbox.job_uid set in the policy, the job runs as that uid, and the workspace
  must be that uid's: rivet gives it a directory it makes (a temporary one, or DIR when it
  does not exist yet) and refuses an existing DIR that belongs to anyone else.

Sandbox:
  Each run executes in a separate worker process with rlimits and, where the kernel allows,
  fresh user, pid, mount, IPC, UTS and network namespaces (no network by default). Only the
  workspace is writable; /tmp is private. The policy file (--policy) sets the process
  allow-list, environment allow-list, time, memory and output limits: see docs/policy.md.

Output:
  Stage progress and log lines go to standard output as they happen. --json prints one JSON
  event per line instead (log, stage_started, stage_finished, finished, ...). A remote run
  prints the job id (--json: the job as JSON); with --follow, its log lines, the stages and the
  final state (--json: one JSON object per line: the job, each log line, the finished job).

Exit status:
  0 when every stage succeeded or was skipped by its condition (remote without --follow: when
  the job was queued); 1 when a stage failed or timed out, the worker crashed, or the definition
  or inputs are invalid; 2 on usage errors, unreadable files and orchestrator errors. Ctrl-C
  (or SIGTERM) during a local run cancels the job and removes its temporary workspace; then
  rivet ends by that signal (status 130, or 143), so a calling script stops too. A second one
  stops rivet at once.

Examples:
  rivet run examples/hello.lua
  rivet run pipeline.lua --input repo_url=https://example.org/repo.git --input branch=dev
  rivet run pipeline.lua --policy policy.toml --workspace ./ws --keep-workspace
  rivet run build-and-test --input repo_url=https://example.org/repo.git --follow
";

/// Arguments of `rivet run`.
#[derive(Debug, Args)]
#[command(after_long_help = RUN_HELP, disable_version_flag = true)]
pub struct RunArgs {
    /// A pipeline definition to run here (a Lua file returning a table), or the name of a
    /// pipeline on the orchestrator (see "Local or remote" in --help).
    #[arg(value_name = "FILE|NAME")]
    pub target: String,
    /// An input value, as NAME=VALUE. Repeat for several inputs.
    #[arg(long = "input", short = 'i', value_name = "NAME=VALUE", value_parser = parse_pair)]
    pub inputs: Vec<(String, String)>,
    /// A secret taken from rivet's environment variable NAME; masked in logs. Repeatable.
    #[arg(long = "secret", value_name = "NAME")]
    pub secrets: Vec<String>,
    /// Run in this directory (created if missing, kept afterwards) instead of a fresh one.
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// Keep the fresh temporary workspace after the run and print its path.
    #[arg(long)]
    pub keep_workspace: bool,
    /// Print events as JSON lines instead of human-readable progress.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub pipeline: PipelineOptions,
    /// Stream the job's logs until it ends, and exit with its result (a local run always does).
    #[arg(long, short = 'f', help_heading = "Remote runs")]
    pub follow: bool,
    /// Run this version of the pipeline instead of the latest.
    #[arg(long, value_name = "N", help_heading = "Remote runs")]
    pub version: Option<i32>,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// Whether `rivet run ARG` runs a local file (rather than a pipeline on the orchestrator): ARG
/// is an existing file, ends in `.lua`, or contains a `/` (pipeline names never do, so a
/// mistyped path is reported as a missing file, not as an unknown pipeline).
pub fn is_local(arg: &str, is_file: impl Fn(&Path) -> bool) -> bool {
    arg.ends_with(".lua") || arg.contains('/') || is_file(Path::new(arg))
}

/// The given inputs as a map; a name given twice is an error.
pub fn collect_inputs(pairs: &[(String, String)]) -> Result<BTreeMap<String, String>> {
    let mut inputs = BTreeMap::new();
    for (k, v) in pairs {
        if inputs.insert(k.clone(), v.clone()).is_some() {
            bail!("input `{k}` is given twice");
        }
    }
    Ok(inputs)
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("`{s}` is not NAME=VALUE")),
    }
}

/// `rivet run`: local or remote by [`is_local`].
pub fn run(args: RunArgs) -> Result<i32> {
    if !is_local(&args.target, Path::is_file) {
        return crate::remote::submit::run(args);
    }
    if args.version.is_some() {
        bail!(
            "--version applies to remote runs (a pipeline NAME), not to the local file {}",
            args.target
        );
    }
    let file = PathBuf::from(&args.target);
    let prepared = prepare(&file, &args.pipeline)?;
    let inputs = collect_inputs(&args.inputs)?;
    let mut secrets = BTreeMap::new();
    for name in &args.secrets {
        let value = std::env::var(name).with_context(|| {
            format!("--secret {name}: the environment variable {name} is not set")
        })?;
        secrets.insert(name.clone(), value);
    }

    warn_if_root_jobs(&prepared.policy);
    // From here a signal cancels the job and lets this function clean up (interrupt.rs).
    let mut options = worker_options()?;
    options.cancel = Some(crate::interrupt::cancel_flag());
    let _armed = crate::interrupt::arm();
    let (workspace, temp) = match &args.workspace {
        Some(dir) => (given_dir(dir, &prepared.policy)?, None),
        None => {
            let temp = TempWorkspace::create("rivet-ws-", args.keep_workspace, &prepared.policy)?;
            (temp.path().to_path_buf(), Some(temp))
        }
    };

    let binaries = rivet_sandbox::job::resolve_binaries(&prepared.policy.process);
    let mut request = JobRequest {
        mode: Mode::Run,
        file_name: prepared.file_name,
        source: prepared.source,
        inputs,
        secrets,
        metadata: [
            (
                "RIVET_JOB_ID".to_owned(),
                format!("local-{}", std::process::id()),
            ),
            (
                "RIVET_WORKSPACE".to_owned(),
                workspace.display().to_string(),
            ),
        ]
        .into_iter()
        .collect(),
        workspace: workspace.clone(),
        policy: prepared.policy,
        binaries,
        plugins: prepared.plugins,
    };
    let interactive = std::io::stdin().is_terminal() && !args.json;
    let display = args.target.clone();
    let mut asked = false;
    loop {
        let mut renderer = Renderer::new(args.json, display.clone(), asked);
        let report = rivet_sandbox::run_worker(&request, &options, |ev| renderer.event(ev))
            .context("starting the sandbox worker")?;
        let kept = temp.as_ref().is_some_and(TempWorkspace::kept) || args.workspace.is_some();
        if let Some(signal) = crate::interrupt::received() {
            renderer.summary(&report, &workspace, kept);
            return Ok(128 + signal);
        }
        let missing: Vec<_> = report
            .input_errors
            .iter()
            .filter(|e| e.message == "is required")
            .collect();
        if interactive && !missing.is_empty() && missing.len() == report.input_errors.len() {
            if let Some(spec) = &report.definition {
                for err in missing {
                    let decl = spec.inputs.iter().find(|i| i.name == err.field);
                    // No stage ran: the temporary workspace is empty.
                    let empty = temp.as_ref().filter(|t| !t.kept()).map(TempWorkspace::path);
                    let value = crate::interrupt::disarmed(empty, || prompt(&err.field, decl))?;
                    request.inputs.insert(err.field.clone(), value);
                }
                asked = true;
                continue;
            }
        }
        renderer.summary(&report, &workspace, kept);
        return Ok(if report.outcome.is_success() { 0 } else { 1 });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_run_here_and_names_run_on_the_orchestrator() {
        let existing = |p: &Path| p == Path::new("Makefile-pipeline");
        for local in [
            "pipeline.lua",
            "missing.lua",
            "./build",
            "ci/build",
            "/abs/path",
            "Makefile-pipeline",
        ] {
            assert!(is_local(local, existing), "{local} is local");
        }
        for remote in ["build-and-test", "deploy_prod", "hello", "lua"] {
            assert!(!is_local(remote, existing), "{remote} is remote");
        }
    }

    #[test]
    fn an_input_given_twice_is_an_error() {
        let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        let ok = collect_inputs(&[pair("a", "1"), pair("b", "=2")]).unwrap();
        assert_eq!(ok.get("b").map(String::as_str), Some("=2"));
        let err = collect_inputs(&[pair("a", "1"), pair("a", "2")]).unwrap_err();
        assert_eq!(err.to_string(), "input `a` is given twice");
    }
}
