//! Messages on the broker.

use crate::{Message, SCHEMA_VERSION};
use rivet_core::{JobOutcome, StageOutcome};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

fn schema_version() -> u32 {
    SCHEMA_VERSION
}

/// A job attempt for a runner: published to the job's class queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobDispatch {
    /// Always [`SCHEMA_VERSION`].
    #[serde(default = "schema_version")]
    pub schema: u32,
    /// The job.
    pub job_id: Uuid,
    /// The attempt number, from 1: the fencing token for everything the attempt reports.
    pub attempt: u32,
    /// The pipeline's name.
    pub pipeline: String,
    /// The pipeline version the job runs.
    pub pipeline_version: i32,
    /// The definition's file name, for messages.
    pub file_name: String,
    /// The definition's source.
    pub source: String,
    /// Inputs as text, already validated by the orchestrator.
    pub inputs: BTreeMap<String, String>,
    /// The class key (routing key) the job was published with.
    pub class_key: String,
    /// The requirement set, as written (`process`, `plugin.git`, `label:region=eu`).
    pub requires: Vec<String>,
    /// The job's wall-clock limit in milliseconds (the pipeline's `timeout`), when it sets one;
    /// the runner's policy limit applies too, whichever is shorter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

impl Message for JobDispatch {
    const KIND: &'static str = "job-dispatch";
}

/// Something a runner reports about one attempt of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunnerReport {
    /// Always [`SCHEMA_VERSION`].
    #[serde(default = "schema_version")]
    pub schema: u32,
    /// The job.
    pub job_id: Uuid,
    /// The attempt this report belongs to; reports from other attempts are ignored.
    pub attempt: u32,
    /// The reporting runner; reports from a runner not holding the lease are ignored.
    pub runner_id: String,
    /// The attempt token: 128 random bits in hex that the runner drew when it took the job's
    /// lease (the lease holds it too). The orchestrator stores it with the attempt at `Started`
    /// and refuses every later report of the attempt that carries another one, so knowing the
    /// runner's id and the attempt is not enough to forge a report. Empty when missing, which is
    /// always refused.
    #[serde(default)]
    pub token: String,
    /// HMAC-SHA256 with the runner's session key ([`crate::identity::session_mac`]): of the
    /// job, attempt, runner id and attempt token for a lone `Started`, of those and the body
    /// for every other report. It proves which registration sent the report; one without a
    /// valid MAC is refused.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub session_mac: String,
    /// What happened.
    pub body: ReportBody,
}

impl Message for RunnerReport {
    const KIND: &'static str = "runner-report";
}

/// The content of a [`RunnerReport`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ReportBody {
    /// The runner took the lease and started the worker: the first body of the attempt's first
    /// report (alone, or first in a batch with what followed within 200 ms).
    Started {
        /// How long before the report was sent the attempt started, by the runner's clock: the
        /// orchestrator dates the start back by it (never before the job was created), so a
        /// job's times do not depend on when its first report left.
        #[serde(default)]
        ago_ms: u64,
    },
    /// A stage began.
    StageStarted {
        /// 0-based position.
        index: u32,
        /// Stage name.
        name: String,
        /// Its wall-clock limit.
        timeout_ms: u64,
    },
    /// A stage ended.
    StageFinished {
        /// 0-based position.
        index: u32,
        /// Stage name.
        name: String,
        /// How it ended.
        outcome: StageOutcome,
        /// How long it ran.
        duration_ms: u64,
        /// Why it failed or was skipped.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// Log lines, in order (flushed at 100 lines or 200 ms).
    Logs {
        /// The lines.
        lines: Vec<LogLine>,
    },
    /// The attempt ended. Always the last report of an attempt.
    Finished {
        /// How it ended.
        outcome: JobOutcome,
    },
    /// Several of the above, in order (a runner flushes what happened in the last 200 ms as one
    /// message, the whole attempt when it is that short). Batches do not nest.
    Batch {
        /// The reports, oldest first.
        bodies: Vec<ReportBody>,
    },
}

/// One log line of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LogLine {
    /// Sequence number within the attempt, from 0, without gaps.
    pub seq: u64,
    /// Milliseconds since the attempt's worker started.
    pub at_ms: u64,
    /// The stage running, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// `debug`, `info`, `warn` or `error`.
    pub level: String,
    /// `script`, `stdout`, `stderr` or `system`.
    pub source: String,
    /// The text.
    pub line: String,
}

/// A class (requirement set) exists: runners that cover it start consuming its queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ClassAnnounce {
    /// Always [`SCHEMA_VERSION`].
    #[serde(default = "schema_version")]
    pub schema: u32,
    /// The class key.
    pub class_key: String,
    /// Its requirement set.
    pub requires: Vec<String>,
}

impl Message for ClassAnnounce {
    const KIND: &'static str = "class-announce";
}

/// An order for one runner, published to [`Topology::runner_control_exchange`] with the runner's
/// id as routing key.
///
/// [`Topology::runner_control_exchange`]: crate::topology::Topology::runner_control_exchange
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunnerControl {
    /// Always [`SCHEMA_VERSION`].
    #[serde(default = "schema_version")]
    pub schema: u32,
    /// The runner addressed.
    pub runner_id: String,
    /// What to do.
    pub command: ControlCommand,
}

impl Message for RunnerControl {
    const KIND: &'static str = "runner-control";
}

/// The content of a [`RunnerControl`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ControlCommand {
    /// Kill this attempt's worker (its process group) and report it `cancelled`.
    Cancel {
        /// The job.
        job_id: Uuid,
        /// The attempt.
        attempt: u32,
        /// Why, for the job's log.
        reason: String,
    },
    /// Stop taking jobs, let running ones finish within the runner's grace period, then exit.
    Drain {
        /// Why, for the runner's log.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::ReportBody;

    #[test]
    fn a_started_without_ago_ms_still_decodes() {
        let body: ReportBody = serde_json::from_str(r#"{"kind":"started"}"#).unwrap();
        assert_eq!(body, ReportBody::Started { ago_ms: 0 });
    }
}
