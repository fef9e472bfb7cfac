//! [`Subscription`]: decoded deliveries from one queue, poison messages dead-lettered on the way.

use crate::publisher::{self, short, Outgoing, Shared};
use crate::AmqpError;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicRejectOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Acker, Channel, Consumer};
use rivet_protocol::topology::REASON_HEADER;
use rivet_protocol::Message;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, warn};

/// How long [`Subscription::cancel`] waits for the consumer to hand back its buffered deliveries
/// (they are already there when the broker confirms the cancel; this only guards a broken
/// connection).
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// Longest wait for an ack or reject to be written (see [`Incoming::ack`]).
const SETTLE_LIMIT: Duration = Duration::from_secs(5);

/// A consumer of one queue, on a channel of its own ([`crate::Broker::consume`]) or a shared one
/// ([`crate::ConsumerChannel`]). The channel closes once nothing holds it any more (the
/// subscription, every [`Incoming`] it returned, the `ConsumerChannel`), and then every delivery
/// not settled goes back to the queue.
pub struct Subscription<M> {
    shared: Arc<Shared>,
    channel: Channel,
    consumer: Consumer,
    queue: String,
    consumer_tag: String,
    dead_letter_exchange: String,
    ended: AtomicBool,
    _message: PhantomData<fn() -> M>,
}

impl<M> std::fmt::Debug for Subscription<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("queue", &self.queue)
            .field("consumer_tag", &self.consumer_tag)
            .finish_non_exhaustive()
    }
}

/// A decoded delivery. Settle it with [`Incoming::ack`] or [`Incoming::reject`]; it keeps its
/// channel open, so that works even after its [`Subscription`] was dropped. Dropped unsettled, it
/// goes back to the queue when that channel closes.
pub struct Incoming<M> {
    /// The message.
    pub message: M,
    /// Whether the broker delivered it before (to this or another consumer) without an ack.
    pub redelivered: bool,
    /// The message's `reply_to` property (jobs: the reports queue).
    pub reply_to: Option<String>,
    /// The message's `message_id` property (jobs: `{job_id}:{attempt}`).
    pub message_id: Option<String>,
    /// The message's `user_id` property: when present, RabbitMQ checked it is the user that
    /// published it (reports: the runner's broker user).
    pub user_id: Option<String>,
    acker: Acker,
    delivery_tag: u64,
    queue: String,
    /// Keeps the channel, on which the delivery must be settled, open.
    _channel: Channel,
}

impl<M: std::fmt::Debug> std::fmt::Debug for Incoming<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("message", &self.message)
            .field("redelivered", &self.redelivered)
            .field("reply_to", &self.reply_to)
            .field("message_id", &self.message_id)
            .field("queue", &self.queue)
            .field("delivery_tag", &self.delivery_tag)
            .finish()
    }
}

impl<M> Incoming<M> {
    /// Acknowledges the delivery: the broker forgets the message.
    pub async fn ack(&self) -> Result<(), AmqpError> {
        if !self._channel.status().connected() {
            return self.settled("ack", Ok(false));
        }
        // A frame for a connection whose I/O loop has stopped is never written: give up after
        // a while (the broker puts the message back when that connection's channel is gone).
        let result =
            match tokio::time::timeout(SETTLE_LIMIT, self.acker.ack(BasicAckOptions::default()))
                .await
            {
                Ok(r) => r,
                Err(_) => Ok(false),
            };
        self.settled("ack", result)
    }

    /// Rejects the delivery: back to the queue (`requeue`, delivered again with `redelivered`
    /// set) or to the dead-letter exchange.
    pub async fn reject(&self, requeue: bool) -> Result<(), AmqpError> {
        if !self._channel.status().connected() {
            return self.settled("reject", Ok(false));
        }
        let result = match tokio::time::timeout(
            SETTLE_LIMIT,
            self.acker.reject(BasicRejectOptions { requeue }),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Ok(false),
        };
        self.settled("reject", result)
    }

