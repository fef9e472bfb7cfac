//! Consuming class queues: one subscription per class the runner covers, fed into one loop that
//! takes a slot and the job's lease, acknowledges, and starts the job. While every slot is busy
//! the subscriptions are cancelled (deliveries in flight go back to their queue), and they resume
//! with prefetch equal to the free slots: the broker never holds jobs for a runner that cannot
//! start them.

use crate::{job, Runner};
use redis::AsyncCommands;
use rivet_amqp::{Incoming, Subscription};
use rivet_protocol::messages::JobDispatch;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

type Delivery = Incoming<JobDispatch>;

/// Active class subscriptions: class key → the token that stops its forwarding task.
#[derive(Default)]
struct Subscriptions {
    active: BTreeMap<String, CancellationToken>,
    tasks: JoinSet<()>,
}

impl Subscriptions {
    async fn start(
        &mut self,
        runner: &Arc<Runner>,
        class_key: &str,
        prefetch: u16,
        tx: &mpsc::Sender<Delivery>,
    ) {
        if self.active.contains_key(class_key) {
            return;
        }
        let queue = runner.broker.topology().class_queue(class_key);
        let tag = format!("{}:{class_key}", runner.id);
        match runner
            .broker
            .consume::<JobDispatch>(&queue, prefetch, &tag)
            .await
        {
            Ok(sub) => {
                let stop = CancellationToken::new();
                self.tasks.spawn(forward(sub, tx.clone(), stop.clone()));
                self.active.insert(class_key.to_owned(), stop);
                tracing::info!(class = %class_key, prefetch, "Consuming class queue.");
            }
            Err(e) => tracing::warn!(class = %class_key, error = %e, "Cannot consume class queue."),
        }
    }

    async fn stop_all(&mut self) {
        for (_, stop) in std::mem::take(&mut self.active) {
            stop.cancel();
        }
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Forwards deliveries until stopped; then cancels the consumer and puts back anything it had
/// already received.
async fn forward(
    mut sub: Subscription<JobDispatch>,
    tx: mpsc::Sender<Delivery>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                let _ = sub.cancel().await;
                while let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_millis(50), sub.next()).await {
                    let _ = d.reject(true).await;
                }
                return;
            }
            next = sub.next() => match next {
                Some(Ok(d)) => {
                    if tx.send(d).await.is_err() {
                        return;
                    }
                }
                Some(Err(e)) => tracing::warn!(error = %e, "Receiving a job failed."),
                None => return,
            },
        }
    }
}

/// Every class known in Redis, with its requirement set.
async fn known_classes(runner: &Runner) -> redis::RedisResult<BTreeMap<String, Vec<String>>> {
    let mut conn = runner.redis.clone();
    let raw: BTreeMap<String, String> = conn.hgetall(runner.keys.classes()).await?;
    Ok(raw
        .into_iter()
        .filter_map(|(k, v)| serde_json::from_str::<Vec<String>>(&v).ok().map(|r| (k, r)))
        .collect())
}

/// Consumes every known class this runner covers, with prefetch = `free` slots.
async fn resume(
    subs: &mut Subscriptions,
    runner: &Arc<Runner>,
    classes: &BTreeMap<String, Vec<String>>,
    free: usize,
    tx: &mpsc::Sender<Delivery>,
) {
    let prefetch = u16::try_from(free.max(1)).unwrap_or(u16::MAX);
    for (class, requires) in classes {
        if runner.covers(requires) {
            subs.start(runner, class, prefetch, tx).await;
        }
    }
}

/// The runner's main loop.
pub async fn run(runner: Arc<Runner>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let slots = Arc::new(Semaphore::new(runner.slots as usize));
    let freed = Arc::new(Notify::new());
    let (tx, mut rx) = mpsc::channel::<Delivery>(64);
    let mut announcements = runner.broker.subscribe_announcements().await?;
    let mut classes = known_classes(&runner).await?;
    let mut subs = Subscriptions::default();
    let mut jobs: JoinSet<()> = JoinSet::new();
    let mut paused = false;

    resume(&mut subs, &runner, &classes, slots.available_permits(), &tx).await;

    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(delivery) = rx.recv() => {
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    // Arrived while pausing: back to its queue.
                    let _ = delivery.reject(true).await;
                    continue;
                };
                match job::claim(&runner, &delivery.message).await {
                    Ok(true) => {
                        if let Err(e) = delivery.ack().await {
                            tracing::warn!(error = %e, "Acknowledging a job failed; its lease stops duplicates.");
                        }
                        let reply_to = delivery.reply_to.clone().unwrap_or_else(|| runner.broker.topology().reports_queue());
                        // The job needs the message only: the delivery (and the consumer channel
                        // it keeps open) is released now, not when the job ends.
                        let message = delivery.message.clone();
                        drop(delivery);
                        let (runner, freed) = (runner.clone(), freed.clone());
                        jobs.spawn(async move {
                            job::run(&runner, message, reply_to).await;
                            drop(permit);
                            freed.notify_one();
                        });
                    }
                    Ok(false) => {
                        tracing::info!(job_id = %delivery.message.job_id, "Duplicate delivery: another runner holds the lease.");
                        let _ = delivery.ack().await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "Taking a lease failed; the job goes back to its queue.");
                        let _ = delivery.reject(true).await;
                    }
                }
                if slots.available_permits() == 0 && !paused {
                    paused = true;
                    subs.stop_all().await;
                }
            }
            _ = freed.notified() => {
                if paused && slots.available_permits() > 0 {
                    paused = false;
                    resume(&mut subs, &runner, &classes, slots.available_permits(), &tx).await;
                }
            }
            ann = announcements.next() => match ann {
                Some(Ok(a)) => {
                    let _ = a.ack().await;
                    let fresh = !classes.contains_key(&a.message.class_key);
                    classes.insert(a.message.class_key.clone(), a.message.requires.clone());
                    if fresh && !paused && runner.covers(&a.message.requires) {
                        subs.start(&runner, &a.message.class_key, u16::try_from(slots.available_permits().max(1)).unwrap_or(u16::MAX), &tx).await;
                    }
                }
                Some(Err(e)) => tracing::warn!(error = %e, "Receiving an announcement failed."),
                None => anyhow::bail!("the announcement subscription ended"),
            },
            Some(_) = jobs.join_next(), if !jobs.is_empty() => {}
        }
    }
    tracing::info!(runner = %runner.id, running = jobs.len(), "Stopping: no new jobs; waiting for running ones.");
    subs.stop_all().await;
    rx.close();
    while let Ok(delivery) = rx.try_recv() {
        let _ = delivery.reject(true).await;
    }
    while jobs.join_next().await.is_some() {}
    Ok(())
}
