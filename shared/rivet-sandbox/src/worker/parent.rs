//! The parent side: start a worker, feed it the request, relay its events, answer its host
//! calls, enforce the hard deadline, kill it, and say how it ended.

use super::netns::NetworkNamespaces;
use super::zygote::{pidfd, readable_within, Launched, Launcher, Spawn};
use crate::events::{write_frame, Event, Reply};
use crate::host::{CallError, HostServices, JobHost};
use crate::job::{JobRequest, Mode};
use rivet_core::input::InputError;
use rivet_core::policy::NetworkMode;
use rivet_core::{JobOutcome, PipelineSpec, Problem, RequirementSet};
use serde::Deserialize;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::io::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
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
    /// Where workers come from: forks of a launcher that executed a binary calling
    /// [`maybe_run_worker`](super::maybe_run_worker) first thing in `main`; shared like `host`.
    pub launcher: Arc<Launcher>,
    /// Set to `true` to cancel the job; the worker is killed at once.
    pub cancel: Option<Arc<AtomicBool>>,
    /// What answers the worker's host calls; shared by every job of a runner (or CLI process)
    /// so runner-wide limits hold across jobs.
    pub host: Arc<HostServices>,
    /// Network namespaces lent to `network = "none"` workers and reused (`netns.rs`); shared
    /// like `host`.
    pub network: Arc<NetworkNamespaces>,
}

impl WorkerOptions {
    /// Starts workers from `program`, with default host services.
    pub fn new(program: PathBuf) -> Self {
        Self {
            launcher: Arc::new(Launcher::new(program)),
            cancel: None,
            host: Arc::new(HostServices::default()),
            network: Arc::new(NetworkNamespaces::default()),
        }
    }

    /// Starts workers from the running executable.
    pub fn current_exe() -> io::Result<Self> {
        Ok(Self::new(std::env::current_exe()?))
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
    /// A `call` frame the parent could not read (unknown kind, missing fields).
    BadCall {
        id: u64,
        error: String,
    },
    /// A host call finished.
    Answer(Reply),
    End(Option<io::Error>),
}

/// Decodes one frame's body from the worker. A call frame that does not parse becomes `BadCall`
/// (the worker gets an error reply); any other unreadable frame ends the stream.
fn decode(body: &[u8]) -> Msg {
    let value = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) => v,
        Err(e) => return Msg::End(Some(io::Error::new(io::ErrorKind::InvalidData, e))),
    };
    match Event::deserialize(&value) {
        Ok(ev) => Msg::Event(Box::new(ev)),
        Err(e) => {
            let id = value.get("id").and_then(serde_json::Value::as_u64);
            match (value.get("event").and_then(|v| v.as_str()), id) {
                (Some("call"), Some(id)) => Msg::BadCall {
                    id,
                    error: format!("malformed host call: {e}"),
                },
                _ => Msg::End(Some(io::Error::new(io::ErrorKind::InvalidData, e))),
            }
        }
    }
}

/// The worker's stdout (frames) and stderr (its last [`STDERR_TAIL`] bytes kept), read without
/// blocking by the thread that keeps the deadlines: both pipes are drained as they fill (a
/// worker writing to one never waits on our reading the other), frames are decoded as they
/// complete, and a worker that stops in the middle of a frame cannot hold up a deadline.
struct Output {
    /// `None` once closed (or once the stream ended on a bad frame).
    stdout: Option<File>,
    stderr: Option<File>,
    /// Bytes read from stdout; those before `start` are decoded already.
    pending: Vec<u8>,
    start: usize,
    tail: Vec<u8>,
    /// Why stdout stopped, when reading it failed.
    error: Option<io::Error>,
    /// Whether `End` was returned.
    ended: bool,
}

/// Most bytes read from one pipe per wake-up, so that a worker writing without pause cannot
/// keep the deadline thread from its deadlines.
const READ_PER_WAKE: usize = 256 << 10;

/// Room made in the stdout buffer before each read.
const READ_CHUNK: usize = 64 << 10;

