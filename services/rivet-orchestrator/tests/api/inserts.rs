//! Grouped job inserts (`rivet_orchestrator::inserts`) and the statement they share
//! (`db::jobs::create`), against the orchestrator's real database.

use crate::helpers::*;
use crate::push_pipeline;
use rivet_orchestrator::db::jobs::{self, Created, NewJob};
use rivet_orchestrator::inserts::{Inserts, Queued, LANES};
use rivet_protocol::messages::JobDispatch;
use rivet_protocol::SCHEMA_VERSION;
use sqlx::{Connection, PgPool};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use uuid::Uuid;

/// The pushed pipeline's id and version.
async fn pipeline(db: &PgPool) -> (Uuid, i32) {
    sqlx::query_as("SELECT pipeline_id, version FROM pipeline_versions")
        .fetch_one(db)
        .await
        .unwrap()
}

/// A job of `pipeline` whose input `n` is its id and whose queue timeout is 60 s plus its id's
/// first byte, so that each job's row shows whether it got its own values.
fn new_job(pipeline: (Uuid, i32), class_key: &str, latest: bool, token: Option<&str>) -> NewJob {
    let job_id = Uuid::new_v4();
    let dispatch = JobDispatch {
        schema: SCHEMA_VERSION,
        job_id,
        attempt: 1,
        pipeline: "hello-fleet".into(),
        pipeline_version: pipeline.1,
        file_name: "hello.lua".into(),
        source: "return {}".into(),
        inputs: [("n".to_owned(), job_id.to_string())].into(),
        class_key: class_key.into(),
        requires: class_key.split(',').map(str::to_owned).collect(),
        timeout_ms: None,
    };
    NewJob::new(
        pipeline.0,
        &dispatch,
        &Default::default(),
        Duration::from_secs(60 + u64::from(job_id.as_bytes()[0])),
        latest,
        token,
    )
}

/// Rows of `table` whose job is one of `jobs`.
async fn rows(db: &PgPool, table: &str, jobs: &[Uuid]) -> i64 {
    let column = if table == "jobs" { "id" } else { "job_id" };
    sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {table} WHERE {column} = ANY($1)"
    ))
    .bind(jobs)
    .fetch_one(db)
    .await
    .unwrap()
}

/// How many of `jobs` were stored with their own values (see [`new_job`]).
async fn stored_as_submitted(db: &PgPool, jobs: &[Uuid]) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM jobs j JOIN outbox o ON o.job_id = j.id \
         WHERE j.id = ANY($1) AND j.inputs->>'n' = j.id::text \
           AND j.queue_timeout_ms = (60 + get_byte(uuid_send(j.id), 0)) * 1000 \
           AND o.payload->>'job_id' = j.id::text AND o.payload->'inputs'->>'n' = j.id::text",
    )
    .bind(jobs)
    .fetch_one(db)
    .await
    .unwrap()
}

/// Holds a lock that makes every job insert wait, until `COMMIT` on the connection returned.
async fn block_job_inserts(app: &TestApp) -> sqlx::PgConnection {
    let mut conn = sqlx::PgConnection::connect(&app.database_url)
        .await
        .unwrap();
    for statement in ["BEGIN", "LOCK TABLE jobs IN EXCLUSIVE MODE"] {
        sqlx::query(statement).execute(&mut conn).await.unwrap();
    }
    conn
}

async fn release(mut lock: sqlx::PgConnection) {
    sqlx::query("COMMIT").execute(&mut lock).await.unwrap();
}

/// Queues `jobs` in this order; each is queued when this returns.
async fn queue(inserts: &Inserts, jobs: &[NewJob]) -> Vec<Queued> {
    let mut queued = Vec::new();
    for job in jobs {
        queued.push(inserts.queue(job.clone()).await.unwrap());
    }
    queued
}

/// Insert statements the lanes started so far.
fn statements(inserts: &Inserts) -> u64 {
    *inserts.statements().borrow()
}

