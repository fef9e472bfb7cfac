//! Job inserts, grouped: submissions that arrive while earlier inserts are in flight share the
//! next statement and its commit ([`db::jobs::create`] takes any number of jobs). A burst of
//! submissions then costs PostgreSQL a few statements instead of one each, and a lone submission
//! waits for nothing: a group is whatever is queued when a lane comes free.
//!
//! A group refused for something a job can cause (a constraint or a value PostgreSQL refused:
//! SQLSTATE classes 22 and 23) is tried again job by job, so that one job's error reaches that
//! job's caller alone. Any other failure (PostgreSQL unreachable, the pool out of connections,
//! an answer lost on the way) is every job's: each caller gets it at once, and nothing is tried
//! again, which could only wait out the same trouble once per job, or insert a group whose
//! commit went through and answer "duplicate key".
//!
//! The lanes wake the outbox relay after each statement that inserted jobs, whether or not
//! their callers are still waiting.

use crate::db;
use crate::db::jobs::{Created, NewJob};
use sqlx::PgPool;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch, Mutex, Notify};

/// Statements in flight at once: enough to overlap one group's commit with the next group's
/// statement.
pub const LANES: usize = 4;
/// Most jobs in one statement.
pub const MOST: usize = 64;
/// Submissions waiting for a lane, at most; more wait to be queued.
const QUEUE: usize = 1024;

struct Pending {
    job: NewJob,
    answer: oneshot::Sender<sqlx::Result<Created>>,
}

/// The handle to the insert lanes; cheap to clone. The lanes end when the last handle is gone.
#[derive(Clone)]
pub struct Inserts {
    queue: mpsc::Sender<Pending>,
    lanes: Arc<Lanes>,
}

/// What the lanes share.
struct Lanes {
    db: PgPool,
    relay: Arc<Notify>,
    receiver: Mutex<mpsc::Receiver<Pending>>,
    /// Insert statements started so far.
    statements: watch::Sender<u64>,
}

impl std::fmt::Debug for Inserts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inserts")
            .field("statements", &*self.lanes.statements.borrow())
            .finish()
    }
}

/// A queued job's answer, to wait for ([`Queued::answer`]).
#[derive(Debug)]
pub struct Queued(oneshot::Receiver<sqlx::Result<Created>>);

impl Queued {
    /// What the statement that took the job did with it.
    pub async fn answer(self) -> sqlx::Result<Created> {
        self.0.await.map_err(|_| lanes_gone())?
    }
}

/// Only if the lanes' runtime ended: unavailable (503), as a closed pool.
fn lanes_gone() -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::other("the job insert lanes stopped"))
}

impl Inserts {
    /// Starts [`LANES`] lanes on the current tokio runtime, with connections of their own to
    /// `db`'s database (see [`lanes_pool`]); `relay` is woken after each statement that
    /// inserted jobs.
    pub fn start(db: &PgPool, relay: Arc<Notify>) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE);
        let lanes = Arc::new(Lanes {
            db: lanes_pool(db),
            relay,
            receiver: Mutex::new(receiver),
            statements: watch::Sender::new(0),
        });
        for _ in 0..LANES {
            tokio::spawn(lane(lanes.clone()));
        }
        Inserts { queue, lanes }
    }

    /// Creates `job` ([`db::jobs::create`]), in a statement it may share with other jobs.
    pub async fn create(&self, job: NewJob) -> sqlx::Result<Created> {
        self.queue(job).await?.answer().await
    }

    /// Queues `job` for the next lane free; returns once it is queued (jobs queued one after
    /// another are taken in that order).
    pub async fn queue(&self, job: NewJob) -> sqlx::Result<Queued> {
        let (answer, answered) = oneshot::channel();
        self.queue
            .send(Pending { job, answer })
            .await
            .map_err(|_| lanes_gone())?;
        Ok(Queued(answered))
    }

    /// The count of insert statements started so far (groups, and jobs tried again alone), as
    /// it changes.
    pub fn statements(&self) -> watch::Receiver<u64> {
        self.lanes.statements.subscribe()
    }
}

