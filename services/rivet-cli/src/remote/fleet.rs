//! `rivet runner ls` and `rivet queue ls`: who can run jobs, and what is waiting.
//! `rivet runner register`, `registrations` and `revoke`: runner identities and the labels an
//! admin gives them (API-02).

use super::table::{ago, list, now_ms, span, Table};
use super::{block_on, print_json, RemoteArgs};
use anyhow::Result;
use clap::{Args, Subcommand};
use rivet_protocol::http::{QueueView, RunnerRegistrationView, RunnerView};
use std::collections::BTreeMap;

/// `rivet runner ...`.
#[derive(Debug, Subcommand)]
pub enum RunnerCommand {
    /// List runners: live ones, then the ones seen before that went away (offline).
    Ls(ListArgs),
    /// Drain a runner: it stops taking jobs, lets running ones finish (within its grace
    /// period) and exits. Needs an admin token.
    Drain(DrainArgs),
    /// Create a runner registration: the runner's identity (NAME is its runner id) and the
    /// labels it gets. Prints the runner's token once: start the runner with it in
    /// RIVET_RUNNER_TOKEN. Needs an admin token.
    Register(RegisterArgs),
    /// List runner registrations (revoked ones too), with their labels and refused starts.
    /// Needs an admin token.
    Registrations(ListArgs),
    /// Revoke a runner registration (by name or id): its token no longer registers, its
    /// session ends (no report of it is accepted any more) and its runner is cut off (its broker
    /// and Redis users are deleted; with shared users it is told to drain).
    /// Needs an admin token.
    Revoke(RevokeArgs),
}

/// Arguments of `rivet runner register`.
#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// The runner's name, which is its runner id (letters, digits, `_`, `-`, `.`).
    pub name: String,
    /// A label the runner gets, as KEY=VALUE (repeatable). Jobs requiring `label:KEY=VALUE`
    /// run only on runners whose registration has it.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Print the orchestrator's answer (token included) as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("label `{s}` is not KEY=VALUE"))?;
    Ok((k.to_owned(), v.to_owned()))
}

/// Arguments of `rivet runner revoke`.
#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The registration's name or id (`rivet runner registrations`).
    pub name_or_id: String,
    /// Print the orchestrator's answer as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
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
        RunnerCommand::Register(args) => {
            return block_on(async move {
                let labels: BTreeMap<String, String> = args.labels.into_iter().collect();
                let reg = args
                    .remote
                    .client()?
                    .create_runner_registration(&args.name, &labels)
                    .await?;
                if args.json {
                    print_json(&reg)?;
                } else {
                    let labels: Vec<String> =
                        reg.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    println!(
                        "registered runner {} ({}) with labels: {}",
                        reg.name,
                        reg.id,
                        list(&labels)
                    );
                    println!(
                        "runner token (shown once; start the runner with RIVET_RUNNER_TOKEN set to it):"
                    );
                    println!("{}", reg.secret.as_deref().unwrap_or_default());
                }
                Ok(0)
            })
        }
        RunnerCommand::Registrations(args) => {
            return block_on(async move {
                let regs = args.remote.client()?.runner_registrations().await?;
                if args.json {
                    print_json(&regs)?;
                } else if regs.is_empty() {
                    println!(
                        "no runner registrations; create one with `rivet runner register NAME`"
                    );
                } else {
                    print!("{}", registrations_table(&regs, now_ms()).render());
                }
                Ok(0)
            })
        }
        RunnerCommand::Revoke(args) => {
            return block_on(async move {
                let reg = args
                    .remote
                    .client()?
                    .revoke_runner_registration(&args.name_or_id)
                    .await?;
                if args.json {
                    print_json(&reg)?;
                } else {
                    println!(
                        "revoked runner {} ({}): nothing it reports is accepted from now on, and it \
                         is cut off from the broker and Redis (or told to drain)",
                        reg.name, reg.id
                    );
                }
                Ok(0)
            })
        }
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
        "REGISTRATION",
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
            // The id's first 8 digits: enough to tell registrations apart at a glance (the
            // runner's id is its registration's name; `--json` has the whole id).
            r.registration
                .map_or_else(|| "-".into(), |id| id.to_string()[..8].to_owned()),
            ago(now, r.last_seen_ms),
        ]);
    }
    t
}

fn registrations_table(regs: &[RunnerRegistrationView], now: i64) -> Table {
    let mut t = Table::new(&["NAME", "ID", "STATUS", "LABELS", "JOINED", "REFUSED STARTS"]);
    for r in regs {
        let labels: Vec<String> = r.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        t.row([
            r.name.clone(),
            r.id.to_string(),
            if r.revoked_at_ms.is_some() {
                "revoked"
            } else {
                "active"
            }
            .into(),
            list(&labels),
            r.registered_at_ms
                .map_or_else(|| "never".into(), |at| ago(now, at)),
            r.refused_starts.to_string(),
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
            registration: Some(Uuid::nil()),
            slots: 4,
            running: vec![Uuid::nil()],
            last_seen_ms: 95_000,
        };
        let gone = RunnerView {
            id: "runner-b".into(),
            status: "offline".into(),
            capabilities: Vec::new(),
            labels: Default::default(),
            registration: None,
            slots: 1,
            running: Vec::new(),
            last_seen_ms: 0,
        };
        assert_eq!(
            runners_table(&[runner, gone], 100_000).render(),
            "ID        STATUS   BUSY  CAPABILITIES         LABELS     REGISTRATION  LAST SEEN\n\
             runner-a  online   1/4   process, plugin.git  region=eu  00000000      5s ago\n\
             runner-b  offline  0/1   -                    -          -             1m40s ago\n"
        );
    }

    #[test]
    fn registrations_show_labels_status_and_refusals() {
        let reg = |name: &str, revoked: Option<i64>, joined: Option<i64>| RunnerRegistrationView {
            id: Uuid::nil(),
            name: name.into(),
            labels: [("deploy".to_owned(), "yes".to_owned())].into(),
            secret: None,
            created_at_ms: 0,
            revoked_at_ms: revoked,
            registered_at_ms: joined,
            capabilities: Vec::new(),
            slots: None,
            version: None,
            refused_starts: 3,
        };
        assert_eq!(
            registrations_table(&[reg("a", None, Some(90_000)), reg("b", Some(1), None)], 100_000)
                .render(),
            "NAME  ID                                    STATUS   LABELS      JOINED   REFUSED STARTS\n\
             a     00000000-0000-0000-0000-000000000000  active   deploy=yes  10s ago  3\n\
             b     00000000-0000-0000-0000-000000000000  revoked  deploy=yes  never    3\n"
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
