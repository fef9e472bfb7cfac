//! Tracing initialisation shared by Rivet's binaries: `RUST_LOG` filtering (default `warn` for
//! the CLI, `info` for services), human output on a terminal and JSON lines otherwise.
//!
//! Depends on nothing of Rivet's; every binary may depend on it.

use std::io::IsTerminal;
use tracing_subscriber::{fmt, EnvFilter};

/// Installs the global subscriber for `service`, writing to stderr. `default_level` applies when
/// `RUST_LOG` is unset. Calling it twice is harmless.
pub fn init(service: &'static str, default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = if std::io::stderr().is_terminal() {
        builder.with_target(false).try_init()
    } else {
        builder.json().flatten_event(true).try_init()
    };
    if result.is_ok() {
        tracing::debug!(service, "Tracing initialised.");
    }
}
