//! `jobs`, `attempts`, `stage_runs`, `outbox` and `classes`.

use rivet_core::{JobOutcome, StageOutcome};
use rivet_protocol::http::{AttemptView, JobState, JobView, StageView};
use rivet_protocol::messages::JobDispatch;
use sqlx::types::Json;
use sqlx::PgPool;
use std::collections::BTreeMap;
use uuid::Uuid;

/// What [`create`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// The job exists; its creation time (ms).
    At(i64),
    /// Nothing: the version was taken to be the latest, and a newer one exists.
    NewerVersion,
    /// Nothing: the token to check is revoked (or unknown).
    Revoked,
}

/// A job to create: its row, first attempt and outbox message, as [`create`] inserts them.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// The job.
    pub job_id: Uuid,
    /// Its pipeline.
    pub pipeline_id: Uuid,
    /// The pipeline's version it runs.
    pub version: i32,
    /// Its first attempt's number.
    pub attempt: i32,
    /// Its class.
    pub class_key: String,
    /// The class's requirement set (stored with the class, if the class is new).
    requires: String,
    /// Its inputs, as JSON.
    inputs: String,
    /// Its retry rule, as JSON.
    retry: String,
    /// How long it may wait in its queue.
    queue_timeout_ms: i64,
    /// The dispatch message the relay publishes, as JSON.
    payload: String,
    /// Whether `version` was taken to be the pipeline's latest without asking: then nothing is
    /// inserted when a newer version exists (the caller asks which is the latest and submits
    /// again).
    pub latest: bool,
    /// A token hash whose revocation nobody checked yet: then nothing is inserted unless that
    /// token is live (the check and the insert are one statement).
    pub token: Option<String>,
}

impl NewJob {
    /// The job `dispatch` describes, of pipeline `pipeline_id`.
    pub fn new(
        pipeline_id: Uuid,
        dispatch: &JobDispatch,
        retry: &rivet_core::definition::RetrySpec,
        queue_timeout: std::time::Duration,
        latest: bool,
        token: Option<&str>,
    ) -> Self {
        let json = |v: serde_json::Result<String>| v.expect("plain data serialises to JSON");
        NewJob {
            job_id: dispatch.job_id,
            pipeline_id,
            version: dispatch.pipeline_version,
            attempt: dispatch.attempt as i32,
            class_key: dispatch.class_key.clone(),
            requires: json(serde_json::to_string(&dispatch.requires)),
            inputs: json(serde_json::to_string(&dispatch.inputs)),
            retry: json(serde_json::to_string(retry)),
            queue_timeout_ms: i64::try_from(queue_timeout.as_millis()).unwrap_or(i64::MAX),
            payload: json(serde_json::to_string(dispatch)),
            latest,
            token: token.map(str::to_owned),
        }
    }
}

