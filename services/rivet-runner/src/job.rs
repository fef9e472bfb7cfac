//! One attempt of a job: the lease, the workspace, the sandbox worker, and the reports.

use crate::{Runner, RunningJob};
use backon::Retryable;
use rivet_amqp::Incoming;
use rivet_core::JobOutcome;
use rivet_protocol::messages::{JobDispatch, LogLine, ReportBody, RunnerReport};
use rivet_protocol::redis_keys::{lease_value, LEASE_RENEW_MS, LEASE_TTL_MS};
use rivet_protocol::SCHEMA_VERSION;
use rivet_sandbox::events::{Event, Level, Source};
use rivet_sandbox::{JobRequest, Mode};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Log lines per batch.
const BATCH_LINES: usize = 100;
/// Longest a log line waits for its batch.
const BATCH_WAIT: Duration = Duration::from_millis(200);

/// Whether the fence (ARGV[4]) forbids attempt ARGV[2]: `-N` or `0` (the job is over) or a
/// later attempt.
/// A missing fence (Redis lost it) forbids nothing: PostgreSQL still fences what gets stored.
/// The fence's name is an argument, not a declared key: Redis checks a script's declared keys
/// as written to, and a runner's Redis user may only read fences; the `GET` inside is checked
/// as a read.
const FENCED: &str = "local f = tonumber(redis.call('GET', ARGV[4]) or '') \
    if f and (f <= 0 or f > tonumber(ARGV[2])) then return 'stale' end ";

/// Takes the lease (KEYS[1]) for ARGV[1] = `runner:attempt:token` with TTL ARGV[3] ms, unless
/// fenced. The token is new for every claim, so a second delivery of a message this runner is
/// already running finds the lease `held` too.
fn claim_script() -> String {
    format!(
        "{FENCED} local cur = redis.call('GET', KEYS[1]) \
         if cur == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[3]) return 'ok' end \
         if cur then return 'held' end \
         redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3]) return 'ok'"
    )
}

/// Extends our lease; writes it again when it vanished (Redis lost its data) unless the fence
/// says the attempt is over; `held`/`stale` when it is no longer ours.
fn renew_script() -> String {
    format!(
        "{FENCED} local cur = redis.call('GET', KEYS[1]) \
         if cur == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[3]) return 'ok' end \
         if cur then return 'held' end \
         redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3]) return 'rewritten'"
    )
}

/// What taking a job's lease found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The lease is ours: run the job; every report carries `token`.
    Ours {
        /// The attempt token, in the lease and in every report of the attempt.
        token: String,
    },
    /// Another runner (or attempt) holds the lease: a duplicate delivery, or a runner that died
    /// holding it. Put the message back later; once the lease expires it can run.
    Held,
    /// The fence says this attempt must not run (the job is over, or a later attempt exists).
    Stale,
}

async fn lease_script(
    runner: &Runner,
    script: &str,
    job_id: uuid::Uuid,
    attempt: u32,
    token: &str,
) -> redis::RedisResult<String> {
    let mut conn = runner.redis.clone();
    redis::Script::new(script)
        .key(runner.keys.lease(job_id))
        .arg(lease_value(&runner.id, attempt, token))
        .arg(attempt)
        .arg(LEASE_TTL_MS)
        .arg(runner.keys.fence(job_id))
        .invoke_async(&mut conn)
        .await
}

/// A new attempt token: 128 bits from the operating system's random source, in hex.
pub fn attempt_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|e| anyhow::anyhow!("drawing an attempt token from the OS random source: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Takes the job's lease with a new attempt token, if its fence allows this attempt.
pub async fn claim(runner: &Runner, job: &JobDispatch) -> anyhow::Result<Claim> {
    let token = attempt_token()?;
    Ok(
        match lease_script(runner, &claim_script(), job.job_id, job.attempt, &token)
            .await?
            .as_str()
        {
            "ok" => Claim::Ours { token },
            "held" => Claim::Held,
            _ => Claim::Stale,
        },
    )
}

fn level_word(l: Level) -> &'static str {
    match l {
        Level::Debug => "debug",
        Level::Info => "info",
        Level::Warn => "warn",
        Level::Error => "error",
    }
}

