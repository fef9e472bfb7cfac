//! The `rivet-orchestrator` binary: parse configuration, initialise tracing, run.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    // The orchestrator checks pushed definitions in sandbox workers started from this same
    // executable; a process started as a worker runs one lint and exits here.
    rivet_sandbox::worker::maybe_run_worker();
    let cli = rivet_orchestrator::Cli::parse();
    rivet_telemetry::init("rivet-orchestrator", "info");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(rivet_orchestrator::main(cli))
}
