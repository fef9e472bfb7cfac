//! Joining the orchestrator (API-02): `POST /api/v1/runners/register` with the runner token.
//! The answer is the runner's identity: its id (the registration's name), the labels an admin
//! assigned, and the session key that signs its `Started` reports.

use crate::RunnerToken;
use rivet_client::{Client, ClientError};
use rivet_protocol::http::{RegisterRunner, RunnerSession};
use rivet_protocol::redis_keys::PRESENCE_TTL_MS;
use std::time::{Duration, Instant};

/// How long an unreachable or failing orchestrator is retried before the runner gives up.
const UNREACHABLE_FOR: Duration = Duration::from_secs(60);
/// How long a `409 runner_online` is retried: the presence of a runner of the same registration
/// that died expires within [`PRESENCE_TTL_MS`], so a restarted runner gets in after it.
const ONLINE_FOR: Duration = Duration::from_millis(PRESENCE_TTL_MS + 5_000);

/// Registers with the orchestrator at `url`. Refusals (unknown or revoked token, a bad request)
/// end at once with the orchestrator's message; an orchestrator that cannot be reached or fails
/// is retried for a minute; a runner of the same registration still online is waited for until
/// its presence would have expired.
pub async fn register(
    url: &str,
    token: &RunnerToken,
    capabilities: &[String],
    slots: u32,
) -> anyhow::Result<RunnerSession> {
    let client = Client::new(url, token.0.as_str()).map_err(|e| match e {
        ClientError::InvalidToken => anyhow::anyhow!(
            "policy violation [runner.identity]: the runner token is empty or contains spaces or \
             non-ASCII characters"
        ),
        e => anyhow::Error::new(e).context("the orchestrator URL (--url, RIVET_URL)"),
    })?;
    let body = RegisterRunner {
        capabilities: capabilities.to_vec(),
        slots,
        version: env!("CARGO_PKG_VERSION").into(),
    };
    let start = Instant::now();
    let mut delay = Duration::from_millis(200);
    loop {
        let error = match client.register_runner(&body).await {
            Ok(session) => {
                tracing::info!(runner = %session.runner_id, registration = %session.registration_id,
                    labels = ?session.labels, "Registered with the orchestrator.");
                return Ok(session);
            }
            Err(e) => e,
        };
        let retry_for = match &error {
            ClientError::Api { status: 409, .. } => ONLINE_FOR,
            ClientError::Api { status, .. } if *status < 500 => {
                return Err(anyhow::anyhow!(
                    "registering with the orchestrator at {url}: {error}"
                ))
            }
            _ => UNREACHABLE_FOR,
        };
        if start.elapsed() >= retry_for {
            return Err(anyhow::Error::new(error)
                .context(format!("registering with the orchestrator at {url}")));
        }
        tracing::warn!(error = %error, retry_in_ms = delay.as_millis() as u64, "Registering failed; retrying.");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}
