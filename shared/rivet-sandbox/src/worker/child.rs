//! The worker side: read the request, isolate, run, report, exit.

use super::{isolation, zygote, EXIT_BAD_REQUEST, EXIT_PARENT_GONE};
use crate::events::{read_frame, Event};
use crate::job::JobRequest;
use crate::modules::Sink;
use rivet_core::JobOutcome;
use std::fs::File;
use std::io::BufReader;
use std::os::fd::{FromRawFd, OwnedFd};

/// Call first thing in `main` of every binary that runs jobs: when the process was started as
/// a worker launcher (`zygote.rs`) it forks workers until its parent is done with it and
/// never returns; otherwise it returns at once.
///
/// It must run before any thread is started: the zygote forks, which is safe only in a
/// single-threaded process, and its workers enter new namespaces, which needs one too.
pub fn maybe_run_worker() {
    let mut args = std::env::args_os().skip(1);
    if args.next().is_some_and(|a| a == zygote::ZYGOTE_ARG) {
        // The parent passes its pid: without it, or if it is already gone (we were re-parented
        // before the parent-death signal was armed), stop now.
        let Some(parent) = args.next().and_then(|p| p.to_str()?.parse().ok()) else {
            eprintln!("rivet worker launcher: no parent pid");
            std::process::exit(EXIT_BAD_REQUEST);
        };
        die_with(parent);
        zygote::zygote_main(parent);
    }
}

/// Arms the parent-death signal, and exits at once if `parent` is gone already.
fn die_with(parent: i32) {
    // SAFETY: prctl and getppid on this process.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() != parent {
            libc::_exit(EXIT_PARENT_GONE);
        }
    }
}

/// Runs in a worker just made by the zygote `parent` as `start` says, with its pipes on fds 0,
/// 1 and 2: dies with the zygote, then reads the request, isolates, runs the job and exits.
/// `maps` is the socket on which the zygote says the worker's maps are written (closed once
/// isolated, before any job code runs).
pub(super) fn become_worker(parent: i32, start: zygote::Start, maps: OwnedFd) -> ! {
    if let zygote::Start::Namespaced { .. } = start {
        // The parent is outside our pid namespace (`getppid()` reads 0): whether it died
        // before the signal was armed, the map socket tells (`isolation.rs`).
        // SAFETY: prctl on this process.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    } else {
        die_with(parent);
    }
    let mapper = isolation::Mapper {
        socket: maps,
        zygote: parent,
    };
    worker_main(start, mapper)
}

/// Applies the policy's rlimits to this process (and so to everything it starts). The policy
/// is a ceiling: a hard limit this process was given below it (a runner started under a
/// stricter `ulimit -H`, or a service manager's `LimitNOFILE=`) stays, where raising it would
/// fail without the privilege and loosen the host's choice with it. Returns a note for each
/// such limit, which the job's log shows.
///
/// Soft and hard limits are equal. For CPU time that means `SIGKILL`, not `SIGXCPU`: the worker
/// is its pid namespace's init, to which the kernel does not deliver a signal it has no
/// handler for, so a soft limit below the hard one would only be ignored.
fn apply_rlimits(policy: &rivet_core::policy::ProcessPolicy) -> std::io::Result<Vec<String>> {
    let limits = [
        (libc::RLIMIT_NOFILE, "open files", policy.max_open_files),
        (libc::RLIMIT_NPROC, "processes", policy.max_processes),
        (libc::RLIMIT_AS, "address space", policy.max_address_space),
        (libc::RLIMIT_FSIZE, "file size", policy.max_file_size),
        (libc::RLIMIT_CPU, "CPU seconds", policy.max_cpu_seconds),
        (libc::RLIMIT_CORE, "core file size", 0),
    ];
    let mut notes = Vec::new();
    for (resource, name, wanted) in limits {
        // SAFETY: getrlimit writes the struct we own.
        let mut given: libc::rlimit = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrlimit(resource, &mut given) } != 0 {
            return Err(limit_error(name));
        }
        let value = wanted.min(given.rlim_max);
        if value < wanted {
            notes.push(format!(
                "isolation: the limit on {name} is {value} on this host, below the policy's {wanted}"
            ));
        }
        let lim = libc::rlimit {
            rlim_cur: value,
            rlim_max: value,
        };
        // SAFETY: setrlimit on this process with a valid struct.
        if unsafe { libc::setrlimit(resource, &lim) } != 0 {
            return Err(limit_error(name));
        }
    }
    Ok(notes)
}

/// The last OS error, naming the limit it concerns.
fn limit_error(name: &str) -> std::io::Error {
    let e = std::io::Error::last_os_error();
    std::io::Error::new(e.kind(), format!("the limit on {name}: {e}"))
}

fn worker_main(start: zygote::Start, mapper: isolation::Mapper) -> ! {
    // SAFETY: fd 0 and 1 are the pipes the parent set up; nothing else in this process owns them.
    let stdin = unsafe { File::from_raw_fd(0) };
    let stdout = unsafe { File::from_raw_fd(1) };
    let mut input = BufReader::new(stdin);
    let request: JobRequest = match read_frame(&mut input) {
        Ok(Some(r)) => r,
        Ok(None) => {
            eprintln!("rivet worker: no request on stdin");
            std::process::exit(EXIT_BAD_REQUEST);
        }
        Err(e) => {
            eprintln!("rivet worker: unreadable request: {e}");
            std::process::exit(EXIT_BAD_REQUEST);
        }
    };
    let secrets: Vec<String> = request.secrets.values().cloned().collect();
    let sink = std::rc::Rc::new(Sink::new(
        Box::new(stdout),
        request.policy.log.clone(),
        secrets,
    ));
    let isolated = apply_rlimits(&request.policy.process)
        .map_err(|e| format!("setting the worker's resource limits: {e}"))
        .and_then(|lowered| {
            let mut iso = isolation::enter(&request, start, mapper)?;
            iso.notes.extend(lowered);
            Ok(iso)
        });
    let outcome = match isolated {
        Ok(iso) => {
            let cleanup = iso.cleanup.clone();
            let host = crate::host::HostChannel::new(Box::new(input));
            let outcome = crate::execute::execute(request, sink.clone(), iso, host);
            if let Some(dir) = cleanup {
                let _ = crate::remove_tree(&dir);
            }
            outcome
        }
        Err(error) => JobOutcome::Failed { stage: None, error },
    };
    sink.emit(&Event::Finished { outcome });
    // Exit without dropping the Lua state: finalizers could run forever (P11). `_exit`, not
    // `exit`: every event is written (frames are written whole and flushed, unbuffered) and
    // the job's files are closed by the kernel; `exit` would only add work to every job's end
    // (atexit handlers, the shared libraries' destructors, setting up Rust's stdout just to
    // flush it, with their page faults: about 4 % of a worker's CPU time in a profile).
    // SAFETY: ends this process; nothing in it is left to do.
    unsafe { libc::_exit(0) }
}