fn source_word(s: Source) -> &'static str {
    match s {
        Source::Script => "script",
        Source::Stdout => "stdout",
        Source::Stderr => "stderr",
        Source::System => "system",
    }
}

/// Publishes reports of one attempt in order. `Started`, stage events and log lines are
/// buffered and sent together, at 100 lines or 200 ms after the first buffered item, and with
/// the result: a short job is one report.
struct Reporter<'a> {
    runner: &'a Runner,
    job: &'a JobDispatch,
    /// The attempt token (in the lease); every report carries it.
    token: String,
    reply_to: String,
    pending: Vec<ReportBody>,
    lines: usize,
    oldest: Option<Instant>,
    /// The sequence number after the worker's last log line.
    next_seq: u64,
    /// When the attempt started here.
    started: Instant,
    /// The job's delivery, acknowledged once the first report (which carries `Started`) is
    /// confirmed.
    delivery: Option<Incoming<JobDispatch>>,
}

impl Reporter<'_> {
    /// Publishes a report, retrying (with backoff, for as long as it takes) until the broker
    /// confirms it: a report is never dropped, unless the broker no longer lets this runner in
    /// (its registration was revoked: no report of it would be accepted). One published twice
    /// after an ambiguous failure is applied once (the orchestrator is idempotent).
    async fn send(&self, body: ReportBody) {
        // Every report is signed with this runner's session: `Started` binds the attempt token
        // to it, and the others cover their body too (the token alone sits in the Redis lease).
        let session_mac = rivet_protocol::identity::session_mac(
            &self.runner.session_key,
            self.job.job_id,
            self.job.attempt,
            &self.runner.id,
            &self.token,
            &body,
        );
        let report = RunnerReport {
            schema: SCHEMA_VERSION,
            job_id: self.job.job_id,
            attempt: self.job.attempt,
            runner_id: self.runner.id.clone(),
            token: self.token.clone(),
            session_mac,
            body,
        };
        let publish = || async {
            self.runner
                .broker
                .publish_report(&self.reply_to, &report)
                .await
        };
        let _ = publish
            .retry(crate::backoff())
            .sleep(tokio::time::sleep)
            .when(|_| !self.runner.broker.login_refused())
            .notify(|e, d| {
                tracing::warn!(job_id = %self.job.job_id, error = %format!("{e:#}"), retry_in_ms = d.as_millis() as u64, "Publishing a report failed; retrying.");
            })
            .await;
    }

    /// Adds a runner-side line to the job's log (after the worker's last line).
    fn system_line(&mut self, line: String) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let line = LogLine {
            seq,
            at_ms: self.started.elapsed().as_millis() as u64,
            stage: None,
            level: "warn".into(),
            source: "system".into(),
            line,
        };
        self.push(ReportBody::Logs { lines: vec![line] });
    }

    fn push(&mut self, body: ReportBody) {
        self.oldest.get_or_insert_with(Instant::now);
        self.pending.push(body);
    }

    async fn flush(&mut self) {
        let mut bodies = std::mem::take(&mut self.pending);
        if let Some(ReportBody::Started { ago_ms }) = bodies.first_mut() {
            *ago_ms = self.started.elapsed().as_millis() as u64;
        }
        self.lines = 0;
        self.oldest = None;
        match bodies.len() {
            0 => {}
            1 => self.send(bodies.remove(0)).await,
            _ => self.send(ReportBody::Batch { bodies }).await,
        }
        // The job needs the message only: the delivery (and the consumer channel it keeps
        // open) is released once `Started` is confirmed, not when the job ends.
        if let Some(delivery) = self.delivery.take() {
            if let Err(e) = delivery.ack().await {
                tracing::warn!(job_id = %self.job.job_id, error = %e, "Acknowledging a job failed; its lease stops duplicates.");
            }
        }
    }

    async fn event(&mut self, ev: Event) {
        match ev {
            Event::Log {
                seq,
                at_ms,
                stage,
                level,
                source,
                line,
            } => {
                self.next_seq = seq + 1;
                let line = LogLine {
                    seq,
                    at_ms,
                    stage,
                    level: level_word(level).into(),
                    source: source_word(source).into(),
                    line,
                };
                match self.pending.last_mut() {
                    Some(ReportBody::Logs { lines }) => lines.push(line),
                    _ => self.push(ReportBody::Logs { lines: vec![line] }),
                }
                self.lines += 1;
                if self.lines >= BATCH_LINES {
                    self.flush().await;
                }
            }
            Event::StageStarted {
                index,
                name,
                timeout_ms,
            } => {
                self.push(ReportBody::StageStarted {
                    index: index as u32,
                    name,
                    timeout_ms,
                });
            }
            Event::StageFinished {
                index,
                name,
                outcome,
                duration_ms,
                error,
            } => {
                self.push(ReportBody::StageFinished {
                    index: index as u32,
                    name,
                    outcome,
                    duration_ms,
                    error,
                });
            }
            // The worker's own `Finished` is reported by `run` from the report, which also covers
            // workers that died without one.
            Event::Definition { .. }
            | Event::Problems { .. }
            | Event::InputErrors { .. }
            | Event::Finished { .. }
            | Event::Granted { .. }
            | Event::Call { .. } => {}
        }
    }
}

