//! The worker side: read the request, isolate, run, report, exit.

use super::{isolation, EXIT_BAD_REQUEST, WORKER_ARG};
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
    if std::env::args_os().nth(1).is_some_and(|a| a == WORKER_ARG) {
        worker_main();
    }
}

fn worker_main() -> ! {
    // SAFETY: fd 0 and 1 are the pipes the parent set up; nothing else in this process owns them.
    let stdin = unsafe { File::from_raw_fd(0) };
    let stdout = unsafe { File::from_raw_fd(1) };
    let request: JobRequest = match read_frame(&mut BufReader::new(stdin)) {
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
    let outcome = match isolation::enter(&request) {
        Ok(iso) => {
            let cleanup = iso.cleanup.clone();
            let outcome = crate::execute::execute(request, sink.clone(), iso);
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