/// Creates queued jobs, each with its first attempt, its class (if new) and its outbox row:
/// once this returns, the relay will publish them. One answer per job, in order; each job's
/// checks ([`NewJob::latest`], [`NewJob::token`]) decide for that job alone. Atomic as a
/// whole: an error inserted nothing (callers that group submissions try each job again on its
/// own, so that one job's error stays its own).
///
/// One statement (data-modifying `WITH` clauses) for any number of jobs: one round trip and one
/// commit. The foreign keys of the attempt and outbox rows are checked at the end of the
/// statement, when the job rows exist.
pub async fn create(db: &PgPool, jobs: &[NewJob]) -> sqlx::Result<Vec<Created>> {
    let column = |f: fn(&NewJob) -> &str| jobs.iter().map(f).collect::<Vec<&str>>();
    let rows: Vec<(bool, bool, Option<i64>)> = sqlx::query_as(
        "WITH input AS (\
           SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::int[], $4::int[], $5::text[], $6::text[], \
                                $7::text[], $8::text[], $9::bigint[], $10::text[], $11::bool[], $12::text[]) \
           WITH ORDINALITY AS i(id, pipeline_id, version, attempt, class_key, requires, \
                                inputs, retry, queue_timeout_ms, payload, latest, token, n)), \
         checks AS (\
           SELECT i.*, \
             (i.token IS NULL OR EXISTS (\
                SELECT FROM tokens WHERE hash = i.token AND revoked_at IS NULL)) AS token_ok, \
             (NOT i.latest OR NOT EXISTS (\
                SELECT FROM pipeline_versions v \
                WHERE v.pipeline_id = i.pipeline_id AND v.version > i.version)) AS version_ok \
           FROM input i), \
         ok AS (SELECT * FROM checks WHERE token_ok AND version_ok), \
         class AS (\
           INSERT INTO classes (class_key, requires) \
           SELECT DISTINCT ON (class_key) class_key, \
             ARRAY(SELECT jsonb_array_elements_text(requires::jsonb)) FROM ok \
           ON CONFLICT (class_key) DO NOTHING), \
         job AS (\
           INSERT INTO jobs (id, pipeline_id, pipeline_version, inputs, class_key, state, attempt, retry, queue_timeout_ms) \
           SELECT id, pipeline_id, version, inputs::jsonb, class_key, 'queued', attempt, retry::jsonb, queue_timeout_ms \
           FROM ok RETURNING id, created_at), \
         attempt AS (\
           INSERT INTO attempts (job_id, attempt, state) SELECT id, attempt, 'queued' FROM ok), \
         outbox AS (\
           INSERT INTO outbox (job_id, attempt, payload) SELECT id, attempt, payload::jsonb FROM ok ORDER BY n) \
         SELECT c.token_ok, c.version_ok, (extract(epoch FROM j.created_at) * 1000)::bigint \
         FROM checks c LEFT JOIN job j ON j.id = c.id ORDER BY c.n",
    )
    .bind(jobs.iter().map(|j| j.job_id).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.pipeline_id).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.version).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.attempt).collect::<Vec<_>>())
    .bind(column(|j| &j.class_key))
    .bind(column(|j| &j.requires))
    .bind(column(|j| &j.inputs))
    .bind(column(|j| &j.retry))
    .bind(jobs.iter().map(|j| j.queue_timeout_ms).collect::<Vec<_>>())
    .bind(column(|j| &j.payload))
    .bind(jobs.iter().map(|j| j.latest).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.token.as_deref()).collect::<Vec<_>>())
    .fetch_all(db)
    .await?;
    if rows.len() != jobs.len() {
        return Err(sqlx::Error::Protocol(format!(
            "the job insert answered {} rows for {} jobs",
            rows.len(),
            jobs.len()
        )));
    }
    rows.into_iter()
        .map(|row| match row {
            (false, _, _) => Ok(Created::Revoked),
            (true, false, _) => Ok(Created::NewerVersion),
            (true, true, Some(at)) => Ok(Created::At(at)),
            (true, true, None) => Err(sqlx::Error::Protocol(
                "the job insert returned no creation time".into(),
            )),
        })
        .collect()
}

#[derive(sqlx::FromRow)]
struct JobRow {
    id: Uuid,
    project: String,
    pipeline: String,
    pipeline_version: i32,
    state: String,
    attempt: i32,
    inputs: Json<BTreeMap<String, String>>,
    class_key: String,
    requires: Vec<String>,
    created_at_ms: i64,
    started_at_ms: Option<i64>,
    finished_at_ms: Option<i64>,
    outcome: Option<Json<JobOutcome>>,
    runner_id: Option<String>,
}

const SELECT_JOB: &str = "SELECT j.id, pr.name AS project, p.name AS pipeline, j.pipeline_version, j.state, j.attempt, j.inputs, j.class_key, \
     c.requires, (extract(epoch FROM j.created_at) * 1000)::bigint AS created_at_ms, \
     (extract(epoch FROM j.started_at) * 1000)::bigint AS started_at_ms, \
     (extract(epoch FROM j.finished_at) * 1000)::bigint AS finished_at_ms, j.outcome, j.runner_id \
     FROM jobs j JOIN pipelines p ON p.id = j.pipeline_id JOIN projects pr ON pr.id = p.project_id \
     JOIN classes c ON c.class_key = j.class_key";

impl From<JobRow> for JobView {
    fn from(r: JobRow) -> Self {
        JobView {
            id: r.id,
            project: r.project,
            pipeline: r.pipeline,
            pipeline_version: r.pipeline_version,
            state: JobState::parse(&r.state).unwrap_or(JobState::Queued),
            attempt: r.attempt as u32,
            inputs: r.inputs.0,
            class_key: r.class_key,
            requires: r.requires,
            created_at_ms: r.created_at_ms,
            started_at_ms: r.started_at_ms,
            finished_at_ms: r.finished_at_ms,
            outcome: r.outcome.map(|o| o.0),
            runner_id: r.runner_id,
            schedulability: None,
            attempts: Vec::new(),
        }
    }
}

