//! `rivet job ls|show|logs|cancel|retry`: jobs on the orchestrator.

use super::follow::{self, Follow};
use super::table::{ago, fields, list, now_ms, span, took, Table};
use super::{block_on, print_json, RemoteArgs};
use anyhow::Result;
use clap::{Args, Subcommand};
use rivet_client::JobFilter;
use rivet_core::StageOutcome;
use rivet_protocol::http::{JobState, JobView};
use uuid::Uuid;

/// `rivet job ...`.
#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// List jobs, newest first.
    Ls(LsArgs),
    /// Show a job: state, inputs, outcome, why a queued job waits, and each attempt with its
    /// stages.
    Show(ShowArgs),
    /// Print a job's log lines (the current attempt's unless --attempt); with --follow, keep
    /// printing until the job ends and exit 0 only if it succeeded.
    Logs(LogsArgs),
    /// Cancel a job: a queued one never starts; a running one's worker is killed and its logs
    /// so far are kept.
    Cancel(CancelArgs),
    /// Run a finished job again, as a new attempt with the same inputs.
    Retry(RetryArgs),
}

/// Arguments of `rivet job cancel`.
#[derive(Debug, Args)]
pub struct CancelArgs {
    /// The job's id.
    pub id: Uuid,
    /// Why (shown in the job's log).
    #[arg(long)]
    pub reason: Option<String>,
    /// Print the orchestrator's answer as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// Arguments of `rivet job retry`.
#[derive(Debug, Args)]
pub struct RetryArgs {
    /// The job's id.
    pub id: Uuid,
    /// Print the orchestrator's answer as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// Arguments of `rivet job ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only jobs in this state: queued, running, succeeded, failed, timed_out, crashed,
    /// cancelled.
    #[arg(long, value_name = "STATE", value_parser = parse_state)]
    pub state: Option<JobState>,
    /// Only jobs of this pipeline.
    #[arg(long, value_name = "NAME")]
    pub pipeline: Option<String>,
    /// At most this many jobs (the orchestrator's default: 50).
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
    /// Print the orchestrator's answer as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// Arguments of `rivet job show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The job's id.
    pub id: Uuid,
    /// Print the orchestrator's answer as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// Arguments of `rivet job logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The job's id.
    pub id: Uuid,
    /// This attempt's lines (from 1) instead of the current attempt's.
    #[arg(long, value_name = "N")]
    pub attempt: Option<u32>,
    /// Keep printing lines as they arrive until the job (or --attempt) ends; then print the
    /// stages and the outcome.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// One JSON object per log line (with --follow, the finished job last).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

fn parse_state(s: &str) -> Result<JobState, String> {
    JobState::parse(s).ok_or_else(|| {
        let all: Vec<&str> = JobState::ALL.iter().map(|s| s.as_str()).collect();
        format!("one of: {}", all.join(", "))
    })
}

/// Runs `rivet job ...`.
pub fn run(cmd: JobCommand) -> Result<i32> {
    match cmd {
        JobCommand::Ls(args) => block_on(async move {
            let filter = JobFilter {
                state: args.state,
                pipeline: args.pipeline.clone(),
                limit: args.limit,
            };
            let jobs = args.remote.client()?.jobs(&filter).await?;
            if args.json {
                print_json(&jobs)?;
            } else if jobs.is_empty() {
                println!("no jobs");
            } else {
                print!("{}", jobs_table(&jobs, now_ms()).render());
            }
            Ok(0)
        }),
        JobCommand::Show(args) => block_on(async move {
            let job = args.remote.client()?.job(args.id).await?;
            if args.json {
                print_json(&job)?;
            } else {
                print!("{}", describe(&job, now_ms()));
            }
            Ok(0)
        }),
        JobCommand::Logs(args) => block_on(async move {
            let client = args.remote.client()?;
            if !args.follow {
                follow::print_once(&client, args.id, args.attempt, args.json).await?;
                return Ok(0);
            }
            let opts = Follow {
                attempt: args.attempt,
                json: args.json,
            };
            let job = follow::follow(&client, args.id, opts).await?;
            follow::print_end(&job, args.attempt, args.json)
        }),
        JobCommand::Cancel(args) => block_on(async move {
            let client = args.remote.client()?;
            let job = client.cancel_job(args.id, args.reason.as_deref()).await?;
            if args.json {
                print_json(&job)?;
            } else if job.state == JobState::Running {
                println!(
                    "job {} is running on {}: cancel sent; it stops within seconds (`rivet job show {}`)",
                    job.id,
                    job.runner_id.as_deref().unwrap_or("its runner"),
                    job.id
                );
            } else {
                println!("job {} {}", job.id, job.state.as_str());
            }
            Ok(0)
        }),
        JobCommand::Retry(args) => block_on(async move {
            let job = args.remote.client()?.retry_job(args.id).await?;
            if args.json {
                print_json(&job)?;
            } else {
                println!(
                    "job {} queued again as attempt {} (`rivet job logs -f {}`)",
                    job.id, job.attempt, job.id
                );
            }
            Ok(0)
        }),
    }
}

/// One line about a job that is not plain progress: why it waits or how it failed.
fn detail(job: &JobView) -> String {
    let mut parts = Vec::new();
    if job.attempt > 1 {
        parts.push(format!("attempt {}", job.attempt));
    }
    if let Some(s) = job.schedulability.as_ref().filter(|s| !s.schedulable) {
        parts.push(format!("cannot be scheduled: {}", s.reason));
    }
    if let Some(o) = job.outcome.as_ref().filter(|o| !o.is_success()) {
        parts.push(o.to_string());
    }
    parts.join("; ")
}

fn jobs_table(jobs: &[JobView], now: i64) -> Table {
    let mut t = Table::new(&[
        "ID", "PIPELINE", "VERSION", "STATE", "CREATED", "TOOK", "DETAIL",
    ]);
    for j in jobs {
        t.row([
            j.id.to_string(),
            j.pipeline.clone(),
            j.pipeline_version.to_string(),
            j.state.as_str().to_owned(),
            ago(now, j.created_at_ms),
            took(j.started_at_ms, j.finished_at_ms),
            detail(j),
        ]);
    }
    t
}

/// A job for people.
fn describe(job: &JobView, now: i64) -> String {
    let inputs: Vec<String> = job.inputs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut head = vec![
        ("job", job.id.to_string()),
        ("project", job.project.clone()),
        (
            "pipeline",
            format!("{} (version {})", job.pipeline, job.pipeline_version),
        ),
        ("state", job.state.as_str().to_owned()),
        ("attempt", job.attempt.to_string()),
        ("inputs", list(&inputs)),
        ("requires", list(&job.requires)),
        ("created", ago(now, job.created_at_ms)),
    ];
    if let Some(at) = job.started_at_ms {
        head.push(("started", ago(now, at)));
    }
    if let Some(at) = job.finished_at_ms {
        head.push(("finished", ago(now, at)));
        head.push(("took", took(job.started_at_ms, Some(at))));
    }
    if let Some(r) = &job.runner_id {
        head.push(("runner", r.clone()));
    }
    if let Some(o) = &job.outcome {
        head.push(("outcome", o.to_string()));
    }
    if let Some(s) = &job.schedulability {
        let text = if s.schedulable {
            s.reason.clone()
        } else {
            format!(
                "cannot be scheduled: {} (missing: {})",
                s.reason,
                list(&s.missing)
            )
        };
        head.push(("schedulable", text));
    }
    let mut out = fields(&head);
    for a in &job.attempts {
        let runner = a.runner_id.as_deref().unwrap_or("no runner yet");
        let ended = match &a.outcome {
            Some(o) => o.to_string(),
            None => a.state.as_str().to_owned(),
        };
        out.push_str(&format!(
            "\nattempt {} on {}: {} ({})\n",
            a.attempt,
            runner,
            ended,
            took(a.started_at_ms, a.finished_at_ms)
        ));
        if a.stages.is_empty() {
            out.push_str("  no stage started\n");
            continue;
        }
        let mut t = Table::new(&["", "STAGE", "STATE", "TOOK", "ERROR"]).indent(2);
        for s in &a.stages {
            let mark = match s.outcome {
                Some(StageOutcome::Succeeded) => "✓",
                Some(StageOutcome::Failed | StageOutcome::TimedOut) => "✗",
                Some(StageOutcome::Skipped) => "-",
                None => "▶",
            };
            t.row([
                mark.to_owned(),
                s.name.clone(),
                s.state.clone(),
                s.duration_ms.map_or_else(|| "-".into(), span),
                s.error.clone().unwrap_or_default(),
            ]);
        }
        out.push_str(&t.render());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rivet_core::JobOutcome;
    use rivet_protocol::http::{AttemptView, Schedulability, StageView};

    fn job() -> JobView {
        JobView {
            id: Uuid::nil(),
            project: "default".into(),
            pipeline: "build".into(),
            pipeline_version: 2,
            state: JobState::Failed,
            attempt: 2,
            inputs: [("branch".to_owned(), "main".to_owned())].into(),
            class_key: "process".into(),
            requires: vec!["process".into()],
            created_at_ms: 0,
            started_at_ms: Some(10_000),
            finished_at_ms: Some(13_000),
            outcome: Some(JobOutcome::Failed {
                stage: Some("test".into()),
                error: "exit 1".into(),
            }),
            runner_id: Some("runner-b".into()),
            schedulability: None,
            attempts: Vec::new(),
        }
    }

    #[test]
    fn the_list_says_how_jobs_ended_or_why_they_wait() {
        let mut queued = job();
        queued.id = Uuid::from_u128(1);
        queued.state = JobState::Queued;
        queued.attempt = 1;
        queued.started_at_ms = None;
        queued.finished_at_ms = None;
        queued.outcome = None;
        queued.schedulability = Some(Schedulability {
            schedulable: false,
            missing: vec!["process".into()],
            reason: "no runner is online".into(),
        });
        assert_eq!(
            jobs_table(&[job(), queued], 60_000).render(),
            "ID                                    PIPELINE  VERSION  STATE   CREATED  TOOK  DETAIL\n\
             00000000-0000-0000-0000-000000000000  build     2        failed  1m ago   3s    attempt 2; failed in stage `test`: exit 1\n\
             00000000-0000-0000-0000-000000000001  build     2        queued  1m ago   -     cannot be scheduled: no runner is online\n"
        );
    }

    #[test]
    fn a_job_shows_every_attempt_with_its_stages() {
        let mut j = job();
        let stage =
            |index: u32, name: &str, outcome: StageOutcome, error: Option<&str>| StageView {
                index,
                name: name.into(),
                state: format!("{outcome:?}").to_lowercase(),
                outcome: Some(outcome),
                duration_ms: Some(1_000),
                error: error.map(Into::into),
            };
        j.attempts = vec![
            AttemptView {
                attempt: 1,
                runner_id: Some("runner-a".into()),
                state: JobState::Crashed,
                outcome: Some(JobOutcome::Crashed {
                    reason: "runner lost".into(),
                }),
                started_at_ms: Some(1_000),
                finished_at_ms: Some(5_000),
                stages: Vec::new(),
            },
            AttemptView {
                attempt: 2,
                runner_id: Some("runner-b".into()),
                state: JobState::Failed,
                outcome: j.outcome.clone(),
                started_at_ms: Some(10_000),
                finished_at_ms: Some(13_000),
                stages: vec![
                    stage(0, "checkout", StageOutcome::Succeeded, None),
                    stage(1, "test", StageOutcome::Failed, Some("exit 1")),
                    stage(
                        2,
                        "report",
                        StageOutcome::Skipped,
                        Some("an earlier stage failed"),
                    ),
                ],
            },
        ];
        assert_eq!(
            describe(&j, 73_000),
            "job       00000000-0000-0000-0000-000000000000\n\
             project   default\n\
             pipeline  build (version 2)\n\
             state     failed\n\
             attempt   2\n\
             inputs    branch=main\n\
             requires  process\n\
             created   1m13s ago\n\
             started   1m3s ago\n\
             finished  1m ago\n\
             took      3s\n\
             runner    runner-b\n\
             outcome   failed in stage `test`: exit 1\n\
             \n\
             attempt 1 on runner-a: crashed: runner lost (4s)\n  \
               no stage started\n\
             \n\
             attempt 2 on runner-b: failed in stage `test`: exit 1 (3s)\n     \
               STAGE     STATE      TOOK  ERROR\n  \
               ✓  checkout  succeeded  1s\n  \
               ✗  test      failed     1s    exit 1\n  \
               -  report    skipped    1s    an earlier stage failed\n"
        );
    }

    #[test]
    fn a_queued_job_says_what_is_missing() {
        let mut j = job();
        j.state = JobState::Queued;
        j.outcome = None;
        j.finished_at_ms = None;
        j.started_at_ms = None;
        j.runner_id = None;
        j.schedulability = Some(Schedulability {
            schedulable: false,
            missing: vec!["container".into()],
            reason: "no live runner has: container".into(),
        });
        let text = describe(&j, 0);
        assert!(
            text.contains(
                "schedulable  cannot be scheduled: no live runner has: container (missing: container)"
            ),
            "{text}"
        );
    }

    #[test]
    fn states_are_checked_before_asking() {
        assert_eq!(parse_state("timed_out"), Ok(JobState::TimedOut));
        assert!(parse_state("done").unwrap_err().contains("succeeded"));
    }
}
