//! The connection shared by a broker and its subscriptions, and the confirmed publisher on it.

use crate::endpoint::Endpoint;
use crate::AmqpError;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use std::sync::Arc;
use tokio::sync::Mutex;

/// AMQP `delivery_mode` of a message the broker writes to disk.
pub(crate) const PERSISTENT: u8 = 2;

/// What every handle of one broker connection shares.
pub(crate) struct Shared {
    pub(crate) connection: Connection,
    pub(crate) endpoint: Endpoint,
    /// Confirm-mode channels, each reopened when a failed publish closed it. A channel's lock is
    /// held from `basic.publish` to its confirm: lapin hands a `basic.return` to whichever confirm
    /// completes next, so with one publish in flight per channel a return always belongs to it.
    /// Several channels let independent publishes (different jobs) wait for their confirms at once.
    publishers: Vec<Mutex<Option<Channel>>>,
    /// Round-robin start for picking a publishing channel.
    next: std::sync::atomic::AtomicUsize,
}

/// Publishing channels per connection.
const PUBLISHERS: usize = 8;

/// One message to publish.
pub(crate) struct Outgoing {
    pub(crate) exchange: String,
    pub(crate) routing_key: String,
    pub(crate) body: Vec<u8>,
    pub(crate) properties: BasicProperties,
    /// Whether a message no queue takes is an error (the broker returns it).
    pub(crate) mandatory: bool,
}

impl Shared {
    pub(crate) fn new(connection: Connection, endpoint: Endpoint) -> Self {
        Self {
            connection,
            endpoint,
            publishers: (0..PUBLISHERS).map(|_| Mutex::new(None)).collect(),
            next: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Opens a channel on the connection.
    pub(crate) async fn open_channel(&self, purpose: &'static str) -> Result<Channel, AmqpError> {
        self.connection
            .create_channel()
            .await
            .map_err(|source| AmqpError::Channel {
                purpose,
                source: Box::new(source),
            })
    }
}

/// Publishes `out` and waits for the broker's confirm.
///
/// The work runs in its own task, so a caller that stops waiting (a timeout, a cancelled task)
/// cannot leave the confirm channel between a publish and its confirm.
pub(crate) async fn publish(shared: &Arc<Shared>, out: Outgoing) -> Result<(), AmqpError> {
    let exchange = out.exchange.clone();
    let routing_key = out.routing_key.clone();
    let shared = Arc::clone(shared);
    let watched = Arc::clone(&shared);
    let task = tokio::spawn(async move { publish_now(&shared, out).await });
    // A frame for a connection whose I/O loop has stopped may never be written nor confirmed:
    // once the connection is known to be gone, the publish has failed (the caller retries on
    // the next connection; the task ends with the old connection).
    let gone = async {
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            if !watched.connection.status().connected() {
                return;
            }
        }
    };
    tokio::select! {
        joined = task => match joined {
            Ok(result) => result,
            Err(_) => Err(AmqpError::PublishInterrupted { exchange, routing_key }),
        },
        _ = gone => Err(AmqpError::PublishInterrupted { exchange, routing_key }),
    }
}

async fn publish_now(shared: &Shared, out: Outgoing) -> Result<(), AmqpError> {
    let exchange = short("exchange", &out.exchange)?;
    let routing_key = short("routing key", &out.routing_key)?;
    let publish_error = |source| AmqpError::Publish {
        exchange: out.exchange.clone(),
        routing_key: out.routing_key.clone(),
        source: Box::new(source),
    };

    // A free channel if there is one, else wait for the next in turn.
    let start = shared
        .next
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let free =
        (0..PUBLISHERS).find_map(|i| shared.publishers[(start + i) % PUBLISHERS].try_lock().ok());
    let mut slot = match free {
        Some(slot) => slot,
        None => shared.publishers[start % PUBLISHERS].lock().await,
    };
    let channel = match slot.as_ref() {
        Some(channel) if channel.status().connected() => channel.clone(),
        _ => {
            // A channel the broker closed (a publish to a missing exchange does that) is replaced.
            let channel = shared.open_channel("publishing").await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|source| AmqpError::Channel {
                    purpose: "publishing",
                    source: Box::new(source),
                })?;
            *slot = Some(channel.clone());
            channel
        }
    };
    let options = BasicPublishOptions {
        mandatory: out.mandatory,
        ..BasicPublishOptions::default()
    };
    let confirmation = channel
        .basic_publish(exchange, routing_key, options, &out.body, out.properties)
        .await
        .map_err(publish_error)?
        .await
        .map_err(publish_error)?;
    drop(slot);

    match confirmation {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        // RabbitMQ acks a returned message (it handled it, by returning it): the return is what
        // matters, whatever the confirm says.
        Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
            Err(AmqpError::Unroutable {
                exchange: out.exchange,
                routing_key: out.routing_key,
                reply_code: returned.reply_code,
                reply_text: returned.reply_text.to_string(),
            })
        }
        Confirmation::Nack(None) => Err(AmqpError::Nacked {
            exchange: out.exchange,
            routing_key: out.routing_key,
        }),
    }
}

/// An AMQP short string (at most 255 bytes; lapin panics on longer ones).
pub(crate) fn short(what: &'static str, name: &str) -> Result<ShortString, AmqpError> {
    ShortString::try_new(name).map_err(|_| AmqpError::NameTooLong {
        what,
        name: name.to_owned(),
    })
}

/// Properties every Rivet message carries: persistent JSON of a kind.
pub(crate) fn json_properties(kind: &str) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_content_type("application/json".into())
        .with_type(kind.into())
}
