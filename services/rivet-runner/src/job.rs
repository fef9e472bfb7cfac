//! One attempt of a job: the lease, the workspace, the sandbox worker, and the reports.

use crate::Runner;
use rivet_core::JobOutcome;
use rivet_protocol::messages::{JobDispatch, LogLine, ReportBody, RunnerReport};
use rivet_protocol::redis_keys::{lease_value, RunningJob, LEASE_RENEW_MS, LEASE_TTL_MS};
use rivet_protocol::SCHEMA_VERSION;
use rivet_sandbox::events::{Event, Level, Source};
use rivet_sandbox::{JobRequest, Mode};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Log lines per batch.
const BATCH_LINES: usize = 100;
/// Longest a log line waits for its batch.
const BATCH_WAIT: Duration = Duration::from_millis(200);

/// Extends the lease only while it still holds our value.
const RENEW: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";

/// Takes the job's lease (`SET NX PX`). `false`: another runner holds it (a duplicate delivery).
pub async fn claim(runner: &Runner, job: &JobDispatch) -> redis::RedisResult<bool> {
    let mut conn = runner.redis.clone();
    let set: Option<String> = redis::cmd("SET")
        .arg(runner.keys.lease(job.job_id))
        .arg(lease_value(&runner.id, job.attempt))
        .arg("NX")
        .arg("PX")
        .arg(LEASE_TTL_MS)
        .query_async(&mut conn)
        .await?;
    Ok(set.is_some())
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

/// Publishes reports of one attempt in order. Stage events and log lines are buffered and sent
/// together, at 100 lines or 200 ms after the first buffered item, and with the result.
struct Reporter<'a> {
    runner: &'a Runner,
    job: &'a JobDispatch,
    reply_to: String,
    pending: Vec<ReportBody>,
    lines: usize,
    oldest: Option<Instant>,
}

impl Reporter<'_> {
    async fn send(&self, body: ReportBody) {
        let report = RunnerReport {
            schema: SCHEMA_VERSION,
            job_id: self.job.job_id,
            attempt: self.job.attempt,
            runner_id: self.runner.id.clone(),
            body,
        };
        if let Err(e) = self
            .runner
            .broker
            .publish_report(&self.reply_to, &report)
            .await
        {
            tracing::warn!(job_id = %self.job.job_id, error = %format!("{e:#}"), "Publishing a report failed.");
        }
    }

    fn push(&mut self, body: ReportBody) {
        self.oldest.get_or_insert_with(Instant::now);
        self.pending.push(body);
    }

    async fn flush(&mut self) {
        let mut bodies = std::mem::take(&mut self.pending);
        self.lines = 0;
        self.oldest = None;
        match bodies.len() {
            0 => {}
            1 => self.send(bodies.remove(0)).await,
            _ => self.send(ReportBody::Batch { bodies }).await,
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
pub async fn run(runner: &Runner, job: JobDispatch, reply_to: String) {
    let entry = RunningJob {
        job_id: job.job_id,
        attempt: job.attempt,
    };
    runner
        .running
        .lock()
        .expect("the running list's lock is never poisoned")
        .push(entry.clone());
    tracing::info!(job_id = %job.job_id, attempt = job.attempt, pipeline = %job.pipeline, "Job started.");
    let mut reporter = Reporter {
        runner,
        job: &job,
        reply_to,
        pending: Vec::new(),
        lines: 0,
        oldest: None,
    };
    reporter.send(ReportBody::Started).await;

    let renew = tokio::spawn(renew_lease(
        runner.redis.clone(),
        runner.keys.lease(job.job_id),
        lease_value(&runner.id, job.attempt),
    ));
    let workspace = runner
        .work_dir
        .join(format!("{}-{}", job.job_id, job.attempt));
    let outcome = match std::fs::create_dir_all(&workspace) {
        Err(e) => JobOutcome::Crashed {
            reason: format!("creating the workspace {}: {e}", workspace.display()),
        },
        Ok(()) => {
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
                policy: runner.policy.clone(),
                binaries: runner.binaries.clone(),
                plugins: runner.plugins.clone(),
            };
            let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
            let options = runner.worker.clone();
            let worker = tokio::task::spawn_blocking(move || {
                rivet_sandbox::run_worker(&request, &options, |ev| {
                    let _ = tx.send(ev.clone());
                })
            });
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
    reporter.push(ReportBody::Finished {
        outcome: outcome.clone(),
    });
    reporter.flush().await;
    renew.abort();
    let _ = std::fs::remove_dir_all(&workspace);
    runner
        .running
        .lock()
        .expect("the running list's lock is never poisoned")
        .retain(|j| j != &entry);
    tracing::info!(job_id = %job.job_id, attempt = job.attempt, outcome = %outcome, "Job finished.");
}

async fn renew_lease(mut conn: redis::aio::ConnectionManager, key: String, value: String) {
    loop {
        tokio::time::sleep(Duration::from_millis(LEASE_RENEW_MS)).await;
        let renewed: redis::RedisResult<i64> = redis::Script::new(RENEW)
            .key(&key)
            .arg(&value)
            .arg(LEASE_TTL_MS)
            .invoke_async(&mut conn)
            .await;
        match renewed {
            Ok(1) => {}
            Ok(_) => tracing::warn!(lease = %key, "The lease is no longer ours."),
            Err(e) => tracing::warn!(lease = %key, error = %e, "Renewing the lease failed."),
        }
    }
}
