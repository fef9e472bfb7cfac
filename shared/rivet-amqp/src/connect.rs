//! Opening the connection, with retries while the broker is unreachable.

use crate::endpoint::Endpoint;
use crate::AmqpError;
use backon::{ExponentialBuilder, Retryable};
use lapin::{Connection, ConnectionProperties, ErrorKind};
use rivet_protocol::topology::Topology;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tracing::warn;

/// Connects to `endpoint`, retrying network failures with exponential backoff (100 ms to 2 s)
/// until `connect_timeout` has passed; a protocol refusal (login, vhost) ends it at once.
pub(crate) async fn connect_with_retries(
    endpoint: &Endpoint,
    topology: &Topology,
    connect_timeout: Duration,
) -> Result<Connection, AmqpError> {
    let started = Instant::now();
    let deadline = started + connect_timeout;
    let attempts = AtomicU32::new(0);
    let properties = || {
        ConnectionProperties::default()
            .with_connection_name(format!("rivet ({})", topology.namespace()).into())
    };
    let attempt = || async {
        attempts.fetch_add(1, Ordering::Relaxed);
        // One attempt may hang (a silently dropped SYN): it gets what is left of the timeout.
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100));
        match tokio::time::timeout(
            left,
            Connection::connect_uri(endpoint.uri.clone(), properties()),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(lapin::Error::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {:.1}s", left.as_secs_f64()),
            ))),
        }
    };
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(2))
        .with_jitter()
        .without_max_times();
    attempt
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .when(|err| is_retryable(err) && Instant::now() + Duration::from_millis(100) < deadline)
        .adjust(|_, delay| {
            // Never sleep past the deadline: one last attempt happens just before it.
            let left = deadline.saturating_duration_since(Instant::now());
            delay.map(|d| d.min(left.saturating_sub(Duration::from_millis(50))))
        })
        .notify(|err, delay| {
            warn!(endpoint = %endpoint.display, error = %err, retry_in_ms = delay.as_millis() as u64,
                "Connecting to RabbitMQ failed; retrying.");
        })
        .await
        .map_err(|source| {
            if is_retryable(&source) {
                AmqpError::Connect {
                    endpoint: endpoint.display.clone(),
                    attempts: attempts.load(Ordering::Relaxed),
                    elapsed: started.elapsed(),
                    source: Box::new(source),
                }
            } else {
                AmqpError::Refused {
                    endpoint: endpoint.display.clone(),
                    source: Box::new(source),
                }
            }
        })
}

/// Whether another connection attempt could succeed: network trouble yes, a refused login or a
/// missing vhost (protocol errors) no.
fn is_retryable(err: &lapin::Error) -> bool {
    !matches!(err.kind(), ErrorKind::ProtocolError(_))
}