    fn settled(&self, action: &'static str, result: lapin::Result<bool>) -> Result<(), AmqpError> {
        match result {
            Ok(true) => Ok(()),
            Ok(false) => Err(AmqpError::AckUnusable {
                action,
                queue: self.queue.clone(),
                delivery_tag: self.delivery_tag,
            }),
            Err(source) => Err(AmqpError::Ack {
                action,
                queue: self.queue.clone(),
                delivery_tag: self.delivery_tag,
                source: Box::new(source),
            }),
        }
    }
}

impl<M: Message> Subscription<M> {
    /// Starts consuming `queue` on `channel` (QoS already set) with manual acks.
    pub(crate) async fn start(
        shared: Arc<Shared>,
        channel: Channel,
        queue: &str,
        consumer_tag: &str,
        dead_letter_exchange: String,
    ) -> Result<Self, AmqpError> {
        let consumer = channel
            .basic_consume(
                short("queue", queue)?,
                short("consumer tag", consumer_tag)?,
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|source| AmqpError::Consume {
                queue: queue.to_owned(),
                source: Box::new(source),
            })?;
        let consumer_tag = consumer.tag().to_string();
        debug!(queue, consumer_tag, "Consuming.");
        Ok(Self {
            shared,
            channel,
            consumer,
            queue: queue.to_owned(),
            consumer_tag,
            dead_letter_exchange,
            ended: AtomicBool::new(false),
            _message: PhantomData,
        })
    }

