//! Consuming class queues: one subscription per class the runner covers, fed into one loop that
//! takes a slot and the job's lease and starts the job. Subscriptions are made with prefetch
//! equal to the free slots, and a job's message stays unacknowledged until its start is
//! reported, so the broker sends a runner busy with short jobs its next job only as a slot
//! frees. A delivery that finds every slot busy (a long job's message was acknowledged while it
//! still runs) waits up to [`SLOT_WAIT`] for one, then goes back to its queue, and the
//! subscriptions are cancelled (deliveries in flight go back too) until a slot frees: a job
//! never waits longer than that behind a busy runner while another could start it. Pausing
//! only then, not whenever the last slot is taken, spares a saturated runner a cancel and a
//! consume per job.
//!
//! The same loop follows class announcements and this runner's control queue (cancel, drain),
//! and subscribes again to everything after the broker connection came back. When the runner
//! drains it stops consuming, lets running jobs finish within the grace period, cancels the rest
//! and returns once every job reported its end.

use crate::job::{self, Claim};
use crate::Runner;
use redis::AsyncCommands;
use rivet_amqp::{ConsumerChannel, Incoming, Subscription};
use rivet_protocol::messages::{ClassAnnounce, ControlCommand, JobDispatch, RunnerControl};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

type Delivery = Incoming<JobDispatch>;

/// How long a message whose lease another runner holds waits before it goes back to its queue.
const HELD_RETRY: Duration = Duration::from_secs(2);
/// How long a delivery that found every slot busy waits for one before it goes back to its
/// queue.
const SLOT_WAIT: Duration = Duration::from_millis(50);
/// How often the loop checks that the broker connection and its subscriptions are alive.
const HEALTH_CHECK: Duration = Duration::from_secs(1);

/// Active class subscriptions: class key → the token that stops its forwarding task, and the
/// subscription's prefetch. They share one channel, kept while the runner pauses and resumes (a
/// consume is then one round trip).
#[derive(Default)]
struct Subscriptions {
    active: BTreeMap<String, (CancellationToken, u16)>,
    tasks: JoinSet<()>,
    channel: Option<ConsumerChannel>,
}

