//! Temporary workspaces of local jobs (`rivet run`, `rivet plugin test`).

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// A fresh temporary directory for one job: removed when dropped (with
/// `rivet_sandbox::remove_tree`, which no tree a job made can stop or crash, not `tempfile`'s
/// `std::fs::remove_dir_all`), or kept on request.
pub(crate) struct TempWorkspace {
    path: PathBuf,
    keep: bool,
}

impl TempWorkspace {
    /// Creates it in the temporary directory (`TMPDIR`), its name starting with `prefix`; its
    /// path is resolved (no link in it).
    pub(crate) fn create(prefix: &str, keep: bool) -> Result<Self> {
        let made = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .context("creating a temporary workspace")?
            .keep();
        let mut workspace = TempWorkspace { path: made, keep };
        workspace.path =
            std::fs::canonicalize(&workspace.path).context("resolving the temporary workspace")?;
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
