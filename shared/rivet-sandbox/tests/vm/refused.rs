//! Workers where the kernel refuses what the zygote asks of it: each test runs again in a
//! child process of this test binary under a seccomp filter that refuses one thing (`clone3`,
//! a user namespace, a network namespace) to that process and everything it starts, the
//! zygote included, as a container runtime's or a hardened host's profile would.

use super::helpers::*;
use rivet_core::policy::NamespaceMode;
use rivet_core::JobOutcome;
use rivet_sandbox::events::{write_frame, Event};
use rivet_sandbox::worker::{Launched, Launcher, Spawn};
use std::process::Command;

/// The environment variable that tells the child which filter to install.
const FILTER_VAR: &str = "RIVET_TEST_SECCOMP";

/// What a filter refuses.
#[derive(Clone, Copy)]
enum Refuse {
    /// `clone3` fails with ENOSYS (as filters that want to read `clone`'s flags do).
    Clone3,
    /// `clone3` fails with ENOSYS, and `clone` or `unshare` with `CLONE_NEWUSER` with EPERM.
    UserNamespaces,
    /// `unshare` with `CLONE_NEWNET` fails with EPERM.
    NetworkNamespaces,
}

impl Refuse {
    fn name(self) -> &'static str {
        match self {
            Refuse::Clone3 => "clone3",
            Refuse::UserNamespaces => "userns",
            Refuse::NetworkNamespaces => "netns",
        }
    }
}

/// In the test's first run: runs the test `name` (its path in this binary) again in a child
/// process under `refuse`, asserts that it passed there, and returns false. In that child:
/// installs the filter on this thread (the zygote this thread starts inherits it) and returns
/// true, and the test goes on.
fn under_filter(name: &str, refuse: Refuse) -> bool {
    if std::env::var(FILTER_VAR).as_deref() == Ok(refuse.name()) {
        install(refuse);
        return true;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(FILTER_VAR, refuse.name())
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{name} under the `{}` filter:\n{stdout}\n{stderr}",
        refuse.name()
    );
    false
}

/// `struct sock_filter` (linux/filter.h).
#[repr(C)]
struct SockFilter {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

/// `struct sock_fprog`.
#[repr(C)]
struct SockFprog {
    len: u16,
    filter: *const SockFilter,
}

const LOAD_WORD: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const JUMP_EQ: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const JUMP_SET: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
const RETURN: u16 = 0x06; // BPF_RET | BPF_K
/// Offsets in `struct seccomp_data`: the call's number, the architecture, the first argument's
/// low half (little-endian).
const NR: u32 = 0;
const ARCH: u32 = 4;
const ARG0: u32 = 16;
#[cfg(target_arch = "x86_64")]
const THIS_ARCH: u32 = 0xc000_003e; // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
const THIS_ARCH: u32 = 0xc000_00b7; // AUDIT_ARCH_AARCH64

fn op(code: u16, jt: u8, jf: u8, k: u32) -> SockFilter {
    SockFilter { code, jt, jf, k }
}

/// Installs the filter for `refuse` on the calling thread.
fn install(refuse: Refuse) {
    let allow = libc::SECCOMP_RET_ALLOW;
    let errno = |e: libc::c_int| libc::SECCOMP_RET_ERRNO | e as u32;
    // The last three instructions: allow, ENOSYS, EPERM; each check jumps to one of them.
    let mut checks: Vec<(u32, Option<u32>, u32)> = Vec::new(); // (call, flag, answer)
    match refuse {
        Refuse::Clone3 => checks.push((libc::SYS_clone3 as u32, None, errno(libc::ENOSYS))),
        Refuse::UserNamespaces => {
            checks.push((libc::SYS_clone3 as u32, None, errno(libc::ENOSYS)));
            for call in [libc::SYS_clone, libc::SYS_unshare] {
                checks.push((
                    call as u32,
                    Some(libc::CLONE_NEWUSER as u32),
                    errno(libc::EPERM),
                ));
            }
        }
        Refuse::NetworkNamespaces => checks.push((
            libc::SYS_unshare as u32,
            Some(libc::CLONE_NEWNET as u32),
            errno(libc::EPERM),
        )),
    }
    let mut prog = vec![
        op(LOAD_WORD, 0, 0, ARCH),
        op(JUMP_EQ, 1, 0, THIS_ARCH),
        op(RETURN, 0, 0, allow),
    ];
    // Per check: load the number, compare; on a match either answer at once, or load the
    // first argument and answer if the flag is set. The number is loaded again after each
    // check, so every check stands alone.
    for (call, flag, answer) in checks {
        prog.push(op(LOAD_WORD, 0, 0, NR));
        match flag {
            None => {
                prog.push(op(JUMP_EQ, 0, 1, call));
                prog.push(op(RETURN, 0, 0, answer));
            }
            Some(flag) => {
                prog.push(op(JUMP_EQ, 0, 3, call));
                prog.push(op(LOAD_WORD, 0, 0, ARG0));
                prog.push(op(JUMP_SET, 0, 1, flag));
                prog.push(op(RETURN, 0, 0, answer));
            }
        }
    }
    prog.push(op(RETURN, 0, 0, allow));
    let fprog = SockFprog {
        len: prog.len() as u16,
        filter: prog.as_ptr(),
    };
    // SAFETY: prctl and seccomp with a program that outlives the call; the filter applies to
    // this thread and what it starts.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        assert_eq!(
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &fprog as *const SockFprog
            ),
            0,
            "installing the seccomp filter: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn launcher() -> Launcher {
    Launcher::new(env!("CARGO_BIN_EXE_rivet-sandbox-worker").into())
}

