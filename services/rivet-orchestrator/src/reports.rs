//! Applies runner reports: in order, idempotently (by job, attempt and sequence), and only from
//! the runner running that attempt (PostgreSQL fences; Redis is not needed to store a report).

use crate::db;
use crate::fence::Move;
use crate::AppState;
use backon::Retryable;
use rivet_core::definition::RetryOn;
use rivet_protocol::http::JobState;
use rivet_protocol::messages::{ReportBody, RunnerReport};
use rivet_protocol::redis_keys::{is_attempt_token, lease_holder, lease_value};
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// What became of a report.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// Stored.
    Stored,
    /// Ignored: a stale attempt, a runner without the lease, or a duplicate.
    Ignored(&'static str),
    /// Refused as forged: it names the attempt's runner but carries a wrong or missing attempt
    /// token. Counted on the attempt and logged as a security event; the runner it names is not
    /// told to stop (that would let a forger cancel other people's jobs).
    Forged(&'static str),
    /// A `Started` refused by the runner identity policy (API-02): the runner is not a live
    /// registration, did not sign it with its current session, or lacks a label the job
    /// requires. The text is the `policy violation [runner.*]: ...` message. The attempt ended
    /// `lost` with it and the next one is queued for another runner; the refusal is counted on
    /// the registration and the runner is told to stop the attempt.
    Refused(String),
}

/// Reports applied at once, each lane in order: a job's reports always take the same lane.
const LANES: usize = 8;

/// Consumes the reports queue until `shutdown`. Reports are spread over [`LANES`] tasks by job,
/// so jobs are applied in parallel and each job's reports in order.
///
/// When the broker connection drops, the subscription ends and is started again (with backoff)
/// once the broker is back; reports the lanes held unacknowledged went back to the queue and are
/// applied again, which is harmless (everything is idempotent).
pub async fn run(state: AppState, shutdown: CancellationToken) -> anyhow::Result<()> {
    let queue = state.broker.topology().reports_queue();
    let mut lanes = Vec::with_capacity(LANES);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..LANES {
        let (tx, rx) = tokio::sync::mpsc::channel(128);
        lanes.push(tx);
        tasks.spawn(lane(state.clone(), rx, shutdown.clone()));
    }
    'subscribe: loop {
        let subscribe = || async {
            state
                .broker
                .consume::<RunnerReport>(&queue, 400, "orchestrator-reports")
                .await
        };
        let subscribed = tokio::select! {
            _ = shutdown.cancelled() => break 'subscribe,
            sub = subscribe
                .retry(crate::backoff())
                .sleep(tokio::time::sleep)
                .notify(|e, d| tracing::warn!(error = %e, retry_in_ms = d.as_millis() as u64, "Consuming reports failed; retrying.")) => sub,
        };
        let mut sub = match subscribed {
            Ok(sub) => {
                tracing::info!(queue = %queue, "Consuming reports.");
                sub
            }
            Err(e) => unreachable!("retries without a limit only end in success: {e}"),
        };
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => break 'subscribe,
                next = sub.next() => next,
            };
            match next {
                Some(Ok(incoming)) => {
                    let lane = (incoming.message.job_id.as_u128() % LANES as u128) as usize;
                    if lanes[lane].send(incoming).await.is_err() {
                        break 'subscribe;
                    }
                }
                Some(Err(e)) => tracing::warn!(error = %e, "Receiving a report failed."),
                None => {
                    tracing::warn!("The reports subscription ended (broker connection lost?); subscribing again.");
                    continue 'subscribe;
                }
            }
        }
    }
    drop(lanes);
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Applies one lane's reports in order. Infrastructure trouble is retried in place (never
/// requeued, which would reorder a job's reports) until it clears or the orchestrator stops.
async fn lane(
    state: AppState,
    mut rx: tokio::sync::mpsc::Receiver<rivet_amqp::Incoming<RunnerReport>>,
    shutdown: CancellationToken,
) {
    while let Some(incoming) = rx.recv().await {
        let mut delay = Duration::from_millis(100);
        // Applied as received; only a report the database refuses as data is cleaned (and tried
        // once more), so the common case pays nothing for it.
        let mut cleaned: Option<RunnerReport> = None;
        // Set when even the cleaned report was refused as data: only its `Started` and
        // `Finished` are applied (the attempt must not be lost for a log line), the rest is
        // dead-lettered.
        let mut essential_only = false;
        loop {
            let report = cleaned.as_ref().unwrap_or(&incoming.message);
            let publisher = incoming.user_id.as_deref();
            match apply(&state, report, &incoming.message.body, publisher).await {
                Ok(applied) => {
                    let m = &incoming.message;
                    match applied {
                        Applied::Stored => {}
                        Applied::Ignored(why) => {
                            tracing::warn!(job_id = %m.job_id, attempt = m.attempt,
                                runner = %m.runner_id, why, "Ignored a runner report.");
                        }
                        Applied::Forged(why) => {
                            tracing::warn!(security = true, job_id = %m.job_id, attempt = m.attempt,
                                claimed_runner = %m.runner_id, why, "Refused a forged runner report.");
                        }
                        Applied::Refused(violation) => {
                            tracing::warn!(security = true, job_id = %m.job_id, attempt = m.attempt,
                                runner = %m.runner_id, "{violation}");
                        }
                    }
                    if essential_only {
                        // The rest of it, refused as data, goes to the dead-letter queue.
                        let _ = incoming.reject(false).await;
                    } else if let Err(e) = incoming.ack().await {
                        tracing::warn!(error = %e, "Acknowledging a report failed.");
                    }
                    break;
                }
                Err(e) if is_data_error(&e) && cleaned.is_none() => {
                    // PostgreSQL refuses NUL in text and JSONB: replace it in every string.
                    cleaned = Some(without_nul(&incoming.message));
                }
                Err(e) if is_data_error(&e) && !essential_only && has_essentials(report) => {
                    tracing::error!(job_id = %report.job_id, attempt = report.attempt, runner = %report.runner_id,
                        error = %format!("{e:#}"), "The database refused a report's data; applying its start and result only.");
                    cleaned = Some(essentials(report));
                    essential_only = true;
                }
                Err(e) if is_data_error(&e) => {
                    // Retrying cannot help a report the database refuses as data: it goes to the
                    // dead-letter queue (with the reason) instead of blocking every job behind it.
                    let m = &incoming.message;
                    tracing::error!(job_id = %m.job_id, attempt = m.attempt, runner = %m.runner_id,
                        error = %format!("{e:#}"), "The database refused a report's data; dead-lettering it.");
                    let _ = incoming.reject(false).await;
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "Applying a report failed; retrying.");
                    tokio::select! {
                        _ = shutdown.cancelled() => {
                            let _ = incoming.reject(true).await;
                            return;
                        }
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// Whether a report's attempt token is the one stored for its attempt. Constant time in the
/// token's content; a missing or malformed token never matches.
pub fn tokens_match(stored: Option<&str>, claimed: &str) -> bool {
    match stored {
        Some(stored) if is_attempt_token(claimed) => {
            bool::from(stored.as_bytes().ct_eq(claimed.as_bytes()))
        }
        _ => false,
    }
}

/// Counts a forged report on the attempt it names. Counting is best effort: the report is
/// refused (and logged by the lane) whatever happens here.
async fn record_forged(state: &AppState, job: Uuid, attempt: u32) {
    let counted = async {
        let mut conn = state.db.acquire().await?;
        db::attempts::record_forged(&mut conn, job, attempt).await
    };
    if let Err(e) = counted.await {
        tracing::warn!(job_id = %job, attempt, error = %e, "Counting a forged report failed.");
    }
}

/// Applies one report. Fenced by PostgreSQL alone: the attempt must be the job's current one
/// and (after `Started`) running on the reporting runner with the same attempt token. A runner
/// whose `Started` is refused, or that reports on an attempt that is no longer its own, is told
/// to stop it; a report with the right runner and attempt but a wrong token is a forgery
/// (API-03): counted, and nobody is told to stop anything.
///
/// The report's MAC is checked against `signed` (the body as received, when `report` is a copy
/// cleaned for the database), and `publisher` (the `user-id` RabbitMQ validated) must be the
/// broker user of the registration the report names, when it has one: a report published with
/// another runner's broker credentials is a forgery whatever it carries.
pub async fn apply(
    state: &AppState,
    report: &RunnerReport,
    signed: &ReportBody,
    publisher: Option<&str>,
) -> anyhow::Result<Applied> {
    let (job, attempt, runner) = (report.job_id, report.attempt, report.runner_id.as_str());
    let token = report.token.as_str();
    let bodies = match &report.body {
        ReportBody::Batch { bodies } => bodies.as_slice(),
        body => std::slice::from_ref(body),
    };
    // `Started` comes first in the attempt's first report, alone or with what followed it.
    if let Some((ReportBody::Started { ago_ms }, rest)) = bodies.split_first() {
        // The attempt starts on the runner holding its lease. A lease Redis lost (or Redis out
        // of reach) does not stop it: PostgreSQL lets only the first `Started` of an attempt in.
        let mut redis = state.redis.clone();
        let holder: redis::RedisResult<Option<String>> =
            redis::AsyncCommands::get(&mut redis, state.keys.lease(job)).await;
        // Whether the reporting runner holds the attempt's lease with this very token.
        let mut holds_lease = false;
        if let Ok(Some(holder)) = holder {
            if lease_holder(&holder) == format!("{runner}:{attempt}") {
                // The named runner holds the lease for this attempt: the token decides.
                let held = holder.rsplit_once(':').map(|(_, t)| t);
                if !tokens_match(held, token) {
                    record_forged(state, job, attempt).await;
                    return Ok(Applied::Forged(
                        "`Started` with a token other than the lease's",
                    ));
                }
                holds_lease = true;
            } else {
                crate::fence::order_cancel(
                    state,
                    runner,
                    job,
                    attempt,
                    "another runner holds this job's lease",
                )
                .await;
                return Ok(Applied::Ignored("the runner does not hold the job's lease"));
            }
        }
        if !is_attempt_token(token) {
            record_forged(state, job, attempt).await;
            return Ok(Applied::Forged("`Started` without a valid attempt token"));
        }
        // A whole attempt that no retry rule covers, from a runner whose registration this
        // orchestrator remembers: checked against that registration as remembered (publisher,
        // MAC), and applied in one statement that reads the registration again (live, same
        // session and broker user, labels covering the job's). Whatever does not apply here
        // takes the path below, which decides refusals: this one only ever applies.
        let mut tried = None;
        if matches!(rest.last(), Some(ReportBody::Finished { outcome }) if RetryOn::of(outcome).is_none())
        {
            let known = lock(&state.known_runners).get(runner).cloned();
            if let Some(known) = known.filter(|k| k.signed(report, signed, publisher)) {
                if let Some(whole) = whole_attempt(report, rest, None, *ago_ms, known.identity()) {
                    if db::jobs::start_and_end(&state.db, &whole).await? {
                        state.remembered_starts.send_modify(|n| *n += 1);
                        let ended =
                            db::attempts::Ended::Final(JobState::from_outcome(whole.outcome));
                        after_end(state, report, Some(ended)).await;
                        return Ok(Applied::Stored);
                    }
                }
                tried = Some(known);
            }
        }
        let check = db::registrations::start_check(&state.db, job, runner).await?;
        remember(state, runner, check.as_ref());
        let violation = identity_violation(report, check.as_ref(), signed, publisher);
        match violation {
            None => {}
            // Published by another broker user than the runner's: whoever sent it, it was not
            // that runner. Counted, and nothing changes.
            Some(Violation::Impostor(why)) => {
                record_forged(state, job, attempt).await;
                tracing::warn!(security = true, job_id = %job, attempt, claimed_runner = %runner,
                    publisher = publisher.unwrap_or("(none)"), "{why}");
                return Ok(Applied::Forged(
                    "`Started` published by another broker user than the runner's",
                ));
            }
            // Signed by the registration's current session: the runner is who it says, and
            // may not run this job.
            Some(Violation::Labels(violation)) => {
                return refuse_start(state, report, violation).await
            }
            // Not authenticated. When the sender holds the attempt's lease it is the runner
            // that took the job (a revoked one, or one whose session was replaced): the job must
            // go back, or it would wait for its lease to lapse. Without the lease anyone could
            // have sent it: a forgery, counted on the attempt, and nothing changes.
            Some(Violation::Identity(violation)) if holds_lease => {
                return refuse_start(state, report, violation).await
            }
            Some(Violation::Identity(_)) => {
                record_forged(state, job, attempt).await;
                return Ok(Applied::Forged(
                    "`Started` from a runner without a live registration and its session, not holding the lease",
                ));
            }
        }
        // A whole attempt (started and ended with a final outcome) is one statement; the
        // transaction below is for everything else, and says why when that statement did not
        // apply.
        // (Not again with the identity the statement above was tried with: the registration
        // did not stand in its way, so the job did.)
        if let Some(whole) = check.as_ref().and_then(|c| {
            use serde::Deserialize;
            let retry = rivet_core::definition::RetrySpec::deserialize(&c.retry.0).ok()?;
            c.registration?;
            let identity = db::jobs::Identity {
                session_key: c.session_key.as_deref()?,
                broker_user: c.broker_user.as_deref(),
            };
            let tried = tried
                .as_ref()
                .is_some_and(|t: &KnownRunner| t.identity() == identity);
            (!tried).then(|| whole_attempt(report, rest, Some(&retry), *ago_ms, identity))?
        }) {
            if db::jobs::start_and_end(&state.db, &whole).await? {
                let ended = db::attempts::Ended::Final(JobState::from_outcome(whole.outcome));
                after_end(state, report, Some(ended)).await;
                return Ok(Applied::Stored);
            }
        }
        // The start and the rest of the report, in one transaction.
        let mut tx = state.db.begin().await?;
        let locked = match db::jobs::start(&mut tx, job, attempt, runner, token, *ago_ms).await? {
            db::jobs::Start::Started(locked) => Some(locked),
            // Delivered again (the orchestrator stopped before acknowledging it): the rest is
            // applied again, which changes nothing already stored.
            db::jobs::Start::Duplicate { token: stored }
                if tokens_match(stored.as_deref(), token) =>
            {
                None
            }
            db::jobs::Start::Duplicate { .. } => {
                drop(tx);
                record_forged(state, job, attempt).await;
                return Ok(Applied::Forged(
                    "`Started` again with another attempt token",
                ));
            }
            db::jobs::Start::Refused => {
                drop(tx);
                crate::fence::order_cancel(state, runner, job, attempt, "the job is no longer waiting for this attempt (cancelled, timed out, or given to another runner)").await;
                return Ok(Applied::Ignored("the job is not waiting for this attempt"));
            }
        };
        let ended = apply_bodies(&mut tx, report, rest, locked).await?;
        tx.commit().await?;
        after_end(state, report, ended).await;
        return Ok(Applied::Stored);
    }
    // One transaction per report, however many stage events and log lines it carries: every
    // commit waits for the disk.
    let mut tx = state.db.begin().await?;
    let Some(running) = db::jobs::running_token(&mut tx, job, attempt, runner).await? else {
        drop(tx);
        if !matches!(report.body, ReportBody::Finished { .. }) {
            crate::fence::order_cancel(
                state,
                runner,
                job,
                attempt,
                "the attempt is no longer this runner's (it was declared lost or the job ended)",
            )
            .await;
        }
        return Ok(Applied::Ignored(
            "the attempt is not running on this runner",
        ));
    };
    if !publisher_matches(running.broker_user.as_deref(), publisher) {
        db::attempts::record_forged(&mut tx, job, attempt).await?;
        tx.commit().await?;
        return Ok(Applied::Forged(
            "the report was published by another broker user than the runner's",
        ));
    }
    if !tokens_match(running.token.as_deref(), token) {
        db::attempts::record_forged(&mut tx, job, attempt).await?;
        tx.commit().await?;
        return Ok(Applied::Forged(
            "the attempt token differs from the one stored at `Started`",
        ));
    }
    // The token sits in the Redis lease, which every runner can read: the report must also be
    // signed with the session of the runner's live registration (revoked: nothing more of its
    // attempts is accepted; they end `lost` when their lease lapses).
    let signed = running.session_key.as_deref().is_some_and(|key| {
        rivet_protocol::identity::verify_report_mac(
            key,
            job,
            attempt,
            runner,
            token,
            signed,
            &report.session_mac,
        )
    });
    if !signed {
        db::attempts::record_forged(&mut tx, job, attempt).await?;
        tx.commit().await?;
        return Ok(Applied::Forged(
            "the report is not signed with the runner's current session",
        ));
    }
    let ended = apply_bodies(&mut tx, report, bodies, Some(running.job)).await?;
    tx.commit().await?;
    after_end(state, report, ended).await;
    Ok(Applied::Stored)
}

/// Applies the bodies of a running attempt's report in `tx`, in order. A stage's start is
/// skipped when the same report also carries its end (the end overwrites it anyway). `locked`
/// is the job's row as this transaction locked it, when it did. Returns how the attempt ended,
/// if it did.
async fn apply_bodies(
    tx: &mut sqlx::PgConnection,
    report: &RunnerReport,
    bodies: &[ReportBody],
    mut locked: Option<db::attempts::Locked>,
) -> anyhow::Result<Option<db::attempts::Ended>> {
    let ends: std::collections::BTreeSet<u32> = bodies
        .iter()
        .filter_map(|b| match b {
            ReportBody::StageFinished { index, .. } => Some(*index),
            _ => None,
        })
        .collect();
    let mut ended = None;
    for body in bodies {
        if matches!(body, ReportBody::StageStarted { index, .. } if ends.contains(index)) {
            continue;
        }
        if let Some(e) = apply_body(tx, report, body, &mut locked).await? {
            ended = Some(e);
        }
    }
    Ok(ended)
}

/// After the transaction that ended an attempt: the fence moves, then the lease goes (a
/// duplicate of this attempt's message claimed in between must find the attempt over, not a
/// free lease).
async fn after_end(state: &AppState, report: &RunnerReport, ended: Option<db::attempts::Ended>) {
    let (job, attempt, runner) = (report.job_id, report.attempt, report.runner_id.as_str());
    let Some(ended) = ended else { return };
    let fence = match ended {
        db::attempts::Ended::Final(_) => Move::Close(attempt),
        db::attempts::Ended::Retrying { attempt } => Move::Open(attempt),
        db::attempts::Ended::Stale => Move::Stay,
    };
    let lease = lease_value(runner, attempt, &report.token);
    crate::fence::end_attempt(state, job, fence, &lease).await;
    if let Move::Open(_) = fence {
        state.relay_wakeup.notify_one();
    }
}

/// Why the runner of a `Started` report may not start the attempt (API-02), if it may not: it
/// must be a live registration, the report must carry the MAC of its current session, and the
/// registration's labels (assigned by an admin, never the runner's own) must cover every
/// `label:` requirement of the job. Capabilities are not checked: they describe the machine,
/// and a runner that lacks one fails the job, it gains nothing.
fn identity_violation(
    report: &RunnerReport,
    check: Option<&db::registrations::StartCheck>,
    signed: &ReportBody,
    publisher: Option<&str>,
) -> Option<Violation> {
    let (job, runner) = (report.job_id, report.runner_id.as_str());
    let Some(check) = check else {
        // No such job: `db::jobs::start` refuses it.
        return None;
    };
    if !publisher_matches(check.broker_user.as_deref(), publisher) {
        return Some(Violation::Impostor(format!(
            "policy violation [runner.identity]: `Started` naming runner `{runner}` was \
             published by broker user `{}`, not by that runner's",
            publisher.unwrap_or("(none)")
        )));
    }
    let (Some(_), Some(labels)) = (check.registration, check.labels.as_ref()) else {
        return Some(Violation::Identity(format!(
            "policy violation [runner.identity]: runner `{runner}` is not a live registration \
             (unknown or revoked); it may not start jobs"
        )));
    };
    let signed = check.session_key.as_deref().is_some_and(|key| {
        rivet_protocol::identity::verify_session_mac(
            key,
            job,
            report.attempt,
            runner,
            &report.token,
            signed,
            &report.session_mac,
        )
    });
    if !signed {
        return Some(Violation::Identity(format!(
            "policy violation [runner.identity]: `Started` of runner `{runner}` is not signed \
             with its registration's current session"
        )));
    }
    let have: std::collections::BTreeSet<String> = labels
        .0
        .iter()
        .map(|(k, v)| format!("label:{k}={v}"))
        .collect();
    let missing: Vec<&str> = check
        .requires
        .iter()
        .filter(|r| r.starts_with("label:") && !have.contains(*r))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Some(Violation::Labels(format!(
            "policy violation [runner.labels]: runner `{runner}` is not assigned {} that the job \
             requires",
            missing.join(", ")
        )));
    }
    None
}

/// A runner's live registration as its last `Started` read it: what the next whole attempt's
/// report is checked against before its one statement, which checks that this is still the
/// registration as it is (`db::jobs::start_and_end`). A guess, never trusted alone.
#[derive(Debug, Clone)]
pub struct KnownRunner {
    session_key: String,
    broker_user: Option<String>,
}

/// Known runners by name.
pub type KnownRunners = std::collections::HashMap<String, KnownRunner>;

impl KnownRunner {
    /// Whether `report` (with `signed`, its body as received, and `publisher`, the broker user
    /// RabbitMQ validated) passes the checks `identity_violation` makes with this registration:
    /// the publisher is its broker user and the MAC is its session's.
    fn signed(&self, report: &RunnerReport, signed: &ReportBody, publisher: Option<&str>) -> bool {
        publisher_matches(self.broker_user.as_deref(), publisher)
            && rivet_protocol::identity::verify_session_mac(
                &self.session_key,
                report.job_id,
                report.attempt,
                &report.runner_id,
                &report.token,
                signed,
                &report.session_mac,
            )
    }

    fn identity(&self) -> db::jobs::Identity<'_> {
        db::jobs::Identity {
            session_key: &self.session_key,
            broker_user: self.broker_user.as_deref(),
        }
    }
}

fn lock(known: &std::sync::Mutex<KnownRunners>) -> std::sync::MutexGuard<'_, KnownRunners> {
    known
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Remembers the registration of `runner` as `check` read it: its session key and broker user
/// while it is live and has a session, nothing otherwise. What is remembered is what PostgreSQL
/// said, whatever the report that made it read: a report cannot choose it.
fn remember(state: &AppState, runner: &str, check: Option<&db::registrations::StartCheck>) {
    // Without such a job the registration was not read.
    let Some(c) = check else { return };
    let mut known = lock(&state.known_runners);
    match (c.registration, &c.session_key) {
        (Some(_), Some(key)) => {
            let entry = KnownRunner {
                session_key: key.clone(),
                broker_user: c.broker_user.clone(),
            };
            known.insert(runner.to_owned(), entry);
        }
        _ => {
            known.remove(runner);
        }
    }
}

/// Whether any runner's registration is remembered.
pub fn remembers_any(state: &AppState) -> bool {
    !lock(&state.known_runners).is_empty()
}

/// Forgets the remembered registrations of runners that have no live registration in `live`
/// (revoked; the reaper calls it), so that no more are remembered than there are live ones.
pub fn forget_unregistered<T>(state: &AppState, live: &std::collections::BTreeMap<String, T>) {
    lock(&state.known_runners).retain(|name, _| live.contains_key(name));
}

/// Whether a report published by `publisher` (the `user-id` RabbitMQ validated) may come from a
/// runner whose registration has the broker user `expected`: the same user, or no user to
/// compare (shared broker users, or no live registration, which is refused elsewhere).
fn publisher_matches(expected: Option<&str>, publisher: Option<&str>) -> bool {
    match expected {
        Some(expected) => publisher == Some(expected),
        None => true,
    }
}

/// Why a `Started` may not start its attempt.
enum Violation {
    /// Published by another broker user than the runner's: not from that runner at all.
    Impostor(String),
    /// The runner is not a live registration, or did not sign with its current session.
    Identity(String),
    /// The runner is authenticated but lacks a label the job requires.
    Labels(String),
}

/// Refuses a `Started` for `violation` while the job waits for that attempt: the attempt ends
/// `lost` with the violation, counted on the runner's registration, and the next attempt is
/// queued at once (or, after [`db::attempts::MAX_REFUSED_STARTS`] refusals, the job ends
/// `lost`); the fence moves before the refused runner's lease is released, as when an attempt
/// ends, and that runner is told to stop the attempt. When the job is not waiting for that
/// attempt (running elsewhere, ended) nothing changes and nobody is told anything: a report
/// must not stop someone else's job.
async fn refuse_start(
    state: &AppState,
    report: &RunnerReport,
    violation: String,
) -> anyhow::Result<Applied> {
    let (job, attempt, runner) = (report.job_id, report.attempt, report.runner_id.as_str());
    match db::attempts::refuse_start(&state.db, job, attempt, runner, &violation).await? {
        db::attempts::Ended::Stale => {
            return Ok(Applied::Ignored("the job is not waiting for this attempt"))
        }
        ended => after_end(state, report, Some(ended)).await,
    }
    crate::fence::order_cancel(state, runner, job, attempt, &violation).await;
    Ok(Applied::Refused(violation))
}

/// Applies one report body of a running attempt in `tx`. Returns how the attempt ended, if it
/// did. `locked` is the job's row as `tx` locked it; ending the attempt uses it up (a second
/// `Finished` in one report reads the row again, and finds the attempt over).
async fn apply_body(
    tx: &mut sqlx::PgConnection,
    report: &RunnerReport,
    body: &ReportBody,
    locked: &mut Option<db::attempts::Locked>,
) -> anyhow::Result<Option<db::attempts::Ended>> {
    let (job, attempt) = (report.job_id, report.attempt);
    match body {
        // `Started` is applied first (`apply`) and only there; batches do not nest.
        ReportBody::Started { .. } | ReportBody::Batch { .. } => {}
        ReportBody::StageStarted { .. } | ReportBody::StageFinished { .. } => {
            if let Some(update) = stage_update(report, body) {
                db::jobs::stage(tx, &update).await?;
            }
        }
        ReportBody::Logs { lines } => db::logs::insert(tx, job, attempt, lines).await?,
        ReportBody::Finished { outcome } => {
            let ending = db::attempts::Ending {
                from: &["running"],
                runner: Some(&report.runner_id),
                may_retry: true,
            };
            let ended = match locked.take() {
                Some(cur) => {
                    db::attempts::end_locked(tx, job, attempt, outcome, ending, cur).await?
                }
                None => db::attempts::end(tx, job, attempt, outcome, ending).await?,
            };
            return Ok(Some(ended));
        }
    }
    Ok(None)
}

/// A stage body of `report` as the row it writes.
fn stage_update<'a>(
    report: &RunnerReport,
    body: &'a ReportBody,
) -> Option<db::jobs::StageUpdate<'a>> {
    let (index, name, state, duration_ms, error) = match body {
        ReportBody::StageStarted { index, name, .. } => (index, name, "running", None, None),
        ReportBody::StageFinished {
            index,
            name,
            outcome,
            duration_ms,
            error,
        } => (
            index,
            name,
            outcome.as_str(),
            Some(*duration_ms),
            error.as_deref(),
        ),
        _ => return None,
    };
    Some(db::jobs::StageUpdate {
        job_id: report.job_id,
        attempt: report.attempt,
        index: *index,
        name,
        state,
        duration_ms,
        error,
    })
}

/// The rest of a `Started` report (`rest`, the bodies after it) as one whole attempt, when it
/// is one: log and stage bodies, then a `Finished` whose outcome the job's `retry` rule does
/// not cover (`None`: the rule is not known, and only an outcome no rule covers will do). Per
/// stage the row is what the bodies applied in order would leave: its first end, else its
/// first start. `identity` is the registration the report was checked against.
pub fn whole_attempt<'a>(
    report: &'a RunnerReport,
    rest: &'a [ReportBody],
    retry: Option<&rivet_core::definition::RetrySpec>,
    ago_ms: u64,
    identity: db::jobs::Identity<'a>,
) -> Option<db::jobs::WholeAttempt<'a>> {
    let (ReportBody::Finished { outcome }, before) = rest.split_last()? else {
        return None;
    };
    let retried = match retry {
        Some(retry) => retry.retries(report.attempt, outcome),
        None => RetryOn::of(outcome).is_some(),
    };
    if retried {
        return None;
    }
    let mut lines = Vec::new();
    let mut stages: std::collections::BTreeMap<u32, db::jobs::StageUpdate<'a>> =
        std::collections::BTreeMap::new();
    for body in before {
        match body {
            ReportBody::Logs { lines: more } => lines.extend(more),
            ReportBody::StageStarted { .. } | ReportBody::StageFinished { .. } => {
                let update = stage_update(report, body)?;
                match stages.get(&update.index) {
                    Some(have) if have.state != "running" || update.state == "running" => {}
                    _ => {
                        stages.insert(update.index, update);
                    }
                }
            }
            _ => return None,
        }
    }
    Some(db::jobs::WholeAttempt {
        job_id: report.job_id,
        attempt: report.attempt,
        runner_id: &report.runner_id,
        token: &report.token,
        ago_ms,
        outcome,
        lines,
        stages: stages.into_values().collect(),
        identity,
    })
}

