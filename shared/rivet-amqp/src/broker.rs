//! [`Broker`]: one connection, the topology, and every publish.

use crate::connect::connect_with_retries;
use crate::declare::{
    bind, close_quietly, declare_exchange, declare_queue, delete_one, is_not_found,
};
use crate::endpoint::Endpoint;
use crate::publisher::{self, json_properties, short, Outgoing, Shared};
use crate::subscription::Subscription;
use crate::AmqpError;
use lapin::options::{BasicQosOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};
use rivet_protocol::messages::{ClassAnnounce, JobDispatch, RunnerControl, RunnerReport};
use rivet_protocol::topology::Topology;
use rivet_protocol::{encode, Message};
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, info, warn};

/// Prefetch of an announcement subscription (announcements are small and rare).
const ANNOUNCEMENT_PREFETCH: u16 = 16;

/// A connection to RabbitMQ with the base topology declared and a publisher in confirm mode.
///
/// Every method takes `&self`; share one broker between tasks (wrap it in an `Arc`). Publishes
/// are serialised on one confirm channel, each waiting for its own confirm, with no deadline of
/// its own (a broker under a memory alarm holds publishers back): wrap a publish in
/// `tokio::time::timeout` to bound it; one given up on still completes in the background and
/// does not disturb later ones.
///
/// When the connection is lost, calls made meanwhile fail and subscriptions end; the next call
/// connects again (retrying with backoff for up to [`RECONNECT_WINDOW`] per call), declares the
/// base topology and every class this broker declared, and goes on. Owners of subscriptions
/// subscribe again when theirs end. After [`Broker::close`] it stays closed.
///
/// A broker opened with [`Broker::connect_client`] (a runner, on its own RabbitMQ user) declares
/// nothing, then or after a reconnect: the orchestrator owns the topology.
pub struct Broker {
    shared: std::sync::RwLock<Arc<Shared>>,
    reconnecting: tokio::sync::Mutex<()>,
    closed: std::sync::atomic::AtomicBool,
    /// Classes declared through this broker, declared again after a reconnect.
    classes: std::sync::Mutex<std::collections::BTreeSet<String>>,
    reconnects: std::sync::atomic::AtomicU64,
    /// Set when connecting again was refused (login or vhost): see [`Broker::login_refused`].
    refused: std::sync::atomic::AtomicBool,
    topology: Topology,
    /// Whether this broker declares the base topology (the orchestrator's, tests').
    declares: bool,
}

/// How long one call keeps trying to reconnect before it fails (the caller retries).
pub const RECONNECT_WINDOW: Duration = Duration::from_secs(5);

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("endpoint", &self.current().endpoint)
            .field("namespace", &self.topology.namespace())
            .finish_non_exhaustive()
    }
}

/// Counts of one queue, as the broker reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueStats {
    /// Messages ready for delivery (not counting delivered, unacknowledged ones).
    pub messages: u64,
    /// Consumers attached.
    pub consumers: u64,
}

impl Broker {
    /// Connects to `url` (`amqp://user:password@host:port/vhost`), retrying with exponential
    /// backoff (100 ms to 2 s) until `connect_timeout` has passed, then declares the base topology:
    /// the jobs exchange (direct), the control exchange (fanout), the dead-letter exchange
    /// (fanout) with the dead-letter queue bound to it, and the reports queue; all durable.
    ///
    /// A refused login or a missing vhost fails at once: retrying cannot fix them.
    pub async fn connect(
        url: &str,
        topology: Topology,
        connect_timeout: Duration,
    ) -> Result<Broker, AmqpError> {
        Self::open(url, topology, connect_timeout, true).await
    }

    /// Connects like [`Broker::connect`] but declares nothing: for a runner, whose own RabbitMQ
    /// user may not declare the topology (`Topology::runner_permissions`). Its reports carry the
    /// URL's user as `user-id`, which RabbitMQ checks against the login.
    pub async fn connect_client(
        url: &str,
        topology: Topology,
        connect_timeout: Duration,
    ) -> Result<Broker, AmqpError> {
        Self::open(url, topology, connect_timeout, false).await
    }

