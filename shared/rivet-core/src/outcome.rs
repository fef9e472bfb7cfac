//! How a job and its stages ended.
//!
//! A failed pipeline is an outcome, not an error: `Err` elsewhere means infrastructure trouble.

use serde::{Deserialize, Serialize};
use std::fmt;

/// How one stage ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum StageOutcome {
    /// The script returned normally.
    Succeeded,
    /// The script raised an error (a failed command, a policy violation, a Lua error).
    Failed,
    /// The stage ran past its time or instruction budget.
    TimedOut,
    /// Its `condition` returned false, or an earlier stage failed.
    Skipped,
}

impl StageOutcome {
    /// The outcome's name, as serialized (`succeeded`, `failed`, `timed_out`, `skipped`).
    pub fn as_str(self) -> &'static str {
        match self {
            StageOutcome::Succeeded => "succeeded",
            StageOutcome::Failed => "failed",
            StageOutcome::TimedOut => "timed_out",
            StageOutcome::Skipped => "skipped",
        }
    }
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum JobOutcome {
    /// Every stage succeeded or was skipped by its condition.
    Succeeded,
    /// A stage failed, or the definition could not be loaded.
    Failed {
        /// The failing stage, if a stage was running.
        stage: Option<String>,
        /// The error, as the pipeline author should read it.
        error: String,
    },
    /// The job or a stage ran out of time (inside the VM or at the worker's hard deadline).
    TimedOut {
        /// The stage that was running.
        stage: Option<String>,
        /// What ran out.
        error: String,
    },
    /// The worker process died without reporting a result (signal, abort, stack overflow).
    Crashed {
        /// What is known about the death.
        reason: String,
    },
    /// Stopped on request.
    Cancelled,
    /// The runner disappeared while running it (its lease expired); decided by the orchestrator.
    Lost {
        /// What is known.
        reason: String,
    },
}

impl JobOutcome {
    /// Whether the job succeeded.
    pub fn is_success(&self) -> bool {
        matches!(self, Self::Succeeded)
    }

    /// The status word: `succeeded`, `failed`, `timed_out`, `crashed`, `cancelled`.
    pub fn status(&self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed { .. } => "failed",
            Self::TimedOut { .. } => "timed_out",
            Self::Crashed { .. } => "crashed",
            Self::Cancelled => "cancelled",
            Self::Lost { .. } => "lost",
        }
    }
}

impl fmt::Display for JobOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Succeeded => f.write_str("succeeded"),
            Self::Failed {
                stage: Some(s),
                error,
            } => write!(f, "failed in stage `{s}`: {error}"),
            Self::Failed { stage: None, error } => write!(f, "failed: {error}"),
            Self::TimedOut {
                stage: Some(s),
                error,
            } => write!(f, "timed out in stage `{s}`: {error}"),
            Self::TimedOut { stage: None, error } => write!(f, "timed out: {error}"),
            Self::Crashed { reason } => write!(f, "crashed: {reason}"),
            Self::Cancelled => f.write_str("cancelled"),
            Self::Lost { reason } => write!(f, "lost: {reason}"),
        }
    }
}

#[cfg(test)]
mod stage_outcome_tests {
    use super::StageOutcome;

    #[test]
    fn a_stage_outcomes_name_is_its_serialized_form() {
        for o in [
            StageOutcome::Succeeded,
            StageOutcome::Failed,
            StageOutcome::TimedOut,
            StageOutcome::Skipped,
        ] {
            assert_eq!(serde_json::to_value(o).unwrap(), o.as_str());
        }
    }
}
