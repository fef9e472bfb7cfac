//! A Rivet runner: stateless and horizontally scaled. It registers with the orchestrator using
//! its runner token (which gives it its id, the labels an admin assigned and a session key that
//! signs its `Started` reports), advertises its capabilities and those labels in Redis, consumes every class queue whose requirement set it covers (learning new classes
//! from announcements), takes a lease per job, acknowledges at once, renews the lease while the
//! job runs in a sandbox worker process, and streams stage events, log batches and the result
//! back over the job's `reply_to` queue.
//!
//! - [`capabilities`]: what this runner can do.
//! - [`consume`]: class subscriptions, paused while every slot is busy (prefetch = free slots).
//! - [`job`]: one attempt: lease, worker, reports.
//! - [`presence`]: the Redis presence record.
//! - [`register`]: joining the orchestrator with the runner token.
//!
//! Depends on shared crates only; never on the orchestrator.

pub mod capabilities;
mod config;
mod consume;
mod job;
mod presence;
mod register;

pub use config::{Config, RunnerToken};

use anyhow::Context;
use rivet_amqp::Broker;
use rivet_core::Policy;
use rivet_protocol::redis_keys::Keys;
use rivet_protocol::topology::Topology;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What every job of this runner shares.
pub struct Runner {
    /// This runner's id: its registration's name, as the orchestrator said.
    pub id: String,
    /// The key of this runner's session, from its registration: signs `Started` reports.
    pub session_key: String,
    /// RabbitMQ.
    pub broker: Broker,
    /// Redis.
    pub redis: redis::aio::ConnectionManager,
    /// Redis key names.
    pub keys: Keys,
    /// The sandbox policy.
    pub policy: Policy,
    /// Allowed programs, resolved once at start.
    pub binaries: BTreeMap<String, PathBuf>,
    /// Plugin sources.
    pub plugins: BTreeMap<String, String>,
    /// The plugins each plugin requires (a job gets the sources of the plugins it names and
    /// of what they need, [`capabilities::for_job`]).
    pub plugin_needs: BTreeMap<String, Vec<String>>,
    /// Capabilities advertised.
    pub capabilities: Vec<String>,
    /// Labels advertised and consumed by: the ones an admin assigned to its registration.
    pub labels: BTreeMap<String, String>,
    /// Slots.
    pub slots: u32,
    /// Where workspaces are made.
    pub work_dir: PathBuf,
    /// How to start workers.
    pub worker: rivet_sandbox::WorkerOptions,
    /// Jobs running now, by job id and attempt.
    pub running: Mutex<BTreeMap<(uuid::Uuid, u32), Arc<RunningJob>>>,
    /// Set once the runner stops taking jobs (shown in its presence record).
    pub draining: AtomicBool,
    /// How long running jobs may go on after a drain began before they are cancelled.
    pub drain_grace: Duration,
    /// When it started (Unix ms), for its presence record.
    pub started_at_ms: i64,
}

/// A job running on this runner: the switch that kills its worker, and why.
#[derive(Debug, Default)]
pub struct RunningJob {
    /// Set to kill the worker's process group (polled by the worker's parent every 50 ms).
    pub cancel: Arc<AtomicBool>,
    reason: Mutex<Option<String>>,
    lost: AtomicBool,
}

impl RunningJob {
    /// Kills the job's worker; `reason` goes to the job's log.
    pub fn cancel(&self, reason: String) {
        self.reason
            .lock()
            .expect("the reason's lock is never poisoned")
            .get_or_insert(reason);
        self.cancel.store(true, Ordering::SeqCst);
    }

    /// Kills the job's worker because the runner no longer holds its lease: it ends `lost`.
    pub fn lose(&self, reason: String) {
        self.lost.store(true, Ordering::SeqCst);
        self.cancel(reason);
    }

    /// Whether [`RunningJob::lose`] killed it.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// Why it was cancelled, if it was.
    pub fn reason(&self) -> Option<String> {
        self.reason
            .lock()
            .expect("the reason's lock is never poisoned")
            .clone()
    }
}

/// Backoff for retrying infrastructure calls: 100 ms doubling to 5 s, with jitter, forever.
pub fn backoff() -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("id", &self.id)
            .field("capabilities", &self.capabilities)
            .finish_non_exhaustive()
    }
}

impl Runner {
    /// Everything this runner satisfies: capabilities and `label:k=v`.
    pub fn satisfiable(&self) -> std::collections::BTreeSet<String> {
        let mut out: std::collections::BTreeSet<String> =
            self.capabilities.iter().cloned().collect();
        for (k, v) in &self.labels {
            out.insert(format!("label:{k}={v}"));
        }
        out
    }

