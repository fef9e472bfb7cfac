//! `rivet run FILE`: validate inputs, run the stages in a fresh workspace, stream progress and
//! logs, exit non-zero naming the failing stage.

use crate::render::Renderer;
use crate::setup::{prepare, worker_options, PipelineOptions};
use anyhow::{bail, Context, Result};
use clap::Args;
use rivet_sandbox::{JobRequest, Mode};
use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

const RUN_HELP: &str = "\
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
  --keep-workspace is given. With --workspace DIR, DIR is created if needed and kept.

Sandbox:
  Each run executes in a separate worker process with rlimits and, where the kernel allows,
  fresh user, pid, mount, IPC, UTS and network namespaces (no network by default). Only the
  workspace is writable; /tmp is private. The policy file (--policy) sets the process
  allow-list, environment allow-list, time, memory and output limits: see docs/policy.md.

Output:
  Stage progress and log lines go to standard output as they happen. --json prints one JSON
  event per line instead (log, stage_started, stage_finished, finished, ...).

Exit status:
  0 when every stage succeeded or was skipped by its condition; 1 when a stage failed or timed
  out, the worker crashed, or the definition or inputs are invalid; 2 on usage errors and
  unreadable files.

Examples:
  rivet run examples/hello.lua
  rivet run pipeline.lua --input repo_url=https://example.org/repo.git --input branch=dev
  rivet run pipeline.lua --policy policy.toml --workspace ./ws --keep-workspace
";

/// Arguments of `rivet run`.
#[derive(Debug, Args)]
#[command(after_long_help = RUN_HELP)]
pub struct RunArgs {
    /// The pipeline definition (a Lua file returning a table).
    pub file: PathBuf,
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
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("`{s}` is not NAME=VALUE")),
    }
}

pub fn run(args: RunArgs) -> Result<i32> {
    let prepared = prepare(&args.file, &args.pipeline)?;
    let mut inputs: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in &args.inputs {
        if inputs.insert(k.clone(), v.clone()).is_some() {
            bail!("input `{k}` is given twice");
        }
    }
    let mut secrets = BTreeMap::new();
    for name in &args.secrets {
        let value = std::env::var(name).with_context(|| {
            format!("--secret {name}: the environment variable {name} is not set")
        })?;
        secrets.insert(name.clone(), value);
    }

    let (workspace, _temp) = match &args.workspace {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating workspace {}", dir.display()))?;
            (
                std::fs::canonicalize(dir)
                    .with_context(|| format!("resolving {}", dir.display()))?,
                None,
            )
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix("rivet-ws-")
                .tempdir()
                .context("creating a temporary workspace")?;
            let path =
                std::fs::canonicalize(temp.path()).context("resolving the temporary workspace")?;
            if args.keep_workspace {
                let kept = temp.keep();
                (path, Some(TempGuard::Kept(kept)))
            } else {
                (path, Some(TempGuard::Removed(temp)))
            }
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
    let options = worker_options()?;
    let interactive = std::io::stdin().is_terminal() && !args.json;
    let display = args.file.display().to_string();
    let mut asked = false;
    loop {
        let mut renderer = Renderer::new(args.json, display.clone(), asked);
        let report = rivet_sandbox::run_worker(&request, &options, |ev| renderer.event(ev))
            .context("starting the sandbox worker")?;
        let missing: Vec<_> = report
            .input_errors
            .iter()
            .filter(|e| e.message == "is required")
            .collect();
        if interactive && !missing.is_empty() && missing.len() == report.input_errors.len() {
            if let Some(spec) = &report.definition {
                for err in missing {
                    let decl = spec.inputs.iter().find(|i| i.name == err.field);
                    let value = prompt(&err.field, decl)?;
                    request.inputs.insert(err.field.clone(), value);
                }
                asked = true;
                continue;
            }
        }
        renderer.summary(
            &report,
            &workspace,
            matches!(_temp, Some(TempGuard::Kept(_))) || args.workspace.is_some(),
        );
        return Ok(if report.outcome.is_success() { 0 } else { 1 });
    }
}

/// Keeps a temporary workspace alive for the run, then removes it (or keeps it on request).
#[allow(dead_code)]
enum TempGuard {
    Removed(tempfile::TempDir),
    Kept(PathBuf),
}

fn prompt(name: &str, decl: Option<&rivet_core::InputSpec>) -> Result<String> {
    let mut stderr = std::io::stderr();
    let ty = decl.map(|d| d.ty.name()).unwrap_or("string");
    let about = decl
        .and_then(|d| d.description.as_deref())
        .map(|d| format!(" — {d}"))
        .unwrap_or_default();
    write!(stderr, "{name} ({ty}){about}: ")?;
    stderr.flush()?;
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line)? == 0 {
        bail!("input `{name}` is required and none was given");
    }
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}