    async fn open(
        url: &str,
        topology: Topology,
        connect_timeout: Duration,
        declares: bool,
    ) -> Result<Broker, AmqpError> {
        let endpoint = Endpoint::parse(url)?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(AmqpError::NoRuntime {
                endpoint: endpoint.display,
            });
        }
        let connection = connect_with_retries(&endpoint, &topology, connect_timeout).await?;
        info!(endpoint = %endpoint.display, namespace = topology.namespace(), "Connected to RabbitMQ.");
        let shared = Arc::new(Shared::new(connection, endpoint));
        if declares {
            declare_base_topology(&shared, &topology).await?;
        }
        Ok(Broker {
            shared: std::sync::RwLock::new(shared),
            reconnecting: tokio::sync::Mutex::new(()),
            closed: std::sync::atomic::AtomicBool::new(false),
            classes: std::sync::Mutex::new(Default::default()),
            reconnects: std::sync::atomic::AtomicU64::new(0),
            refused: std::sync::atomic::AtomicBool::new(false),
            topology,
            declares,
        })
    }

    fn current(&self) -> Arc<Shared> {
        Arc::clone(
            &self
                .shared
                .read()
                .expect("the connection lock is never poisoned"),
        )
    }

    /// The live connection: the current one, or a new one when it was lost (see the type's
    /// documentation).
    async fn shared(&self) -> Result<Arc<Shared>, AmqpError> {
        let current = self.current();
        if current.connection.status().connected() {
            return Ok(current);
        }
        if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(AmqpError::Closed);
        }
        let _one_at_a_time = self.reconnecting.lock().await;
        let current = self.current();
        if current.connection.status().connected() {
            return Ok(current);
        }
        let endpoint = current.endpoint.clone();
        warn!(endpoint = %endpoint.display, "The RabbitMQ connection is gone; reconnecting.");
        let connection = connect_with_retries(&endpoint, &self.topology, RECONNECT_WINDOW)
            .await
            .inspect_err(|e| {
                if matches!(e, AmqpError::Refused { .. }) {
                    self.refused
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                }
            })?;
        let fresh = Arc::new(Shared::new(connection, endpoint));
        if self.declares {
            declare_base_topology(&fresh, &self.topology).await?;
        }
        let classes: Vec<String> = self
            .classes
            .lock()
            .expect("the class set's lock is never poisoned")
            .iter()
            .cloned()
            .collect();
        for class_key in &classes {
            declare_class_on(&fresh, &self.topology, class_key).await?;
        }
        *self
            .shared
            .write()
            .expect("the connection lock is never poisoned") = Arc::clone(&fresh);
        let n = self
            .reconnects
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        info!(endpoint = %fresh.endpoint.display, reconnects = n, classes = classes.len(), "Reconnected to RabbitMQ.");
        Ok(fresh)
    }

    /// Resolves once the current connection is lost (the broker closed it, say because its user
    /// was deleted, or it failed): a signal for whoever must react at once rather than at its
    /// next call. Resolves at once when it is already lost.
    pub async fn disconnected(&self) {
        use futures_util::StreamExt;
        let shared = self.current();
        // Listen first, then look: a loss between the two is not missed.
        let mut events = shared.connection.events_listener();
        if !shared.connection.status().connected() {
            return;
        }
        while let Some(event) = events.next().await {
            if matches!(event, lapin::Event::Error(_)) {
                return;
            }
        }
    }

    /// Whether the broker refused to let this client connect again after its connection was
    /// lost: its user was deleted or its password changed (a runner whose registration was
    /// revoked, or whose registration another runner process joined with). Retrying cannot help.
    pub fn login_refused(&self) -> bool {
        self.refused.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How many times this broker connected again after losing its connection.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The names this broker declares and uses.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Whether the connection is up now (a lost one comes back with the next call).
    pub fn is_connected(&self) -> bool {
        self.current().connection.status().connected()
    }

    /// Connects again now if the connection is gone (see the type's documentation).
    pub async fn ensure_connected(&self) -> Result<(), AmqpError> {
        self.shared().await.map(|_| ())
    }

    /// Declares the durable queue of a class and binds it to the jobs exchange with the class key
    /// as routing key. Idempotent. Messages rejected without requeue go to the dead-letter
    /// exchange.
    pub async fn declare_class(&self, class_key: &str) -> Result<(), AmqpError> {
        let shared = self.shared().await?;
        declare_class_on(&shared, &self.topology, class_key).await?;
        self.classes
            .lock()
            .expect("the class set's lock is never poisoned")
            .insert(class_key.to_owned());
        Ok(())
    }

    /// Publishes a job to the jobs exchange with its class key as routing key: persistent,
    /// `reply_to` the reports queue, `type` [`JobDispatch::KIND`], `message_id`
    /// `{job_id}:{attempt}`. Waits for the broker's confirm; a `nack`, or no queue bound for the
    /// class ([`AmqpError::Unroutable`]), is an error.
    pub async fn publish_job(&self, msg: &JobDispatch) -> Result<(), AmqpError> {
        let properties = json_properties(JobDispatch::KIND)
            .with_reply_to(short("reply-to queue", &self.topology.reports_queue())?)
            .with_message_id(format!("{}:{}", msg.job_id, msg.attempt).into());
        self.publish(Outgoing {
            exchange: self.topology.jobs_exchange(),
            routing_key: msg.class_key.clone(),
            body: encode(msg),
            properties,
            mandatory: true,
        })
        .await
    }

    /// Publishes a runner report to the queue `reply_to` (the job message's `reply_to`) through
    /// the reports exchange: persistent and confirmed, with this connection's user as `user-id`
    /// (RabbitMQ refuses a `user-id` other than the login's, so the orchestrator knows which
    /// broker user sent it). A queue not bound under that name is an error
    /// ([`AmqpError::Unroutable`]) rather than a silently lost report.
    pub async fn publish_report(
        &self,
        reply_to: &str,
        msg: &RunnerReport,
    ) -> Result<(), AmqpError> {
        let shared = self.shared().await?;
        let user = shared.endpoint.uri.authority.userinfo.username.clone();
        let out = Outgoing {
            exchange: self.topology.reports_exchange(),
            routing_key: reply_to.to_owned(),
            body: encode(msg),
            properties: json_properties(RunnerReport::KIND).with_user_id(user.into()),
            mandatory: true,
        };
        publisher::publish(&shared, out).await
    }

    /// Announces a class on the control exchange (confirmed). Reaching no subscriber is fine.
    pub async fn announce_class(&self, msg: &ClassAnnounce) -> Result<(), AmqpError> {
        self.publish(Outgoing {
            exchange: self.topology.control_exchange(),
            routing_key: String::new(),
            body: encode(msg),
            properties: json_properties(ClassAnnounce::KIND),
            mandatory: false,
        })
        .await
    }

    /// Sends an order to one runner through the runner-control exchange (confirmed). A runner
    /// that is gone gets nothing, and that is not an error: whoever sent it keeps the state
    /// that made the order necessary and sends it again if it still is.
    pub async fn publish_control(&self, msg: &RunnerControl) -> Result<(), AmqpError> {
        self.publish(Outgoing {
            exchange: self.topology.runner_control_exchange(),
            routing_key: msg.runner_id.clone(),
            body: encode(msg),
            properties: json_properties(RunnerControl::KIND),
            mandatory: false,
        })
        .await
    }

    /// Subscribes to the orders for `runner_id`: a server-named, exclusive, auto-delete queue
    /// bound to the runner-control exchange with the runner id as routing key.
    pub async fn subscribe_control(
        &self,
        runner_id: &str,
    ) -> Result<Subscription<RunnerControl>, AmqpError> {
        self.subscribe_exclusive(
            "runner control",
            &self.topology.runner_control_exchange(),
            runner_id,
        )
        .await
    }

    /// Publishes raw bytes (tests send poison messages with it): persistent, confirmed, and
    /// mandatory, so a message that reaches no queue is an error. A missing exchange is an error
    /// too (the broker closes the publishing channel; the next publish opens another).
    pub async fn publish_raw(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
    ) -> Result<(), AmqpError> {
        self.publish(Outgoing {
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
            body: body.to_vec(),
            properties: lapin::BasicProperties::default().with_delivery_mode(publisher::PERSISTENT),
            mandatory: true,
        })
        .await
    }

    /// [`Broker::publish_raw`] with the `user_id` property set to `user_id` (tests check that
    /// RabbitMQ refuses one that is not the connection's user).
    pub async fn publish_raw_as(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        user_id: &str,
    ) -> Result<(), AmqpError> {
        self.publish(Outgoing {
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
            body: body.to_vec(),
            properties: lapin::BasicProperties::default()
                .with_delivery_mode(publisher::PERSISTENT)
                .with_user_id(user_id.into()),
            mandatory: true,
        })
        .await
    }

    async fn publish(&self, out: Outgoing) -> Result<(), AmqpError> {
        publisher::publish(&self.shared().await?, out).await
    }

    /// Consumes `queue` on a channel of its own, with at most `prefetch` unacknowledged
    /// deliveries (0: no limit) and manual acks. Messages that do not decode as `M` are
    /// dead-lettered by the subscription, never returned. `consumer_tag` names the consumer in
    /// the broker (runner id, say); empty lets the broker choose one. A missing queue is an error.
    /// Never consume the dead-letter queue this way: its messages are poison by definition.
    pub async fn consume<M: Message>(
        &self,
        queue: &str,
        prefetch: u16,
        consumer_tag: &str,
    ) -> Result<Subscription<M>, AmqpError> {
        self.consumer_channel()
            .await?
            .consume(queue, prefetch, consumer_tag)
            .await
    }

    /// Opens a channel for consumers that come and go (a runner pausing and resuming its class
    /// queues): consuming again on it costs one round trip, not a channel's opening and closing.
    pub async fn consumer_channel(&self) -> Result<ConsumerChannel, AmqpError> {
        let shared = self.shared().await?;
        let channel = shared.open_channel("consuming").await?;
        Ok(ConsumerChannel {
            shared,
            channel,
            dead_letter_exchange: self.topology.dead_letter_exchange(),
            prefetch: tokio::sync::Mutex::new(None),
        })
    }

    /// Subscribes to class announcements: a server-named, exclusive, auto-delete queue bound to
    /// the control exchange, consumed. Each subscription gets every announcement published after
    /// it started.
    pub async fn subscribe_announcements(&self) -> Result<Subscription<ClassAnnounce>, AmqpError> {
        self.subscribe_exclusive("announcements", &self.topology.control_exchange(), "")
            .await
    }

    /// A server-named, exclusive, auto-delete queue bound to `exchange` with `routing_key`,
    /// consumed with a small prefetch: it lives exactly as long as this subscription.
    async fn subscribe_exclusive<M: Message>(
        &self,
        purpose: &'static str,
        exchange: &str,
        routing_key: &str,
    ) -> Result<Subscription<M>, AmqpError> {
        let shared = self.shared().await?;
        let channel = shared.open_channel(purpose).await?;
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions::exclusive().auto_delete(),
                FieldTable::default(),
            )
            .await
            .map_err(|source| AmqpError::Declare {
                what: "queue",
                name: format!("(server-named {purpose} queue)"),
                source: Box::new(source),
            })?;
        let queue = queue.name().to_string();
        bind(&channel, &queue, exchange, routing_key).await?;
        channel
            .basic_qos(ANNOUNCEMENT_PREFETCH, BasicQosOptions::default())
            .await
            .map_err(|source| AmqpError::Consume {
                queue: queue.clone(),
                source: Box::new(source),
            })?;
        Subscription::start(
            shared,
            channel,
            &queue,
            "",
            self.topology.dead_letter_exchange(),
        )
        .await
    }

    /// Messages ready and consumers of `queue` (a passive declare on a channel of its own);
    /// `Ok(None)` when the queue does not exist.
    pub async fn queue_stats(&self, queue: &str) -> Result<Option<QueueStats>, AmqpError> {
        let name = short("queue", queue)?;
        let channel = self
            .shared()
            .await?
            .open_channel("queue statistics")
            .await?;
        let result = channel
            .queue_declare(
                name,
                QueueDeclareOptions::default().passive(),
                FieldTable::default(),
            )
            .await;
        match result {
            Ok(q) => {
                close_quietly(channel).await;
                Ok(Some(QueueStats {
                    messages: u64::from(q.message_count()),
                    consumers: u64::from(q.consumer_count()),
                }))
            }
            // The broker closed the channel with NOT_FOUND: nothing to close.
            Err(err) if is_not_found(&err) => Ok(None),
            Err(source) => Err(AmqpError::Declare {
                what: "queue (passive)",
                name: queue.to_owned(),
                source: Box::new(source),
            }),
        }
    }

    /// Deletes the topology's queues (reports, dead-letter and the given classes') and exchanges
    /// (jobs, control, dead-letter), messages included. Tests clean up with it. Missing ones are
    /// fine; the first failure is returned after trying the rest.
    pub async fn delete_topology(&self, class_keys: &[&str]) -> Result<(), AmqpError> {
        let t = &self.topology;
        let mut queues: Vec<String> = class_keys.iter().map(|k| t.class_queue(k)).collect();
        queues.push(t.reports_queue());
        queues.push(t.dead_letter_queue());
        let exchanges = [
            t.reports_exchange(),
            t.jobs_exchange(),
            t.control_exchange(),
            t.runner_control_exchange(),
            t.dead_letter_exchange(),
        ];

        let mut first_error = None;
        let mut channel: Option<Channel> = None;
        let deletions = queues
            .iter()
            .map(|q| ("queue", q))
            .chain(exchanges.iter().map(|e| ("exchange", e)));
        for (what, name) in deletions {
            let ch = match channel.take() {
                Some(ch) if ch.status().connected() => ch,
                _ => match self
                    .shared()
                    .await?
                    .open_channel("deleting the topology")
                    .await
                {
                    Ok(ch) => ch,
                    Err(err) => return Err(first_error.unwrap_or(err)),
                },
            };
            let result = delete_one(&ch, what, name).await;
            if let Err(err) = result {
                warn!(error = %err, "Deleting topology failed.");
                first_error.get_or_insert(err);
            }
            channel = Some(ch);
        }
        if let Some(ch) = channel {
            close_quietly(ch).await;
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Closes the connection (subscriptions end; unacknowledged deliveries go back to their
    /// queues). Errors are logged: there is nothing left to do about them.
    pub async fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        // Bounded: a process that stops must not wait on the broker's goodbye for ever.
        let current = self.current();
        let close = current.connection.close(200, "OK".into());
        match tokio::time::timeout(std::time::Duration::from_secs(5), close).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => debug!(error = %err, "Closing the RabbitMQ connection failed."),
            Err(_) => {
                warn!("RabbitMQ did not confirm closing the connection within 5 s; going on.")
            }
        }
    }
}

