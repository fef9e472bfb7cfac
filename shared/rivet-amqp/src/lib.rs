//! Rivet's only RabbitMQ client: connect (with retries), declare the topology of
//! [`rivet_protocol::topology`], publish persistent messages with publisher confirms, and consume
//! with manual acknowledgements. Poison messages (undecodable, wrong shape, another schema version)
//! go to the dead-letter queue with the reason in a header; they never crash a consumer and never
//! loop through a requeue.
//!
//! This is the one crate that depends on `lapin`; services talk to the broker through [`Broker`]
//! and [`Subscription`] only, and never spell a queue, exchange or routing key (those come from
//! `rivet-protocol`). It must not depend on a database, Redis, HTTP or Lua crate (no `sqlx`,
//! `redis`, `axum`, `mlua`), nor on any service.
//!
//! Plain `amqp://` only for now: lapin is built without a TLS feature, and an `amqps://` URL is
//! refused with a clear error. Everything here is async on tokio and must be called from inside a
//! tokio runtime (lapin 4 drives its socket on its own thread through the caller's runtime; prefer
//! the multi-threaded runtime).

mod broker;
mod connect;
mod declare;
mod endpoint;
mod error;
mod publisher;
mod subscription;

pub use broker::{Broker, ConsumerChannel, QueueStats};
pub use endpoint::{percent_encode, url_parts, with_credentials, UrlParts};
pub use error::AmqpError;
pub use subscription::{Incoming, Subscription};

/// Re-exported so callers name messages and the topology without a second import path.
pub use rivet_protocol::{topology::Topology, Message};
