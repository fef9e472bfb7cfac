//! The parent's handler for `http.*` calls.

use super::limit::{Gate, TokenBucket};
use super::CallError;
use rivet_core::policy::HttpPolicy;
use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::time::Instant;

/// One HTTP request as the worker asks for it. Nothing in it is trusted: the parent checks
/// every field against its own policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The absolute URL.
    pub url: String,
    /// Header fields in order.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// The body, if any.
    #[serde(default, with = "b64_opt")]
    pub body: Option<Vec<u8>>,
    /// The call's own timeout in milliseconds, if it set one.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// The final response (after redirects).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Header fields, names lowercase, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    #[serde(with = "b64")]
    pub body: Vec<u8>,
    /// The URL that answered (after redirects).
    pub url: String,
}

/// Runner-wide HTTP limits: concurrency and requests per second across all jobs.
#[derive(Debug)]
pub(crate) struct RunnerLimits {
    gate: Gate,
}

impl RunnerLimits {
    pub(crate) fn new(policy: &HttpPolicy) -> Self {
        Self {
            gate: Gate::new(policy.runner_concurrency, policy.runner_per_second),
        }
    }
}

/// One job's HTTP limits: its token bucket (every hop takes a token).
#[derive(Debug)]
pub(crate) struct JobLimits {
    bucket: Mutex<TokenBucket>,
}

impl JobLimits {
    pub(crate) fn new(policy: &HttpPolicy) -> Self {
        Self {
            bucket: Mutex::new(TokenBucket::new(
                f64::from(policy.job_burst),
                policy.job_per_second,
            )),
        }
    }
}

/// What a call needs from the parent.
#[derive(Debug)]
pub(crate) struct Context<'a> {
    pub(crate) policy: &'a HttpPolicy,
    pub(crate) runner: &'a RunnerLimits,
    pub(crate) job: &'a JobLimits,
}

/// Runs one `http` call.
pub(crate) fn handle(
    _cx: &Context<'_>,
    _request: HttpRequest,
    _deadline: Instant,
) -> Result<HttpResponse, CallError> {
    Err(CallError::failed("http: not available in this build yet"))
}

/// Bytes as base64 in JSON frames (bodies need not be UTF-8).
mod b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

mod b64_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(bytes) => super::b64::serialize(bytes, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        #[derive(Deserialize)]
        struct Wrap(#[serde(with = "super::b64")] Vec<u8>);
        Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
    }
}