impl Output {
    fn new(stdout: File, stderr: File) -> io::Result<Self> {
        for fd in [stdout.as_raw_fd(), stderr.as_raw_fd()] {
            // SAFETY: fcntl on a descriptor we own.
            let ok = unsafe {
                let flags = libc::fcntl(fd, libc::F_GETFL);
                flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
            };
            if !ok {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(Self {
            stdout: Some(stdout),
            stderr: Some(stderr),
            pending: Vec::new(),
            start: 0,
            tail: Vec::new(),
            error: None,
            ended: false,
        })
    }

    /// The next message: a frame already read, else one that completes within `timeout`.
    /// `None` when none did, or when `wake` became readable (its bytes are consumed).
    fn next(&mut self, timeout: Duration, mut wake: Option<&mut io::PipeReader>) -> Option<Msg> {
        let until = Instant::now() + timeout;
        loop {
            if let Some(msg) = self.decoded() {
                return Some(msg);
            }
            let fd = |f: &Option<File>| f.as_ref().map_or(-1, AsRawFd::as_raw_fd);
            // A closed pipe's slot gets fd -1, which poll ignores.
            let waker = wake.as_ref().map_or(-1, |w| w.as_raw_fd());
            let mut fds = [fd(&self.stdout), fd(&self.stderr), waker].map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
            let left = until.saturating_duration_since(Instant::now());
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: poll on three pollfd structs we own; the descriptors stay open meanwhile.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
            if n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                return Some(self.end(Some(io::Error::last_os_error())));
            }
            let ready = |p: &libc::pollfd| {
                p.fd >= 0 && p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0
            };
            if ready(&fds[1]) {
                self.read_stderr();
            }
            if ready(&fds[0]) {
                self.read_stdout();
            }
            if let (true, Some(wake)) = (ready(&fds[2]), wake.as_mut()) {
                let mut buf = [0u8; 64];
                let _ = wake.read(&mut buf);
                return self.decoded();
            }
            if n == 0 || Instant::now() >= until {
                return self.decoded();
            }
        }
    }

    /// A complete frame from what was read, or the end of the stream once stdout closed
    /// (mid-frame: an error).
    fn decoded(&mut self) -> Option<Msg> {
        if self.ended {
            return None;
        }
        let unread = &self.pending[self.start..];
        if unread.len() >= 4 {
            let len = u32::from_be_bytes(unread[..4].try_into().expect("4 bytes")) as usize;
            if len > crate::events::MAX_FRAME {
                let error = format!("frame of {len} bytes exceeds {}", crate::events::MAX_FRAME);
                return Some(self.end(Some(io::Error::new(io::ErrorKind::InvalidData, error))));
            }
            if unread.len() >= 4 + len {
                let msg = decode(&unread[4..4 + len]);
                self.start += 4 + len;
                if self.start == self.pending.len() {
                    self.pending.clear();
                    self.start = 0;
                }
                if let Msg::End(e) = msg {
                    return Some(self.end(e));
                }
                return Some(msg);
            }
        }
        if self.stdout.is_none() {
            let error = self.error.take().or_else(|| {
                (self.start < self.pending.len()).then(|| {
                    io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the worker's stdout closed in the middle of a frame",
                    )
                })
            });
            return Some(self.end(error));
        }
        None
    }

    fn end(&mut self, error: Option<io::Error>) -> Msg {
        self.ended = true;
        // Nothing more is read from stdout; the worker is being killed or is exiting.
        self.stdout = None;
        self.pending = Vec::new();
        self.start = 0;
        Msg::End(error)
    }

    fn read_stdout(&mut self) {
        // What is decoded already goes before more is read (once per wake-up, not per frame).
        if self.start > 0 {
            self.pending.drain(..self.start);
            self.start = 0;
        }
        let mut read = 0;
        while let (Some(stdout), true) = (&self.stdout, read < READ_PER_WAKE) {
            // Straight into `pending`'s spare room: a zeroed buffer to copy from would cost a
            // 64 KiB memset per wake-up, more than a short job's whole output.
            self.pending.reserve(READ_CHUNK);
            let spare = self.pending.spare_capacity_mut();
            // SAFETY: read(2) writes at most `spare.len()` bytes into memory this Vec owns and
            // has reserved; only the bytes it reports written become part of the Vec.
            let n =
                unsafe { libc::read(stdout.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len()) };
            match n {
                0 => self.stdout = None,
                n if n > 0 => {
                    let n = n as usize;
                    // Compared with a chunk, not with all the room: `pending` keeps the capacity
                    // a large frame gave it, and a pipe holds 64 KiB.
                    let full = n >= READ_CHUNK.min(spare.len());
                    // SAFETY: the kernel initialised these `n` bytes right after the old length.
                    unsafe { self.pending.set_len(self.pending.len() + n) };
                    read += n;
                    if !full {
                        // A short read emptied the pipe: poll says when there is more, which
                        // spares the read that would only find it empty.
                        return;
                    }
                }
                _ => {
                    let e = io::Error::last_os_error();
                    match e.kind() {
                        io::ErrorKind::Interrupted => {}
                        io::ErrorKind::WouldBlock => return,
                        _ => {
                            self.error = Some(e);
                            self.stdout = None;
                        }
                    }
                }
            }
        }
    }