/// Runs one attempt to its end and reports it. Never fails: every trouble becomes the outcome.
///
/// `Started` goes with the first report batch (within 200 ms, or with the result of a shorter
/// job), and the delivery is acknowledged only once that is confirmed by the broker: a runner
/// that dies before that leaves the message to be delivered again (its lease expires, then
/// another runner takes it), and one that dies after it leaves a running attempt whose lease
/// the orchestrator sees vanish.
///
/// `token` is the attempt token [`claim`] put into the lease.
pub async fn run(runner: &Arc<Runner>, delivery: Incoming<JobDispatch>, token: String) {
    let job = delivery.message.clone();
    let reply_to = delivery
        .reply_to
        .clone()
        .unwrap_or_else(|| runner.broker.topology().reports_queue());
    let key = (job.job_id, job.attempt);
    let entry = Arc::new(RunningJob::default());
    runner
        .running
        .lock()
        .expect("the running list's lock is never poisoned")
        .insert(key, entry.clone());
    tracing::info!(job_id = %job.job_id, attempt = job.attempt, pipeline = %job.pipeline, "Job started.");
    let mut reporter = Reporter {
        runner,
        job: &job,
        token: token.clone(),
        reply_to,
        pending: Vec::new(),
        lines: 0,
        oldest: None,
        next_seq: 0,
        started: Instant::now(),
        delivery: None,
    };
    // Its `ago_ms` is set when it is sent (`flush`).
    reporter.push(ReportBody::Started { ago_ms: 0 });
    // The lease is renewed from the claim on: publishing `Started` may take longer than the
    // lease lives while the broker is away.
    let renew = tokio::spawn(renew_lease(
        runner.clone(),
        job.job_id,
        job.attempt,
        token.clone(),
        entry.clone(),
    ));
    // A runner that dies before `Started` is confirmed takes its worker with it (parent-death
    // signal) and the unacknowledged message is delivered again.
    let workspace = runner
        .work_dir
        .join(format!("{}-{}", job.job_id, job.attempt));
    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    // The job's uid (a root runner's jobs are not root; set only for a runner running as root,
    // `run`) owns its workspace.
    let created = fresh_workspace(&workspace, runner.policy.sandbox.job_uid).await;
    let worker = match created {
        Err(e) => Err(JobOutcome::Crashed {
            reason: format!("creating the workspace {}: {e}", workspace.display()),
        }),
        Ok(()) => {
            let mut policy = runner.policy.clone();
            if let Some(ms) = job.timeout_ms {
                policy.limits.job_timeout =
                    policy.limits.job_timeout.min(Duration::from_millis(ms));
            }
            let request = JobRequest {
                mode: Mode::Run,
                file_name: job.file_name.clone(),
                source: job.source.clone(),
                inputs: job.inputs.clone(),
                secrets: BTreeMap::new(),
                metadata: [
                    ("RIVET_JOB_ID".to_owned(), job.job_id.to_string()),
                    ("RIVET_ATTEMPT".to_owned(), job.attempt.to_string()),
                    ("RIVET_RUNNER_ID".to_owned(), runner.id.clone()),
                    ("RIVET_PIPELINE".to_owned(), job.pipeline.clone()),
                ]
                .into_iter()
                .collect(),
                workspace: workspace.clone(),
                policy,
                binaries: runner.binaries.clone(),
                plugins: crate::capabilities::for_job(
                    &job.requires,
                    &runner.plugins,
                    &runner.plugin_needs,
                ),
            };
            let mut options = runner.worker.clone();
            options.cancel = Some(entry.cancel.clone());
            Ok(tokio::task::spawn_blocking(move || {
                rivet_sandbox::run_worker(&request, &options, |ev| {
                    let _ = tx.send(ev.clone());
                })
            }))
        }
    };
    reporter.delivery = Some(delivery);
    let outcome = match worker {
        Err(outcome) => outcome,
        Ok(worker) => {
            loop {
                let wait = reporter
                    .oldest
                    .map(|t| BATCH_WAIT.saturating_sub(t.elapsed()))
                    .unwrap_or(Duration::from_secs(3600));
                tokio::select! {
                    ev = rx.recv() => match ev {
                        Some(ev) => reporter.event(ev).await,
                        None => break,
                    },
                    _ = tokio::time::sleep(wait) => reporter.flush().await,
                }
            }
            match worker.await {
                Ok(Ok(report)) => report.outcome,
                Ok(Err(e)) => JobOutcome::Crashed {
                    reason: format!("starting the sandbox worker: {e}"),
                },
                Err(e) => JobOutcome::Crashed {
                    reason: format!("the worker task failed: {e}"),
                },
            }
        }
    };
    // Killed because the lease was no longer ours: the attempt is lost (and retried by the
    // job's rule), not cancelled by anyone.
    let outcome = match (outcome, entry.reason()) {
        (JobOutcome::Cancelled, Some(reason)) if entry.is_lost() => {
            reporter.system_line(format!("Lost: {reason}."));
            JobOutcome::Lost { reason }
        }
        (JobOutcome::Cancelled, Some(reason)) => {
            reporter.system_line(format!("Cancelled: {reason}."));
            JobOutcome::Cancelled
        }
        (outcome, _) => outcome,
    };
    reporter.push(ReportBody::Finished {
        outcome: outcome.clone(),
    });
    reporter.flush().await;
    renew.abort();
    // However deep the job nested its directories (`remove_tree`: bounded descriptors and
    // stack), and however many files it left: on a blocking thread, so that a large workspace
    // does not hold up the runtime's threads (other jobs' reports and lease renewals).
    let removing = workspace.clone();
    let removed = tokio::task::spawn_blocking(move || rivet_sandbox::remove_tree(&removing))
        .await
        .unwrap_or_else(|e| {
            Err(std::io::Error::other(format!(
                "the removal task failed: {e}"
            )))
        });
    match removed {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!(job_id = %job.job_id, attempt = job.attempt, workspace = %workspace.display(), error = %e, "Removing the job's workspace failed; it is left on disk.");
        }
        _ => {}
    }
    runner
        .running
        .lock()
        .expect("the running list's lock is never poisoned")
        .remove(&key);
    tracing::info!(job_id = %job.job_id, attempt = job.attempt, outcome = %outcome, "Job finished.");
}

