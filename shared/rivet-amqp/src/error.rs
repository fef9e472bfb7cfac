//! What can go wrong talking to RabbitMQ. Each variant names the broker object involved; the
//! underlying lapin error is the `source`, so print the chain (`{:#}` with anyhow) to see it.

use std::time::Duration;

/// An infrastructure failure talking to RabbitMQ. URLs in messages never carry a password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AmqpError {
    /// The URL does not parse, or names something this build cannot connect to.
    #[error("invalid RabbitMQ URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL, password replaced by `***`.
        url: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The broker was closed with [`Broker::close`](crate::Broker::close).
    #[error("the RabbitMQ connection was closed")]
    Closed,

    /// Called outside a tokio runtime.
    #[error("connecting to RabbitMQ at {endpoint}: not called from inside a tokio runtime")]
    NoRuntime {
        /// Host, port and user.
        endpoint: String,
    },

    /// Every connection attempt failed until the connect timeout ran out.
    #[error(
        "connecting to RabbitMQ at {endpoint} (gave up after {attempts} attempt(s) in {:.1}s; \
         is RabbitMQ running and reachable?)",
        elapsed.as_secs_f64()
    )]
    Connect {
        /// Host, port and user.
        endpoint: String,
        /// Connection attempts made.
        attempts: u32,
        /// Time spent.
        elapsed: Duration,
        /// The last attempt's error.
        #[source]
        source: Box<lapin::Error>,
    },

    /// The broker answered and said no (bad credentials, missing vhost, no permission): not
    /// retried.
    #[error(
        "connecting to RabbitMQ at {endpoint}: the broker refused the connection (check the user, \
         password and vhost)"
    )]
    Refused {
        /// Host, port and user.
        endpoint: String,
        /// The broker's answer.
        #[source]
        source: Box<lapin::Error>,
    },

    /// A name does not fit AMQP's 255-byte short strings.
    #[error("{what} `{name}` is longer than 255 bytes")]
    NameTooLong {
        /// What the name is for (`queue`, `routing key`, ...).
        what: &'static str,
        /// The name.
        name: String,
    },

    /// Opening a channel failed (the connection is probably gone).
    #[error("opening a RabbitMQ channel for {purpose}")]
    Channel {
        /// What the channel was for.
        purpose: &'static str,
        /// Lapin's error.
        #[source]
        source: Box<lapin::Error>,
    },

    /// Declaring, binding or checking an exchange or queue failed.
    #[error("declaring {what} `{name}`")]
    Declare {
        /// `exchange`, `queue`, `binding`, ...
        what: &'static str,
        /// Its name.
        name: String,
        /// Lapin's error.
        #[source]
        source: Box<lapin::Error>,
    },

    /// Deleting an exchange or queue failed.
    #[error("deleting {what} `{name}`")]
    Delete {
        /// `exchange` or `queue`.
        what: &'static str,
        /// Its name.
        name: String,
        /// Lapin's error.
        #[source]
        source: Box<lapin::Error>,
    },

    /// Publishing failed before the broker confirmed (or the channel closed meanwhile).
    #[error("publishing to exchange `{exchange}` with routing key `{routing_key}`")]
    Publish {
        /// The exchange (empty: the default exchange).
        exchange: String,
        /// The routing key.
        routing_key: String,
        /// Lapin's error.
        #[source]
        source: Box<lapin::Error>,
    },

    /// The broker refused to take responsibility for a message (publisher confirm `nack`).
    #[error(
        "RabbitMQ refused (nack) the message published to exchange `{exchange}` with routing key \
         `{routing_key}`"
    )]
    Nacked {
        /// The exchange.
        exchange: String,
        /// The routing key.
        routing_key: String,
    },

    /// A mandatory message reached no queue: nothing is bound for its routing key.
    #[error(
        "no queue is bound to exchange `{exchange}` for routing key `{routing_key}` \
         (returned: {reply_code} {reply_text}); has the queue been declared?"
    )]
    Unroutable {
        /// The exchange.
        exchange: String,
        /// The routing key.
        routing_key: String,
        /// The broker's code (312 `NO_ROUTE`).
        reply_code: u16,
        /// The broker's text.
        reply_text: String,
    },

    /// The publish task ended without an answer (the runtime is shutting down).
    #[error(
        "publishing to exchange `{exchange}` with routing key `{routing_key}` was interrupted"
    )]
    PublishInterrupted {
        /// The exchange.
        exchange: String,
        /// The routing key.
        routing_key: String,
    },

    /// Starting a consumer failed (no such queue, exclusive use, closed connection).
    #[error("consuming queue `{queue}`")]
    Consume {
        /// The queue.
        queue: String,
        /// Lapin's error.
        #[source]
        source: Box<lapin::Error>,
    },

    /// The consumer's channel or connection failed; the subscription is over.
    #[error("receiving from queue `{queue}`")]
    Receive {
        /// The queue.
        queue: String,
        /// Lapin's error.
        #[source]
        source: Box<lapin::Error>,
    },

    /// Cancelling a consumer failed.
    #[error("cancelling consumer `{consumer_tag}` of queue `{queue}`")]
    Cancel {
        /// The queue.
        queue: String,
        /// The consumer tag.
        consumer_tag: String,
        /// Lapin's error.
        #[source]
        source: Box<lapin::Error>,
    },

    /// Sending an ack or reject failed.
    #[error("sending {action} for delivery {delivery_tag} of queue `{queue}`")]
    Ack {
        /// `ack` or `reject`.
        action: &'static str,
        /// The queue.
        queue: String,
        /// The delivery tag.
        delivery_tag: u64,
        /// Lapin's error.
        #[source]
        source: Box<lapin::Error>,
    },

    /// An ack or reject could not be sent: the delivery was already settled, or its channel
    /// closed (in which case the broker redelivers the message).
    #[error(
        "cannot {action} delivery {delivery_tag} of queue `{queue}`: it was already settled or \
         its channel closed (the broker then redelivers it)"
    )]
    AckUnusable {
        /// `ack` or `reject`.
        action: &'static str,
        /// The queue.
        queue: String,
        /// The delivery tag.
        delivery_tag: u64,
    },
}
