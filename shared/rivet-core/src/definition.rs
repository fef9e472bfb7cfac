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
pub const PIPELINE_KEYS: [&str; 5] = ["name", "description", "requires", "inputs", "stages"];
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