/// Keeps the lease alive while the job runs. A lease that vanished (Redis lost its data) is
/// written again; one that another runner or attempt holds, or a fence that ended the attempt,
/// means the job is not ours any more: it is cancelled.
async fn renew_lease(
    runner: Arc<Runner>,
    job_id: uuid::Uuid,
    attempt: u32,
    token: String,
    entry: Arc<RunningJob>,
) {
    let script = renew_script();
    loop {
        tokio::time::sleep(Duration::from_millis(LEASE_RENEW_MS)).await;
        match lease_script(&runner, &script, job_id, attempt, &token)
            .await
            .as_deref()
        {
            Ok("ok") => {}
            Ok("rewritten") => {
                tracing::warn!(job_id = %job_id, attempt, "The lease had vanished (Redis lost its data?); written again.")
            }
            Ok(other) => {
                tracing::warn!(job_id = %job_id, attempt, found = other, "The lease is no longer ours; stopping the job.");
                entry.lose(format!(
                    "the runner lost the job's lease ({})",
                    if other == "stale" {
                        "the attempt was ended by the orchestrator"
                    } else {
                        "another runner holds it"
                    }
                ));
                return;
            }
            Err(e) => {
                tracing::warn!(job_id = %job_id, error = %e, "Renewing the lease failed; retrying.")
            }
        }
    }
}