/// One job, without attempts.
pub async fn get(db: &PgPool, id: Uuid) -> sqlx::Result<Option<JobView>> {
    let row: Option<JobRow> = sqlx::query_as(&format!("{SELECT_JOB} WHERE j.id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await?;
    Ok(row.map(JobView::from))
}

/// The project a job belongs to (through its pipeline).
pub async fn project_of(db: &PgPool, id: Uuid) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar(
        "SELECT p.project_id FROM jobs j JOIN pipelines p ON p.id = j.pipeline_id WHERE j.id = $1",
    )
    .bind(id)
    .fetch_optional(db)
    .await
}

/// Which of `ids` are jobs of project `project_id`.
pub async fn of_project(db: &PgPool, ids: &[Uuid], project_id: Uuid) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar(
        "SELECT j.id FROM jobs j JOIN pipelines p ON p.id = j.pipeline_id \
         WHERE j.id = ANY($1) AND p.project_id = $2",
    )
    .bind(ids)
    .bind(project_id)
    .fetch_all(db)
    .await
}

/// Filters of the job list.
#[derive(Debug, Default)]
pub struct Filter {
    /// Only jobs of this project.
    pub project_id: Uuid,
    /// Only this state.
    pub state: Option<JobState>,
    /// Only this pipeline.
    pub pipeline: Option<String>,
    /// At most this many, newest first.
    pub limit: i64,
}

/// Jobs, newest first.
pub async fn list(db: &PgPool, filter: &Filter) -> sqlx::Result<Vec<JobView>> {
    let rows: Vec<JobRow> = sqlx::query_as(&format!(
        "{SELECT_JOB} WHERE ($1::text IS NULL OR j.state = $1) AND ($2::text IS NULL OR p.name = $2) \
         AND p.project_id = $4 ORDER BY j.created_at DESC, j.id LIMIT $3"
    ))
    .bind(filter.state.map(JobState::as_str))
    .bind(&filter.pipeline)
    .bind(filter.limit)
    .bind(filter.project_id)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(JobView::from).collect())
}

#[derive(sqlx::FromRow)]
struct AttemptRow {
    attempt: i32,
    state: String,
    runner_id: Option<String>,
    outcome: Option<Json<JobOutcome>>,
    started_at_ms: Option<i64>,
    finished_at_ms: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct StageRow {
    attempt: i32,
    idx: i32,
    name: String,
    state: String,
    duration_ms: Option<i64>,
    error: Option<String>,
}

/// The job `id` with its attempts and their stages, read in one snapshot (a `REPEATABLE READ`
/// read-only transaction): its three statements see the same commits, so a job is never shown
/// queued with its attempt already ended, or the other way round.
pub async fn get_with_attempts(db: &PgPool, id: Uuid) -> sqlx::Result<Option<JobView>> {
    let mut tx = db.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let row: Option<JobRow> = sqlx::query_as(&format!("{SELECT_JOB} WHERE j.id = $1"))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let mut job = JobView::from(row);
    job.attempts = attempts(&mut tx, id).await?;
    tx.commit().await?;
    Ok(Some(job))
}

/// The attempts of a job with their stages, oldest first.
async fn attempts(db: &mut sqlx::PgConnection, id: Uuid) -> sqlx::Result<Vec<AttemptView>> {
    let rows: Vec<AttemptRow> = sqlx::query_as(
        "SELECT attempt, state, runner_id, outcome, (extract(epoch FROM started_at) * 1000)::bigint AS started_at_ms, \
         (extract(epoch FROM finished_at) * 1000)::bigint AS finished_at_ms FROM attempts WHERE job_id = $1 ORDER BY attempt",
    )
    .bind(id)
    .fetch_all(&mut *db)
    .await?;
    let stages: Vec<StageRow> = sqlx::query_as(
        "SELECT attempt, idx, name, state, duration_ms, error FROM stage_runs WHERE job_id = $1 ORDER BY attempt, idx",
    )
    .bind(id)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|a| AttemptView {
            attempt: a.attempt as u32,
            runner_id: a.runner_id,
            state: JobState::parse(&a.state).unwrap_or(JobState::Queued),
            outcome: a.outcome.map(|o| o.0),
            started_at_ms: a.started_at_ms,
            finished_at_ms: a.finished_at_ms,
            stages: stages
                .iter()
                .filter(|s| s.attempt == a.attempt)
                .map(|s| StageView {
                    index: s.idx as u32,
                    name: s.name.clone(),
                    state: s.state.clone(),
                    outcome: stage_outcome(&s.state),
                    duration_ms: s.duration_ms,
                    error: s.error.clone(),
                })
                .collect(),
        })
        .collect())
}

