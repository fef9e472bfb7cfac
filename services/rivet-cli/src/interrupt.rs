//! Ctrl-C (SIGINT) or SIGTERM during a local job (`rivet run FILE`, `rivet plugin test`): the
//! job is cancelled as a timeout ends it (its worker is killed), the command reports it and
//! cleans up (a temporary workspace goes), then rivet ends by that same signal, so a calling
//! shell script stops too (status 130 for Ctrl-C). At an input prompt, at a second signal, or
//! in a command that runs no local job, the signal does what it does by default (at a prompt,
//! the still empty temporary workspace is removed first). A signal that rivet was started to
//! ignore (a background job of a script) stays ignored.

use std::ffi::{c_char, CString};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, Ordering};
use std::sync::{Arc, Once};

/// The cancel flag the running job's worker watches ([`rivet_sandbox::WorkerOptions::cancel`]),
/// kept alive for good (a leaked `Arc`); null until [`cancel_flag`].
static FLAG: AtomicPtr<AtomicBool> = AtomicPtr::new(std::ptr::null_mut());
/// Whether a signal now cancels the job rather than ending rivet.
static ARMED: AtomicBool = AtomicBool::new(false);
/// The signal that cancelled a job (0: none).
static RECEIVED: AtomicI32 = AtomicI32::new(0);
/// An empty directory to remove (`rmdir`) if a signal ends rivet: the temporary workspace while
/// an input is asked for. Null: none.
static EMPTY_DIR: AtomicPtr<c_char> = AtomicPtr::new(std::ptr::null_mut());

/// The flag to hand to the worker as its cancel flag; installs the signal handlers on first use.
pub(crate) fn cancel_flag() -> Arc<AtomicBool> {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let flag = Arc::new(AtomicBool::new(false));
        FLAG.store(Arc::into_raw(flag).cast_mut(), Ordering::SeqCst);
        for sig in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: sigaction reads and writes structs we own; the handler only touches
            // atomics and calls rmdir(2), signal(2) and raise(3), all async-signal-safe.
            unsafe {
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, std::ptr::null(), &mut old) == 0
                    && old.sa_sigaction == libc::SIG_IGN
                {
                    continue;
                }
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
                action.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                libc::sigaction(sig, &action, std::ptr::null_mut());
            }
        }
    });
    let flag = FLAG.load(Ordering::SeqCst);
    // SAFETY: the pointer came from `Arc::into_raw` above and that count is never released.
    unsafe {
        Arc::increment_strong_count(flag);
        Arc::from_raw(flag)
    }
}

/// While it lives, a signal cancels the job (the worker sees the flag) instead of ending rivet.
pub(crate) struct Armed(());

/// Arms the signals until the returned guard is dropped.
pub(crate) fn arm() -> Armed {
    ARMED.store(true, Ordering::SeqCst);
    Armed(())
}

impl Drop for Armed {
    fn drop(&mut self) {
        ARMED.store(false, Ordering::SeqCst);
    }
}

/// Runs `ask` (a prompt, which a signal could not interrupt) with the signals' default action,
/// removing the empty directory `empty`, if any, before a signal ends rivet.
pub(crate) fn disarmed<T>(empty: Option<&Path>, ask: impl FnOnce() -> T) -> T {
    let dir = empty
        .and_then(|p| CString::new(p.as_os_str().as_encoded_bytes()).ok())
        .map_or(std::ptr::null_mut(), CString::into_raw);
    EMPTY_DIR.store(dir, Ordering::SeqCst);
    let armed = ARMED.swap(false, Ordering::SeqCst);
    // A signal caught just before (after the last check) asked to stop: no question then.
    if let Some(sig) = received() {
        die(sig);
    }
    let answer = ask();
    ARMED.store(armed, Ordering::SeqCst);
    // Not freed: a handler on another thread may still hold the pointer (a path, once per
    // prompt).
    EMPTY_DIR.store(std::ptr::null_mut(), Ordering::SeqCst);
    answer
}

/// The signal that cancelled a job, if one did.
pub(crate) fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        sig => Some(sig),
    }
}

/// Ends rivet by the signal that cancelled its job, if one did (after the command cleaned up):
/// a shell that ran rivet then sees it was interrupted, and stops a script as it would have.
pub(crate) fn end_by_signal() {
    let Some(sig) = received() else { return };
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: restores the default action and raises the signal on this process.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

/// Ends rivet by `sig` (its default action), removing the registered empty directory first.
/// Async-signal-safe.
fn die(sig: libc::c_int) {
    let dir = EMPTY_DIR.load(Ordering::SeqCst);
    // SAFETY: all three are async-signal-safe; `dir` is a NUL-terminated path that is never
    // freed; the default action ends the process.
    unsafe {
        if !dir.is_null() {
            libc::rmdir(dir);
        }
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

extern "C" fn on_signal(sig: libc::c_int) {
    if ARMED.load(Ordering::SeqCst)
        && RECEIVED
            .compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    {
        let flag = FLAG.load(Ordering::SeqCst);
        if !flag.is_null() {
            // SAFETY: the leaked `Arc`'s value lives for good.
            unsafe { (*flag).store(true, Ordering::SeqCst) };
        }
        return;
    }
    die(sig);
}