    /// Whether this runner covers a class's requirement set.
    pub fn covers(&self, requires: &[String]) -> bool {
        let have = self.satisfiable();
        requires.iter().all(|r| have.contains(r))
    }
}

/// Connects, advertises itself and runs jobs until `shutdown` (SIGINT/SIGTERM) or a drain order;
/// then drains: stops consuming, lets running jobs finish within the drain grace period (then
/// cancels them, saying why), flushes their reports and removes its presence.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut policy =
        rivet_sandbox::read_policy(config.policy.as_deref()).map_err(anyhow::Error::msg)?;
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    match (root, policy.sandbox.job_uid) {
        // Jobs of a root runner run as `nobody` on the host, not as root (docs/security.md).
        (true, None) => policy.sandbox.job_uid = Some(JOB_UID),
        // Only root may map another uid: jobs run as this runner's uid.
        (false, Some(uid)) => {
            tracing::warn!(job_uid = uid, "sandbox.job_uid applies only to a runner running as root; jobs run as the runner's uid.");
            policy.sandbox.job_uid = None;
        }
        _ => {}
    }
    if config.slots == 0 {
        anyhow::bail!("--slots must be at least 1");
    }
    if !Topology::is_namespace(&config.namespace) {
        anyhow::bail!(
            "--namespace `{}`: use 1-64 letters, digits, `-`, `_` and `.`",
            config.namespace
        );
    }
    if !config.labels.is_empty() {
        anyhow::bail!(
            "policy violation [runner.labels]: a runner cannot declare its labels (--label, \
             RIVET_LABELS); an admin assigns them to its registration: \
             `rivet runner register NAME --label KEY=VALUE`"
        );
    }
    let Some(token) = config.token.clone().filter(|t| !t.0.is_empty()) else {
        anyhow::bail!(
            "policy violation [runner.identity]: no runner token: set RIVET_RUNNER_TOKEN or pass \
             --token (an admin creates one with `rivet runner register NAME`)"
        );
    };
    std::fs::create_dir_all(&config.work_dir)
        .with_context(|| format!("creating the work directory {}", config.work_dir.display()))?;
    if policy.sandbox.job_uid.is_some() {
        // A job's uid must reach its workspace inside; listing the others stays the runner's.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&config.work_dir, std::fs::Permissions::from_mode(0o711))
            .with_context(|| format!("opening {} to jobs' uid", config.work_dir.display()))?;
    }
    let binaries = rivet_sandbox::job::resolve_binaries(&policy.process);
    let plugins =
        rivet_sandbox::plugins::catalog(config.plugin_dir.as_deref()).context("reading plugins")?;
    // What the machine offers, as far as it is known before the runner has an identity (the
    // container engine is probed without one; plugins that need a label are added once the
    // labels are known).
    let probed: Vec<&'static str> = match &config.container_host {
        Some(host) => probe_engine(host.clone()).await,
        None => Vec::new(),
    };
    let detected = capabilities::detect(
        &plugins,
        &binaries,
        &BTreeMap::new(),
        &policy.limits,
        &probed,
    )
    .capabilities;

    // Registering writes the first presence record (10 s to live): everything slow is done
    // before it, except connecting the broker (with the user the registration gives) and the
    // container engine, which need the runner's identity.
    let session = register::register(&config.url, &token, &detected, config.slots).await?;
    let amqp_url = match &session.broker {
        Some(user) => {
            rivet_amqp::with_credentials(&config.amqp_url, &user.username, &user.password)
                .context("the RabbitMQ URL")?
        }
        None => config.amqp_url.clone(),
    };
    let mut redis_info = redis::IntoConnectionInfo::into_connection_info(config.redis_url.as_str())
        .context("parsing the Redis URL")?;
    if let Some(user) = &session.redis {
        redis_info.redis.username = Some(user.username.clone());
        redis_info.redis.password = Some(user.password.clone());
    }
    let redis = match redis::aio::ConnectionManager::new_with_config(
        redis::Client::open(redis_info).context("the Redis URL")?,
        redis_config(),
    )
    .await
    {
        Ok(redis) => redis,
        // The user the orchestrator just made is gone or has another password already.
        Err(e) if session.redis.is_some() && e.kind() == redis::ErrorKind::AuthenticationFailed => {
            return Err(consume::shut_out_error("Redis", &session.runner_id))
        }
        Err(e) => return Err(anyhow::Error::new(e).context("connecting to Redis")),
    };
    // The orchestrator declared the topology; a runner's broker user may not.
    let broker = match Broker::connect_client(
        &amqp_url,
        Topology::new(&config.namespace),
        Duration::from_secs(30),
    )
    .await
    {
        Ok(broker) => broker,
        // The user the orchestrator just made is gone or has another password already.
        Err(rivet_amqp::AmqpError::Refused { .. }) if session.broker.is_some() => {
            return Err(consume::shut_out_error("the broker", &session.runner_id))
        }
        Err(e) => return Err(anyhow::Error::new(e).context("connecting to RabbitMQ")),
    };
    let (id, labels) = (session.runner_id.clone(), session.labels.clone());
    let engine = match &config.container_host {
        Some(host) => connect_engine(host.clone(), id.clone()).await,
        None => None,
    };
    let engine_caps: Vec<&'static str> = engine
        .as_ref()
        .map(|e| e.capabilities().to_vec())
        .unwrap_or_default();
    let capabilities::Detected {
        capabilities,
        notes,
        needs: plugin_needs,
    } = capabilities::detect(&plugins, &binaries, &labels, &policy.limits, &engine_caps);
    for note in notes {
        tracing::warn!(note = %note, "Capability not advertised.");
    }
    let program = match &config.worker_program {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("locating the runner executable")?,
    };
    // Created once: the runner-wide HTTP limits hold across all of this runner's jobs.
    let mut host = rivet_sandbox::HostServices::new(&policy);
    if let Some(engine) = engine {
        host = host.with_container_engine(engine);
    }
    let host = Arc::new(host);
    let runner = Arc::new(Runner {
        id,
        session_key: session.session_key,
        broker,
        redis,
        keys: Keys::new(&config.namespace),
        policy,
        binaries,
        plugins,
        plugin_needs,
        capabilities,
        labels,
        slots: config.slots,
        work_dir: config.work_dir.clone(),
        worker: rivet_sandbox::WorkerOptions {
            host,
            ..rivet_sandbox::WorkerOptions::new(program)
        },
        running: Mutex::new(BTreeMap::new()),
        draining: AtomicBool::new(false),
        drain_grace: config.drain_grace,
        started_at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0),
    });
    tracing::info!(runner = %runner.id, capabilities = ?runner.capabilities, labels = ?runner.labels, slots = runner.slots, "Runner starting.");
    let stop_presence = CancellationToken::new();
    let presence = tokio::spawn(presence::run(runner.clone(), stop_presence.clone()));
    // A drain begins on `shutdown` (signals) or on a drain order (which cancels only the child).
    let result = consume::run(runner.clone(), shutdown.child_token()).await;
    stop_presence.cancel();
    if runner.broker.login_refused() {
        // Shut out (revoked): removing the presence record would only wait on Redis retries;
        // it expires by itself.
        presence.abort();
    }
    let _ = presence.await;
    runner.broker.close().await;
    result
}

