//! The sandbox worker process: one per job (or per lint), killable as a whole.
//!
//! The parent ([`run_worker`]) asks its [`Launcher`] for a worker: a fork of a launcher process
//! (the zygote, `zygote.rs`) that executed the parent's own binary once, with
//! [`ZYGOTE_ARG`]. Each worker has its own process group and an empty environment, dies with
//! its parent and applies the policy's rlimits itself. The parent writes one
//! [`JobRequest`](crate::JobRequest) frame to the worker's stdin and reads
//! [`Event`](crate::events::Event) frames from its stdout. At the hard deadline (the stage's
//! time limit plus a grace period) or on cancel the whole group is SIGKILLed; a worker that
//! dies without a `Finished` event is reported as crashed (and its zygote retired).
//!
//! The worker ([`maybe_run_worker`] in the zygote, then `child.rs`) enters fresh namespaces
//! where the kernel allows, runs the job and exits with `_exit`-like semantics, never tearing
//! the Lua state down (P11).

mod child;
mod isolation;
mod netns;
mod parent;
mod zygote;

pub use child::maybe_run_worker;
pub use netns::{NetnsLease, NetworkNamespaces};
pub use parent::{run_worker, WorkerOptions, WorkerReport};
pub use zygote::{pidfd, readable_within, Launched, Launcher, Spawn, Worker, Zygote, ZYGOTE_ARG};

/// The host uid that jobs started by this process run as under `policy`, where it is not this
/// process's own: the policy's `sandbox.job_uid`, for a process running as root (the rule the
/// launcher and the worker follow). Whoever makes a job's workspace gives it to that uid.
pub fn job_host_uid(policy: &rivet_core::policy::Policy) -> Option<u32> {
    // SAFETY: geteuid has no preconditions.
    zygote::remapped_uid(policy.sandbox.job_uid, unsafe { libc::geteuid() })
}

/// Worker exit status when the parent stopped reading its events.
pub const EXIT_PARENT_GONE: i32 = 70;
/// Worker exit status when its request could not be read.
pub const EXIT_BAD_REQUEST: i32 = 71;