/// Makes the workspace directory `path` of a job attempt, owned by `uid` if given, afresh:
/// what an earlier run of the same attempt left there (this runner died before the job's start
/// was confirmed, and the job came back to it after a restart) is removed first, off the async
/// threads, so that a job never starts among another run's files.
async fn fresh_workspace(path: &std::path::Path, uid: Option<u32>) -> std::io::Result<()> {
    match std::fs::create_dir(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let left = path.to_path_buf();
            tokio::task::spawn_blocking(move || {
                rivet_sandbox::remove_tree(&left)?;
                std::fs::create_dir(&left)
            })
            .await
            .map_err(std::io::Error::other)??;
        }
        // The work directory itself is gone (removed while the runner ran).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir_all(path)?,
        Err(e) => return Err(e),
    }
    match uid {
        Some(uid) => std::os::unix::fs::chown(path, Some(uid), Some(uid)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::fresh_workspace;
    use std::os::unix::fs::MetadataExt;

    /// A workspace left by an earlier run of the same attempt (with files, nested) is replaced
    /// by an empty one, owned by the jobs' uid; a missing work directory is made.
    #[tokio::test]
    async fn a_workspace_left_by_an_earlier_run_is_made_afresh() {
        let work = std::env::temp_dir().join(format!("rivet-fresh-ws-test-{}", std::process::id()));
        let ws = work.join("job-1");
        std::fs::create_dir_all(ws.join("a/b")).unwrap();
        std::fs::write(ws.join("a/b/stale.txt"), "from the run that died").unwrap();
        fresh_workspace(&ws, None).await.unwrap();
        assert_eq!(std::fs::read_dir(&ws).unwrap().count(), 0, "nothing left");

        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "the runner tests run as root"
        );
        std::fs::write(ws.join("stale.txt"), "x").unwrap();
        fresh_workspace(&ws, Some(65534)).await.unwrap();
        assert_eq!(std::fs::read_dir(&ws).unwrap().count(), 0, "nothing left");
        assert_eq!(std::fs::metadata(&ws).unwrap().uid(), 65534);

        let gone = work.join("removed-work-dir/job-1");
        fresh_workspace(&gone, None).await.unwrap();
        assert!(gone.is_dir());
        rivet_sandbox::remove_tree(&work).unwrap();
    }
}
