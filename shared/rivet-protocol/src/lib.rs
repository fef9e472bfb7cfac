//! Every wire contract of Rivet in one place: the AMQP topology and messages, the Redis keys and
//! records, and the HTTP API's request and response bodies.
//!
//! Both services and the CLI use these types; no call site spells a queue name, routing key or
//! Redis key itself. Every message carries [`SCHEMA_VERSION`]; a consumer refuses other versions
//! (to the dead-letter queue). Changes are additive (`#[serde(default)]`); a breaking change is a
//! new type and a new version. `schemas/*.json` are generated from these types
//! (`RIVET_UPDATE_SCHEMAS=1 cargo test -p rivet-protocol`), and a test fails when they drift.
//!
//! Depends on `rivet-core` and serialisation crates only: no I/O.

pub mod http;
pub mod identity;
pub mod messages;
pub mod redis_keys;
pub mod topology;

use serde::{de::DeserializeOwned, Serialize};

/// The schema version every message and record of this crate carries.
pub const SCHEMA_VERSION: u32 = 1;

/// A message that travels over AMQP.
pub trait Message: Serialize + DeserializeOwned + schemars::JsonSchema {
    /// The AMQP `type` property, and the schema file's name.
    const KIND: &'static str;
}

/// Why a message body was refused.
#[derive(Debug)]
pub enum DecodeError {
    /// Not JSON, or not this message's shape.
    Malformed(serde_json::Error),
    /// A schema version this build does not speak.
    WrongVersion {
        /// The version found.
        found: u64,
    },
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Malformed(e) => write!(f, "undecodable message: {e}"),
            Self::WrongVersion { found } => {
                write!(
                    f,
                    "schema version {found} is not supported (this build speaks {SCHEMA_VERSION})"
                )
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decodes a message, checking its `schema` field first so a newer producer's message is named as
/// such rather than reported as a parse error.
pub fn decode<M: Message>(body: &[u8]) -> Result<M, DecodeError> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(DecodeError::Malformed)?;
    match value.get("schema").and_then(serde_json::Value::as_u64) {
        Some(v) if v == u64::from(SCHEMA_VERSION) => {}
        Some(found) => return Err(DecodeError::WrongVersion { found }),
        None => return Err(DecodeError::WrongVersion { found: 0 }),
    }
    serde_json::from_value(value).map_err(DecodeError::Malformed)
}

/// Encodes a message.
pub fn encode<M: Message>(message: &M) -> Vec<u8> {
    serde_json::to_vec(message)
        .expect("protocol types serialise infallibly (string keys, finite numbers)")
}

/// The JSON Schema of every message and record, by file name (`schemas/NAME.json`).
pub fn schemas() -> Vec<(&'static str, schemars::Schema)> {
    use schemars::schema_for;
    vec![
        (
            messages::JobDispatch::KIND,
            schema_for!(messages::JobDispatch),
        ),
        (
            messages::RunnerReport::KIND,
            schema_for!(messages::RunnerReport),
        ),
        (
            messages::ClassAnnounce::KIND,
            schema_for!(messages::ClassAnnounce),
        ),
        (
            messages::RunnerControl::KIND,
            schema_for!(messages::RunnerControl),
        ),
        ("runner-presence", schema_for!(redis_keys::RunnerPresence)),
        ("http-api", schema_for!(http::ApiSchemas)),
    ]
}