/// Runs a job that logs `ready` with namespaces `mode`, in a worker launched as its request
/// asks, and returns the events up to `ready` when the job then `spin`s (the worker is left
/// running), else up to the worker's end (a worker that ends by itself removes what it made;
/// a killed plain one leaves its private directories behind).
fn run(mode: NamespaceMode, spin: bool) -> (Launched, Vec<Event>, Job) {
    let body = if spin {
        "log.info('ready') while true do end"
    } else {
        "log.info('ready')"
    };
    let mut job = job(&format!(
        "return {{ name = 'r', stages = {{ {{ name = 's', script = function() {body} end }} }} }}"
    ));
    job.request.policy.limits.instructions = u64::MAX;
    job.request.policy.sandbox.namespaces = mode;
    let mut launched = launcher()
        .launch(Spawn::for_request(&job.request, None))
        .unwrap();
    write_frame(&mut launched.stdin, &job.request).unwrap();
    let mut events = Vec::new();
    while let Ok(Some(event)) = rivet_sandbox::events::read_frame::<Event>(&mut launched.stdout) {
        let ready = matches!(&event, Event::Log { line, .. } if line == "ready");
        events.push(event);
        if ready && spin {
            break;
        }
    }
    // Returned so that the workspace lives as long as the job may run.
    (launched, events, job)
}

fn ran(events: &[Event]) -> bool {
    events
        .iter()
        .any(|e| matches!(e, Event::Log { line, .. } if line == "ready"))
}

fn texts(events: &[Event]) -> String {
    format!("{events:?}")
}

/// The pid namespace `pid` is pid 1 of, if it is one's (from `NSpid`).
fn is_namespace_pid1(pid: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .is_some_and(|v| {
            v.split_whitespace().last() == Some("1") && v.split_whitespace().count() == 2
        })
}

/// With `clone3` refused, the zygote makes namespaced workers with `clone`, its arguments in
/// this architecture's order: the worker is its pid namespace's pid 1 and runs a job that
/// requires namespaces (a child whose thread id in glibc the kernel did not write stops before
/// anything runs, so a wrong order fails here).
#[test]
fn with_clone3_refused_workers_are_cloned_the_older_way() {
    if !under_filter(
        "refused::with_clone3_refused_workers_are_cloned_the_older_way",
        Refuse::Clone3,
    ) {
        return;
    }
    let (launched, events, _job) = run(NamespaceMode::Required, true);
    assert!(ran(&events), "the job did not run: {}", texts(&events));
    assert!(is_namespace_pid1(launched.worker.pid));
    launched.worker.kill_and_wait().unwrap();
}

/// With user namespaces refused, a job whose policy requires namespaces fails with a policy
/// violation that says why, and one whose policy says `auto` runs without them and says so.
#[test]
fn with_user_namespaces_refused_auto_jobs_run_plain_and_required_ones_fail() {
    if !under_filter(
        "refused::with_user_namespaces_refused_auto_jobs_run_plain_and_required_ones_fail",
        Refuse::UserNamespaces,
    ) {
        return;
    }
    refused_namespaces("clone: Operation not permitted (os error 1)");
}

/// The same when the user namespace is allowed and the network namespace the worker makes in
/// it is not: the zygote's test worker finds that out before any job runs.
#[test]
fn with_network_namespaces_refused_auto_jobs_run_plain_and_required_ones_fail() {
    if !under_filter(
        "refused::with_network_namespaces_refused_auto_jobs_run_plain_and_required_ones_fail",
        Refuse::NetworkNamespaces,
    ) {
        return;
    }
    refused_namespaces("unshare: Operation not permitted (os error 1)");
}

fn refused_namespaces(why: &str) {
    let (launched, events, _job) = run(NamespaceMode::Required, false);
    assert!(
        !ran(&events),
        "a job that requires namespaces ran without them"
    );
    assert!(
        texts(&events).contains(&format!(
            "policy violation [sandbox.namespaces]: namespaces are required by policy but unavailable: {why}"
        )),
        "{}",
        texts(&events)
    );
    let _ = launched.worker.kill_and_wait();

    let (launched, events, _job) = run(NamespaceMode::Auto, false);
    assert!(ran(&events), "the auto job did not run: {}", texts(&events));
    assert!(
        texts(&events).contains(&format!("fresh namespaces are unavailable here ({why})")),
        "the job is told it runs without namespaces: {}",
        texts(&events)
    );
    assert!(
        matches!(
            events.last(),
            Some(Event::Finished {
                outcome: JobOutcome::Succeeded,
                ..
            })
        ),
        "{}",
        texts(&events)
    );
    launched.worker.kill_and_wait().unwrap();
}
