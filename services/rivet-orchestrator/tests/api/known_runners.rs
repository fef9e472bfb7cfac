//! A runner's registration remembered from its last `Started` (`reports::KnownRunner`) lets its
//! next whole attempt be applied in one statement, which reads the registration again. Whatever
//! changed in the registration since, that statement must not apply, and the report must get
//! the answer it gets from an orchestrator that never saw the runner.
//!
//! Most changes are made in the database directly, so that nothing else (a closed broker
//! connection, a deleted broker user, a session key cleared with the revocation) stands in the
//! report's way: only the statement's own checks do. Each test also says whether the statement
//! applied the report (`remembered_starts`), so none passes on the other path alone.

use crate::helpers::*;
use crate::TOKEN_A;
use rivet_core::{JobOutcome, StageOutcome};
use rivet_protocol::http::{JobState, JobView};
use rivet_protocol::messages::{ReportBody, RunnerReport};
use rivet_protocol::SCHEMA_VERSION;
use serde_json::json;

/// A job only a runner labelled `deploy=yes` and `zone=eu` may start, retried once if it fails.
const DEPLOY: &str = r#"return { name = "deploy",
  requires = {"process", "label:deploy=yes", "label:zone=eu"},
  retries = { count = 1, on = {"failed"} },
  stages = { { name = "ship", script = function() log.info("shipped") end } } }"#;

/// An orchestrator, and `runner-a` registered with `deploy=yes`, `zone=eu` and `gpu=no`,
/// connected as its broker user (or the shared one).
struct Setup {
    app: TestApp,
    session_key: String,
    broker: rivet_amqp::Broker,
}

async fn setup(broker_users: RunnerUsersMode) -> Setup {
    let app = spawn_app_with_broker_users(broker_users).await;
    let r = app.post("/pipelines", json!({"source": DEPLOY})).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    let (_, session) = app
        .register_runner(
            "runner-a",
            json!({"deploy": "yes", "zone": "eu", "gpu": "no"}),
        )
        .await;
    let broker = testing::runner_broker(&app.namespace, &session).await;
    Setup {
        app,
        session_key: session.session_key,
        broker,
    }
}

/// Submits a `deploy` job, takes it as `runner-a` (its lease with token A) and reports its whole
/// attempt (`Started`, the stage, a line, `Finished` with `outcome`) in one report signed with
/// `session_key`, published on `via`.
async fn run_whole_attempt(
    s: &Setup,
    session_key: &str,
    via: &rivet_amqp::Broker,
    outcome: JobOutcome,
) -> uuid::Uuid {
    let submitted: JobView = s
        .app
        .post("/pipelines/deploy/runs", json!({}))
        .await
        .json()
        .await
        .unwrap();
    let (_, reply_to) = take(&s.app, &s.broker, &submitted).await;
    let body = ReportBody::Batch {
        bodies: vec![
            ReportBody::Started { ago_ms: 2 },
            ReportBody::StageStarted {
                index: 0,
                name: "ship".into(),
                timeout_ms: 60_000,
            },
            ReportBody::Logs {
                lines: vec![rivet_protocol::messages::LogLine {
                    seq: 0,
                    at_ms: 1,
                    stage: Some("ship".into()),
                    level: "info".into(),
                    source: "script".into(),
                    line: "shipped".into(),
                }],
            },
            ReportBody::StageFinished {
                index: 0,
                name: "ship".into(),
                outcome: StageOutcome::Succeeded,
                duration_ms: 1,
                error: None,
            },
            ReportBody::Finished { outcome },
        ],
    };
    let report = RunnerReport {
        schema: SCHEMA_VERSION,
        job_id: submitted.id,
        attempt: 1,
        runner_id: "runner-a".into(),
        token: TOKEN_A.into(),
        session_mac: rivet_protocol::identity::session_mac(
            session_key,
            submitted.id,
            1,
            "runner-a",
            TOKEN_A,
            &body,
        ),
        body,
    };
    via.publish_report(&reply_to, &report).await.unwrap();
    submitted.id
}

