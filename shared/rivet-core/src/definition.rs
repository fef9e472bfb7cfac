//! The parsed, validated shape of a pipeline definition (brief §6), without its Lua functions.
//!
//! The sandbox crate evaluates `pipeline.lua` and builds these values; everything that needs to
//! know a pipeline's inputs, requirements or stages without running Lua reads them from here.

use crate::input::{InputType, InputValue};
use crate::requirement::RequirementSet;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// Keys allowed at the top level of a definition.
pub const PIPELINE_KEYS: [&str; 8] = [
    "name",
    "description",
    "requires",
    "inputs",
    "stages",
    "timeout",
    "queue_timeout",
    "retries",
];
/// Keys allowed in `retries`.
pub const RETRY_KEYS: [&str; 3] = ["count", "on", "backoff"];
/// Most retries a pipeline may ask for.
pub const MAX_RETRIES: u32 = 10;

/// An attempt outcome after which a job can be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum RetryOn {
    /// The runner disappeared (its lease expired).
    Lost,
    /// A stage failed.
    Failed,
    /// A stage or the job ran out of time.
    TimedOut,
    /// The worker process died.
    Crashed,
}

impl RetryOn {
    /// The words a definition may use.
    pub const WORDS: [&'static str; 4] = ["lost", "failed", "timed_out", "crashed"];

    /// Parses a word of [`RetryOn::WORDS`].
    pub fn parse(word: &str) -> Option<Self> {
        match word {
            "lost" => Some(Self::Lost),
            "failed" => Some(Self::Failed),
            "timed_out" => Some(Self::TimedOut),
            "crashed" => Some(Self::Crashed),
            _ => None,
        }
    }

    /// Which retry reason an outcome is, if any.
    pub fn of(outcome: &crate::JobOutcome) -> Option<Self> {
        match outcome {
            crate::JobOutcome::Lost { .. } => Some(Self::Lost),
            crate::JobOutcome::Failed { .. } => Some(Self::Failed),
            crate::JobOutcome::TimedOut { .. } => Some(Self::TimedOut),
            crate::JobOutcome::Crashed { .. } => Some(Self::Crashed),
            crate::JobOutcome::Succeeded | crate::JobOutcome::Cancelled => None,
        }
    }
}

/// When a job gets another attempt: `retries = {count = 2, on = {"lost"}, backoff = "5s"}`.
/// Without `retries`, a lost runner is retried twice at once and nothing else is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RetrySpec {
    /// Further attempts after the first.
    pub count: u32,
    /// Outcomes that are retried.
    pub on: Vec<RetryOn>,
    /// Wait before each further attempt.
    #[serde(with = "duration_secs")]
    #[cfg_attr(feature = "schema", schemars(with = "f64"))]
    pub backoff: Duration,
}

impl Default for RetrySpec {
    fn default() -> Self {
        Self {
            count: 2,
            on: vec![RetryOn::Lost],
            backoff: Duration::ZERO,
        }
    }
}

impl RetrySpec {
    /// Whether an attempt numbered `attempt` (from 1) that ended with `outcome` gets another.
    pub fn retries(&self, attempt: u32, outcome: &crate::JobOutcome) -> bool {
        attempt <= self.count && RetryOn::of(outcome).is_some_and(|r| self.on.contains(&r))
    }
}
/// Keys allowed in an input declaration.
pub const INPUT_KEYS: [&str; 5] = ["type", "description", "required", "default", "options"];
/// Keys allowed in a stage.
pub const STAGE_KEYS: [&str; 6] = ["name", "script", "container", "condition", "timeout", "env"];

/// A declared input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct InputSpec {
    /// The input's name, as `env.get` reads it.
    pub name: String,
    /// Its type.
    #[serde(rename = "type")]
    pub ty: InputType,
    /// What it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Whether a value must be supplied (a default also satisfies this).
    #[serde(default)]
    pub required: bool,
    /// The value used when none is supplied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<InputValue>,
    /// The allowed values, when restricted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<Vec<InputValue>>,
}

/// A stage, without its script.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct StageSpec {
    /// Unique name within the pipeline.
    pub name: String,
    /// Image that the stage's `process.run` calls run in, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Whether a `condition` function decides if the stage runs.
    #[serde(default)]
    pub has_condition: bool,
    /// The stage's own time limit.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_duration"
    )]
    #[cfg_attr(feature = "schema", schemars(with = "Option<f64>"))]
    pub timeout: Option<Duration>,
    /// Variables visible to `env.get` and to processes during this stage.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Line where the stage's script is defined, when Lua knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
}

/// A validated pipeline definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PipelineSpec {
    /// Display name.
    pub name: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Requirements as declared (plugins' own requirements are not included).
    pub requires: RequirementSet,
    /// Declared inputs, sorted by name.
    pub inputs: Vec<InputSpec>,
    /// Stages in execution order.
    pub stages: Vec<StageSpec>,
    /// The whole job's time limit (`timeout`), when set.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_duration"
    )]
    #[cfg_attr(feature = "schema", schemars(with = "Option<f64>"))]
    pub timeout: Option<Duration>,
    /// How long a job may wait for a runner (`queue_timeout`) before it is `timed_out`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_duration"
    )]
    #[cfg_attr(feature = "schema", schemars(with = "Option<f64>"))]
    pub queue_timeout: Option<Duration>,
    /// When further attempts are made.
    #[serde(default)]
    pub retries: RetrySpec,
}

/// One validation problem, with the line in the definition file when it is known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Problem {
    /// 1-based line in the definition file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    /// What is wrong, and where in the structure (`stages[2].timeout: ...`).
    pub message: String,
}

impl Problem {
    /// A problem at a known line, or at no line.
    pub fn new(line: Option<u32>, message: impl Into<String>) -> Self {
        Self {
            line,
            message: message.into(),
        }
    }

    /// Renders as `file:line: message` (or `file: message`).
    pub fn render(&self, file: &str) -> String {
        match self.line {
            Some(line) => format!("{file}:{line}: {}", self.message),
            None => format!("{file}: {}", self.message),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

mod opt_duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<f64>::deserialize(d)?
            .map(|s| {
                crate::duration::seconds(s).ok_or_else(|| serde::de::Error::custom("bad duration"))
            })
            .transpose()
    }
}

mod duration_secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        if secs == 0.0 {
            return Ok(Duration::ZERO);
        }
        crate::duration::seconds(secs).ok_or_else(|| serde::de::Error::custom("bad duration"))
    }
}