/// The host uid of a root runner's jobs by default: `nobody`.
pub const JOB_UID: u32 = 65534;

/// How the runner's Redis connection behaves: no command or connection attempt waits more than
/// 5 s (without a bound, a command sent while Redis restarts could hang the consume loop for
/// minutes), and reconnection retries back off up to 2 s.
fn redis_config() -> redis::aio::ConnectionManagerConfig {
    redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Duration::from_secs(5))
        .set_response_timeout(Duration::from_secs(5))
        .set_max_delay(2_000)
}

/// What the container engine at `host` offers (`container`, `container.podman`), asked before
/// the runner knows its id; nothing when it does not answer.
async fn probe_engine(host: String) -> Vec<&'static str> {
    let probed = tokio::task::spawn_blocking(move || {
        rivet_container::Engine::connect(&host, "probe").map(|e| e.capabilities().to_vec())
    })
    .await;
    match probed {
        Ok(Ok(caps)) => caps,
        _ => Vec::new(),
    }
}

/// Connects to the container engine and removes what an earlier run of this runner left behind
/// (containers labelled with its id). `None`, with a warning, when the engine does not answer:
/// the runner then does not advertise `container`.
async fn connect_engine(host: String, id: String) -> Option<Arc<rivet_container::Engine>> {
    let connected = tokio::task::spawn_blocking(move || {
        let engine = rivet_container::Engine::connect(&host, &id)?;
        let swept = engine.sweep_runner()?;
        Ok::<_, rivet_container::ContainerError>((engine, swept))
    })
    .await;
    match connected {
        Ok(Ok((engine, swept))) => {
            tracing::info!(host = %engine.host(), version = %engine.version(), kind = ?engine.kind(), swept, "Container engine connected.");
            Some(engine)
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e.describe(), "Container engine unavailable; `container` is not advertised.");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "Connecting to the container engine failed.");
            None
        }
    }
}
