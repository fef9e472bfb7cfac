//! `rivet lint FILE`.

use crate::setup::{prepare, worker_options, PipelineOptions};
use anyhow::{Context, Result};
use clap::Args;
use rivet_sandbox::{JobRequest, Mode};
use std::path::PathBuf;

/// Arguments of `rivet lint`.
#[derive(Debug, Args)]
#[command(
    after_long_help = "Exit status: 0 when the definition is valid, 1 when it has problems (each printed as FILE:LINE: message), 2 when the file cannot be read."
)]
pub struct LintArgs {
    /// The pipeline definition (a Lua file returning a table).
    pub file: PathBuf,
    /// Print the result as JSON: the parsed definition, or the list of problems.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub pipeline: PipelineOptions,
}

pub fn lint(args: LintArgs) -> Result<i32> {
    let prepared = prepare(&args.file, &args.pipeline)?;
    let request = JobRequest {
        mode: Mode::Lint,
        file_name: prepared.file_name.clone(),
        source: prepared.source,
        inputs: Default::default(),
        secrets: Default::default(),
        metadata: Default::default(),
        workspace: PathBuf::from("/"),
        policy: prepared.policy,
        binaries: Default::default(),
        plugins: prepared.plugins,
    };
    let report = rivet_sandbox::run_worker(&request, &worker_options()?, |_| {})
        .context("starting the sandbox worker")?;
    let display = args.file.display().to_string();
    if args.json {
        let value = match (&report.definition, report.outcome.is_success()) {
            (Some(spec), true) => serde_json::json!({"valid": true, "definition": spec}),
            _ => {
                serde_json::json!({"valid": false, "problems": report.problems, "error": report.outcome.to_string()})
            }
        };
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(if report.outcome.is_success() { 0 } else { 1 });
    }
    match (&report.definition, report.outcome.is_success()) {
        (Some(spec), true) => {
            let requires = spec
                .requires
                .0
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            println!(
                "{display}: ok: \"{}\", {} stage{}, {} input{}, requires: {}",
                spec.name,
                spec.stages.len(),
                if spec.stages.len() == 1 { "" } else { "s" },
                spec.inputs.len(),
                if spec.inputs.len() == 1 { "" } else { "s" },
                if requires.is_empty() {
                    "nothing".into()
                } else {
                    requires
                }
            );
            Ok(0)
        }
        _ => {
            if report.problems.is_empty() {
                println!("{display}: {}", report.outcome);
            }
            for p in &report.problems {
                println!("{}", p.render(&display));
            }
            let n = report.problems.len().max(1);
            eprintln!("{n} problem{} found", if n == 1 { "" } else { "s" });
            Ok(1)
        }
    }
}
