//! API-03: forged runner reports. Whoever can publish to the reports queue and knows the running
//! runner's id and the attempt number still cannot change the job without the attempt token.

use crate::helpers::*;
use crate::{TOKEN_A, TOKEN_B};
use redis::AsyncCommands;
use rivet_core::{JobOutcome, StageOutcome};
use rivet_protocol::http::{JobState, LogPage};
use rivet_protocol::messages::{ControlCommand, LogLine, ReportBody, RunnerControl, RunnerReport};
use rivet_protocol::redis_keys::{lease_value, Keys};
use rivet_protocol::SCHEMA_VERSION;
use serde_json::json;
use std::time::Duration;

fn line(seq: u64, text: &str) -> LogLine {
    LogLine {
        seq,
        at_ms: seq,
        stage: Some("greet".into()),
        level: "info".into(),
        source: "script".into(),
        line: text.into(),
    }
}

async fn log_lines(app: &TestApp, id: uuid::Uuid) -> Vec<String> {
    let page: LogPage = app
        .get(&format!("/jobs/{id}/logs"))
        .await
        .json()
        .await
        .unwrap();
    page.lines.into_iter().map(|l| l.line).collect()
}

async fn forged_count(app: &TestApp, id: uuid::Uuid) -> i32 {
    let mut db = app.db().await;
    sqlx::query_scalar("SELECT forged_reports FROM attempts WHERE job_id = $1 AND attempt = 1")
        .bind(id)
        .fetch_one(&mut db)
        .await
        .unwrap()
}