fn stage_outcome(state: &str) -> Option<StageOutcome> {
    serde_json::from_value(serde_json::Value::String(state.to_owned())).ok()
}

/// What a `Started` report did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// The attempt is now running on the runner, with the report's token; the job's row as
    /// this transaction left it (locked until it ends).
    Started(crate::db::attempts::Locked),
    /// It already was on this runner (the same report delivered again, or a forgery naming the
    /// runner): the caller compares `token`, the one stored at the first `Started`.
    Duplicate {
        /// The attempt's stored token.
        token: Option<String>,
    },
    /// The job is not waiting for this attempt: the runner must stop it.
    Refused,
}

/// Marks the attempt running on `runner_id` with its attempt `token`, if the job is waiting for
/// that attempt, in the caller's transaction (the rest of the report goes in the same one).
/// Locks the job's row. The start is dated `ago_ms` back (the runner's word, so never before
/// the attempt was queued).
pub async fn start(
    tx: &mut sqlx::PgConnection,
    job_id: Uuid,
    attempt: u32,
    runner_id: &str,
    token: &str,
    ago_ms: u64,
) -> sqlx::Result<Start> {
    // The job and its attempt in one statement; the attempt is dated like the job.
    let started: Option<crate::db::attempts::Locked> = sqlx::query_as(
        "WITH job AS (\
           UPDATE jobs SET state = 'running', runner_id = $3, \
           started_at = GREATEST(created_at, now() - $4 * interval '1 millisecond', \
             (SELECT queued_at FROM attempts WHERE job_id = $1 AND attempt = $2)) \
           WHERE id = $1 AND attempt = $2 AND state = 'queued' \
           RETURNING started_at, attempt, retry, cancel_requested_at IS NOT NULL AS cancel_requested), \
         attempt AS (\
           UPDATE attempts SET state = 'running', runner_id = $3, token = $5, \
           started_at = (SELECT started_at FROM job) \
           WHERE job_id = $1 AND attempt = $2 AND EXISTS (SELECT 1 FROM job)) \
         SELECT 'running'::text AS state, attempt, $3::text AS runner_id, retry, cancel_requested FROM job",
    )
    .bind(job_id)
    .bind(attempt as i32)
    .bind(runner_id)
    .bind(ago_ms.min(i64::MAX as u64) as f64)
    .bind(token)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(locked) = started {
        return Ok(Start::Started(locked));
    }
    let again: Option<(Option<String>,)> = sqlx::query_as(
        "SELECT a.token FROM jobs j JOIN attempts a ON a.job_id = j.id AND a.attempt = j.attempt \
         WHERE j.id = $1 AND j.attempt = $2 AND j.state = 'running' AND j.runner_id = $3",
    )
    .bind(job_id)
    .bind(attempt as i32)
    .bind(runner_id)
    .fetch_optional(&mut *tx)
    .await?;
    Ok(match again {
        Some((token,)) => Start::Duplicate { token },
        None => Start::Refused,
    })
}

/// A whole attempt, reported at once: it started and ended in the runner's first report (the
/// report of nearly every short job).
#[derive(Debug)]
pub struct WholeAttempt<'a> {
    /// The job.
    pub job_id: Uuid,
    /// The attempt.
    pub attempt: u32,
    /// The runner that ran it.
    pub runner_id: &'a str,
    /// Its attempt token.
    pub token: &'a str,
    /// How long before the report it started (the runner's word, as for [`start`]).
    pub ago_ms: u64,
    /// How it ended; the caller checked that the job's retry rule does not cover it.
    pub outcome: &'a JobOutcome,
    /// Its log lines.
    pub lines: Vec<&'a rivet_protocol::messages::LogLine>,
    /// Its stages, at most one update per index.
    pub stages: Vec<StageUpdate<'a>>,
    /// The registration the caller checked the report against: the statement applies only
    /// while the runner's live registration has that session and broker user, and its labels
    /// cover the job's `label:` requirements.
    pub identity: Identity<'a>,
}

