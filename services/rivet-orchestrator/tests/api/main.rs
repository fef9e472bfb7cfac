//! The orchestrator's HTTP API and report handling against real PostgreSQL, Redis and RabbitMQ.

mod auth;
mod dashboard;
mod forgery;
mod helpers;
mod inserts;
mod known_runners;
mod runner_users;
mod sources;

use helpers::*;
use redis::AsyncCommands;
use rivet_core::JobOutcome;
use rivet_protocol::http::{
    ApiError, JobState, JobView, LogPage, PipelineView, QueueView, TokenView,
};
use rivet_protocol::messages::{LogLine, ReportBody, RunnerReport};
use rivet_protocol::SCHEMA_VERSION;
use serde_json::json;
use std::time::Duration;

/// The pause between two polls: short beside any wait, long enough to leave the CPU to the
/// orchestrator a test waits on.
const POLL: Duration = Duration::from_millis(10);

const PIPELINE: &str = r#"return {
  name = "Hello Fleet",
  requires = {"process"},
  inputs = { who = {type = "string", default = "world"}, n = {type = "number", required = true} },
  stages = { { name = "greet", script = function() log.info("hi " .. env.get("who")) end } },
}"#;

/// Pushes [`PIPELINE`] (as `hello-fleet`), which must be accepted.
async fn push_pipeline(app: &TestApp) {
    let r = app.post("/pipelines", json!({"source": PIPELINE})).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
}

/// Attempt tokens of the runners the tests play.
const TOKEN_A: &str = "0123456789abcdef0123456789abcdef";
const TOKEN_B: &str = "fedcba9876543210fedcba9876543210";

