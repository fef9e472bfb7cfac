//! Declaring, binding and deleting exchanges and queues.

use crate::publisher::short;
use crate::AmqpError;
use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::FieldTable;
use lapin::{Channel, ErrorKind, ExchangeKind};
use tracing::debug;

/// Whether the broker answered NOT_FOUND (it then closes the channel).
pub(crate) fn is_not_found(err: &lapin::Error) -> bool {
    matches!(err.kind(), ErrorKind::ProtocolError(e)
        if *e.kind() == AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND))
}

pub(crate) async fn declare_exchange(
    channel: &Channel,
    name: &str,
    kind: ExchangeKind,
) -> Result<(), AmqpError> {
    let options = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            short("exchange", name)?,
            kind,
            options,
            FieldTable::default(),
        )
        .await
        .map_err(|source| AmqpError::Declare {
            what: "exchange",
            name: name.to_owned(),
            source: Box::new(source),
        })
}

pub(crate) async fn declare_queue(
    channel: &Channel,
    name: &str,
    args: FieldTable,
) -> Result<(), AmqpError> {
    channel
        .queue_declare(short("queue", name)?, QueueDeclareOptions::durable(), args)
        .await
        .map(drop)
        .map_err(|source| AmqpError::Declare {
            what: "queue",
            name: name.to_owned(),
            source: Box::new(source),
        })
}

pub(crate) async fn bind(
    channel: &Channel,
    queue: &str,
    exchange: &str,
    routing_key: &str,
) -> Result<(), AmqpError> {
    channel
        .queue_bind(
            short("queue", queue)?,
            short("exchange", exchange)?,
            short("routing key", routing_key)?,
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|source| AmqpError::Declare {
            what: "binding",
            name: format!("{queue} <- {exchange} ({routing_key})"),
            source: Box::new(source),
        })
}

/// Deletes a queue or an exchange; a missing one is fine.
pub(crate) async fn delete_one(
    channel: &Channel,
    what: &'static str,
    name: &str,
) -> Result<(), AmqpError> {
    let short_name = short(what, name)?;
    let result = if what == "queue" {
        channel
            .queue_delete(short_name, QueueDeleteOptions::default())
            .await
            .map(drop)
    } else {
        channel
            .exchange_delete(short_name, ExchangeDeleteOptions::default())
            .await
    };
    match result {
        Ok(()) => Ok(()),
        Err(err) if is_not_found(&err) => Ok(()),
        Err(source) => Err(AmqpError::Delete {
            what,
            name: name.to_owned(),
            source: Box::new(source),
        }),
    }
}

/// Closes a channel we are done with; a failure only means it is gone already.
pub(crate) async fn close_quietly(channel: Channel) {
    if let Err(err) = channel.close(200, "OK".into()).await {
        debug!(error = %err, "Closing a channel failed.");
    }
}
