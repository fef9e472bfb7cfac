//! The sandbox worker process: one per job (or per lint), killable as a whole.
//!
//! The parent ([`run_worker`]) starts a copy of its own executable with the hidden argument
//! [`WORKER_ARG`], in its own process group with rlimits, an empty environment and
//! `PR_SET_PDEATHSIG`. It writes one [`JobRequest`](crate::JobRequest) frame to the worker's
//! stdin and reads [`Event`](crate::events::Event) frames from its stdout. At the hard deadline
//! (the stage's time limit plus a grace period) or on cancel it SIGKILLs the whole group; a
//! worker that dies without a `Finished` event is reported as crashed.
//!
//! The child ([`maybe_run_worker`]) enters fresh namespaces where the kernel allows, runs the
//! job and exits with `_exit`-like semantics, never tearing the Lua state down (P11).

mod child;
mod isolation;
mod netns;
mod parent;

pub use child::maybe_run_worker;
pub use netns::{NetnsLease, NetworkNamespaces};
pub use parent::{run_worker, WorkerOptions, WorkerReport};

/// The hidden first argument that turns a Rivet binary into a sandbox worker.
pub const WORKER_ARG: &str = "__rivet-sandbox-worker";

/// Worker exit status when the parent stopped reading its events.
pub const EXIT_PARENT_GONE: i32 = 70;
/// Worker exit status when its request could not be read.
pub const EXIT_BAD_REQUEST: i32 = 71;
