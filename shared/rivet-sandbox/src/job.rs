//! What the parent sends the worker: one request per worker process.

use rivet_core::Policy;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// What the worker does with the definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Evaluate and validate the definition; report its shape or its problems.
    Lint,
    /// Validate, resolve inputs, then run the stages in the workspace.
    Run,
}

/// A job as the worker receives it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRequest {
    /// Lint or run.
    pub mode: Mode,
    /// The definition's file name, for messages (`pipeline.lua`).
    pub file_name: String,
    /// The definition's Lua source.
    pub source: String,
    /// Input values as supplied (text); the worker resolves them against the definition.
    #[serde(default)]
    pub inputs: BTreeMap<String, String>,
    /// Secret values: readable with `env.get`, masked as `***` in every log line.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// Job metadata readable with `env.get` (`RIVET_JOB_ID`, ...).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// The job's workspace directory (must exist). Unused when linting.
    pub workspace: PathBuf,
    /// The sandbox policy.
    pub policy: Policy,
    /// Allowed programs resolved to absolute paths by the parent, once.
    #[serde(default)]
    pub binaries: BTreeMap<String, PathBuf>,
    /// Plugin sources by name (`git` → contents of `plugins/git.lua`).
    #[serde(default)]
    pub plugins: BTreeMap<String, String>,
}

/// Resolves each allowed program name in the policy's search path, once. Names that are not
/// installed are left out; calling them later fails with a clear "not installed" error.
pub fn resolve_binaries(policy: &rivet_core::policy::ProcessPolicy) -> BTreeMap<String, PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = BTreeMap::new();
    for name in &policy.allow {
        for dir in &policy.search_path {
            let candidate = PathBuf::from(dir).join(name);
            let Ok(meta) = std::fs::metadata(&candidate) else {
                continue;
            };
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                let resolved = std::fs::canonicalize(&candidate).unwrap_or(candidate);
                out.insert(name.clone(), resolved);
                break;
            }
        }
    }
    out
}
