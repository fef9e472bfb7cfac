//! The orchestrator's configuration: flags and `RIVET_*` environment variables in one place.

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Rivet's orchestrator: HTTP API, dashboard, PostgreSQL state, jobs over RabbitMQ.
#[derive(Debug, Parser)]
#[command(name = "rivet-orchestrator", version, about)]
pub struct Cli {
    /// Connections shared by every subcommand.
    #[command(flatten)]
    pub config: Config,
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply database migrations and serve the API (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
}

/// Configuration.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "RIVET_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// PostgreSQL URL.
    #[arg(
        long,
        env = "RIVET_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/rivet"
    )]
    pub database_url: String,
    /// Redis URL.
    #[arg(
        long,
        env = "RIVET_REDIS_URL",
        default_value = "redis://127.0.0.1:6379/"
    )]
    pub redis_url: String,
    /// RabbitMQ URL.
    #[arg(
        long,
        env = "RIVET_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,
    /// `managed`: every runner gets a RabbitMQ user of its own, made through RabbitMQ's
    /// management API, that may read only the class queues its labels cover and whose reports
    /// RabbitMQ signs with its name (API-03). `shared`: runners use the user of their own broker
    /// URL, and any of them can read any class queue; for a broker without the management plugin.
    #[arg(
        long,
        env = "RIVET_BROKER_USERS",
        value_enum,
        default_value = "managed"
    )]
    pub broker_users: RunnerUsersMode,
    /// RabbitMQ's management API with a user holding the administrator tag
    /// (`http://user:password@host:15672/`); default: the RabbitMQ URL's user and host, port 15672.
    #[arg(long, env = "RIVET_BROKER_MANAGEMENT_URL", hide_env_values = true)]
    pub broker_management_url: Option<String>,
    /// `managed`: every runner gets a Redis user of its own (an ACL user made by the
    /// orchestrator, which needs `ACL` rights: the default user) that may touch only leases, its
    /// own presence record, and read fences and the class table. `shared`: runners use the user
    /// of their own Redis URL (Redis older than 6, or no ACL rights).
    #[arg(long, env = "RIVET_REDIS_USERS", value_enum, default_value = "managed")]
    pub redis_users: RunnerUsersMode,
    /// Prefix of every exchange, queue and Redis key (several installations can share a broker).
    #[arg(long, env = "RIVET_NAMESPACE", default_value = "rivet")]
    pub namespace: String,
    /// The admin token to create at first start, when no token exists yet. Without it a random
    /// one is generated and printed once.
    #[arg(long, env = "RIVET_BOOTSTRAP_TOKEN", hide_env_values = true)]
    pub bootstrap_token: Option<String>,
    /// Directory of plugins that pushed pipelines may require (the built-in ones are always known).
    #[arg(long, env = "RIVET_PLUGIN_DIR")]
    pub plugin_dir: Option<PathBuf>,
    /// Executable used for definition checks in sandbox workers (default: this executable).
    #[arg(long, env = "RIVET_WORKER_PROGRAM")]
    pub worker_program: Option<PathBuf>,
    /// How long a job may wait for a runner when its pipeline sets no `queue_timeout`
    /// (`30s`, `10m`, `24h`).
    #[arg(long, env = "RIVET_QUEUE_TIMEOUT", default_value = "24h", value_parser = parse_duration)]
    pub queue_timeout: std::time::Duration,
}

/// Whose user a runner connects to RabbitMQ (or Redis) with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RunnerUsersMode {
    /// One user per runner session, made by the orchestrator.
    Managed,
    /// The user in each runner's own URL.
    Shared,
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    match rivet_core::duration::parse_duration(text) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("must be positive".into()),
        Err(e) => Err(e.to_string()),
    }
}