/// Whether the report carries `Started` or `Finished` among other bodies.
fn has_essentials(report: &RunnerReport) -> bool {
    matches!(&report.body, ReportBody::Batch { bodies } if bodies.iter().any(|b| matches!(b, ReportBody::Started { .. } | ReportBody::Finished { .. })))
}

/// The report with only its `Started` and `Finished`, in order (the MAC is still checked
/// against the body as received).
fn essentials(report: &RunnerReport) -> RunnerReport {
    let mut out = report.clone();
    if let ReportBody::Batch { bodies } = &mut out.body {
        bodies.retain(|b| matches!(b, ReportBody::Started { .. } | ReportBody::Finished { .. }));
    }
    out
}

/// The report with every NUL character in its strings replaced by U+FFFD.
fn without_nul(report: &RunnerReport) -> RunnerReport {
    fn clean(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::String(s) if s.contains('\0') => *s = s.replace('\0', "\u{FFFD}"),
            serde_json::Value::Array(items) => items.iter_mut().for_each(clean),
            serde_json::Value::Object(map) => map.values_mut().for_each(clean),
            _ => {}
        }
    }
    let mut value = match serde_json::to_value(report) {
        Ok(v) => v,
        Err(_) => return report.clone(),
    };
    clean(&mut value);
    serde_json::from_value(value).unwrap_or_else(|_| report.clone())
}

