//! Workspaces of local jobs (`rivet run`, `rivet plugin test`): temporary ones, and the
//! directory `--workspace` names.

use anyhow::{Context, Result};
use rivet_core::policy::Policy;
use std::path::{Path, PathBuf};

/// The workspace directory DIR of `--workspace DIR`, made if it does not exist, resolved (no
/// link in its path). Where jobs run as another uid than rivet's under `policy`
/// (`sandbox.job_uid`, rivet running as root), they must own it: a directory made here is
/// given to them; one that was there is used only if it already is theirs, since owning a
/// directory lets one replace whatever it holds (a root user's checkout, say) and never handed
/// over.
pub(crate) fn given_dir(dir: &Path, policy: &Policy) -> Result<PathBuf> {
    let uid = rivet_sandbox::job_host_uid(policy);
    let made = match uid {
        None => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating workspace {}", dir.display()))?;
            false
        }
        Some(_) => {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            match std::fs::create_dir(dir) {
                Ok(()) => true,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
                Err(e) => {
                    return Err(e).with_context(|| format!("creating workspace {}", dir.display()))
                }
            }
        }
    };
    let resolved =
        std::fs::canonicalize(dir).with_context(|| format!("resolving {}", dir.display()))?;
    if let Some(uid) = uid {
        give_to_jobs(&resolved, uid, made)?;
    }
    Ok(resolved)
}

/// Gives the directory `dir` (itself, not what it holds) to `uid`, the jobs' (another than
/// rivet's), when `made` (rivet just made it), or checks that it is theirs. On the directory
/// opened without following a link, not by its name again.
fn give_to_jobs(dir: &Path, uid: u32, made: bool) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(dir)
        .with_context(|| format!("opening workspace {}", dir.display()))?;
    if made {
        return std::os::unix::fs::fchown(&opened, Some(uid), Some(uid)).with_context(|| {
            format!(
                "giving the workspace {} to the jobs' uid {uid} (sandbox.job_uid)",
                dir.display()
            )
        });
    }
    let owner = opened.metadata()?.uid();
    if owner != uid {
        anyhow::bail!(
            "policy violation [sandbox.job_uid]: the workspace {} belongs to uid {owner}, and \
             jobs run as uid {uid} (sandbox.job_uid): rivet gives only a directory it makes to \
             them; name a path that does not exist yet, or give this one to uid {uid} yourself",
            dir.display()
        );
    }
    Ok(())
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
    /// jobs run under `policy` (it belongs to their uid), readable by no one else; its path is
    /// resolved (no link in it).
    pub(crate) fn create(prefix: &str, keep: bool, policy: &Policy) -> Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let made = tempfile::Builder::new()
            .prefix(prefix)
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir()
            .context("creating a temporary workspace")?
            .keep();
        let mut workspace = TempWorkspace { path: made, keep };
        workspace.path =
            std::fs::canonicalize(&workspace.path).context("resolving the temporary workspace")?;
        if let Some(uid) = rivet_sandbox::job_host_uid(policy) {
            give_to_jobs(&workspace.path, uid, true)?;
        }
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
