//! The `rivet` command line.
//!
//! `rivet lint` and `rivet run` work on one machine with no server: they start sandbox worker
//! processes from this same executable (see `rivet_sandbox::worker`). Remote commands (submit,
//! follow, cancel, retry, list runners and queues) come with the orchestrator.
//!
//! Depends on the sandbox and core crates only; never on a service crate.

mod lint;
mod render;
mod run;
mod setup;

use clap::{Parser, Subcommand};

/// Rivet: CI/CD pipelines in Lua, run in a hardened sandbox.
#[derive(Debug, Parser)]
#[command(name = "rivet", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a pipeline definition and list every problem in it.
    Lint(lint::LintArgs),
    /// Run a pipeline on this machine, with no server.
    Run(run::RunArgs),
}

/// Runs the command and returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    let result = match cli.command {
        Command::Lint(args) => lint::lint(args),
        Command::Run(args) => run::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    }
}