/// The runner's live registration as a `Started` report was checked against it (its MAC with
/// `session_key`, its publisher against `broker_user`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity<'a> {
    /// Its session key.
    pub session_key: &'a str,
    /// Its RabbitMQ user (none: shared broker users).
    pub broker_user: Option<&'a str>,
}

/// Starts and ends an attempt in one statement (one round trip, one commit) if the job is
/// waiting for it: what [`start`], the log and stage writes and ending the attempt with a final
/// outcome do in one transaction, for the case where nothing between them can change their
/// course (a queued job has no cancel request, and its retry rule never changes; the statement
/// checks the first anyway, as a safeguard). The runner's identity is checked in the same
/// statement: the live registration named like the runner must still have `w.identity`'s
/// session key and broker user, and its labels must cover every `label:` requirement of
/// the job's class (what `reports::identity_violation` checks, read again here, so that an
/// identity remembered from an earlier report lets nothing in that the registration as it is
/// now would refuse). Returns whether it applied; when not (a redelivered report, a job no
/// longer waiting, a registration that changed), nothing changed and the caller takes the
/// transaction's path, which says why (when the caller checked the identity with a statement of
/// its own just before, a registration that changed since is not noticed there: the same gap
/// as before this statement checked it).
pub async fn start_and_end(db: &PgPool, w: &WholeAttempt<'_>) -> sqlx::Result<bool> {
    let state = JobState::from_outcome(w.outcome).as_str();
    let logs = crate::db::logs::Columns::of(w.lines.iter().copied());
    let idx: Vec<i32> = w.stages.iter().map(|s| s.index as i32).collect();
    let names: Vec<&str> = w.stages.iter().map(|s| s.name).collect();
    let states: Vec<&str> = w.stages.iter().map(|s| s.state).collect();
    let durations: Vec<Option<i64>> = w
        .stages
        .iter()
        .map(|s| s.duration_ms.map(|d| d as i64))
        .collect();
    let errors: Vec<Option<&str>> = w.stages.iter().map(|s| s.error).collect();
    let applied: i64 = sqlx::query_scalar(
        "WITH job AS (\
           UPDATE jobs SET state = $6, runner_id = $3, outcome = $7, finished_at = now(), \
           started_at = GREATEST(created_at, now() - $4 * interval '1 millisecond', \
             (SELECT queued_at FROM attempts WHERE job_id = $1 AND attempt = $2)) \
           WHERE id = $1 AND attempt = $2 AND state = 'queued' AND cancel_requested_at IS NULL \
           AND EXISTS (SELECT 1 FROM runner_registrations r WHERE r.name = $3 AND r.revoked_at IS NULL \
             AND r.session_key = $19 AND r.broker_user IS NOT DISTINCT FROM $20 \
             AND NOT EXISTS (SELECT 1 FROM classes c CROSS JOIN unnest(c.requires) AS q(req) \
               WHERE c.class_key = jobs.class_key AND q.req LIKE 'label:%' \
               AND NOT EXISTS (SELECT 1 FROM jsonb_each_text(r.labels) AS l \
                 WHERE 'label:' || l.key || '=' || l.value = q.req))) \
           RETURNING started_at), \
         attempt AS (\
           UPDATE attempts SET state = $6, runner_id = $3, token = $5, outcome = $7, \
           started_at = (SELECT started_at FROM job), finished_at = now(), lease_missing_since = NULL \
           WHERE job_id = $1 AND attempt = $2 AND EXISTS (SELECT 1 FROM job)), \
         outbox AS (\
           UPDATE outbox SET published_at = now() \
           WHERE job_id = $1 AND attempt = $2 AND published_at IS NULL AND EXISTS (SELECT 1 FROM job)), \
         stages AS (\
           INSERT INTO stage_runs (job_id, attempt, idx, name, state, duration_ms, error) \
           SELECT $1, $2, * FROM UNNEST($8::int[], $9::text[], $10::text[], $11::bigint[], $12::text[]) \
           WHERE EXISTS (SELECT 1 FROM job) ON CONFLICT DO NOTHING), \
         logs AS (\
           INSERT INTO log_lines (job_id, attempt, seq, at_ms, stage, level, source, line) \
           SELECT $1, $2, * FROM UNNEST($13::bigint[], $14::bigint[], $15::text[], $16::text[], $17::text[], $18::text[]) \
           WHERE EXISTS (SELECT 1 FROM job) ON CONFLICT DO NOTHING) \
         SELECT count(*) FROM job",
    )
    .bind(w.job_id)
    .bind(w.attempt as i32)
    .bind(w.runner_id)
    .bind(w.ago_ms.min(i64::MAX as u64) as f64)
    .bind(w.token)
    .bind(state)
    .bind(Json(w.outcome))
    .bind(&idx)
    .bind(&names)
    .bind(&states)
    .bind(&durations)
    .bind(&errors)
    .bind(&logs.seq)
    .bind(&logs.at)
    .bind(&logs.stage)
    .bind(&logs.level)
    .bind(&logs.source)
    .bind(&logs.text)
    .bind(w.identity.session_key)
    .bind(w.identity.broker_user)
    .fetch_one(db)
    .await?;
    Ok(applied == 1)
}

