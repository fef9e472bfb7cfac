//! The runner's configuration: flags and `RIVET_*` environment variables in one place.

use clap::Parser;
use std::path::PathBuf;

/// A Rivet runner: consumes the class queues it can serve and runs jobs in sandbox workers.
#[derive(Debug, Clone, Parser)]
#[command(name = "rivet-runner", version, about)]
pub struct Config {
    /// RabbitMQ URL.
    #[arg(
        long,
        env = "RIVET_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,
    /// Redis URL.
    #[arg(
        long,
        env = "RIVET_REDIS_URL",
        default_value = "redis://127.0.0.1:6379/"
    )]
    pub redis_url: String,
    /// Prefix of every exchange, queue and Redis key; must match the orchestrator's.
    #[arg(long, env = "RIVET_NAMESPACE", default_value = "rivet")]
    pub namespace: String,
    /// The orchestrator's URL: the runner registers there at start.
    #[arg(long, env = "RIVET_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// This runner's token, from `rivet runner register NAME` (an admin command). It names the
    /// runner's registration, which gives the runner its id and its labels. Prefer the
    /// environment variable: command lines are visible to other users of the machine.
    #[arg(long, env = "RIVET_RUNNER_TOKEN", hide_env_values = true)]
    pub token: Option<RunnerToken>,
    /// Jobs run at once.
    #[arg(long, env = "RIVET_SLOTS", default_value_t = 2)]
    pub slots: u32,
    /// No longer accepted: labels are assigned by an admin to the runner's registration
    /// (`rivet runner register NAME --label KEY=VALUE`). Set, the runner refuses to start
    /// rather than silently ignore it.
    #[arg(
        long = "label",
        env = "RIVET_LABELS",
        value_delimiter = ',',
        hide = true
    )]
    pub labels: Vec<String>,
    /// Directory of Lua plugins (added to the built-in ones).
    #[arg(long, env = "RIVET_PLUGIN_DIR")]
    pub plugin_dir: Option<PathBuf>,
    /// Sandbox policy file (TOML); default: the safe defaults.
    #[arg(long, env = "RIVET_POLICY")]
    pub policy: Option<PathBuf>,
    /// Where job workspaces are created (one directory per attempt, removed afterwards). Not
    /// under /tmp: jobs see a private /tmp.
    #[arg(
        long,
        env = "RIVET_WORK_DIR",
        default_value = "/var/lib/rivet-runner/work"
    )]
    pub work_dir: PathBuf,
    /// Executable for sandbox workers (default: this executable).
    #[arg(long, env = "RIVET_WORKER_PROGRAM")]
    pub worker_program: Option<PathBuf>,
    /// Container engine API (`unix:///run/podman/podman.sock`, Podman or Docker). When it
    /// answers at start, the runner advertises `container` and `container.podman` or
    /// `container.docker`; unset or unreachable, it advertises neither.
    #[arg(long, env = "RIVET_CONTAINER_HOST")]
    pub container_host: Option<String>,
    /// On SIGTERM/SIGINT or a drain order: how long running jobs may go on before they are
    /// cancelled (`30s`, `10m`).
    #[arg(long, env = "RIVET_DRAIN_GRACE", default_value = "5m", value_parser = parse_duration)]
    pub drain_grace: std::time::Duration,
}

/// A runner token: a credential, so its `Debug` shows nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub struct RunnerToken(pub String);

impl std::fmt::Debug for RunnerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RunnerToken(***)")
    }
}

impl std::str::FromStr for RunnerToken {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.trim().to_owned()))
    }
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    rivet_core::duration::parse_duration(text).map_err(|e| e.to_string())
}
