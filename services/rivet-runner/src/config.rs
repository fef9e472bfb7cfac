//! The runner's configuration: flags and `RIVET_*` environment variables in one place.

use clap::Parser;
use std::collections::BTreeMap;
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
    /// This runner's id (default: host name, process id and a random suffix).
    #[arg(long, env = "RIVET_RUNNER_ID")]
    pub id: Option<String>,
    /// Jobs run at once.
    #[arg(long, env = "RIVET_SLOTS", default_value_t = 2)]
    pub slots: u32,
    /// A label, as KEY=VALUE (repeatable; in the environment, comma-separated).
    #[arg(long = "label", env = "RIVET_LABELS", value_delimiter = ',', value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
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

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("label `{s}` is not KEY=VALUE"))?;
    let ok = |p: &str| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    };
    if !ok(k) || !ok(v) {
        return Err(format!(
            "label `{s}`: keys and values are letters, digits, `_`, `-` and `.`"
        ));
    }
    Ok((k.to_owned(), v.to_owned()))
}

impl Config {
    /// Labels as a map.
    pub fn label_map(&self) -> BTreeMap<String, String> {
        self.labels.iter().cloned().collect()
    }
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    rivet_core::duration::parse_duration(text).map_err(|e| e.to_string())
}
