//! Redis keys and records. Redis holds coordination only; everything here can be rebuilt.

use crate::SCHEMA_VERSION;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

/// Redis key names under a namespace (`rivet` in production; tests use a unique one each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    namespace: String,
}

impl Default for Keys {
    fn default() -> Self {
        Self::new("rivet")
    }
}

impl Keys {
    /// Keys under `namespace`.
    pub fn new(namespace: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
        }
    }

    /// The name of the Redis ACL user of runner registration `registration` (a UUID).
    pub fn runner_user(&self, registration: &str) -> String {
        format!("{}{registration}", self.runner_user_prefix())
    }

    /// What every runner's Redis user name starts with (tests sweep their users by it).
    pub fn runner_user_prefix(&self) -> String {
        format!("{}.runner.", self.namespace)
    }

    /// The ACL rules (`ACL SETUSER name ...`, after `reset`) of the Redis user of runner
    /// `runner_id`: everything a runner does and nothing more. It reads and writes leases (every
    /// job's: a lease names its holder inside), reads fences and the class table, writes only
    /// its own presence record, and runs only the commands a runner sends (the lease scripts
    /// through `EVALSHA`, whose commands Redis checks against the same rules; a client library's
    /// `CLIENT SETINFO` is refused, which redis-rs ignores). Not: other
    /// runners' presence, fences, the epoch, other namespaces, `KEYS`, `FLUSHALL`, `CONFIG`,
    /// pub/sub.
    pub fn runner_acl(&self, runner_id: &str) -> Vec<String> {
        let ns = &self.namespace;
        let mut rules: Vec<String> = vec![
            "resetchannels".into(),
            format!("~{ns}:lease:*"),
            format!("%R~{ns}:fence:*"),
            format!("%R~{}", self.classes()),
            format!("~{}", self.runner(runner_id)),
            "-@all".into(),
        ];
        rules.extend(
            [
                "+get",
                "+set",
                "+psetex",
                "+del",
                "+pexpire",
                "+hgetall",
                "+evalsha",
                "+script|load",
                "+ping",
                "+select",
            ]
            .map(String::from),
        );
        rules
    }

    /// A runner's presence record (JSON [`RunnerPresence`]), refreshed every
    /// [`PRESENCE_REFRESH_MS`] with a TTL of [`PRESENCE_TTL_MS`]. Expired means offline.
    pub fn runner(&self, id: &str) -> String {
        format!("{}:runner:{id}", self.namespace)
    }

    /// The lease of a job: value [`lease_value`], set with `NX PX`.
    pub fn lease(&self, job_id: Uuid) -> String {
        format!("{}:lease:{job_id}", self.namespace)
    }

    /// Hash of every known class: field = class key, value = JSON list of requirements.
    /// The job's fence: the attempt number `N` a runner may start, or `-N` once the job ended at
    /// attempt N (cancelled, timed out, finished). Only ever moves forward. Written by the orchestrator; checked by a runner's claim.
    pub fn fence(&self, job_id: Uuid) -> String {
        format!("{}:fence:{job_id}", self.namespace)
    }

    /// Written once by the orchestrator's reaper with `SET NX`; its absence means Redis lost
    /// its data, and every fence is written again.
    pub fn epoch(&self) -> String {
        format!("{}:epoch", self.namespace)
    }

    pub fn classes(&self) -> String {
        format!("{}:classes", self.namespace)
    }
}

/// The value a lease holds: `runner:attempt:token`, where `token` is the attempt token the runner
/// drew when it took the lease (see [`crate::messages::RunnerReport::token`]).
pub fn lease_value(runner_id: &str, attempt: u32, token: &str) -> String {
    format!("{runner_id}:{attempt}:{token}")
}

/// The `runner:attempt` part of a lease value, without its token: what may be shown (in a job's
/// outcome, in logs), since the token is what fences the attempt's reports.
pub fn lease_holder(value: &str) -> &str {
    value.rsplit_once(':').map_or(value, |(holder, _)| holder)
}

/// Length of an attempt token: 128 bits in lower-case hex.
pub const ATTEMPT_TOKEN_LEN: usize = 32;

/// Whether `token` has the shape of an attempt token (32 lower-case hex digits).
pub fn is_attempt_token(token: &str) -> bool {
    token.len() == ATTEMPT_TOKEN_LEN
        && token
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// How long a presence record lives without refresh.
pub const PRESENCE_TTL_MS: u64 = 10_000;
/// How often a runner refreshes its presence.
pub const PRESENCE_REFRESH_MS: u64 = 2_000;
/// How long a lease lives without renewal.
pub const LEASE_TTL_MS: u64 = 10_000;
/// How often a runner renews the leases of its running jobs.
pub const LEASE_RENEW_MS: u64 = 2_000;

fn schema_version() -> u32 {
    SCHEMA_VERSION
}

/// What a runner says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunnerPresence {
    /// Always [`SCHEMA_VERSION`].
    #[serde(default = "schema_version")]
    pub schema: u32,
    /// Unique runner id.
    pub id: String,
    /// Capabilities: core modules (`process`, `filesystem`), `plugin.NAME`, `container.podman`.
    pub capabilities: Vec<String>,
    /// Labels (`region` → `eu`).
    pub labels: BTreeMap<String, String>,
    /// Jobs it runs at once.
    pub slots: u32,
    /// Jobs running now.
    pub running: Vec<RunningJob>,
    /// Whether it is draining (takes no new jobs).
    #[serde(default)]
    pub draining: bool,
    /// Rivet version.
    pub version: String,
    /// When it started, in Unix milliseconds.
    pub started_at_ms: i64,
    /// When this record was written, in Unix milliseconds.
    pub updated_at_ms: i64,
}

/// A job a runner is running.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunningJob {
    /// The job.
    pub job_id: Uuid,
    /// The attempt.
    pub attempt: u32,
}

impl RunnerPresence {
    /// Everything this runner can satisfy: capabilities, `label:k=v` for each label, and
    /// `container` when it has any container engine.
    pub fn satisfiable(&self) -> std::collections::BTreeSet<String> {
        let mut out: std::collections::BTreeSet<String> =
            self.capabilities.iter().cloned().collect();
        if self
            .capabilities
            .iter()
            .any(|c| c.starts_with("container."))
        {
            out.insert("container".into());
        }
        for (k, v) in &self.labels {
            out.insert(format!("label:{k}={v}"));
        }
        out
    }

    /// The requirements of `requires` this runner lacks.
    pub fn missing<'a>(&self, requires: &'a [String]) -> Vec<&'a str> {
        let have = self.satisfiable();
        requires
            .iter()
            .filter(|r| !have.contains(*r))
            .map(String::as_str)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_values_carry_the_token_and_show_without_it() {
        let token = "0123456789abcdef0123456789abcdef";
        let value = lease_value("host-1:7", 3, token);
        assert_eq!(value, format!("host-1:7:3:{token}"));
        assert_eq!(lease_holder(&value), "host-1:7:3");
        assert!(is_attempt_token(token));
        for bad in [
            "",
            "0123",
            &token.to_uppercase(),
            &format!("{token}0"),
            "g".repeat(32).as_str(),
        ] {
            assert!(!is_attempt_token(bad), "{bad:?}");
        }
    }
}
