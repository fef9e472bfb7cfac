//! The parent side: start a worker, feed it the request, relay its events, enforce the hard
//! deadline, kill it, and say how it ended.

use super::WORKER_ARG;
use crate::events::{read_frame, write_frame, Event};
use crate::job::{JobRequest, Mode};
use rivet_core::input::InputError;
use rivet_core::{JobOutcome, PipelineSpec, Problem};
use std::io::{self, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// Most bytes of the worker's stderr kept for a crash report.
const STDERR_TAIL: usize = 16 << 10;
/// Time allowed for process start and namespace setup on top of the definition's limit.
const STARTUP_ALLOWANCE: Duration = Duration::from_secs(2);
/// How long a worker may take to exit after reporting `Finished`.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// How to start the worker.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The executable to start with [`WORKER_ARG`]; it must call
    /// [`maybe_run_worker`](super::maybe_run_worker) first thing in `main`.
    pub program: PathBuf,
    /// Set to `true` to cancel the job; the worker is killed at once.
    pub cancel: Option<Arc<AtomicBool>>,
}

impl WorkerOptions {
    /// Starts workers from the running executable.
    pub fn current_exe() -> io::Result<Self> {
        Ok(Self {
            program: std::env::current_exe()?,
            cancel: None,
        })
    }
}

/// How a worker run ended, with what it reported along the way.
#[derive(Debug, Clone)]
pub struct WorkerReport {
    /// The job's outcome (from the worker, or decided by the parent when it had to kill it).
    pub outcome: JobOutcome,
    /// The definition's shape, when it was valid.
    pub definition: Option<PipelineSpec>,
    /// Definition problems, when it was not.
    pub problems: Vec<Problem>,
    /// Input errors, when the inputs did not fit.
    pub input_errors: Vec<InputError>,
    /// The tail of the worker's stderr (empty unless something went wrong inside it).
    pub stderr: String,
    /// Wall-clock time from start to exit.
    pub duration: Duration,
}

enum Msg {
    Event(Box<Event>),
    End(Option<io::Error>),
}

fn kill_group(pgid: i32) {
    // SAFETY: signalling the worker's own process group.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT (abort, e.g. a stack overflow)",
        libc::SIGXCPU => "SIGXCPU (CPU time limit)",
        libc::SIGXFSZ => "SIGXFSZ (file size limit)",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGTERM => "SIGTERM",
        _ => return format!("signal {sig}"),
    };
    name.to_owned()
}

fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (_, Some(sig)) => format!("the worker process was killed by {}", signal_name(sig)),
        (Some(code), None) => {
            format!("the worker process exited with status {code} without reporting a result")
        }
        (None, None) => "the worker process ended without reporting a result".into(),
    }
}