/// What differs between `runner-a`'s first job (which succeeded, so its registration is
/// remembered) and its second.
enum Change {
    /// Nothing.
    Nothing,
    /// This statement changed its registration in the database.
    Registration(&'static str),
    /// An admin revoked it (`DELETE /runners/registrations/runner-a`).
    Revoked,
    /// The second report is signed with another key.
    Key,
    /// The second report is published by another runner's broker user.
    Publisher,
    /// The second attempt failed, which the job's retry rule covers.
    Failed,
}

/// What happened to `runner-a`'s second job after `change`, with runners' broker users made
/// per runner or shared.
async fn second_job_after(broker_users: RunnerUsersMode, change: Change) -> (Setup, JobView) {
    let s = setup(broker_users).await;
    let first = run_whole_attempt(&s, &s.session_key, &s.broker, JobOutcome::Succeeded).await;
    let done = wait_for_rows(&s.app, "the first job to succeed", || async {
        let j = job(&s.app, first).await;
        j.state.is_final().then_some(j)
    })
    .await;
    assert_eq!(done.state, JobState::Succeeded, "{:?}", done.outcome);
    assert_eq!(
        s.app.remembered_starts(),
        0,
        "a runner not seen before is checked by the identity check's own statement"
    );
    let mut key = s.session_key.clone();
    let mut other = None;
    let mut outcome = JobOutcome::Succeeded;
    match change {
        Change::Nothing => {}
        Change::Registration(sql) => {
            let mut db = s.app.db().await;
            let changed = sqlx::query(sql).execute(&mut db).await.unwrap();
            assert_eq!(changed.rows_affected(), 1, "{sql}");
        }
        Change::Revoked => {
            let r = s
                .app
                .http
                .delete(s.app.url("/runners/registrations/runner-a"))
                .bearer_auth(&s.app.token)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
        Change::Key => key = format!("{key}-not-it"),
        Change::Publisher => {
            let (_, session) = s.app.register_runner("runner-b", json!({})).await;
            other = Some(testing::runner_broker(&s.app.namespace, &session).await);
        }
        Change::Failed => {
            outcome = JobOutcome::Failed {
                stage: Some("ship".into()),
                error: "boom".into(),
            }
        }
    }
    let via = other.as_ref().unwrap_or(&s.broker);
    let second = run_whole_attempt(&s, &key, via, outcome).await;
    // The job's own row says when its first attempt was decided (ended, or refused) and the
    // attempt's row when a report was counted as forged; the job is read again after, whole.
    wait_for_rows(
        &s.app,
        "the second job's first attempt to be decided",
        || async {
            let mut db = s.app.db().await;
            let (state, attempt, forged): (String, i32, i32) = sqlx::query_as(
                "SELECT j.state, j.attempt, a.forged_reports FROM jobs j \
             JOIN attempts a ON a.job_id = j.id AND a.attempt = 1 WHERE j.id = $1",
            )
            .bind(second)
            .fetch_one(&mut db)
            .await
            .unwrap();
            (state != "queued" || attempt > 1 || forged > 0).then_some(())
        },
    )
    .await;
    let seen = job(&s.app, second).await;
    (s, seen)
}

/// Attempt 1 of `job` was refused (it ended `lost` for a reason starting with `why`) by the
/// path that reads the registration afresh, not by the remembered one's statement.
fn assert_refused(s: &Setup, job: &JobView, why: &str) {
    match job.attempts.first().and_then(|a| a.outcome.as_ref()) {
        Some(JobOutcome::Lost { reason }) => assert!(reason.starts_with(why), "{reason}"),
        other => panic!("attempt 1 was not refused: {other:?} (job {:?})", job.state),
    }
    assert_eq!(s.app.remembered_starts(), 0);
}

/// Published by a broker user that is not the runner's: a forgery, counted, and the job still
/// waits for its first attempt.
async fn assert_forged(s: &Setup, second: &JobView) {
    assert_eq!(
        (second.state, second.attempt),
        (JobState::Queued, 1),
        "{:?}",
        second.attempts
    );
    let mut db = s.app.db().await;
    let (forged, state): (i32, String) = sqlx::query_as(
        "SELECT forged_reports, state FROM attempts WHERE job_id = $1 AND attempt = 1",
    )
    .bind(second.id)
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!((forged, state.as_str()), (1, "queued"));
    assert_eq!(s.app.remembered_starts(), 0);
}

/// The second job succeeded on `runner-a`, applied by the statement against the remembered
/// registration (counted just after its commit).
async fn assert_applied_as_remembered(s: &Setup, second: &JobView) {
    assert_eq!(second.state, JobState::Succeeded, "{:?}", second.outcome);
    assert_eq!(second.runner_id.as_deref(), Some("runner-a"));
    assert_eq!(second.attempts.len(), 1);
    s.app.wait_for_remembered_starts(1).await;
    assert_eq!(s.app.remembered_starts(), 1);
}

const MANAGED: RunnerUsersMode = RunnerUsersMode::Managed;
const SHARED: RunnerUsersMode = RunnerUsersMode::Shared;

#[tokio::test]
async fn a_remembered_runner_with_its_registration_unchanged_runs_its_next_job() {
    let (s, second) = second_job_after(MANAGED, Change::Nothing).await;
    assert_applied_as_remembered(&s, &second).await;
    s.app.stop().await;
}

/// With shared broker users a registration has no broker user of its own (NULL), and any
/// publisher will do, on both paths.
#[tokio::test]
async fn a_remembered_runner_with_shared_broker_users_runs_its_next_job() {
    let (s, second) = second_job_after(SHARED, Change::Nothing).await;
    assert_applied_as_remembered(&s, &second).await;
    s.app.stop().await;
}

/// With shared broker users revoking cannot shut the runner out of the broker: only the
/// registration stops it.
#[tokio::test]
async fn a_remembered_runner_revoked_by_an_admin_starts_nothing() {
    let (s, second) = second_job_after(SHARED, Change::Revoked).await;
    assert_refused(
        &s,
        &second,
        "policy violation [runner.identity]: runner `runner-a` is not a live registration",
    );
    s.app.stop().await;
}

/// Revoked with its session key left in place (revoking clears it too), so that only the
/// statement's `revoked_at` check stands in the way.
#[tokio::test]
async fn a_remembered_runner_whose_registration_was_revoked_starts_nothing() {
    let (s, second) = second_job_after(
        MANAGED,
        Change::Registration(
            "UPDATE runner_registrations SET revoked_at = now() WHERE name = 'runner-a'",
        ),
    )
    .await;
    assert_refused(
        &s,
        &second,
        "policy violation [runner.identity]: runner `runner-a` is not a live registration",
    );
    s.app.stop().await;
}

#[tokio::test]
async fn a_remembered_runner_whose_session_was_replaced_starts_nothing() {
    let (s, second) = second_job_after(
        MANAGED,
        Change::Registration(
            "UPDATE runner_registrations SET session_key = md5(session_key) WHERE name = 'runner-a'",
        ),
    )
    .await;
    assert_refused(
        &s,
        &second,
        "policy violation [runner.identity]: `Started` of runner `runner-a` is not signed \
         with its registration's current session",
    );
    s.app.stop().await;
}

/// One of the job's two labels withdrawn (the API cannot change a registration's labels; the
/// statement must not trust them to stay).
#[tokio::test]
async fn a_remembered_runner_whose_labels_no_longer_cover_the_job_starts_nothing() {
    let (s, second) = second_job_after(
        MANAGED,
        Change::Registration(
            r#"UPDATE runner_registrations SET labels = '{"deploy": "yes", "zone": "us", "gpu": "no"}' WHERE name = 'runner-a'"#,
        ),
    )
    .await;
    assert_refused(
        &s,
        &second,
        "policy violation [runner.labels]: runner `runner-a` is not assigned label:zone=eu",
    );
    s.app.stop().await;
}

#[tokio::test]
async fn a_remembered_runner_must_still_sign_its_start_with_its_session() {
    let (s, second) = second_job_after(MANAGED, Change::Key).await;
    assert_refused(
        &s,
        &second,
        "policy violation [runner.identity]: `Started` of runner `runner-a` is not signed \
         with its registration's current session",
    );
    s.app.stop().await;
}

#[tokio::test]
async fn a_remembered_runners_start_published_by_another_broker_user_is_an_impostor() {
    let (s, second) = second_job_after(MANAGED, Change::Publisher).await;
    assert_forged(&s, &second).await;
    s.app.stop().await;
}

#[tokio::test]
async fn a_remembered_runner_whose_broker_user_changed_is_an_impostor() {
    let (s, second) = second_job_after(
        MANAGED,
        Change::Registration(
            "UPDATE runner_registrations SET broker_user = broker_user || '-new' WHERE name = 'runner-a'",
        ),
    )
    .await;
    assert_forged(&s, &second).await;
    s.app.stop().await;
}

/// An end the job's retry rule covers queues the next attempt: the remembered registration's
/// statement (which only ends jobs) leaves it to the transaction's path.
#[tokio::test]
async fn a_remembered_runners_failed_attempt_is_retried_by_the_jobs_rule() {
    let (s, second) = second_job_after(MANAGED, Change::Failed).await;
    assert_eq!((second.state, second.attempt), (JobState::Queued, 2));
    assert!(
        matches!(second.attempts[0].outcome, Some(JobOutcome::Failed { .. })),
        "{:?}",
        second.attempts
    );
    assert_eq!(s.app.remembered_starts(), 0);
    s.app.stop().await;
}

/// Labels are a JSON object of strings in the database too (the statement and the identity
/// check read them the same way only then).
#[tokio::test]
async fn a_registrations_labels_are_strings_in_the_database_too() {
    let s = setup(MANAGED).await;
    let mut db = s.app.db().await;
    for labels in [
        r#"{"deploy": true}"#,
        r#"{"zone": 1}"#,
        r#"["deploy"]"#,
        r#""x""#,
    ] {
        let err = sqlx::query(
            "UPDATE runner_registrations SET labels = $1::jsonb WHERE name = 'runner-a'",
        )
        .bind(labels)
        .execute(&mut db)
        .await
        .expect_err(labels);
        assert_eq!(
            err.as_database_error().and_then(|e| e.code()).as_deref(),
            Some("23514"),
            "{labels}: {err}"
        );
    }
    s.app.stop().await;
}