/// Queues one job per lane, each once the previous one's lane started its statement: every
/// lane then waits on the lock with one job.
async fn occupy_every_lane(inserts: &Inserts, version: (Uuid, i32)) -> Vec<Queued> {
    let mut started = inserts.statements();
    let mut occupied = Vec::new();
    for lane in 1..=LANES as u64 {
        occupied.extend(queue(inserts, &[new_job(version, "process", false, None)]).await);
        tokio::time::timeout(Duration::from_secs(20), started.wait_for(|&n| n == lane))
            .await
            .expect("a lane takes the job within 20 s")
            .unwrap();
    }
    occupied
}

/// An orchestrator with its pipeline, and insert lanes of the test's own, every lane holding
/// one job and waiting on a lock the test holds.
struct Busy {
    app: TestApp,
    db: PgPool,
    version: (Uuid, i32),
    inserts: Inserts,
    relay: Arc<Notify>,
    lock: sqlx::PgConnection,
    occupied: Vec<Queued>,
}

async fn busy_lanes() -> Busy {
    let app = spawn_app().await;
    push_pipeline(&app).await;
    let db = PgPool::connect(&app.database_url).await.unwrap();
    let version = pipeline(&db).await;
    let relay = Arc::new(Notify::new());
    let inserts = Inserts::start(&db, relay.clone());
    let lock = block_job_inserts(&app).await;
    let occupied = occupy_every_lane(&inserts, version).await;
    Busy {
        app,
        db,
        version,
        inserts,
        relay,
        lock,
        occupied,
    }
}

async fn revoked_token(db: &PgPool) {
    sqlx::query(
        "INSERT INTO tokens (id, name, hash, is_admin, revoked_at) VALUES ($1, 'old', 'revoked-hash', true, now())",
    )
    .bind(Uuid::new_v4())
    .execute(db)
    .await
    .unwrap();
}