#[tokio::test]
async fn every_api_call_needs_a_valid_token() {
    let app = spawn_app().await;
    for path in ["/pipelines", "/jobs", "/runners", "/queues", "/tokens"] {
        let r = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        let body: ApiError = r.json().await.unwrap();
        assert_eq!(body.code, "unauthorized");
        let r = app
            .http
            .get(app.url(path))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path} with a wrong token");
    }
    assert_eq!(
        app.http
            .get(format!("{}/healthz", app.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    app.stop().await;
}

#[tokio::test]
async fn tokens_are_created_once_listed_and_revoked() {
    let app = spawn_app().await;
    let r = app.post("/tokens", json!({"name": "ci"})).await;
    assert_eq!(r.status(), 201);
    let created: TokenView = r.json().await.unwrap();
    let secret = created.secret.clone().unwrap();
    // A non-admin token works for the API but cannot manage tokens.
    let r = app
        .http
        .get(app.url("/pipelines"))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = app
        .http
        .post(app.url("/tokens"))
        .bearer_auth(&secret)
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let listed: Vec<TokenView> = app.get("/tokens").await.json().await.unwrap();
    assert!(
        listed.iter().all(|t| t.secret.is_none()),
        "secrets are never listed"
    );
    assert!(listed.iter().any(|t| t.id == created.id));
    app.revoke_token(created.id).await;
    let r = app
        .http
        .get(app.url("/pipelines"))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a revoked token is refused");
    app.stop().await;
}

#[tokio::test]
async fn pipelines_are_validated_and_versioned() {
    let app = spawn_app().await;
    let r = app.post("/pipelines", json!({"source": PIPELINE})).await;
    assert_eq!(r.status(), 201);
    let v1: PipelineView = r.json().await.unwrap();
    assert_eq!(
        (v1.name.as_str(), v1.version, v1.class_key.as_str()),
        ("hello-fleet", 1, "process")
    );
    let v2: PipelineView = app
        .post("/pipelines", json!({"source": PIPELINE}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v2.version, 2);
    let shown: PipelineView = app
        .get("/pipelines/hello-fleet?version=1")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(shown.version, 1);
    assert_eq!(app.get("/pipelines/nope").await.status(), 404);

    let r = app
        .post(
            "/pipelines",
            json!({"source": "return { nmae = 'x', stages = {} }", "file_name": "bad.lua"}),
        )
        .await;
    assert_eq!(r.status(), 422);
    let err: ApiError = r.json().await.unwrap();
    assert_eq!(err.code, "invalid_definition");
    assert!(
        err.problems
            .iter()
            .any(|p| p.message.contains("did you mean `name`")),
        "{err:?}"
    );
    let r = app
        .post("/pipelines", json!({"source": "\u{1b}LuaT"}))
        .await;
    assert_eq!(r.status(), 422);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("policy violation [lua.bytecode]"));
    // Oversized bodies are refused before anything else.
    let huge = "x".repeat(3 << 20);
    let r = app.post("/pipelines", json!({"source": huge})).await;
    assert_eq!(r.status(), 413);
    app.stop().await;
}

/// Submitting a run checks the token in the statement that inserts the job, not before: a token
/// the orchestrator has seen and that was revoked since gets 401 and queues nothing, and every
/// other answer it could get (no such pipeline, wrong inputs, a malformed body) is 401 too.
#[tokio::test]
async fn a_revoked_token_submits_nothing_even_once_the_orchestrator_knows_it() {
    let app = spawn_app().await;
    push_pipeline(&app).await;
    let created: TokenView = app
        .post("/tokens", json!({"name": "ci"}))
        .await
        .json()
        .await
        .unwrap();
    let secret = created.secret.clone().unwrap();
    let submit = |path: &str, body: serde_json::Value| {
        app.http
            .post(app.url(path))
            .bearer_auth(&secret)
            .json(&body)
            .send()
    };
    // Known to the orchestrator from here on.
    let r = submit("/pipelines/hello-fleet/runs", json!({"inputs": {"n": "1"}}))
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = submit("/pipelines/nope/runs", json!({"inputs": {}}))
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "a live token is told what is wrong");
    app.revoke_token(created.id).await;
    for (path, body, what) in [
        (
            "/pipelines/hello-fleet/runs",
            json!({"inputs": {"n": "2"}}),
            "a valid run",
        ),
        (
            "/pipelines/nope/runs",
            json!({"inputs": {}}),
            "no such pipeline",
        ),
        (
            "/pipelines/hello-fleet/runs",
            json!({"inputs": {"n": "many"}}),
            "wrong inputs",
        ),
        (
            "/pipelines/hello-fleet/runs",
            json!({"inputs": 5}),
            "a malformed body",
        ),
    ] {
        let r = submit(path, body).await.unwrap();
        assert_eq!(r.status(), 401, "{what}");
        let err: ApiError = r.json().await.unwrap();
        assert_eq!(err.code, "unauthorized", "{what}");
    }
    let mut db = app.db().await;
    let (jobs,): (i64,) = sqlx::query_as("SELECT count(*) FROM jobs")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(jobs, 1, "only the run submitted before the revocation");
    let (outbox,): (i64,) = sqlx::query_as("SELECT count(*) FROM outbox")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(outbox, 1);
    app.stop().await;
}

/// A run of "the latest version" takes the version the orchestrator last found (no query), and
/// the job's insert checks it: after a push of a version with other inputs, a run is checked
/// against the new version and runs it, and the refused guess left no row behind.
#[tokio::test]
async fn a_run_takes_the_latest_version_even_when_the_orchestrator_guessed_an_older_one() {
    let app = spawn_app().await;
    push_pipeline(&app).await;
    let r = app
        .post("/pipelines/hello-fleet/runs", json!({"inputs": {"n": "1"}}))
        .await;
    assert_eq!(r.status(), 201);
    let first: JobView = r.json().await.unwrap();
    assert_eq!(first.pipeline_version, 1);
    // Version 2 needs one more input. The orchestrator's guess of the latest is still 1.
    let v2 = PIPELINE.replace(
        "n = {type = \"number\", required = true}",
        "n = {type = \"number\", required = true}, target = {type = \"string\", required = true}",
    );
    assert_ne!(v2, PIPELINE);
    let pushed: PipelineView = app
        .post("/pipelines", json!({"source": v2}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(pushed.version, 2);
    // Inputs right for version 2 only (version 1 does not declare `target`): they run, on
    // version 2, though the guess said 1.
    let r = app
        .post(
            "/pipelines/hello-fleet/runs",
            json!({"inputs": {"n": "3", "target": "prod"}}),
        )
        .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    let second: JobView = r.json().await.unwrap();
    assert_eq!(second.pipeline_version, 2);
    assert_eq!(
        second.inputs.get("target").map(String::as_str),
        Some("prod")
    );
    // Inputs right for version 1 only: checked against version 2.
    let r = app
        .post("/pipelines/hello-fleet/runs", json!({"inputs": {"n": "2"}}))
        .await;
    assert_eq!(r.status(), 422, "checked against version 2");
    let err: ApiError = r.json().await.unwrap();
    let fields: Vec<&str> = err.fields.iter().map(|f| f.field.as_str()).collect();
    assert_eq!(fields, ["target"], "{err:?}");
    // An explicit version is still honoured.
    let r = app
        .post(
            "/pipelines/hello-fleet/runs",
            json!({"version": 1, "inputs": {"n": "4"}}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let third: JobView = r.json().await.unwrap();
    assert_eq!(third.pipeline_version, 1);
    let mut db = app.db().await;
    let rows: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT pipeline_version, (SELECT count(*) FROM outbox o WHERE o.job_id = j.id) \
         FROM jobs j ORDER BY created_at",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(
        rows,
        [(1, 1), (2, 1), (1, 1)],
        "three jobs, each with its outbox row"
    );
    app.stop().await;
}

#[tokio::test]
async fn runs_check_inputs_and_queue_an_unschedulable_job_visibly() {
    let app = spawn_app().await;
    push_pipeline(&app).await;
    let r = app
        .post(
            "/pipelines/hello-fleet/runs",
            json!({"inputs": {"n": "many", "whoo": "x"}}),
        )
        .await;
    assert_eq!(r.status(), 422);
    let err: ApiError = r.json().await.unwrap();
    assert_eq!(err.code, "invalid_inputs");
    let fields: Vec<&str> = err.fields.iter().map(|f| f.field.as_str()).collect();
    assert_eq!(fields, ["whoo", "n"], "{err:?}");

    let r = app
        .post("/pipelines/hello-fleet/runs", json!({"inputs": {"n": "3"}}))
        .await;
    assert_eq!(r.status(), 201);
    let job: JobView = r.json().await.unwrap();
    assert_eq!(job.state, JobState::Queued);
    assert_eq!(
        job.inputs.get("who").map(String::as_str),
        Some("world"),
        "defaults are filled in"
    );
    let s = job.schedulability.unwrap();
    assert!(!s.schedulable && s.reason == "no runner is online", "{s:?}");

    // The relay publishes it: the class queue holds one message.
    let depth = async {
        loop {
            let queues: Vec<QueueView> = app.get("/queues").await.json().await.unwrap();
            if queues
                .iter()
                .any(|q| q.class_key == "process" && q.depth == 1)
            {
                return queues;
            }
            tokio::time::sleep(POLL).await;
        }
    };
    let queues = tokio::time::timeout(Duration::from_secs(10), depth)
        .await
        .expect("the job reaches its class queue");
    let q = queues.iter().find(|q| q.class_key == "process").unwrap();
    assert_eq!(q.requires, ["process"]);
    assert!(!q.schedulability.schedulable);
    assert!(q.oldest_age_ms.is_some());

    let listed: Vec<JobView> = app.get("/jobs?state=queued").await.json().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(app.get("/jobs?state=bogus").await.status(), 400);
    app.stop().await;
}

/// Reports are applied only from the lease holder, only for the current attempt, idempotently.
#[tokio::test]
async fn reports_are_fenced_by_lease_and_attempt() {
    let app = spawn_app().await;
    // Play the runner: join, take the job from its queue, take the lease, report.
    let Taken {
        id,
        session_key,
        broker,
        reply_to,
        orders,
    } = Taken::new(&app).await;
    let keys = rivet_protocol::redis_keys::Keys::new(&app.namespace);
    let mut redis = redis::aio::ConnectionManager::new(redis::Client::open(REDIS).unwrap())
        .await
        .unwrap();
    let report = |runner: &str, attempt: u32, body: ReportBody| {
        let token = if runner == "runner-a" {
            TOKEN_A
        } else {
            TOKEN_B
        };
        RunnerReport {
            schema: SCHEMA_VERSION,
            job_id: id,
            attempt,
            runner_id: runner.into(),
            token: token.into(),
            session_mac: rivet_protocol::identity::session_mac(
                &session_key,
                id,
                attempt,
                runner,
                token,
                &body,
            ),
            body,
        }
    };
    let line = |seq: u64| LogLine {
        seq,
        at_ms: seq,
        stage: Some("greet".into()),
        level: "info".into(),
        source: "script".into(),
        line: format!("line {seq}"),
    };
    let sends = [
        report("runner-b", 1, ReportBody::Started { ago_ms: 0 }), // not the lease holder: ignored
        report("runner-a", 2, ReportBody::Started { ago_ms: 0 }), // wrong attempt: ignored
        report("runner-a", 1, ReportBody::Started { ago_ms: 0 }),
        report(
            "runner-a",
            1,
            ReportBody::StageStarted {
                index: 0,
                name: "greet".into(),
                timeout_ms: 1000,
            },
        ),
        report(
            "runner-a",
            1,
            ReportBody::Logs {
                lines: vec![line(0), line(1)],
            },
        ),
        report(
            "runner-a",
            1,
            ReportBody::Logs {
                lines: vec![line(1), line(2)],
            },
        ), // redelivered overlap
        report(
            "runner-b",
            1,
            ReportBody::Logs {
                lines: vec![line(3)],
            },
        ), // forged: ignored
        report(
            "runner-a",
            1,
            ReportBody::StageFinished {
                index: 0,
                name: "greet".into(),
                outcome: rivet_core::StageOutcome::Succeeded,
                duration_ms: 5,
                error: None,
            },
        ),
        report(
            "runner-a",
            1,
            ReportBody::Finished {
                outcome: JobOutcome::Succeeded,
            },
        ),
        report(
            "runner-a",
            1,
            ReportBody::Finished {
                outcome: JobOutcome::Failed {
                    stage: None,
                    error: "late duplicate".into(),
                },
            },
        ),
    ];
    for r in &sends {
        broker.publish_report(&reply_to, r).await.unwrap();
    }
    let finished = async {
        loop {
            let j: JobView = app
                .get(&format!("/jobs/{}", id))
                .await
                .json()
                .await
                .unwrap();
            if j.state.is_final() {
                return j;
            }
            tokio::time::sleep(POLL).await;
        }
    };
    let done = tokio::time::timeout(Duration::from_secs(10), finished)
        .await
        .expect("the job finishes");
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(done.runner_id.as_deref(), Some("runner-a"));
    assert_eq!(done.attempts.len(), 1);
    assert_eq!(done.attempts[0].stages[0].state, "succeeded");
    let page: LogPage = app
        .get(&format!("/jobs/{}/logs", id))
        .await
        .json()
        .await
        .unwrap();
    let lines: Vec<&str> = page.lines.iter().map(|l| l.line.as_str()).collect();
    assert_eq!(lines, ["line 0", "line 1", "line 2"]);
    assert!(page.complete);
    // After the commit that made the job final, the orchestrator closes the fence and then
    // releases the lease: once the lease is gone, the fence must already say the job is over.
    let released = async {
        loop {
            let lease: Option<String> = redis.get(keys.lease(id)).await.unwrap();
            if lease.is_none() {
                return;
            }
            tokio::time::sleep(POLL).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), released)
        .await
        .expect("the lease is released when the attempt finishes");
    let fence: Option<String> = redis.get(keys.fence(id)).await.unwrap();
    assert_eq!(
        fence.as_deref(),
        Some("-1"),
        "the fence closed at attempt 1"
    );
    orders.cancel().await.ok();
    broker.close().await;
    app.stop().await;
}

/// `GET /jobs/{id}` reads the job, its attempts and their stages in one snapshot: a change
/// committed between its statements shows in none of them or in all. The test holds the
/// attempts table locked until the request waits on it (after it read the job), then starts
/// the attempt and lets the request go on.
#[tokio::test]
async fn a_job_and_its_attempts_are_shown_from_one_snapshot() {
    use sqlx::Connection;
    let app = spawn_app().await;
    let taken = Taken::new(&app).await;
    let mut db = app.db().await;
    let mut tx = db.begin().await.unwrap();
    sqlx::query("LOCK TABLE attempts IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .unwrap();
    let shown = tokio::spawn({
        let (http, url, token) = (
            app.http.clone(),
            app.url(&format!("/jobs/{}", taken.id)),
            app.token.clone(),
        );
        async move {
            let r = http.get(url).bearer_auth(token).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.json::<JobView>().await.unwrap()
        }
    });
    // PostgreSQL signals no one when a backend starts waiting on a lock: its own activity view
    // is read until it shows the request's attempts statement waiting, under a timeout.
    let mut watch = app.db().await;
    let waiting = async {
        loop {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND wait_event_type = 'Lock' \
                 AND query LIKE 'SELECT attempt, state, runner_id, outcome%'",
            )
            .fetch_one(&mut watch)
            .await
            .unwrap();
            if n > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the request waits on the attempts table, having read the job");
    for sql in [
        "UPDATE jobs SET state = 'running', runner_id = 'runner-a', started_at = now() WHERE id = $1",
        "UPDATE attempts SET state = 'running', runner_id = 'runner-a', started_at = now() \
         WHERE job_id = $1 AND attempt = 1",
    ] {
        sqlx::query(sql)
            .bind(taken.id)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(10), shown)
        .await
        .expect("the request answers once the lock is gone")
        .unwrap();
    assert_eq!(
        (seen.state, seen.attempts[0].state),
        (JobState::Queued, JobState::Queued),
        "read before the change, both of them: {seen:?}"
    );
    let now = job(&app, taken.id).await;
    assert_eq!(
        (now.state, now.attempts[0].state),
        (JobState::Running, JobState::Running)
    );
    app.stop().await;
}
