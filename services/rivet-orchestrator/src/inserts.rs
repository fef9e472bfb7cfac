//! Job inserts, grouped: submissions that arrive while earlier inserts are in flight share the
//! next statement and its commit ([`db::jobs::create`] takes any number of jobs). A burst of
//! submissions then costs PostgreSQL a few statements instead of one each, and a lone submission
//! waits for nothing: a group is whatever is queued when a lane comes free.
//!
//! A failed group is tried again job by job, so that one job's error (a foreign key its
//! pipeline version broke, say) reaches that job's caller alone.

use crate::db;
use crate::db::jobs::{Created, NewJob};
use sqlx::PgPool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Mutex};

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
    statements: Arc<AtomicU64>,
}

impl std::fmt::Debug for Inserts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inserts")
            .field("queued", &self.queued())
            .field("statements", &self.statements())
            .finish()
    }
}

impl Inserts {
    /// Starts [`LANES`] lanes on the current tokio runtime.
    pub fn start(db: PgPool) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE);
        let receiver = Arc::new(Mutex::new(receiver));
        let statements = Arc::new(AtomicU64::new(0));
        for _ in 0..LANES {
            tokio::spawn(lane(db.clone(), receiver.clone(), statements.clone()));
        }
        Inserts { queue, statements }
    }

    /// Creates `job` ([`db::jobs::create`]), in a statement it may share with other jobs.
    pub async fn create(&self, job: NewJob) -> sqlx::Result<Created> {
        let (answer, answered) = oneshot::channel();
        let gone = || sqlx::Error::Protocol("the job insert lanes stopped".into());
        self.queue
            .send(Pending { job, answer })
            .await
            .map_err(|_| gone())?;
        answered.await.map_err(|_| gone())?
    }

    /// Jobs queued and not yet taken by a lane.
    pub fn queued(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    /// Insert statements run so far (groups, and jobs tried again alone).
    pub fn statements(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }
}

/// Takes whatever is queued (at least one job, at most [`MOST`]) and inserts it, until every
/// [`Inserts`] handle is gone.
async fn lane(
    db: PgPool,
    receiver: Arc<Mutex<mpsc::Receiver<Pending>>>,
    statements: Arc<AtomicU64>,
) {
    loop {
        let mut group = Vec::new();
        {
            let mut receiver = receiver.lock().await;
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
        insert(&db, group, &statements).await;
    }
}

async fn insert(db: &PgPool, group: Vec<Pending>, statements: &AtomicU64) {
    let (jobs, answers): (Vec<NewJob>, Vec<_>) =
        group.into_iter().map(|p| (p.job, p.answer)).unzip();
    statements.fetch_add(1, Ordering::Relaxed);
    match db::jobs::create(db, &jobs).await {
        Ok(created) => {
            for (answer, created) in answers.into_iter().zip(created) {
                // A caller that went away (its request dropped) has its job anyway, as when it
                // had run the statement itself.
                let _ = answer.send(Ok(created));
            }
        }
        Err(e) if jobs.len() == 1 => {
            let _ = answers.into_iter().next().map(|answer| answer.send(Err(e)));
        }
        Err(e) => {
            tracing::debug!(error = %e, jobs = jobs.len(), "A grouped job insert failed; inserting each job alone.");
            for (job, answer) in jobs.iter().zip(answers) {
                statements.fetch_add(1, Ordering::Relaxed);
                let one = db::jobs::create(db, std::slice::from_ref(job))
                    .await
                    .and_then(|mut created| {
                        created.pop().ok_or_else(|| {
                            sqlx::Error::Protocol("the job insert answered nothing".into())
                        })
                    });
                let _ = answer.send(one);
            }
        }
    }
}