/// Runs `request` in a fresh worker process. `on_event` sees every event as it arrives.
/// `Err` means the worker could not be started or fed; every job outcome is `Ok`.
pub fn run_worker(
    request: &JobRequest,
    options: &WorkerOptions,
    mut on_event: impl FnMut(&Event),
) -> io::Result<WorkerReport> {
    let policy = &request.policy;
    let limits = &policy.limits;
    let started = Instant::now();
    let grace = limits.kill_grace;
    let mut job_limit = limits.job_timeout;
    let mut job_deadline = match request.mode {
        Mode::Lint => started + limits.definition_timeout + grace + STARTUP_ALLOWANCE,
        Mode::Run => started + limits.job_timeout + grace + STARTUP_ALLOWANCE,
    };
    let mut phase_deadline = started + limits.definition_timeout + grace + STARTUP_ALLOWANCE;

    // No `pre_exec`: without it the standard library spawns with posix_spawn (vfork-like), which
    // costs the same however large the parent is; `fork` of a runner or orchestrator copies its
    // whole page table for every job. The worker applies its rlimits and parent-death signal
    // itself, first thing (`child.rs`).
    let mut cmd = Command::new(&options.program);
    cmd.arg(WORKER_ARG)
        .arg(std::process::id().to_string())
        .env_clear()
        .current_dir("/")
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let pgid = child.id() as i32;
    let mut stdin = child.stdin.take().expect("stdin was piped above");
    let mut stdout = child.stdout.take().expect("stdout was piped above");
    let mut stderr = child.stderr.take().expect("stderr was piped above");

    let fed = write_frame(&mut stdin, request);
    drop(stdin);
    if let Err(e) = fed {
        kill_group(pgid);
        let _ = child.wait();
        return Err(e);
    }

    let (tx, rx) = mpsc::channel::<Msg>();
    std::thread::spawn(move || loop {
        match read_frame::<Event>(&mut stdout) {
            Ok(Some(ev)) => {
                if tx.send(Msg::Event(Box::new(ev))).is_err() {
                    return;
                }
            }
            Ok(None) => {
                let _ = tx.send(Msg::End(None));
                return;
            }
            Err(e) => {
                let _ = tx.send(Msg::End(Some(e)));
                return;
            }
        }
    });
    let stderr_thread = std::thread::spawn(move || {
        let mut tail: Vec<u8> = Vec::new();
        let mut buf = [0u8; 8192];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            tail.extend_from_slice(&buf[..n]);
            if tail.len() > STDERR_TAIL * 2 {
                tail.drain(..tail.len() - STDERR_TAIL);
            }
        }
        let start = tail.len().saturating_sub(STDERR_TAIL);
        String::from_utf8_lossy(&tail[start..]).into_owned()
    });

    let mut report = WorkerReport {
        outcome: JobOutcome::Crashed {
            reason: String::new(),
        },
        definition: None,
        problems: Vec::new(),
        input_errors: Vec::new(),
        stderr: String::new(),
        duration: Duration::ZERO,
    };
    let mut finished: Option<JobOutcome> = None;
    let mut stage: Option<(String, Duration)> = None;
    let mut killed: Option<JobOutcome> = None;
    let mut stream_error: Option<io::Error> = None;
    loop {
        let now = Instant::now();
        if options
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::SeqCst))
        {
            killed = Some(JobOutcome::Cancelled);
            break;
        }
        let deadline = job_deadline.min(phase_deadline);
        if now >= deadline {
            let error = match &stage {
                Some((_, limit)) => format!(
                    "the stage exceeded its time limit of {} and its worker was killed ({} grace; time spent outside Lua, such as a pattern match, cannot be interrupted)",
                    crate::fmt_duration(*limit),
                    crate::fmt_duration(grace)
                ),
                None if job_deadline <= phase_deadline => {
                    format!("the job exceeded its time limit of {} and its worker was killed", crate::fmt_duration(job_limit))
                }
                None => format!(
                    "evaluating the definition exceeded its time limit of {} and its worker was killed",
                    crate::fmt_duration(limits.definition_timeout)
                ),
            };
            killed = Some(JobOutcome::TimedOut {
                stage: stage.as_ref().map(|(s, _)| s.clone()),
                error,
            });
            break;
        }
        let wait = (deadline - now).min(Duration::from_millis(50));
        match rx.recv_timeout(wait) {
            Ok(Msg::Event(ev)) => {
                let ev = *ev;
                match &ev {
                    Event::StageStarted {
                        name, timeout_ms, ..
                    } => {
                        let limit = Duration::from_millis(*timeout_ms);
                        phase_deadline = Instant::now() + limit + grace;
                        stage = Some((name.clone(), limit));
                    }
                    Event::StageFinished { .. } => {
                        phase_deadline = Instant::now() + limits.definition_timeout + grace;
                        stage = None;
                    }
                    Event::Definition { spec } => {
                        // The pipeline's own `timeout` shortens the policy's job limit.
                        if let (Mode::Run, Some(t)) = (request.mode, spec.timeout) {
                            if t < job_limit {
                                job_limit = t;
                                job_deadline = started + t + grace + STARTUP_ALLOWANCE;
                            }
                        }
                        report.definition = Some(spec.clone());
                    }
                    Event::Problems { problems } => {
                        report.problems.extend(problems.iter().cloned())
                    }
                    Event::InputErrors { errors } => {
                        report.input_errors.extend(errors.iter().cloned())
                    }
                    Event::Finished { outcome } => finished = Some(outcome.clone()),
                    Event::Log { .. } => {}
                }
                on_event(&ev);
                if finished.is_some() {
                    break;
                }
            }
            Ok(Msg::End(err)) => {
                stream_error = err;
                break;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }

    if killed.is_none() && finished.is_some() {
        // The worker exits right after `Finished`; its stdout closing says it has. One that
        // lingers gets a grace period before the kill below.
        let _ = rx.recv_timeout(EXIT_GRACE);
    }
    // Kill the group before reaping its leader: until `wait`, the leader's pid keeps the group
    // id reserved, so the signal cannot reach an unrelated group that reused it.
    kill_group(pgid);
    let status = child.wait()?;
    report.stderr = stderr_thread.join().unwrap_or_default();
    report.outcome = match (finished, killed) {
        (_, Some(outcome)) => outcome,
        (Some(outcome), None) => outcome,
        (None, None) => {
            let mut reason = match stream_error {
                Some(e) => format!("the worker sent an unreadable event ({e}) and was killed"),
                None => describe_exit(status),
            };
            if let Some(last) = report.stderr.lines().rev().find(|l| !l.trim().is_empty()) {
                reason.push_str(&format!("; its last words: {}", last.trim()));
            }
            JobOutcome::Crashed { reason }
        }
    };
    report.duration = started.elapsed();
    Ok(report)
}
