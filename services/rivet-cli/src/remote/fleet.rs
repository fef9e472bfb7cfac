//! `rivet runner ls` and `rivet queue ls`: who can run jobs, and what is waiting.

use super::table::{ago, list, now_ms, span, Table};
use super::{block_on, print_json, RemoteArgs};
use anyhow::Result;
use clap::{Args, Subcommand};
use rivet_protocol::http::{QueueView, RunnerView};

/// `rivet runner ...`.
#[derive(Debug, Subcommand)]
pub enum RunnerCommand {
    /// List runners: live ones, then the ones seen before that went away (offline).
    Ls(ListArgs),
    /// Drain a runner: it stops taking jobs, lets running ones finish (within its grace
    /// period) and exits. Needs an admin token.
    Drain(DrainArgs),
}

/// Arguments of `rivet runner drain`.
#[derive(Debug, Args)]
pub struct DrainArgs {
    /// The runner's id (`rivet runner ls`).
    pub id: String,
    /// Print the orchestrator's answer as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// `rivet queue ...`.
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// List class queues: requirement set, ready messages, consumers, the oldest queued job's
    /// age, and why no runner can serve it (when none can).
    Ls(ListArgs),
}

/// Arguments of the listing commands.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print the orchestrator's answer as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// Runs `rivet runner ...`.
pub fn runner(cmd: RunnerCommand) -> Result<i32> {
    let args = match cmd {
        RunnerCommand::Ls(args) => args,
        RunnerCommand::Drain(args) => {
            return block_on(async move {
                let runner = args.remote.client()?.drain_runner(&args.id).await?;
                if args.json {
                    print_json(&runner)?;
                } else {
                    println!(
                        "runner {} is draining: no new jobs; it exits once its {} running job(s) end",
                        runner.id,
                        runner.running.len()
                    );
                }
                Ok(0)
            })
        }
    };
    block_on(async move {
        let runners = args.remote.client()?.runners().await?;
        if args.json {
            print_json(&runners)?;
        } else if runners.is_empty() {
            println!("no runners have registered");
        } else {
            print!("{}", runners_table(&runners, now_ms()).render());
        }
        Ok(0)
    })
}

/// Runs `rivet queue ...`.
pub fn queue(cmd: QueueCommand) -> Result<i32> {
    let QueueCommand::Ls(args) = cmd;
    block_on(async move {
        let queues = args.remote.client()?.queues().await?;
        if args.json {
            print_json(&queues)?;
        } else if queues.is_empty() {
            println!("no class queues yet");
        } else {
            print!("{}", queues_table(&queues).render());
        }
        Ok(0)
    })
}

fn runners_table(runners: &[RunnerView], now: i64) -> Table {
    let mut t = Table::new(&[
        "ID",
        "STATUS",
        "BUSY",
        "CAPABILITIES",
        "LABELS",
        "LAST SEEN",
    ]);
    for r in runners {
        let labels: Vec<String> = r.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        t.row([
            r.id.clone(),
            r.status.clone(),
            format!("{}/{}", r.running.len(), r.slots),
            list(&r.capabilities),
            list(&labels),
            ago(now, r.last_seen_ms),
        ]);
    }
    t
}

fn queues_table(queues: &[QueueView]) -> Table {
    let mut t = Table::new(&[
        "CLASS",
        "REQUIRES",
        "DEPTH",
        "CONSUMERS",
        "OLDEST",
        "UNSCHEDULABLE",
    ]);
    for q in queues {
        t.row([
            q.class_key.clone(),
            list(&q.requires),
            q.depth.to_string(),
            q.consumers.to_string(),
            q.oldest_age_ms.map_or_else(|| "-".into(), span),
            if q.schedulability.schedulable {
                "-".into()
            } else {
                q.schedulability.reason.clone()
            },
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use rivet_protocol::http::Schedulability;
    use uuid::Uuid;

    #[test]
    fn runners_show_load_capabilities_and_labels() {
        let runner = RunnerView {
            id: "runner-a".into(),
            status: "online".into(),
            capabilities: vec!["process".into(), "plugin.git".into()],
            labels: [("region".to_owned(), "eu".to_owned())].into(),
            slots: 4,
            running: vec![Uuid::nil()],
            last_seen_ms: 95_000,
        };
        let gone = RunnerView {
            id: "runner-b".into(),
            status: "offline".into(),
            capabilities: Vec::new(),
            labels: Default::default(),
            slots: 1,
            running: Vec::new(),
            last_seen_ms: 0,
        };
        assert_eq!(
            runners_table(&[runner, gone], 100_000).render(),
            "ID        STATUS   BUSY  CAPABILITIES         LABELS     LAST SEEN\n\
             runner-a  online   1/4   process, plugin.git  region=eu  5s ago\n\
             runner-b  offline  0/1   -                    -          1m40s ago\n"
        );
    }

    #[test]
    fn queues_say_why_nothing_serves_them() {
        let queue = |key: &str, schedulable: bool, reason: &str, oldest: Option<i64>| QueueView {
            class_key: key.into(),
            requires: vec![key.into()],
            depth: 3,
            consumers: u64::from(schedulable),
            oldest_age_ms: oldest,
            schedulability: Schedulability {
                schedulable,
                missing: if schedulable {
                    vec![]
                } else {
                    vec![key.into()]
                },
                reason: reason.into(),
            },
        };
        let text = queues_table(&[
            queue("process", true, "a live runner can take it", Some(65_000)),
            queue("container", false, "no live runner has: container", None),
        ])
        .render();
        assert_eq!(
            text,
            "CLASS      REQUIRES   DEPTH  CONSUMERS  OLDEST  UNSCHEDULABLE\n\
             process    process    3      1          1m5s    -\n\
             container  container  3      0          -       no live runner has: container\n"
        );
    }
}
