//! The `rivet` command line.
//!
//! `rivet lint` and `rivet run FILE` work on one machine with no server: they start sandbox
//! worker processes from this same executable (see `rivet_sandbox::worker`). The remote
//! commands (`rivet pipeline`, `rivet run NAME`, `rivet job`, `rivet runner`, `rivet queue`, `rivet project`, `rivet token`)
//! talk to an orchestrator through `rivet-client` (module `remote`).
//!
//! Depends on shared crates only (core, sandbox, protocol, client); never on a service crate
//! (its end-to-end tests start an orchestrator, as a dev-dependency).

mod interrupt;
mod lint;
mod plugin;
mod prompt;
mod remote;
mod render;
mod run;
mod setup;
mod workspace;

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
    /// Run a pipeline: a local FILE on this machine with no server, or a pipeline NAME on the
    /// orchestrator.
    Run(run::RunArgs),
    /// Pipelines on the orchestrator: push a definition, list, show.
    #[command(subcommand)]
    Pipeline(remote::pipeline::PipelineCommand),
    /// Jobs on the orchestrator: list, show, logs, cancel, retry.
    #[command(subcommand)]
    Job(remote::job::JobCommand),
    /// The orchestrator's runners.
    #[command(subcommand)]
    Runner(remote::fleet::RunnerCommand),
    /// The orchestrator's class queues.
    #[command(subcommand)]
    Queue(remote::fleet::QueueCommand),
    /// Projects on the orchestrator: create, list. Needs an admin token.
    #[command(subcommand)]
    Project(remote::access::ProjectCommand),
    /// API tokens: create one scoped to a project, list, revoke. Needs an admin token.
    #[command(subcommand)]
    Token(remote::access::TokenCommand),
    /// Plugins: run a plugin's own tests in the sandbox.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
}

/// Exits with `code`, or, when a signal cancelled a local job, by that signal (after the
/// command cleaned up), as a shell expects of an interrupted program.
pub fn exit(code: i32) -> ! {
    interrupt::end_by_signal();
    std::process::exit(code)
}

/// Runs the command and returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    let result = match cli.command {
        Command::Lint(args) => lint::lint(args),
        Command::Run(args) => run::run(args),
        Command::Pipeline(cmd) => remote::pipeline::run(cmd),
        Command::Job(cmd) => remote::job::run(cmd),
        Command::Runner(cmd) => remote::fleet::runner(cmd),
        Command::Queue(cmd) => remote::fleet::queue(cmd),
        Command::Project(cmd) => remote::access::project(cmd),
        Command::Token(cmd) => remote::access::token(cmd),
        Command::Plugin(cmd) => plugin::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", remote::describe(&e));
            2
        }
    }
}