/// One connection per lane, opened as `db`'s are, with generic plans forced: the insert's
/// plan does not depend on its values (key lookups and inserts), but PostgreSQL, which sizes
/// a custom plan by its arrays, kept choosing custom ones, and so planned the statement again
/// at every execution (≈ 0.3 ms, the better part of a lone job's insert).
fn lanes_pool(db: &PgPool) -> PgPool {
    let options = (*db.connect_options())
        .clone()
        .options([("plan_cache_mode", "force_generic_plan")]);
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(LANES as u32)
        .acquire_timeout(db.options().get_acquire_timeout())
        .connect_lazy_with(options)
}

/// Takes whatever is queued (at least one job, at most [`MOST`]) and inserts it, until every
/// [`Inserts`] handle is gone.
async fn lane(lanes: Arc<Lanes>) {
    loop {
        let mut group = Vec::new();
        {
            let mut receiver = lanes.receiver.lock().await;
            match receiver.recv().await {
                Some(first) => group.push(first),
                None => return,
            }
            while group.len() < MOST {
                match receiver.try_recv() {
                    Ok(next) => group.push(next),
                    Err(_) => break,
                }
            }
        }
        insert(&lanes, group).await;
    }
}

async fn insert(lanes: &Lanes, group: Vec<Pending>) {
    let (jobs, answers): (Vec<NewJob>, Vec<_>) =
        group.into_iter().map(|p| (p.job, p.answer)).unzip();
    match lanes.create(&jobs).await {
        Ok(created) => {
            for (answer, created) in answers.into_iter().zip(created) {
                // A caller that went away (its request dropped) has its job anyway, as when it
                // had run the statement itself.
                let _ = answer.send(Ok(created));
            }
        }
        Err(e) if jobs.len() > 1 && a_jobs_own(&e) => {
            tracing::debug!(error = %e, jobs = jobs.len(), "A grouped job insert was refused; inserting each job alone.");
            for (job, answer) in jobs.iter().zip(answers) {
                // One answer per job (`db::jobs::create` checks it).
                let one = lanes.create(std::slice::from_ref(job)).await;
                let _ = answer.send(one.map(|created| created[0]));
            }
        }
        Err(e) => {
            let mut answers = answers.into_iter();
            let first = answers.next();
            for answer in answers {
                let _ = answer.send(Err(same(&e)));
            }
            if let Some(first) = first {
                let _ = first.send(Err(e));
            }
        }
    }
}

impl Lanes {
    /// One statement for `jobs`, counted; wakes the relay when it inserted any.
    async fn create(&self, jobs: &[NewJob]) -> sqlx::Result<Vec<Created>> {
        self.statements.send_modify(|n| *n += 1);
        let created = db::jobs::create(&self.db, jobs).await?;
        if created.iter().any(|c| matches!(c, Created::At(_))) {
            self.relay.notify_one();
        }
        Ok(created)
    }
}

/// Whether a group's statement failed for something one of its jobs can cause: a constraint
/// it broke or a value refused (SQLSTATE classes 23 and 22). Then nothing was committed.
fn a_jobs_own(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(e) => e
            .code()
            .is_some_and(|code| code.starts_with("22") || code.starts_with("23")),
        _ => false,
    }
}

/// `e` again, for another caller of the same group: the same kind where the API tells kinds
/// apart (unreachable is 503, see `ApiError`), its text otherwise.
fn same(e: &sqlx::Error) -> sqlx::Error {
    match e {
        sqlx::Error::Io(io) => sqlx::Error::Io(std::io::Error::new(io.kind(), io.to_string())),
        sqlx::Error::PoolTimedOut => sqlx::Error::PoolTimedOut,
        sqlx::Error::PoolClosed => sqlx::Error::PoolClosed,
        other => sqlx::Error::Protocol(other.to_string()),
    }
}
