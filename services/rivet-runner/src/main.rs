//! The `rivet-runner` binary: parse configuration, initialise tracing, run until SIGINT/SIGTERM.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    // Jobs run in sandbox workers started from this same executable.
    rivet_sandbox::worker::maybe_run_worker();
    let config = rivet_runner::Config::parse();
    rivet_telemetry::init("rivet-runner", "info");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let signal = shutdown.clone();
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("installing a SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            signal.cancel();
        });
        rivet_runner::run(config, shutdown).await
    })
}
