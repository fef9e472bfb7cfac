//! The `rivet` binary: parse arguments, initialise tracing, run the command.

use clap::Parser;

fn main() {
    // A `rivet` process started as a sandbox worker runs one job and exits here. This must come
    // before anything starts a thread.
    rivet_sandbox::worker::maybe_run_worker();
    let cli = rivet_cli::Cli::parse();
    rivet_telemetry::init("rivet", "warn");
    let code = rivet_cli::run(cli);
    rivet_cli::exit(code);
}