    /// The queue consumed (for announcement subscriptions, the server-chosen name).
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The consumer tag (the broker's choice when none was given).
    pub fn consumer_tag(&self) -> &str {
        &self.consumer_tag
    }

    /// The next decoded message; `None` once the consumer was cancelled (by [`Self::cancel`] or
    /// by the broker, e.g. when the queue was deleted) or its channel ended. An `Err` reports why
    /// the channel ended and is followed by `None`.
    ///
    /// A message that does not decode (not JSON, the wrong shape, another schema version, another
    /// message `type`) is published to the dead-letter exchange with the reason in the
    /// [`REASON_HEADER`] header, then acknowledged, and never returned.
    pub async fn next(&mut self) -> Option<Result<Incoming<M>, AmqpError>> {
        loop {
            if self.ended.load(Ordering::Acquire) {
                return None;
            }
            let delivery = match self.consumer.next().await {
                Some(Ok(delivery)) => delivery,
                Some(Err(source)) => {
                    return Some(Err(AmqpError::Receive {
                        queue: self.queue.clone(),
                        source: Box::new(source),
                    }))
                }
                None => {
                    self.ended.store(true, Ordering::Release);
                    return None;
                }
            };
            match decode::<M>(&delivery) {
                Ok(message) => {
                    return Some(Ok(Incoming {
                        message,
                        redelivered: delivery.redelivered,
                        reply_to: delivery
                            .properties
                            .reply_to()
                            .as_ref()
                            .map(|s| s.to_string()),
                        message_id: delivery
                            .properties
                            .message_id()
                            .as_ref()
                            .map(|s| s.to_string()),
                        user_id: delivery
                            .properties
                            .user_id()
                            .as_ref()
                            .map(|s| s.to_string()),
                        delivery_tag: delivery.delivery_tag,
                        acker: delivery.acker,
                        queue: self.queue.clone(),
                        _channel: self.channel.clone(),
                    }))
                }
                Err(reason) => self.dead_letter(delivery, reason).await,
            }
        }
    }

    /// Cancels the consumer: no more deliveries; those it had received but [`Self::next`] had not
    /// returned yet go back to the queue now, and `next` returns `None` from here on. Messages
    /// already returned stay with their [`Incoming`] (ack or reject them).
    pub async fn cancel(&self) -> Result<(), AmqpError> {
        if self.ended.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        cancel_consumer(
            self.channel.clone(),
            self.consumer.clone(),
            self.consumer_tag.clone(),
            self.queue.clone(),
        )
        .await
    }

    /// Moves a poison message to the dead-letter exchange, then acks it. If that publish fails the
    /// message is rejected without requeue (queues declared here dead-letter those too, without
    /// the reason): it must not come back.
    async fn dead_letter(&self, delivery: Delivery, reason: String) {
        warn!(queue = %self.queue, delivery_tag = delivery.delivery_tag, reason = %reason,
            "Dead-lettering a message that does not decode.");
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        headers.insert(
            REASON_HEADER.into(),
            AMQPValue::LongString(LongString::from(reason)),
        );
        let properties = delivery
            .properties
            .clone()
            .with_headers(headers)
            .with_delivery_mode(publisher::PERSISTENT);
        let published = publisher::publish(
            &self.shared,
            Outgoing {
                exchange: self.dead_letter_exchange.clone(),
                // Fanout ignores it; it records where the message came from.
                routing_key: self.queue.clone(),
                body: delivery.data,
                properties,
                mandatory: true,
            },
        )
        .await;
        let settled = match published {
            Ok(()) => delivery.acker.ack(BasicAckOptions::default()).await,
            Err(err) => {
                warn!(queue = %self.queue, error = %err,
                    "Publishing to the dead-letter exchange failed; rejecting the message instead.");
                delivery
                    .acker
                    .reject(BasicRejectOptions { requeue: false })
                    .await
            }
        };
        if let Err(err) = settled {
            // The channel is gone; the consumer stream reports it next.
            warn!(queue = %self.queue, error = %err, "Settling a poison message failed.");
        }
    }
}

/// Cancels a consumer and puts back what it had buffered.
async fn cancel_consumer(
    channel: Channel,
    consumer: Consumer,
    consumer_tag: String,
    queue: String,
) -> Result<(), AmqpError> {
    // Bounded like the drain below: whoever cancels (a pausing or draining runner) must not wait
    // on the broker's answer for ever. Without it, the channel's end returns what it holds.
    let cancel = channel.basic_cancel(
        short("consumer tag", &consumer_tag)?,
        BasicCancelOptions::default(),
    );
    match tokio::time::timeout(DRAIN_LIMIT, cancel).await {
        Ok(done) => done.map_err(|source| AmqpError::Cancel {
            queue: queue.clone(),
            consumer_tag: consumer_tag.clone(),
            source: Box::new(source),
        })?,
        Err(_) => {
            warn!(queue = %queue, consumer_tag = %consumer_tag, "The broker did not confirm a consumer's cancel in time; going on without it.");
            return Ok(());
        }
    }
    // Once the broker confirmed the cancel, lapin has queued the consumer's end behind the
    // deliveries it buffered (prefetch). Cancelling does not return them to the queue (they stay
    // unacknowledged on the channel), so reject each.
    let mut buffered = consumer;
    let drain = async {
        let mut requeued = 0u32;
        while let Some(Ok(delivery)) = buffered.next().await {
            if let Err(err) = delivery
                .acker
                .reject(BasicRejectOptions { requeue: true })
                .await
            {
                warn!(queue = %queue, error = %err, "Requeueing a buffered delivery failed.");
            }
            requeued += 1;
        }
        requeued
    };
    match tokio::time::timeout(DRAIN_LIMIT, drain).await {
        Ok(requeued) => debug!(queue = %queue, requeued, "Consumer cancelled."),
        Err(_) => {
            warn!(queue = %queue, "Consumer cancelled; its buffered deliveries did not come back in time.")
        }
    }
    Ok(())
}

impl<M> Drop for Subscription<M> {
    /// On a shared channel the consumer would outlive the subscription (and sit on what it
    /// buffered): cancel it in the background unless it already ended.
    fn drop(&mut self) {
        if self.ended.swap(true, Ordering::AcqRel) || !self.channel.status().connected() {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(cancel_consumer(
                self.channel.clone(),
                self.consumer.clone(),
                self.consumer_tag.clone(),
                self.queue.clone(),
            ));
        }
    }
}

/// Decodes a delivery as `M`, or says why it cannot.
fn decode<M: Message>(delivery: &Delivery) -> Result<M, String> {
    if let Some(kind) = delivery.properties.kind() {
        if kind.as_str() != M::KIND {
            return Err(format!(
                "message type `{kind}` where `{}` was expected",
                M::KIND
            ));
        }
    }
    rivet_protocol::decode::<M>(&delivery.data).map_err(|e| e.to_string())
}