    fn read_stderr(&mut self) {
        let mut buf = [0u8; 8192];
        let mut read = 0;
        while let (Some(stderr), true) = (&mut self.stderr, read < READ_PER_WAKE) {
            match stderr.read(&mut buf) {
                Ok(0) => self.stderr = None,
                Ok(n) => {
                    read += n;
                    self.tail.extend_from_slice(&buf[..n]);
                    if self.tail.len() > STDERR_TAIL * 2 {
                        self.tail.drain(..self.tail.len() - STDERR_TAIL);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => self.stderr = None,
            }
        }
    }

    /// The tail of stderr, with whatever is still in the pipe (read once the worker is gone;
    /// it never waits for more).
    fn into_tail(mut self) -> String {
        self.read_stderr();
        let start = self.tail.len().saturating_sub(STDERR_TAIL);
        String::from_utf8_lossy(&self.tail[start..]).into_owned()
    }
}

/// The parent's bookkeeping of one worker's calls: strictly increasing ids, one at a time,
/// and only for modules the job was granted.
#[derive(Debug, Default)]
struct Calls {
    last_id: u64,
    in_flight: Option<u64>,
    grants: Option<RequirementSet>,
}

impl Calls {
    /// Records the first `Granted` event; later ones are ignored (only the worker's own code
    /// runs before the first, so only the first is trusted).
    fn granted(&mut self, grants: &RequirementSet) {
        if self.grants.is_none() {
            self.grants = Some(grants.clone());
        }
    }

    /// Whether call `id` may start now.
    fn accept(&mut self, id: u64, module: Option<rivet_core::CoreModule>) -> Result<(), CallError> {
        if id <= self.last_id {
            return Err(CallError::protocol(format!(
                "host call id {id} was already used (the last was {})",
                self.last_id
            )));
        }
        self.last_id = id;
        if let Some(running) = self.in_flight {
            return Err(CallError::protocol(format!(
                "host call {id} arrived while call {running} is still running; calls are answered one at a time"
            )));
        }
        if let Some(module) = module {
            if !self.grants.as_ref().is_some_and(|g| g.has_module(module)) {
                return Err(CallError::policy(
                    &format!("{}.grant", module.name()),
                    format!(
                        "this job was not granted `{}` (add it to the pipeline's `requires`)",
                        module.name()
                    ),
                ));
            }
        }
        self.in_flight = Some(id);
        Ok(())
    }

    fn answered(&mut self, id: u64) {
        if self.in_flight == Some(id) {
            self.in_flight = None;
        }
    }
}

/// Whether process `pid` (a worker, reaped only by its zygote when asked) exits by `until`.
fn exits_by(pid: i32, until: Instant) -> bool {
    pidfd(pid).is_ok_and(|fd| readable_within(&fd, until.saturating_duration_since(Instant::now())))
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

/// The worker's stdin after the request: replies to host calls go through a writer thread, so
/// a worker that stops reading can block only that thread, never the watchdog in
/// [`run_worker`]; the kill closes the pipe and ends the thread. The thread starts with the
/// first reply; until then (and for a job that makes no host call, for good) the pipe is just
/// held open.
struct Replies {
    stdin: Option<File>,
    tx: Option<mpsc::Sender<Reply>>,
}

impl Replies {
    fn new(stdin: File) -> Self {
        Self {
            stdin: Some(stdin),
            tx: None,
        }
    }

    /// A sender to the writer thread, started now if it was not yet.
    fn sender(&mut self) -> mpsc::Sender<Reply> {
        if let Some(tx) = &self.tx {
            return tx.clone();
        }
        let (tx, rx) = mpsc::channel::<Reply>();
        if let Some(mut stdin) = self.stdin.take() {
            std::thread::spawn(move || {
                while let Ok(reply) = rx.recv() {
                    if write_frame(&mut stdin, &reply).is_err() {
                        return;
                    }
                }
            });
        }
        self.tx = Some(tx.clone());
        tx
    }

    fn send(&mut self, reply: Reply) {
        let _ = self.sender().send(reply);
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

    // A network namespace to make the worker in instead of a fresh one (the zygote opens it
    // through our /proc entry; the descriptor itself is not inherited).
    let netns = (Spawn::for_request(request, None).namespaces
        && policy.sandbox.network == NetworkMode::None)
        .then(|| options.network.take())
        .flatten();
    let Launched {
        mut stdin,
        stdout,
        stderr,
        worker,
    } = options.launcher.launch(Spawn::for_request(
        request,
        netns.as_ref().map(|lease| lease.raw_fd()),
    ))?;
    let pgid = worker.pid;

    let mut output = match Output::new(stdout, stderr) {
        Ok(output) => output,
        Err(e) => {
            let _ = worker.kill_and_wait();
            return Err(e);
        }
    };
    if let Err(e) = write_frame(&mut stdin, request) {
        let _ = worker.kill_and_wait();
        return Err(e);
    }
    // Stdin stays open for replies to host calls, written by a thread of their own (started at
    // the first reply: most jobs make no host call).
    let mut replies = Replies::new(stdin);
    let host = JobHost::new(options.host.clone(), request);
    let mut calls = Calls::default();

    // This thread reads the worker's output and keeps the deadlines. Answers of host calls come
    // from the threads that run them, which wake it through a pipe (made at the first call).
    let (tx, rx) = mpsc::channel::<Msg>();
    let mut wake: Option<(io::PipeReader, Arc<io::PipeWriter>)> = None;

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
        let msg = match rx.try_recv() {
            Ok(msg) => msg,
            Err(_) => match output.next(wait, wake.as_mut().map(|(r, _)| r)) {
                Some(msg) => msg,
                None => continue,
            },
        };
        match msg {
            Msg::Event(ev) if matches!(*ev, Event::Call { .. }) => {
                let Event::Call {
                    id,
                    budget_ms,
                    call,
                } = *ev
                else {
                    unreachable!("matched as a call above");
                };
                if let Err(error) = calls.accept(id, Some(call.module())) {
                    replies.send(Reply {
                        id,
                        result: Err(error),
                    });
                    continue;
                }
                // Bounded by what the worker says its stage has left and by this parent's
                // own deadline for the phase, whichever is sooner.
                let now = Instant::now();
                let deadline = (now + Duration::from_millis(budget_ms))
                    .min(phase_deadline.checked_sub(grace).unwrap_or(now))
                    .min(job_deadline);
                let host = host.clone();
                let answer_tx = tx.clone();
                let waker = match &wake {
                    Some((_, w)) => w.clone(),
                    None => match io::pipe() {
                        Ok((r, w)) => {
                            let w = Arc::new(w);
                            wake = Some((r, w.clone()));
                            w
                        }
                        Err(e) => {
                            calls.answered(id);
                            replies.send(Reply {
                                id,
                                result: Err(CallError::failed(format!(
                                    "the runner could not start the call ({e})"
                                ))),
                            });
                            continue;
                        }
                    },
                };
                // Output lines go straight to the writer, ahead of the answer, which the loop
                // forwards only after this thread sent them.
                let progress_tx = replies.sender();
                std::thread::spawn(move || {
                    let mut progress = |response| {
                        let _ = progress_tx.send(Reply {
                            id,
                            result: Ok(response),
                        });
                    };
                    let result = host.dispatch(call, deadline, &mut progress);
                    if answer_tx.send(Msg::Answer(Reply { id, result })).is_ok() {
                        let _ = (&*waker).write(&[1]);
                    }
                });
            }
            Msg::BadCall { id, error } => {
                let result = calls.accept(id, None).and(Err(CallError::protocol(error)));
                calls.answered(id);
                replies.send(Reply { id, result });
            }
            Msg::Answer(reply) => {
                calls.answered(reply.id);
                replies.send(reply);
            }
            Msg::Event(ev) => {
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
                    Event::Granted { grants } => calls.granted(grants),
                    Event::Log { .. } | Event::Call { .. } => {}
                }
                // `Granted` and `Call` are the parent's business, not the job's report.
                if !matches!(ev, Event::Granted { .. } | Event::Call { .. }) {
                    on_event(&ev);
                }
                if finished.is_some() {
                    break;
                }
            }
            Msg::End(err) => {
                stream_error = err;
                break;
            }
        }
    }
    drop(replies);

    let mut exited_alone = false;
    if killed.is_none() && finished.is_some() {
        // The worker exits right after `Finished`; its stdout closing says it is exiting. One
        // that lingers gets a grace period before the kill below. (Answers of calls still
        // running are dropped on the way.)
        let until = Instant::now() + EXIT_GRACE;
        while Instant::now() < until {
            let left = until.saturating_duration_since(Instant::now());
            if let Some(Msg::End(_)) = output.next(left, None) {
                break;
            }
        }
        // Its stdout closes before its pid namespace is emptied: wait (within the same grace)
        // for the process we started, the namespace's pid 1, whose exit completes only once
        // the kernel has killed and reaped every other process there, every process of the
        // job.
        exited_alone = netns.is_some() && exits_by(pgid, until);
    }
    // The zygote kills the group before it reaps the leader: until then the leader's pid keeps
    // the group id reserved, so the signal cannot reach an unrelated group that reused it.
    let zygote = worker.zygote.clone();
    // An error: the zygote died, and the worker (every process of the job) with it.
    let status = worker.kill_and_wait();
    if status.is_err() {
        options.launcher.retire(&zygote);
    }
    if let Some(lease) = netns {
        // Reused only when nothing of the job can be left in it; otherwise freed.
        if exited_alone && status.as_ref().is_ok_and(|s| s.code().is_some()) {
            lease.give_back();
        }
    }
    // The worker is gone, however it ended: remove every container it had the parent create.
    host.finish();
    report.stderr = output.into_tail();
    report.outcome = match (finished, killed) {
        (_, Some(outcome)) => outcome,
        (Some(outcome), None) => outcome,
        (None, None) => {
            let mut reason = match (stream_error, &status) {
                (Some(e), _) => format!("the worker sent an unreadable event ({e}) and was killed"),
                (None, Ok(status)) => describe_exit(*status),
                (None, Err(e)) => {
                    format!("the worker's launcher ended ({e}), and the worker with it")
                }
            };
            if let Some(last) = report.stderr.lines().rev().find(|l| !l.trim().is_empty()) {
                reason.push_str(&format!("; its last words: {}", last.trim()));
            }
            // Its siblings share its address layout and stack canary: the next worker comes
            // from a freshly executed zygote, so crashes cannot be used to guess them.
            options.launcher.retire(&zygote);
            JobOutcome::Crashed { reason }
        }
    };
    report.duration = started.elapsed();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rivet_core::{CoreModule, Requirement};

    fn grants(modules: &[CoreModule]) -> RequirementSet {
        RequirementSet(
            modules
                .iter()
                .map(|m| Requirement::Module { module: *m })
                .collect(),
        )
    }

    #[test]
    fn calls_need_fresh_ids_one_at_a_time_and_a_grant() {
        let mut calls = Calls::default();
        let http = Some(CoreModule::Http);
        let e = calls.accept(1, http).unwrap_err();
        assert!(e.message.contains("policy violation [http.grant]"), "{e}");
        calls.granted(&grants(&[CoreModule::Http]));
        // A later `Granted` cannot widen (or narrow) the first.
        calls.granted(&grants(&[]));
        calls.accept(2, http).unwrap();
        let e = calls.accept(3, http).unwrap_err();
        assert!(e.message.contains("one at a time"), "{e}");
        calls.answered(2);
        let e = calls.accept(3, http).unwrap_err();
        assert!(e.message.contains("already used"), "{e}");
        calls.accept(4, http).unwrap();
    }

    /// An [`Output`] over two new pipes, and their write ends.
    fn pipes() -> (Output, io::PipeWriter, io::PipeWriter) {
        let (out_r, out_w) = io::pipe().unwrap();
        let (err_r, err_w) = io::pipe().unwrap();
        let file = |r: io::PipeReader| File::from(std::os::fd::OwnedFd::from(r));
        (Output::new(file(out_r), file(err_r)).unwrap(), out_w, err_w)
    }

    /// The next message within 30 s (a test that waits longer has failed).
    fn next(output: &mut Output) -> Msg {
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            if let Some(msg) = output.next(Duration::from_secs(1), None) {
                return msg;
            }
        }
        panic!("no message within 30 s");
    }

    #[test]
    fn malformed_call_frames_get_an_answer_other_garbage_ends_the_stream() {
        let (mut output, mut out_w, _err_w) = pipes();
        write_frame(
            &mut out_w,
            &serde_json::json!({"event": "call", "id": 7, "budget_ms": 5, "call": {"kind": "teleport"}}),
        )
        .unwrap();
        write_frame(&mut out_w, &serde_json::json!({"event": "nonsense"})).unwrap();
        match next(&mut output) {
            Msg::BadCall { id, error } => {
                assert_eq!(id, 7);
                assert!(error.contains("malformed host call"), "{error}");
            }
            _ => panic!("expected a BadCall"),
        }
        assert!(matches!(next(&mut output), Msg::End(Some(_))));
        assert!(
            output.next(Duration::ZERO, None).is_none(),
            "nothing after the end"
        );
    }

    #[test]
    fn a_frame_cut_off_or_too_large_ends_the_stream_with_an_error() {
        let (mut output, mut out_w, _err_w) = pipes();
        out_w.write_all(&100u32.to_be_bytes()).unwrap();
        out_w.write_all(b"{\"event\"").unwrap();
        // Half a frame: nothing yet, and no wait beyond the timeout.
        assert!(output.next(Duration::from_millis(20), None).is_none());
        drop(out_w);
        match next(&mut output) {
            Msg::End(Some(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}"),
            _ => panic!("expected the end with an error"),
        }
        let (mut output, mut out_w, _err_w) = pipes();
        let len = u32::try_from(crate::events::MAX_FRAME + 1).unwrap();
        out_w.write_all(&len.to_be_bytes()).unwrap();
        match next(&mut output) {
            Msg::End(Some(e)) => assert!(e.to_string().contains("exceeds"), "{e}"),
            _ => panic!("expected the end with an error"),
        }
    }

    #[test]
    fn frames_written_in_bursts_arrive_whole_and_in_order() {
        let (mut output, mut out_w, _err_w) = pipes();
        // Many small frames (several pipe-fulls) and one larger than a pipe, written at once.
        let log = |seq: u64, line: String| Event::Log {
            seq,
            at_ms: 0,
            stage: None,
            level: crate::events::Level::Info,
            source: crate::events::Source::Script,
            line,
        };
        let writer = std::thread::spawn(move || {
            let mut burst = Vec::new();
            for i in 0..20_000u64 {
                write_frame(&mut burst, &log(i, i.to_string())).unwrap();
            }
            write_frame(&mut burst, &log(20_000, "x".repeat(300 << 10))).unwrap();
            out_w.write_all(&burst).unwrap();
        });
        for i in 0..20_000u64 {
            match next(&mut output) {
                Msg::Event(ev) => match *ev {
                    Event::Log { line, .. } => assert_eq!(line, i.to_string()),
                    _ => panic!("expected log line {i}"),
                },
                _ => panic!("expected log line {i}"),
            }
        }
        match next(&mut output) {
            Msg::Event(ev) => {
                assert!(matches!(*ev, Event::Log { line, .. } if line.len() == 300 << 10))
            }
            _ => panic!("expected the large frame"),
        }
        writer.join().unwrap();
        assert!(matches!(next(&mut output), Msg::End(None)));
    }

    #[test]
    fn a_wake_up_returns_at_once_without_a_message() {
        let (mut output, _out_w, _err_w) = pipes();
        let (mut wake_r, mut wake_w) = io::pipe().unwrap();
        wake_w.write_all(&[1]).unwrap();
        let started = Instant::now();
        assert!(output
            .next(Duration::from_secs(30), Some(&mut wake_r))
            .is_none());
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "it waited for the timeout"
        );
    }

    #[test]
    fn one_thread_drains_both_pipes_and_keeps_the_tail_of_stderr() {
        let (mut output, mut out_w, mut err_w) = pipes();
        // More than a pipe holds on stderr before the first frame: with nobody draining stderr
        // while waiting for stdout, this writer (and the test) would block for good.
        let writer = std::thread::spawn(move || {
            let noise = vec![b'x'; 200 << 10];
            err_w.write_all(&noise).unwrap();
            err_w.write_all(b"\nthe last words").unwrap();
            drop(err_w);
            write_frame(
                &mut out_w,
                &Event::Finished {
                    outcome: JobOutcome::Succeeded,
                },
            )
            .unwrap();
        });
        assert!(matches!(
            next(&mut output),
            Msg::Event(ev) if matches!(*ev, Event::Finished { outcome: JobOutcome::Succeeded })
        ));
        writer.join().unwrap();
        assert!(matches!(next(&mut output), Msg::End(None)));
        let tail = output.into_tail();
        assert_eq!(tail.len(), STDERR_TAIL);
        assert!(tail.ends_with("xx\nthe last words"), "{tail:?}");
    }
}
