//! Ctrl-C (SIGINT) or SIGTERM while a local job runs (`rivet run FILE`, `rivet plugin test`):
//! the job is cancelled as a timeout would end it (its worker, with every process it started,
//! is killed), the command reports it, cleans up (a temporary workspace goes) and exits with
//! 128 + the signal's number. Outside a job, and at a second signal, the signal does what it
//! does by default, so a command that does not end can still be stopped.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Once, OnceLock};

/// The cancel flag the running job's worker watches ([`rivet_sandbox::WorkerOptions::cancel`]).
static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
/// Whether a job runs: a signal then cancels it.
static ARMED: AtomicBool = AtomicBool::new(false);
/// The signal that cancelled a job (0: none).
static RECEIVED: AtomicI32 = AtomicI32::new(0);

/// The flag to hand to the worker as its cancel flag; installs the signal handlers on first use.
pub(crate) fn cancel_flag() -> Arc<AtomicBool> {
    static INSTALL: Once = Once::new();
    let flag = FLAG
        .get_or_init(|| Arc::new(AtomicBool::new(false)))
        .clone();
    INSTALL.call_once(|| {
        for sig in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: a handler that only touches atomics and, for the default action, calls
            // signal(2) and raise(3), both async-signal-safe; the struct is ours.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
                action.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                libc::sigaction(sig, &action, std::ptr::null_mut());
            }
        }
    });
    flag
}

/// Runs `job` (one worker run) with signals cancelling it.
pub(crate) fn during<T>(job: impl FnOnce() -> T) -> T {
    ARMED.store(true, Ordering::SeqCst);
    let done = job();
    ARMED.store(false, Ordering::SeqCst);
    done
}

/// The signal that cancelled a job, if one did.
pub(crate) fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        sig => Some(sig),
    }
}

extern "C" fn on_signal(sig: libc::c_int) {
    if ARMED.load(Ordering::SeqCst)
        && RECEIVED
            .compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    {
        if let Some(flag) = FLAG.get() {
            flag.store(true, Ordering::SeqCst);
        }
        return;
    }
    // SAFETY: both are async-signal-safe; the default action ends the process.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}