/// Declares a class queue (dead-lettered) bound to the jobs exchange with the class key.
async fn declare_class_on(
    shared: &Shared,
    topology: &Topology,
    class_key: &str,
) -> Result<(), AmqpError> {
    let channel = shared.open_channel("declaring a class").await?;
    let queue = topology.class_queue(class_key);
    declare_queue(&channel, &queue, dead_lettered(topology)).await?;
    bind(&channel, &queue, &topology.jobs_exchange(), class_key).await?;
    close_quietly(channel).await;
    Ok(())
}

/// Declares the exchanges, the reports and dead-letter queues, and their bindings.
async fn declare_base_topology(shared: &Shared, t: &Topology) -> Result<(), AmqpError> {
    {
        let channel = shared.open_channel("declaring the topology").await?;
        declare_exchange(&channel, &t.jobs_exchange(), ExchangeKind::Direct).await?;
        declare_exchange(&channel, &t.control_exchange(), ExchangeKind::Fanout).await?;
        declare_exchange(&channel, &t.runner_control_exchange(), ExchangeKind::Direct).await?;
        declare_exchange(&channel, &t.dead_letter_exchange(), ExchangeKind::Fanout).await?;
        declare_queue(&channel, &t.dead_letter_queue(), FieldTable::default()).await?;
        bind(
            &channel,
            &t.dead_letter_queue(),
            &t.dead_letter_exchange(),
            "",
        )
        .await?;
        declare_queue(&channel, &t.reports_queue(), dead_lettered(t)).await?;
        declare_exchange(&channel, &t.reports_exchange(), ExchangeKind::Direct).await?;
        bind(
            &channel,
            &t.reports_queue(),
            &t.reports_exchange(),
            &t.reports_queue(),
        )
        .await?;
        close_quietly(channel).await;
        Ok(())
    }
}

