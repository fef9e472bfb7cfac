//! Temporary workspaces of local jobs (`rivet run`, `rivet plugin test`).

use anyhow::{Context, Result};
use rivet_core::policy::Policy;
use std::path::{Path, PathBuf};

/// Gives the workspace directory `dir` (itself, not what it already holds) to the host uid
/// that jobs run as under `policy`, when that is not rivet's own (`sandbox.job_uid`, rivet
/// running as root), so they can write in it, as a runner does for its jobs.
pub(crate) fn give_to_jobs(dir: &Path, policy: &Policy) -> Result<()> {
    match rivet_sandbox::job_host_uid(policy) {
        Some(uid) => std::os::unix::fs::chown(dir, Some(uid), Some(uid)).with_context(|| {
            format!(
                "giving the workspace {} to the jobs' uid {uid} (sandbox.job_uid)",
                dir.display()
            )
        }),
        None => Ok(()),
    }
}

/// A warning for a local job of a root rivet with no `sandbox.job_uid` set: the job is then
/// host root for file and socket permissions (docs/security.md).
pub(crate) fn warn_if_root_jobs(policy: &Policy) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 && policy.sandbox.job_uid.is_none() {
        eprintln!(
            "rivet: warning: running as root, the job runs as root on this host (without \
             capabilities). Run rivet as yourself, or set sandbox.job_uid (e.g. 65534) in a \
             --policy file; sandbox.job_uid = 0 keeps root and silences this."
        );
    }
}

/// A fresh temporary directory for one job: removed when dropped (with
/// `rivet_sandbox::remove_tree`, which no tree a job made can stop or crash, not `tempfile`'s
/// `std::fs::remove_dir_all`), or kept on request.
pub(crate) struct TempWorkspace {
    path: PathBuf,
    keep: bool,
}

impl TempWorkspace {
    /// Creates it in the temporary directory (`TMPDIR`), its name starting with `prefix`, for
    /// jobs run under `policy` (it belongs to their uid: [`give_to_jobs`]); its path is resolved
    /// (no link in it).
    pub(crate) fn create(prefix: &str, keep: bool, policy: &Policy) -> Result<Self> {
        let made = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .context("creating a temporary workspace")?
            .keep();
        let mut workspace = TempWorkspace { path: made, keep };
        workspace.path =
            std::fs::canonicalize(&workspace.path).context("resolving the temporary workspace")?;
        give_to_jobs(&workspace.path, policy)?;
        Ok(workspace)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Whether it stays after the run.
    pub(crate) fn kept(&self) -> bool {
        self.keep
    }
}

impl Drop for TempWorkspace {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if let Err(e) = rivet_sandbox::remove_tree(&self.path) {
            eprintln!(
                "rivet: could not remove the temporary workspace {}: {e}",
                self.path.display()
            );
        }
    }
}