impl Subscriptions {
    async fn start(
        &mut self,
        runner: &Arc<Runner>,
        class_key: &str,
        prefetch: u16,
        tx: &mpsc::Sender<Delivery>,
    ) -> bool {
        if self.active.contains_key(class_key) {
            return true;
        }
        let queue = runner.broker.topology().class_queue(class_key);
        let tag = format!("{}:{class_key}", runner.id);
        let channel = match self.channel.take().filter(ConsumerChannel::is_open) {
            Some(c) => c,
            None => match runner.broker.consumer_channel().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot open a channel for class queues.");
                    return false;
                }
            },
        };
        let consumed = channel.consume::<JobDispatch>(&queue, prefetch, &tag).await;
        // A failed consume closes the channel: the next start opens another.
        self.channel = Some(channel);
        match consumed {
            Ok(sub) => {
                let stop = CancellationToken::new();
                self.tasks.spawn(forward(sub, tx.clone(), stop.clone()));
                self.active.insert(class_key.to_owned(), (stop, prefetch));
                tracing::debug!(class = %class_key, prefetch, "Consuming class queue.");
                true
            }
            Err(e) => {
                tracing::warn!(class = %class_key, error = %e, "Cannot consume class queue.");
                false
            }
        }
    }

    async fn stop_all(&mut self) {
        for (_, (stop, _)) in std::mem::take(&mut self.active) {
            stop.cancel();
        }
        while self.tasks.join_next().await.is_some() {}
    }

    /// The smallest prefetch of the active subscriptions (none: nothing is consumed).
    fn prefetch(&self) -> Option<u16> {
        self.active.values().map(|(_, p)| *p).min()
    }

    /// Stops everything and forgets the channel (its connection died).
    async fn reset(&mut self) {
        self.stop_all().await;
        self.channel = None;
    }

    /// Whether a forwarding task ended by itself (its subscription died with the connection).
    fn broken(&mut self) -> bool {
        let mut ended = false;
        while self.tasks.try_join_next().is_some() {
            ended = true;
        }
        ended
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
                    // Waiting for room in the channel must not outlast a stop: the loop that reads
                    // it may be the one waiting for this task to stop.
                    tokio::select! {
                        permit = tx.reserve() => match permit {
                            Ok(permit) => permit.send(d),
                            Err(_) => return,
                        },
                        _ = stop.cancelled() => {
                            let _ = d.reject(true).await;
                        }
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

/// Consumes every known class this runner covers, with prefetch = `free` slots. False when a
/// subscription failed (the health check tries again).
async fn resume(
    subs: &mut Subscriptions,
    runner: &Arc<Runner>,
    classes: &BTreeMap<String, Vec<String>>,
    free: usize,
    tx: &mpsc::Sender<Delivery>,
) -> bool {
    let prefetch = u16::try_from(free.max(1)).unwrap_or(u16::MAX);
    let mut ok = true;
    for (class, requires) in classes {
        if runner.covers(requires) {
            ok &= subs.start(runner, class, prefetch, tx).await;
        }
    }
    ok
}

/// The next message of an optional subscription; never, when there is none.
async fn next_of<M: rivet_protocol::Message>(
    sub: &mut Option<Subscription<M>>,
) -> Option<Result<Incoming<M>, rivet_amqp::AmqpError>> {
    match sub {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// Cancels the attempt a control order names, if it runs here.
fn cancel_job(runner: &Runner, job_id: uuid::Uuid, attempt: u32, reason: String) {
    let entry = runner
        .running
        .lock()
        .expect("the running list's lock is never poisoned")
        .get(&(job_id, attempt))
        .cloned();
    match entry {
        Some(entry) => {
            tracing::info!(job_id = %job_id, attempt, reason = %reason, "Cancelling a job on order.");
            entry.cancel(reason);
        }
        None => {
            tracing::debug!(job_id = %job_id, attempt, "Cancel order for a job not running here.")
        }
    }
}

/// The loop's state.
struct Loop {
    runner: Arc<Runner>,
    slots: Arc<Semaphore>,
    freed: Arc<Notify>,
    tx: mpsc::Sender<Delivery>,
    classes: BTreeMap<String, Vec<String>>,
    subs: Subscriptions,
    announcements: Option<Subscription<ClassAnnounce>>,
    control: Option<Subscription<RunnerControl>>,
    jobs: JoinSet<()>,
    paused: bool,
    /// Consecutive lease failures (Redis unreachable): the next waits longer.
    claim_failures: u32,
}

impl Loop {
    /// (Re)subscribes to whatever is missing: announcements, control, and (unless paused) the
    /// class queues, all of them again when `renew_classes` (their connection died). Returns
    /// whether everything is in place.
    async fn subscribe(&mut self, renew_classes: bool) -> bool {
        let mut ok = true;
        if self.control.is_none() {
            match self.runner.broker.subscribe_control(&self.runner.id).await {
                Ok(s) => self.control = Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "Subscribing to runner control failed.");
                    ok = false;
                }
            }
        }
        if self.announcements.is_none() {
            match self.runner.broker.subscribe_announcements().await {
                Ok(s) => {
                    self.announcements = Some(s);
                    // Classes announced while we were not listening (merged: a Redis that lost
                    // its data must not make the runner forget what it knew).
                    if let Ok(c) = known_classes(&self.runner).await {
                        self.classes.extend(c);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Subscribing to class announcements failed.");
                    ok = false;
                }
            }
        }
        if renew_classes {
            self.subs.reset().await;
        }
        if !self.paused {
            let free = self.slots.available_permits();
            ok &= resume(&mut self.subs, &self.runner, &self.classes, free, &self.tx).await;
        }
        ok
    }

    async fn on_delivery(&mut self, delivery: Delivery) {
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            // Forwarded before the pause: back to its queue at once.
            Err(_) if self.paused => {
                let _ = delivery.reject(true).await;
                return;
            }
            // Every slot is busy. A job's message is acknowledged a moment before its slot is
            // given back, so the broker's next delivery may arrive just ahead of its slot: it
            // waits that moment. Otherwise it goes back to its queue (another runner may be
            // idle) and the subscriptions stop until a slot frees.
            Err(_) => {
                match tokio::time::timeout(SLOT_WAIT, self.slots.clone().acquire_owned()).await {
                    Ok(Ok(permit)) => permit,
                    _ => {
                        let _ = delivery.reject(true).await;
                        if !self.paused {
                            self.paused = true;
                            self.subs.stop_all().await;
                        }
                        return;
                    }
                }
            }
        };
        let claim = job::claim(&self.runner, &delivery.message).await;
        // Only a job that runs keeps its slot.
        let permit = match claim {
            Ok(Claim::Ours { .. }) => Some(permit),
            _ => {
                drop(permit);
                None
            }
        };
        match claim {
            Ok(Claim::Ours { token }) => {
                let permit = permit.expect("kept for a job that runs");
                self.claim_failures = 0;
                let (runner, freed) = (self.runner.clone(), self.freed.clone());
                self.jobs.spawn(async move {
                    job::run(&runner, delivery, token).await;
                    drop(permit);
                    freed.notify_one();
                });
            }
            Ok(Claim::Stale) => {
                self.claim_failures = 0;
                tracing::info!(job_id = %delivery.message.job_id, attempt = delivery.message.attempt,
                    "Dropping a job message: its fence says the attempt must not run (job over or retried).");
                let _ = delivery.ack().await;
            }
            Ok(Claim::Held) => {
                self.claim_failures = 0;
                tracing::info!(job_id = %delivery.message.job_id, attempt = delivery.message.attempt,
                    "Another runner holds this job's lease; the message goes back to its queue shortly.");
                tokio::spawn(async move {
                    tokio::time::sleep(HELD_RETRY).await;
                    let _ = delivery.reject(true).await;
                });
            }
            Err(e) => {
                // Redis unreachable: wait (longer each time) before the message goes back, so the
                // loop does not spin through the queue.
                self.claim_failures += 1;
                let wait = Duration::from_millis(100 * 2u64.pow(self.claim_failures.min(6)))
                    .min(Duration::from_secs(5));
                tracing::warn!(error = %format!("{e:#}"), retry_in_ms = wait.as_millis() as u64, "Taking a lease failed; the job goes back to its queue.");
                tokio::time::sleep(wait).await;
                let _ = delivery.reject(true).await;
            }
        }
    }

    fn on_control(&mut self, order: RunnerControl, drain: &CancellationToken) {
        match order.command {
            ControlCommand::Cancel {
                job_id,
                attempt,
                reason,
            } => cancel_job(&self.runner, job_id, attempt, reason),
            ControlCommand::Drain { reason } => {
                tracing::info!(reason = %reason, "Drain ordered.");
                drain.cancel();
            }
        }
    }
}

/// The runner's main loop; returns once drained.
pub async fn run(runner: Arc<Runner>, drain: CancellationToken) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::channel::<Delivery>(64);
    let mut l = Loop {
        slots: Arc::new(Semaphore::new(runner.slots as usize)),
        freed: Arc::new(Notify::new()),
        tx,
        // Read again at every (re)subscription; a Redis that fails now is not fatal.
        classes: match known_classes(&runner).await {
            Ok(classes) => classes,
            Err(e) => {
                tracing::warn!(error = %e, "Reading the class table failed; it is read again when subscribing.");
                BTreeMap::new()
            }
        },
        subs: Subscriptions::default(),
        announcements: None,
        control: None,
        jobs: JoinSet::new(),
        paused: false,
        claim_failures: 0,
        runner,
    };
    let mut healthy = l.subscribe(false).await;
    let mut health = tokio::time::interval(HEALTH_CHECK);
    health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Set when the broker no longer lets this runner in (its user was deleted: revoked).
    let mut shut_out = false;

    loop {
        tokio::select! {
            _ = drain.cancelled() => break,
            Some(delivery) = rx.recv() => l.on_delivery(delivery).await,
            _ = l.freed.notified() => {
                let free = l.slots.available_permits();
                if l.paused && free > 0 {
                    l.paused = false;
                    healthy &= resume(&mut l.subs, &l.runner, &l.classes, free, &l.tx).await;
                } else if !l.paused && l.subs.prefetch().is_some_and(|p| usize::from(p) < free) {
                    // Subscribed while fewer slots were free: the broker would send no more than
                    // that many jobs at a time. Subscribe again with the slots free now.
                    l.subs.stop_all().await;
                    healthy &= resume(&mut l.subs, &l.runner, &l.classes, free, &l.tx).await;
                }
            }
            ann = next_of(&mut l.announcements) => match ann {
                Some(Ok(a)) => {
                    let _ = a.ack().await;
                    let fresh = !l.classes.contains_key(&a.message.class_key);
                    l.classes.insert(a.message.class_key.clone(), a.message.requires.clone());
                    if fresh && !l.paused && l.runner.covers(&a.message.requires) {
                        let prefetch = u16::try_from(l.slots.available_permits().max(1)).unwrap_or(u16::MAX);
                        healthy &= l.subs.start(&l.runner, &a.message.class_key, prefetch, &l.tx).await;
                    }
                }
                Some(Err(e)) => tracing::warn!(error = %e, "Receiving an announcement failed."),
                None => {
                    tracing::warn!("The announcement subscription ended (broker connection lost?).");
                    l.announcements = None;
                    healthy = false;
                }
            },
            order = next_of(&mut l.control) => match order {
                Some(Ok(o)) => {
                    let _ = o.ack().await;
                    l.on_control(o.message, &drain);
                }
                Some(Err(e)) => tracing::warn!(error = %e, "Receiving a control order failed."),
                None => {
                    l.control = None;
                    healthy = false;
                }
            },
            _ = health.tick() => {
                if l.runner.broker.login_refused() {
                    shut_out = true;
                    break;
                }
                let broken = l.subs.broken() || !l.runner.broker.is_connected();
                if !healthy || broken {
                    healthy = l.subscribe(broken).await;
                    if healthy {
                        tracing::info!("Subscriptions are in place again.");
                    }
                }
            }
            Some(_) = l.jobs.join_next(), if !l.jobs.is_empty() => {}
        }
    }

    // Draining: no new jobs; running ones get the grace period, then are cancelled.
    l.runner.draining.store(true, Ordering::SeqCst);
    if !shut_out {
        // Shut out, its Redis user is gone too: the record expires by itself.
        let _ = crate::presence::publish_now(&l.runner).await;
    }
    tracing::info!(runner = %l.runner.id, running = l.jobs.len(), grace_s = l.runner.drain_grace.as_secs(), "Draining: no new jobs; waiting for running ones.");
    l.subs.stop_all().await;
    l.announcements = None;
    rx.close();
    while let Ok(delivery) = rx.try_recv() {
        let _ = delivery.reject(true).await;
    }
    // Shut out of the broker, a job could report nothing: no grace.
    let deadline = tokio::time::Instant::now()
        + if shut_out {
            Duration::ZERO
        } else {
            l.runner.drain_grace
        };
    let mut cancelled = false;
    while !l.jobs.is_empty() {
        tokio::select! {
            _ = l.jobs.join_next() => {}
            order = next_of(&mut l.control) => match order {
                Some(Ok(o)) => {
                    let _ = o.ack().await;
                    l.on_control(o.message, &drain);
                }
                Some(Err(_)) => {}
                None => l.control = None,
            },
            _ = tokio::time::sleep_until(deadline), if !cancelled => {
                cancelled = true;
                let reason = if shut_out {
                    "the broker refused the runner's login (its registration was revoked, or \
                     another runner joined with its token)"
                        .to_owned()
                } else {
                    format!(
                        "the runner was drained and its grace period of {} ran out",
                        rivet_sandbox::fmt_duration(l.runner.drain_grace)
                    )
                };
                let running: Vec<_> = l.runner.running.lock().expect("the running list's lock is never poisoned").values().cloned().collect();
                tracing::warn!(jobs = running.len(), "Drain grace period over; cancelling running jobs.");
                for entry in running {
                    entry.cancel(reason.clone());
                }
            }
        }
    }
    tracing::info!(runner = %l.runner.id, "Drained.");
    if shut_out {
        return Err(shut_out_error("the broker", &l.runner.id));
    }
    Ok(())
}

/// Why a runner stops when `service` (the broker, Redis) refuses its login.
pub(crate) fn shut_out_error(service: &str, runner: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "policy violation [runner.identity]: {service} refused runner `{runner}`'s login: its \
         registration was revoked, or another runner joined with its token; stopped"
    )
}
