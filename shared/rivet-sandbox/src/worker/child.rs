//! The worker side: read the request, isolate, run, report, exit.

use super::{isolation, EXIT_BAD_REQUEST, EXIT_PARENT_GONE, WORKER_ARG};
use crate::events::{read_frame, Event};
use crate::job::JobRequest;
use crate::modules::Sink;
use rivet_core::JobOutcome;
use std::fs::File;
use std::io::BufReader;
use std::os::fd::FromRawFd;

/// Call first thing in `main` of every binary that runs jobs: when the process was started as
/// a sandbox worker this runs the job and never returns; otherwise it returns at once.
///
/// It must run before any thread is started: entering a user namespace requires a
/// single-threaded process.
pub fn maybe_run_worker() {
    let mut args = std::env::args_os().skip(1);
    if args.next().is_some_and(|a| a == WORKER_ARG) {
        // Die with the parent. The parent passes its pid: if it is already gone (we were
        // re-parented before the signal was armed), stop now.
        let parent: Option<i32> = args.next().and_then(|p| p.to_str()?.parse().ok());
        // Then, optionally, the number of a network namespace descriptor it lends.
        let netns = parent.zip(args.next().and_then(|f| f.to_str()?.parse().ok()));
        // SAFETY: prctl and getppid on this process.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if parent.is_some_and(|p| libc::getppid() != p) {
                libc::_exit(EXIT_PARENT_GONE);
            }
        }
        worker_main(netns.map(|(parent, fd)| isolation::LentNetns { parent, fd }));
    }
}

/// Applies the policy's rlimits to this process (and so to everything it starts).
fn apply_rlimits(policy: &rivet_core::policy::ProcessPolicy) -> std::io::Result<()> {
    let limits = [
        (libc::RLIMIT_NOFILE, policy.max_open_files),
        (libc::RLIMIT_NPROC, policy.max_processes),
        (libc::RLIMIT_AS, policy.max_address_space),
        (libc::RLIMIT_FSIZE, policy.max_file_size),
        (libc::RLIMIT_CPU, policy.max_cpu_seconds),
        (libc::RLIMIT_CORE, 0),
    ];
    for (resource, value) in limits {
        let lim = libc::rlimit {
            rlim_cur: value,
            rlim_max: value,
        };
        // SAFETY: setrlimit on this process with a valid struct.
        if unsafe { libc::setrlimit(resource, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn worker_main(netns: Option<isolation::LentNetns>) -> ! {
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
        .and_then(|()| isolation::enter(&request, netns));
    let outcome = match isolated {
        Ok(iso) => {
            let cleanup = iso.cleanup.clone();
            let host = crate::host::HostChannel::new(Box::new(input));
            let outcome = crate::execute::execute(request, sink.clone(), iso, host);
            if let Some(dir) = cleanup {
                let _ = std::fs::remove_dir_all(dir);
            }
            outcome
        }
        Err(error) => JobOutcome::Failed { stage: None, error },
    };
    sink.emit(&Event::Finished { outcome });
    // Exit without dropping the Lua state: finalizers could run forever (P11).
    std::process::exit(0)
}