/// Queue arguments sending rejected (not requeued) and expired messages to the dead-letter
/// exchange, so nothing a consumer refuses is lost.
fn dead_lettered(topology: &Topology) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(LongString::from(topology.dead_letter_exchange())),
    );
    args
}

/// A channel on which queues are consumed, each consumer with its own prefetch. It stays open
/// while this handle, a [`Subscription`] started on it, or an [`Incoming`](crate::Incoming) of
/// one lives. A failed consume (a missing queue) closes the channel: open another.
pub struct ConsumerChannel {
    shared: Arc<Shared>,
    channel: Channel,
    dead_letter_exchange: String,
    /// The QoS last set on the channel (it applies to consumers started after it).
    prefetch: tokio::sync::Mutex<Option<u16>>,
}

impl std::fmt::Debug for ConsumerChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerChannel")
            .field("channel", &self.channel.id())
            .finish_non_exhaustive()
    }
}

impl ConsumerChannel {
    /// Consumes `queue` with at most `prefetch` unacknowledged deliveries for this consumer
    /// (0: no limit); see [`Broker::consume`].
    pub async fn consume<M: Message>(
        &self,
        queue: &str,
        prefetch: u16,
        consumer_tag: &str,
    ) -> Result<Subscription<M>, AmqpError> {
        // Held across the QoS and the consume: another consume must not change the QoS between.
        let mut current = self.prefetch.lock().await;
        if *current != Some(prefetch) {
            *current = None;
            self.channel
                .basic_qos(prefetch, BasicQosOptions::default())
                .await
                .map_err(|source| AmqpError::Consume {
                    queue: queue.to_owned(),
                    source: Box::new(source),
                })?;
            *current = Some(prefetch);
        }
        Subscription::start(
            Arc::clone(&self.shared),
            self.channel.clone(),
            queue,
            consumer_tag,
            self.dead_letter_exchange.clone(),
        )
        .await
    }

    /// Whether the channel is still usable (false once the connection or the channel closed).
    pub fn is_open(&self) -> bool {
        self.channel.status().connected()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rivet_protocol::messages::JobDispatch;

    /// Services spawn these futures on a multi-threaded runtime, so they must be `Send`.
    #[allow(dead_code)]
    fn handles_and_futures_are_send(
        broker: &Broker,
        sub: &mut Subscription<JobDispatch>,
        job: &JobDispatch,
    ) {
        fn send<T: Send>(_: &T) {}
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Broker>();
        send_sync::<Subscription<JobDispatch>>();
        send_sync::<crate::Incoming<JobDispatch>>();
        send_sync::<AmqpError>();
        send(&broker.publish_job(job));
        send(&broker.consume::<JobDispatch>("q", 1, ""));
        send(&broker.subscribe_announcements());
        send(&broker.queue_stats("q"));
        send(&broker.delete_topology(&[]));
        send(&sub.cancel());
        send(&sub.next());
    }
}