/// When `attempt` is the job's current, running attempt held by `runner_id`: the attempt token
/// stored at its `Started` (`None` only for an attempt started before tokens existed) and its
/// runner's session key.
/// Locks the job's row for the rest of the caller's transaction.
pub async fn running_token(
    db: &mut sqlx::PgConnection,
    job_id: Uuid,
    attempt: u32,
    runner_id: &str,
) -> sqlx::Result<Option<RunningAttempt>> {
    sqlx::query_as(
        "SELECT a.token, r.session_key, r.broker_user, j.state, j.attempt, j.runner_id, j.retry, \
         j.cancel_requested_at IS NOT NULL AS cancel_requested FROM jobs j \
         JOIN attempts a ON a.job_id = j.id AND a.attempt = j.attempt \
         LEFT JOIN runner_registrations r ON r.name = j.runner_id AND r.revoked_at IS NULL \
         WHERE j.id = $1 AND j.attempt = $2 AND j.state = 'running' AND j.runner_id = $3 FOR UPDATE OF j",
    )
    .bind(job_id)
    .bind(attempt as i32)
    .bind(runner_id)
    .fetch_optional(db)
    .await
}

/// A running attempt as its reports are checked against it.
#[derive(Debug, sqlx::FromRow)]
pub struct RunningAttempt {
    /// The attempt token stored at `Started`.
    pub token: Option<String>,
    /// The current session key of the runner's live registration (none: revoked or unknown).
    pub session_key: Option<String>,
    /// Its RabbitMQ user (none: shared broker users, or no live registration).
    pub broker_user: Option<String>,
    /// The job's row, locked by [`running_token`] for the rest of the transaction.
    #[sqlx(flatten)]
    pub job: crate::db::attempts::Locked,
}

/// A stage's start or end, as a report says it.
#[derive(Debug)]
pub struct StageUpdate<'a> {
    /// The job.
    pub job_id: Uuid,
    /// The attempt.
    pub attempt: u32,
    /// 0-based position.
    pub index: u32,
    /// Name.
    pub name: &'a str,
    /// `running`, or how it ended.
    pub state: &'a str,
    /// Duration, once ended.
    pub duration_ms: Option<u64>,
    /// Why it failed or was skipped.
    pub error: Option<&'a str>,
}

/// Records a stage's start or end (idempotent: an ended stage stays ended).
pub async fn stage(db: &mut sqlx::PgConnection, u: &StageUpdate<'_>) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO stage_runs (job_id, attempt, idx, name, state, duration_ms, error) VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (job_id, attempt, idx) DO UPDATE SET state = EXCLUDED.state, duration_ms = EXCLUDED.duration_ms, error = EXCLUDED.error \
         WHERE stage_runs.state = 'running'",
    )
    .bind(u.job_id)
    .bind(u.attempt as i32)
    .bind(u.index as i32)
    .bind(u.name)
    .bind(u.state)
    .bind(u.duration_ms.map(|d| d as i64))
    .bind(u.error)
    .execute(db)
    .await?;
    Ok(())
}

/// Age in ms of the oldest queued job of each class.
pub async fn oldest_queued(db: &PgPool) -> sqlx::Result<BTreeMap<String, i64>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT class_key, (extract(epoch FROM now() - min(created_at)) * 1000)::bigint FROM jobs \
         WHERE state = 'queued' GROUP BY class_key",
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Every class: key and requirement set.
pub async fn classes(db: &PgPool) -> sqlx::Result<Vec<(String, Vec<String>)>> {
    sqlx::query_as("SELECT class_key, requires FROM classes ORDER BY class_key")
        .fetch_all(db)
        .await
}