#[tokio::test]
async fn each_job_of_one_statement_gets_its_own_checks() {
    let app = spawn_app().await;
    push_pipeline(&app).await;
    let db = PgPool::connect(&app.database_url).await.unwrap();
    let first = pipeline(&db).await;
    // A second version, so that a job taking the first for the latest is refused.
    push_pipeline(&app).await;
    let latest: i32 = sqlx::query_scalar("SELECT max(version) FROM pipeline_versions")
        .fetch_one(&db)
        .await
        .unwrap();
    let second = (first.0, latest);
    revoked_token(&db).await;
    sqlx::query(
        "INSERT INTO tokens (id, name, hash, is_admin) VALUES ($1, 'live', 'live-hash', true)",
    )
    .bind(Uuid::new_v4())
    .execute(&db)
    .await
    .unwrap();

    let batch = [
        new_job(second, "process", true, Some("revoked-hash")),
        new_job(first, "process", true, None),
        new_job(second, "process", true, Some("live-hash")),
        new_job(first, "process", false, None),
        new_job(second, "http,process", false, None),
    ];
    let created = jobs::create(&db, &batch).await.unwrap();
    assert!(matches!(
        created[..],
        [
            Created::Revoked,
            Created::NewerVersion,
            Created::At(_),
            Created::At(_),
            Created::At(_)
        ]
    ));
    let ids: Vec<Uuid> = batch.iter().map(|j| j.job_id).collect();
    let inserted = &ids[2..];
    for table in ["jobs", "attempts", "outbox"] {
        assert_eq!(rows(&db, table, &ids).await, 3, "{table}");
        assert_eq!(rows(&db, table, inserted).await, 3, "{table}");
    }
    assert_eq!(stored_as_submitted(&db, inserted).await, 3);
    // The new class came with its job, its requirement set stored.
    let requires: Vec<String> =
        sqlx::query_scalar("SELECT requires FROM classes WHERE class_key = 'http,process'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(requires, ["http", "process"]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submissions_queued_behind_busy_lanes_share_one_statement() {
    let b = busy_lanes().await;
    let jobs: Vec<NewJob> = (0..40)
        .map(|_| new_job(b.version, "process", false, None))
        .collect();
    // Queued while every lane waits: the first lane free takes them all.
    let submitted = queue(&b.inserts, &jobs).await;
    release(b.lock).await;
    for created in b.occupied.into_iter().chain(submitted) {
        assert!(matches!(created.answer().await, Ok(Created::At(_))));
    }
    // The first lane free took all that waited.
    assert_eq!(statements(&b.inserts), LANES as u64 + 1);
    let ids: Vec<Uuid> = jobs.iter().map(|j| j.job_id).collect();
    assert_eq!(rows(&b.db, "jobs", &ids).await, 40);
    assert_eq!(rows(&b.db, "outbox", &ids).await, 40);
    assert_eq!(stored_as_submitted(&b.db, &ids).await, 40);
    // The relay was told there is something to publish.
    tokio::time::timeout(Duration::from_secs(20), b.relay.notified())
        .await
        .expect("the lanes wake the relay");
    b.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_fails_its_group_fails_alone() {
    let b = busy_lanes().await;
    // Queued together, so taken as one group: the middle job names a version that does not
    // exist (its foreign key fails the statement).
    let group = [
        new_job(b.version, "process", false, None),
        new_job((b.version.0, b.version.1 + 7), "process", false, None),
        new_job(b.version, "process", false, None),
    ];
    let submitted = queue(&b.inserts, &group).await;
    release(b.lock).await;
    for created in b.occupied {
        assert!(matches!(created.answer().await, Ok(Created::At(_))));
    }
    let mut answers = Vec::new();
    for created in submitted {
        answers.push(created.answer().await);
    }
    assert!(matches!(answers[0], Ok(Created::At(_))), "{:?}", answers[0]);
    let error = answers[1]
        .as_ref()
        .expect_err("a version that does not exist");
    assert!(
        error.to_string().contains("foreign key"),
        "the job's own error: {error}"
    );
    assert!(matches!(answers[2], Ok(Created::At(_))), "{:?}", answers[2]);
    // The group's statement, then each of its jobs alone.
    assert_eq!(statements(&b.inserts), LANES as u64 + 1 + 3);
    let ids: Vec<Uuid> = group.iter().map(|j| j.job_id).collect();
    assert_eq!(rows(&b.db, "jobs", &ids).await, 2);
    assert_eq!(rows(&b.db, "outbox", &ids).await, 2);
    b.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_job_of_a_group_gets_its_own_answer() {
    let b = busy_lanes().await;
    revoked_token(&b.db).await;
    let group = [
        new_job(b.version, "process", false, Some("revoked-hash")),
        new_job(b.version, "process", false, None),
        new_job(b.version, "process", false, None),
    ];
    let submitted = queue(&b.inserts, &group).await;
    release(b.lock).await;
    let mut answers = Vec::new();
    for created in b.occupied.into_iter().chain(submitted) {
        answers.push(created.answer().await.unwrap());
    }
    assert_eq!(statements(&b.inserts), LANES as u64 + 1, "one group");
    assert!(
        matches!(
            answers[LANES..],
            [Created::Revoked, Created::At(_), Created::At(_)]
        ),
        "{answers:?}"
    );
    let ids: Vec<Uuid> = group.iter().map(|j| j.job_id).collect();
    assert_eq!(rows(&b.db, "jobs", &ids[..1]).await, 0);
    assert_eq!(stored_as_submitted(&b.db, &ids[1..]).await, 2);
    b.app.stop().await;
}

/// PostgreSQL out of reach is every job's trouble: each caller of a group hears it once, as
/// "unreachable", and no job is tried again alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_fails_a_group_at_once() {
    // Nothing listens on port 1: each statement waits out the pool's acquire timeout.
    let db = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy("postgres://postgres@127.0.0.1:1/none")
        .unwrap();
    let inserts = Inserts::start(&db, Arc::new(Notify::new()));
    let version = (Uuid::new_v4(), 1);
    let occupied = occupy_every_lane(&inserts, version).await;
    let group: Vec<NewJob> = (0..10)
        .map(|_| new_job(version, "process", false, None))
        .collect();
    let submitted = queue(&inserts, &group).await;
    for answer in occupied.into_iter().chain(submitted) {
        let error = answer.answer().await.expect_err("no database");
        assert!(
            matches!(error, sqlx::Error::PoolTimedOut | sqlx::Error::Io(_)),
            "{error:?}"
        );
    }
    assert_eq!(statements(&inserts), LANES as u64 + 1);
}