/// Whether PostgreSQL refused the data itself (SQLSTATE classes 22 and 23), not the connection.
fn is_data_error(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<sqlx::Error>()
            .and_then(|e| e.as_database_error())
            .and_then(|d| d.code())
            .is_some_and(|code| code.starts_with("22") || code.starts_with("23"))
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn nul_characters_are_replaced_in_every_string_of_a_report() {
        use rivet_core::JobOutcome;
        use rivet_protocol::messages::{LogLine, ReportBody, RunnerReport};
        let report = RunnerReport {
            schema: rivet_protocol::SCHEMA_VERSION,
            job_id: uuid::Uuid::new_v4(),
            attempt: 1,
            runner_id: "r\0x".into(),
            token: String::new(),
            session_mac: String::new(),
            body: ReportBody::Batch {
                bodies: vec![
                    ReportBody::Logs {
                        lines: vec![LogLine {
                            seq: 0,
                            at_ms: 0,
                            stage: Some("s\0".into()),
                            level: "info".into(),
                            source: "script".into(),
                            line: "a\0b".into(),
                        }],
                    },
                    ReportBody::Finished {
                        outcome: JobOutcome::Failed {
                            stage: None,
                            error: "e\0".into(),
                        },
                    },
                ],
            },
        };
        let clean = super::without_nul(&report);
        let text = serde_json::to_string(&clean).unwrap();
        assert!(!text.contains("\\u0000"), "{text}");
        assert_eq!(clean.runner_id, "r\u{FFFD}x");
        assert!(
            text.contains("a\u{FFFD}b") && text.contains("e\u{FFFD}"),
            "{text}"
        );
    }

    #[test]
    fn a_refused_batch_keeps_its_start_and_result() {
        use rivet_core::JobOutcome;
        use rivet_protocol::messages::{ReportBody, RunnerReport};
        let report = |body| RunnerReport {
            schema: rivet_protocol::SCHEMA_VERSION,
            job_id: uuid::Uuid::new_v4(),
            attempt: 1,
            runner_id: "r".into(),
            token: String::new(),
            session_mac: "mac".into(),
            body,
        };
        let finished = ReportBody::Finished {
            outcome: JobOutcome::Succeeded,
        };
        let full = report(ReportBody::Batch {
            bodies: vec![
                ReportBody::Started { ago_ms: 0 },
                ReportBody::Logs { lines: Vec::new() },
                finished.clone(),
            ],
        });
        assert!(super::has_essentials(&full));
        let kept = super::essentials(&full);
        assert_eq!(
            kept.body,
            ReportBody::Batch {
                bodies: vec![ReportBody::Started { ago_ms: 0 }, finished]
            }
        );
        assert_eq!(
            kept.session_mac, "mac",
            "checked against the body as received"
        );
        assert!(!super::has_essentials(&report(ReportBody::Started {
            ago_ms: 0
        })));
        assert!(!super::has_essentials(&report(ReportBody::Batch {
            bodies: vec![ReportBody::Logs { lines: Vec::new() }]
        })));
    }

    #[test]
    fn a_whole_attempt_is_a_start_then_logs_and_stages_then_a_final_end() {
        use rivet_core::definition::RetrySpec;
        use rivet_core::{JobOutcome, StageOutcome};
        use rivet_protocol::messages::{ReportBody, RunnerReport};
        let report = RunnerReport {
            schema: rivet_protocol::SCHEMA_VERSION,
            job_id: uuid::Uuid::new_v4(),
            attempt: 1,
            runner_id: "r".into(),
            token: "t".into(),
            session_mac: String::new(),
            body: ReportBody::Started { ago_ms: 0 },
        };
        let start = |index: u32, name: &str| ReportBody::StageStarted {
            index,
            name: name.into(),
            timeout_ms: 1000,
        };
        let end = |index: u32, outcome: StageOutcome| ReportBody::StageFinished {
            index,
            name: format!("s{index}"),
            outcome,
            duration_ms: 1,
            error: None,
        };
        let logs = ReportBody::Logs { lines: Vec::new() };
        let finished = |outcome| ReportBody::Finished { outcome };
        let lost = JobOutcome::Lost { reason: "x".into() };
        let rest = vec![
            start(0, "s0"),
            logs.clone(),
            end(0, StageOutcome::Succeeded),
            // A second end of the same stage changes nothing (its row is no longer running).
            end(0, StageOutcome::Failed),
            start(1, "first"),
            start(1, "second"),
            end(2, StageOutcome::Skipped),
            finished(JobOutcome::Succeeded),
        ];
        let none = RetrySpec {
            count: 0,
            ..RetrySpec::default()
        };
        let identity = crate::db::jobs::Identity {
            session_key: "key",
            broker_user: None,
        };
        let whole_attempt = |rest: &[ReportBody], retry: Option<&RetrySpec>, ago_ms| {
            super::whole_attempt(&report, rest, retry, ago_ms, identity)
                .map(|w| (w.outcome.clone(), w.lines.len(), w.stages.len()))
        };
        let whole = super::whole_attempt(&report, &rest, Some(&none), 7, identity)
            .expect("a whole attempt");
        let stages: Vec<(u32, &str, &str)> = whole
            .stages
            .iter()
            .map(|s| (s.index, s.name, s.state))
            .collect();
        assert_eq!(
            stages,
            [
                (0, "s0", "succeeded"),
                (1, "first", "running"),
                (2, "s2", "skipped")
            ]
        );
        assert_eq!(whole.outcome, &JobOutcome::Succeeded);
        assert_eq!(whole.ago_ms, 7);
        // An end the retry rule covers queues another attempt: not a whole attempt.
        let retried = [finished(lost.clone())];
        assert!(whole_attempt(&retried, Some(&RetrySpec::default()), 0).is_none());
        assert!(whole_attempt(&retried, Some(&none), 0).is_some());
        // Without the job's rule, only an outcome that no rule retries will do.
        assert!(whole_attempt(&retried, None, 0).is_none());
        for outcome in [JobOutcome::Succeeded, JobOutcome::Cancelled] {
            assert_eq!(
                whole_attempt(&[finished(outcome.clone())], None, 0),
                Some((outcome, 0, 0))
            );
        }
        let failed = JobOutcome::Failed {
            stage: None,
            error: "e".into(),
        };
        assert!(whole_attempt(&[finished(failed.clone())], Some(&none), 0).is_some());
        assert!(whole_attempt(&[finished(failed)], None, 0).is_none());
        // No end, an end that is not last, two ends: the transaction's path.
        assert!(whole_attempt(std::slice::from_ref(&logs), Some(&none), 0).is_none());
        assert!(whole_attempt(&[finished(lost.clone()), logs.clone()], Some(&none), 0).is_none());
        assert!(whole_attempt(&[finished(lost.clone()), finished(lost)], Some(&none), 0).is_none());
    }

    use super::tokens_match;

    #[test]
    fn only_the_stored_well_formed_token_matches() {
        let token = "0123456789abcdef0123456789abcdef";
        assert!(tokens_match(Some(token), token));
        assert!(!tokens_match(
            Some(token),
            "fedcba9876543210fedcba9876543210"
        ));
        assert!(!tokens_match(Some(token), &token[..31]));
        assert!(
            !tokens_match(None, token),
            "an attempt without a stored token"
        );
        assert!(!tokens_match(Some(""), ""), "empty never matches");
    }
}