#[tokio::test]
async fn api_03_forged_reports_are_refused_counted_and_leave_the_job_alone() {
    let app = spawn_app().await;
    // Play the real runner `runner-a`: take the job, its lease with token A, and listen to the
    // orders the orchestrator sends it.
    let Taken {
        id,
        session_key,
        broker,
        reply_to,
        mut orders,
    } = Taken::new(&app).await;
    let keys = Keys::new(&app.namespace);
    let mut redis = redis::aio::ConnectionManager::new(redis::Client::open(REDIS).unwrap())
        .await
        .unwrap();

    // Every report names runner-a and attempt 1, as a forger who read the job's page would.
    let report = |token: &str, body: ReportBody| RunnerReport {
        schema: SCHEMA_VERSION,
        job_id: id,
        attempt: 1,
        runner_id: "runner-a".into(),
        token: token.into(),
        // `runner-a` is registered, and signs its `Started` with its session (API-02); the
        // forger's problem here is the attempt token.
        session_mac: rivet_protocol::identity::session_mac(
            &session_key,
            id,
            1,
            "runner-a",
            token,
            &body,
        ),
        body,
    };
    let publish = |r: RunnerReport| {
        let (broker, reply_to) = (&broker, &reply_to);
        async move { broker.publish_report(reply_to, &r).await.unwrap() }
    };

    // A forged `Started` before the real one: the lease holds another token.
    publish(report(TOKEN_B, ReportBody::Started { ago_ms: 0 })).await;
    publish(report(TOKEN_A, ReportBody::Started { ago_ms: 0 })).await;
    publish(report(
        TOKEN_A,
        ReportBody::StageStarted {
            index: 0,
            name: "greet".into(),
            timeout_ms: 60_000,
        },
    ))
    .await;
    publish(report(
        TOKEN_A,
        ReportBody::Logs {
            lines: vec![line(0, "real 0")],
        },
    ))
    .await;
    wait_for_rows(&app, "the real runner's first line", || async {
        let lines = log_lines(&app, id).await;
        (lines == ["real 0"]).then_some(())
    })
    .await;
    assert_eq!(job(&app, id).await.state, JobState::Running);
    assert_eq!(forged_count(&app, id).await, 1, "the forged `Started`");

    // Forgeries once the job runs: a wrong token, a missing one, a malformed one, inside a batch.
    let forged_line = || ReportBody::Logs {
        lines: vec![line(1, "forged 1")],
    };
    let forged_end = || ReportBody::StageFinished {
        index: 0,
        name: "greet".into(),
        outcome: StageOutcome::Failed,
        duration_ms: 1,
        error: Some("forged".into()),
    };
    let forged_finish = |outcome: JobOutcome| ReportBody::Finished { outcome };
    let forgeries = [
        report(TOKEN_B, ReportBody::Started { ago_ms: 0 }),
        report(TOKEN_B, forged_line()),
        report("", forged_line()),
        report(&TOKEN_A.to_uppercase(), forged_line()),
        report(&TOKEN_A[..31], forged_end()),
        report(TOKEN_B, forged_finish(JobOutcome::Succeeded)),
        report(
            "",
            forged_finish(JobOutcome::Failed {
                stage: None,
                error: "forged".into(),
            }),
        ),
        report(
            TOKEN_B,
            ReportBody::Batch {
                bodies: vec![
                    forged_line(),
                    forged_end(),
                    forged_finish(JobOutcome::Cancelled),
                ],
            },
        ),
    ];
    // With the real token (it can be read from the Redis lease) but without the runner's session:
    // no MAC, or one made with another key, or the real MAC of another body.
    let mut forgeries = forgeries.to_vec();
    let mut unsigned = report(TOKEN_A, forged_line());
    unsigned.session_mac = String::new();
    let mut other_key = report(TOKEN_A, forged_line());
    other_key.session_mac = rivet_protocol::identity::report_mac(
        &"e".repeat(64),
        id,
        1,
        "runner-a",
        TOKEN_A,
        &forged_line(),
    );
    let mut swapped = report(TOKEN_A, forged_finish(JobOutcome::Succeeded));
    swapped.session_mac = report(TOKEN_A, forged_line()).session_mac;
    forgeries.extend([unsigned, other_key, swapped]);
    let mut forged = forgeries.len() as i32;
    for r in forgeries {
        publish(r).await;
    }
    // Another registered runner, on its own broker user, holding everything runner-a has (its
    // attempt token and even its session key): RabbitMQ stamps its reports with its own user,
    // and the orchestrator takes runner-a's reports only from runner-a's user.
    let (_, session_b) = app.register_runner("runner-b", json!({})).await;
    let broker_b = testing::runner_broker(&app.namespace, &session_b).await;
    for r in [
        report(TOKEN_A, ReportBody::Started { ago_ms: 0 }),
        report(TOKEN_A, forged_line()),
        report(TOKEN_A, forged_finish(JobOutcome::Succeeded)),
    ] {
        broker_b.publish_report(&reply_to, &r).await.unwrap();
        forged += 1;
    }
    broker_b.close().await;
    // The real runner goes on. Its reports are applied in order after the forgeries (one job,
    // one lane), so once its line shows, every forgery has been dealt with.
    publish(report(
        TOKEN_A,
        ReportBody::Logs {
            lines: vec![line(1, "real 1")],
        },
    ))
    .await;
    wait_for_rows(&app, "the real runner's second line", || async {
        let lines = log_lines(&app, id).await;
        (lines.len() == 2).then_some(())
    })
    .await;
    assert_eq!(
        log_lines(&app, id).await,
        ["real 0", "real 1"],
        "no forged line was stored (a stored `forged 1` would have taken sequence 1)"
    );
    let running = job(&app, id).await;
    assert_eq!(running.state, JobState::Running, "{running:?}");
    assert_eq!(running.runner_id.as_deref(), Some("runner-a"));
    assert_eq!(running.attempts[0].stages[0].state, "running");
    assert_eq!(forged_count(&app, id).await, 1 + forged);
    let lease: Option<String> = redis.get(keys.lease(id)).await.unwrap();
    assert_eq!(
        lease.as_deref(),
        Some(lease_value("runner-a", 1, TOKEN_A).as_str()),
        "a forged `Finished` does not release the real runner's lease"
    );

    // No forgery made the orchestrator order the real runner to stop. Orders it sent while
    // applying the reports above were confirmed before those reports were acknowledged, so they
    // are queued ahead of this marker (sent as the orchestrator does: a runner's broker user
    // may not send orders).
    let admin = rivet_amqp::Broker::connect(
        AMQP,
        rivet_protocol::topology::Topology::new(&app.namespace),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    admin
        .publish_control(&RunnerControl {
            schema: SCHEMA_VERSION,
            runner_id: "runner-a".into(),
            command: ControlCommand::Drain {
                reason: "test marker".into(),
            },
        })
        .await
        .unwrap();
    // The first order the runner gets must be the marker.
    let order = tokio::time::timeout(Duration::from_secs(10), orders.next())
        .await
        .expect("the marker order arrives")
        .unwrap()
        .unwrap();
    let command = order.message.command.clone();
    order.ack().await.ok();
    assert!(
        matches!(&command, ControlCommand::Drain { reason } if reason == "test marker"),
        "a forged report made the orchestrator send {command:?}"
    );

    // The real runner finishes the job.
    publish(report(
        TOKEN_A,
        ReportBody::Batch {
            bodies: vec![
                ReportBody::StageFinished {
                    index: 0,
                    name: "greet".into(),
                    outcome: StageOutcome::Succeeded,
                    duration_ms: 5,
                    error: None,
                },
                ReportBody::Finished {
                    outcome: JobOutcome::Succeeded,
                },
            ],
        },
    ))
    .await;
    let done = wait_for_rows(&app, "the job to finish", || async {
        let j = job(&app, id).await;
        j.state.is_final().then_some(j)
    })
    .await;
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    assert_eq!(done.attempts[0].stages[0].state, "succeeded");
    // The lease goes after the commit that made the job final (fence first, then lease).
    wait_for("the real `Finished` to release the lease", || {
        let mut redis = redis.clone();
        let key = keys.lease(id);
        async move {
            let lease: Option<String> = redis.get(key).await.unwrap();
            lease.is_none().then_some(())
        }
    })
    .await;

    // The token is never shown by the API.
    for path in [
        format!("/jobs/{id}"),
        format!("/jobs/{id}/logs"),
        "/jobs".into(),
    ] {
        let text = app.get(&path).await.text().await.unwrap();
        assert!(!text.contains(TOKEN_A), "{path} shows the attempt token");
    }
    let stored: Option<String> =
        sqlx::query_scalar("SELECT token FROM attempts WHERE job_id = $1 AND attempt = 1")
            .bind(id)
            .fetch_one(&mut app.db().await)
            .await
            .unwrap();
    assert_eq!(stored.as_deref(), Some(TOKEN_A), "stored at `Started`");

    orders.cancel().await.ok();
    broker.close().await;
    admin.close().await;
    app.stop().await;
}

/// The whole attempt of a short job in one report, as a runner sends it: `Started`, the stage,
/// its lines and the result.
fn whole_attempt(lines: &[&str]) -> ReportBody {
    ReportBody::Batch {
        bodies: vec![
            ReportBody::Started { ago_ms: 30 },
            ReportBody::StageStarted {
                index: 0,
                name: "greet".into(),
                timeout_ms: 60_000,
            },
            ReportBody::Logs {
                lines: lines
                    .iter()
                    .enumerate()
                    .map(|(i, l)| line(i as u64, l))
                    .collect(),
            },
            ReportBody::StageFinished {
                index: 0,
                name: "greet".into(),
                outcome: StageOutcome::Succeeded,
                duration_ms: 3,
                error: None,
            },
            ReportBody::Finished {
                outcome: JobOutcome::Succeeded,
            },
        ],
    }
}

#[tokio::test]
async fn a_whole_attempt_in_one_report_is_applied_once() {
    let app = spawn_app().await;
    let taken = Taken::new(&app).await;
    let body = whole_attempt(&["one", "two"]);
    let report = taken.report(body.clone(), &body);
    taken.publish(&report).await;
    let done = wait_for_rows(&app, "the job to succeed", || async {
        let j = job(&app, taken.id).await;
        (j.state == JobState::Succeeded).then_some(j)
    })
    .await;
    assert_eq!(done.runner_id.as_deref(), Some("runner-a"));
    // Dated back by the runner's `ago_ms` (30 ms; applied in the same transaction as the end).
    let ran = done.finished_at_ms.unwrap() - done.started_at_ms.unwrap();
    assert!(
        (29..=31).contains(&ran),
        "started {ran} ms before it finished"
    );
    assert_eq!(log_lines(&app, taken.id).await, ["one", "two"]);
    assert_eq!(done.attempts.len(), 1, "{:?}", done.attempts);
    let stages = &done.attempts[0].stages;
    assert_eq!(stages.len(), 1);
    assert_eq!(
        stages[0].outcome,
        Some(StageOutcome::Succeeded),
        "{stages:?}"
    );

    // Delivered again (an orchestrator that stopped before acknowledging it): the attempt is
    // over, so the runner is told to stop it (which is the signal that it was handled), and
    // nothing changes; it is no forgery.
    let mut taken = taken;
    taken.publish(&report).await;
    let order = tokio::time::timeout(Duration::from_secs(10), taken.orders.next())
        .await
        .expect("an order about the redelivered report")
        .unwrap()
        .unwrap();
    assert!(
        matches!(&order.message.command, ControlCommand::Cancel { job_id, attempt: 1, .. } if *job_id == taken.id),
        "{:?}",
        order.message.command
    );
    order.ack().await.ok();
    let again = job(&app, taken.id).await;
    assert_eq!(again.state, JobState::Succeeded);
    assert_eq!(again.finished_at_ms, done.finished_at_ms);
    assert_eq!(log_lines(&app, taken.id).await, ["one", "two"]);
    assert_eq!(forged_count(&app, taken.id).await, 0);
}

/// Everything stored about a job, without ids and times (whether the times are in order
/// instead), as JSON.
async fn stored(app: &TestApp, id: uuid::Uuid) -> serde_json::Value {
    let mut db = app.db().await;
    sqlx::query_scalar(
        "SELECT json_build_object(\
           'job', (SELECT json_build_object('state', state, 'attempt', attempt, 'runner', runner_id, \
             'outcome', outcome, 'dated', created_at <= started_at AND started_at <= finished_at) \
             FROM jobs WHERE id = $1), \
           'attempts', (SELECT json_agg(json_build_object('attempt', attempt, 'state', state, \
             'runner', runner_id, 'token', token, 'outcome', outcome, 'forged', forged_reports, \
             'lease_missing', lease_missing_since, \
             'dated', queued_at <= started_at AND started_at <= finished_at) ORDER BY attempt) \
             FROM attempts WHERE job_id = $1), \
           'same_times', (SELECT j.started_at = a.started_at AND j.finished_at = a.finished_at \
             FROM jobs j JOIN attempts a ON a.job_id = j.id AND a.attempt = j.attempt WHERE j.id = $1), \
           'stages', (SELECT json_agg(json_build_object('attempt', attempt, 'idx', idx, 'name', name, 'state', state, \
             'duration', duration_ms, 'error', error) ORDER BY attempt, idx) \
             FROM stage_runs WHERE job_id = $1), \
           'logs', (SELECT json_agg(json_build_object('attempt', attempt, 'seq', seq, 'at', at_ms, \
             'stage', stage, 'level', level, 'source', source, 'line', line) ORDER BY attempt, seq) \
             FROM log_lines WHERE job_id = $1), \
           'outbox', (SELECT json_agg(json_build_object('attempt', attempt, \
             'published', published_at IS NOT NULL) ORDER BY id) FROM outbox WHERE job_id = $1))::jsonb",
    )
    .bind(id)
    .fetch_one(&mut db)
    .await
    .unwrap()
}

/// A whole attempt reported at once is applied in one statement (`db::jobs::start_and_end`).
/// It stores exactly what the transaction's path stores for the same bodies sent as two
/// reports (the start, then the rest), and applies only once.
#[tokio::test]
async fn a_whole_attempt_in_one_statement_stores_what_two_reports_store() {
    let stage = |index: u32, name: &str, outcome, error: Option<&str>| ReportBody::StageFinished {
        index,
        name: name.into(),
        outcome,
        duration_ms: 5 + index as u64,
        error: error.map(Into::into),
    };
    let rest = vec![
        ReportBody::StageStarted {
            index: 0,
            name: "build".into(),
            timeout_ms: 60_000,
        },
        ReportBody::Logs {
            lines: vec![line(0, "compiling"), line(1, "done")],
        },
        stage(0, "build", StageOutcome::Succeeded, None),
        ReportBody::StageStarted {
            index: 1,
            name: "test".into(),
            timeout_ms: 60_000,
        },
        ReportBody::Logs {
            lines: vec![line(2, "boom")],
        },
        stage(1, "test", StageOutcome::Failed, Some("boom")),
        stage(
            2,
            "deploy",
            StageOutcome::Skipped,
            Some("an earlier stage failed"),
        ),
        // Edge cases the two paths must agree on: a second end of a stage (the first stays),
        // a stage started twice and never ended (its first start stays), a start after its own
        // end (the end stays), a line with a NUL character, a sequence number sent twice (the
        // first line stays).
        stage(0, "build again", StageOutcome::Failed, Some("late")),
        ReportBody::StageStarted {
            index: 3,
            name: "first start".into(),
            timeout_ms: 60_000,
        },
        ReportBody::StageStarted {
            index: 3,
            name: "second start".into(),
            timeout_ms: 60_000,
        },
        ReportBody::StageStarted {
            index: 2,
            name: "deploy".into(),
            timeout_ms: 60_000,
        },
        ReportBody::Logs {
            lines: vec![line(3, "a\0b"), line(2, "boom again")],
        },
        ReportBody::Finished {
            outcome: JobOutcome::Failed {
                stage: Some("test".into()),
                error: "boom".into(),
            },
        },
    ];
    let started = ReportBody::Started { ago_ms: 30 };

    // The transaction's path: `Started` alone, then the rest.
    let two = spawn_app().await;
    let taken = Taken::new(&two).await;
    taken.send(started.clone()).await;
    wait_for_rows(&two, "the job to run", || async {
        (job(&two, taken.id).await.state == JobState::Running).then_some(())
    })
    .await;
    let batch = ReportBody::Batch {
        bodies: rest.clone(),
    };
    taken.send(batch).await;
    wait_for_rows(&two, "the job to fail", || async {
        (job(&two, taken.id).await.state == JobState::Failed).then_some(())
    })
    .await;
    let by_transaction = stored(&two, taken.id).await;

    // One statement, called as the reports lane calls it.
    let one = spawn_app().await;
    let taken = Taken::new(&one).await;
    let mut bodies = vec![started];
    bodies.extend(rest);
    let report = taken.report(
        ReportBody::Batch {
            bodies: bodies.clone(),
        },
        &ReportBody::Started { ago_ms: 30 },
    );
    let (session_key, broker_user) = registration(&one, "runner-a").await;
    let identity = rivet_orchestrator::db::jobs::Identity {
        session_key: &session_key,
        broker_user: broker_user.as_deref(),
    };
    let whole = rivet_orchestrator::reports::whole_attempt(
        &report,
        &bodies[1..],
        Some(&rivet_core::definition::RetrySpec::default()),
        30,
        identity,
    )
    .expect("a start, stages and logs, and an end that is not retried: a whole attempt");
    let pool = sqlx::PgPool::connect(&one.database_url).await.unwrap();
    assert!(
        rivet_orchestrator::db::jobs::start_and_end(&pool, &whole)
            .await
            .unwrap(),
        "the job was waiting for this attempt"
    );
    let by_statement = stored(&one, taken.id).await;
    assert!(
        !rivet_orchestrator::db::jobs::start_and_end(&pool, &whole)
            .await
            .unwrap(),
        "applied once"
    );
    assert_eq!(
        stored(&one, taken.id).await,
        by_statement,
        "nothing changes the second time"
    );

    assert_eq!(by_statement, by_transaction);
    assert_eq!(by_statement["job"]["dated"], true, "{by_statement}");
    assert_eq!(by_statement["attempts"][0]["dated"], true, "{by_statement}");
    assert_eq!(by_statement["same_times"], true, "{by_statement}");
    let stages: Vec<(&str, &str)> = by_statement["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        stages,
        [
            ("build", "succeeded"),
            ("test", "failed"),
            ("deploy", "skipped"),
            ("first start", "running")
        ]
    );
    let lines: Vec<&str> = by_statement["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["line"].as_str().unwrap())
        .collect();
    assert_eq!(lines, ["compiling", "done", "boom", "a\u{FFFD}b"]);
    // The start is dated `ago_ms` (30) before the end, as the transaction's `start` dates it.
    let mut db = one.db().await;
    let exact: bool = sqlx::query_scalar(
        "SELECT j.started_at = GREATEST(j.created_at, a.queued_at, j.finished_at - interval '30 milliseconds') \
         FROM jobs j JOIN attempts a ON a.job_id = j.id AND a.attempt = j.attempt WHERE j.id = $1",
    )
    .bind(taken.id)
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert!(exact, "{by_statement}");
}

/// A report with a whole attempt whose end the job's retry rule covers (the default rule
/// retries `lost`) queues the next attempt: it is not applied as a final end.
#[tokio::test]
async fn a_whole_attempt_whose_end_is_retried_queues_the_next_attempt() {
    let app = spawn_app().await;
    let taken = Taken::new(&app).await;
    let body = ReportBody::Batch {
        bodies: vec![
            ReportBody::Started { ago_ms: 0 },
            ReportBody::Logs {
                lines: vec![line(0, "before the loss")],
            },
            ReportBody::Finished {
                outcome: JobOutcome::Lost {
                    reason: "the machine went away".into(),
                },
            },
        ],
    };
    taken.send(body).await;
    let seen = wait_for_rows(&app, "attempt 2 to be queued", || async {
        let j = job(&app, taken.id).await;
        (j.attempt == 2).then_some(j)
    })
    .await;
    assert_eq!(seen.state, JobState::Queued, "{seen:?}");
    let first = seen.attempts.iter().find(|a| a.attempt == 1).unwrap();
    assert!(
        matches!(&first.outcome, Some(JobOutcome::Lost { reason }) if reason == "the machine went away"),
        "{first:?}"
    );
    // The lines stay with attempt 1 (the job's logs default to its current attempt).
    let page: LogPage = app
        .get(&format!("/jobs/{}/logs?attempt=1", taken.id))
        .await
        .json()
        .await
        .unwrap();
    let lines: Vec<String> = page.lines.into_iter().map(|l| l.line).collect();
    assert_eq!(lines, ["before the loss"]);
}

/// A whole attempt with neither stages nor log lines (a definition that failed to load) is
/// applied too.
#[tokio::test]
async fn a_whole_attempt_without_stages_or_lines_is_applied() {
    let app = spawn_app().await;
    let taken = Taken::new(&app).await;
    let body = ReportBody::Batch {
        bodies: vec![
            ReportBody::Started { ago_ms: 0 },
            ReportBody::Finished {
                outcome: JobOutcome::Failed {
                    stage: None,
                    error: "the definition did not load".into(),
                },
            },
        ],
    };
    taken.send(body).await;
    let done = wait_for_rows(&app, "the job to fail", || async {
        let j = job(&app, taken.id).await;
        (j.state == JobState::Failed).then_some(j)
    })
    .await;
    assert_eq!(done.attempt, 1);
    assert!(
        matches!(&done.outcome, Some(JobOutcome::Failed { error, .. }) if error == "the definition did not load"),
        "{done:?}"
    );
    assert!(done.attempts[0].stages.is_empty(), "{done:?}");
    assert!(log_lines(&app, taken.id).await.is_empty());
}

/// A report that ends its attempt twice is applied up to the first end: the second finds the
/// attempt over (here a retry already queued), even though the report's start locked the job
/// row and read it once.
#[tokio::test]
async fn a_second_end_in_one_report_changes_nothing() {
    let app = spawn_app().await;
    let taken = Taken::new(&app).await;
    let body = ReportBody::Batch {
        bodies: vec![
            ReportBody::Started { ago_ms: 0 },
            // Lost is retried by default: attempt 2 is queued by this end.
            ReportBody::Finished {
                outcome: JobOutcome::Lost {
                    reason: "the first end".into(),
                },
            },
            ReportBody::Finished {
                outcome: JobOutcome::Succeeded,
            },
        ],
    };
    let report = taken.report(body.clone(), &body);
    taken.publish(&report).await;
    let seen = wait_for_rows(&app, "attempt 2 to be queued", || async {
        let j = job(&app, taken.id).await;
        (j.attempt == 2).then_some(j)
    })
    .await;
    assert_eq!(seen.state, JobState::Queued, "{seen:?}");
    assert_eq!(seen.attempts.len(), 2, "{:?}", seen.attempts);
    let first = seen.attempts.iter().find(|a| a.attempt == 1).unwrap();
    assert!(
        matches!(&first.outcome, Some(JobOutcome::Lost { reason }) if reason == "the first end"),
        "{first:?}"
    );
    assert_eq!(forged_count(&app, taken.id).await, 0);
}

/// The MAC of a report that starts an attempt covers everything in it: a batch signed for other
/// contents is refused as unsigned, and nothing of it is stored.
#[tokio::test]
async fn a_first_report_signed_for_other_contents_is_refused_whole() {
    let app = spawn_app().await;
    let taken = Taken::new(&app).await;
    let report = taken.report(whole_attempt(&["forged"]), &whole_attempt(&["real"]));
    taken.publish(&report).await;
    let seen = wait_for_rows(&app, "attempt 1 to be refused", || async {
        let j = job(&app, taken.id).await;
        (j.attempt == 2).then_some(j)
    })
    .await;
    let first = seen
        .attempts
        .iter()
        .find(|a| a.attempt == 1)
        .expect("attempt 1 is shown");
    let reason = match &first.outcome {
        Some(JobOutcome::Lost { reason }) => reason.clone(),
        other => panic!("attempt 1 should be lost: {other:?}"),
    };
    assert!(
        reason.contains("is not signed with its registration's current session"),
        "{reason}"
    );
    assert!(
        log_lines(&app, taken.id).await.is_empty(),
        "nothing of a refused report is stored"
    );
}
