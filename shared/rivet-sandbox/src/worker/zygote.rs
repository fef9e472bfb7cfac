//! Starting workers by `fork` from a launcher (a "zygote") instead of `exec` per job.
//!
//! Executing the runner's binary for every job cost about a third of a worker's CPU time
//! (the kernel's `execve`, the dynamic loader's relocations and `cpuid` probes, the page faults
//! of a fresh image; docs/benchmarks.md). A [`Launcher`] instead executes the binary once, with
//! [`ZYGOTE_ARG`]: that process (the zygote) does nothing but wait on a socket and fork (and,
//! at the first request for a namespaced worker, make one test worker, [`probe`]). Each
//! fork becomes one job's worker exactly as an executed one would: it has run no job code, it
//! gets its own stdin, stdout and stderr pipes and process group, and dies with its parent; a
//! run's worker is born in its user and pid namespaces (below) and makes the rest itself
//! (`child.rs`, `isolation.rs`).
//!
//! The zygote never sees a job: it receives three pipe ends, a socket, whether to make the
//! worker in fresh namespaces, at most a network namespace to make it in and at most a host
//! uid, never a request. Its privileged acts are the `clone` itself and writing the uid and gid
//! maps of the child it just made, once, to the uid its launcher named (or its own).
//!
//! A namespaced worker is cloned straight into a fresh user namespace and a fresh pid
//! namespace, whose pid 1 it is: one process per job. (Before, the worker made its namespaces
//! itself and, since a new pid namespace only applies to children, forked again to get its
//! pid 1, and stayed only to relay that child's exit: a second fork and exit per job, about a
//! quarter of a worker's CPU time; docs/benchmarks.md.) The `clone` does in the child what
//! glibc's `fork` does ([`fork_into`], [`tid_field`]). At the first request for a namespaced
//! worker the zygote makes one test worker that way ([`probe`]): where the kernel, a security
//! module or glibc refuses, namespaced workers are unavailable for this zygote (a run's policy
//! decides whether it may go without); where the failure may pass (no memory, a process
//! limit), that start is refused and the next request tries again. Once the test worker was
//! made, a `clone` that fails refuses the start, whatever the error. A lent network namespace is joined by the
//! zygote just for the `clone`, then left: the worker is born in it, and, its user namespace
//! being the worker's own, cannot change it. The worker makes the rest (mount, IPC, and a
//! fresh network namespace when none was lent) itself, as root of its own user namespace.
//! What children of one zygote share is what `exec` would have re-randomised: the address
//! layout and the stack canary. So that a crash cannot be used as an oracle to guess them one
//! job at a time, the parent retires a zygote as soon as one of its workers crashes
//! ([`Launcher::retire`]); the next job gets a freshly executed one.
//!
//! Protocol (`SOCK_SEQPACKET`, so every message arrives whole):
//! - control socket, launcher → zygote: the lent network namespace's descriptor number in the
//!   parent (`i32`, -1 for none), the host uid the job runs as (`u32`, `u32::MAX`, which is
//!   never a uid, for none: no uid remap) and whether to make the worker in fresh namespaces
//!   (`u32`, 0 or 1), with `SCM_RIGHTS` the worker's stdin, stdout and stderr and one end of a
//!   per-job socket;
//! - job socket, zygote → launcher: the worker's pid (`i32`), or `-errno` if `fork` or `clone`
//!   (or the test worker, when its failure may pass) failed;
//! - job socket, launcher → zygote: one byte, "kill and reap": the zygote SIGKILLs the worker's
//!   process group, then reaps it (in that order: an unreaped leader keeps the group id from
//!   being reused) and answers with the raw wait status (`i32`). A job socket closed without
//!   that request is treated the same way, without an answer, so a worker never outlives the
//!   handle its parent holds.
//! - map socket, zygote → worker (a pair the zygote makes for each worker; the worker holds its
//!   end on fd 3 until its isolation is set up, never while job code runs): for a namespaced
//!   worker, right after the `clone`, `0` once its `uid_map` and `gid_map` are written (`0 UID
//!   1`, `setgroups` denied; UID the launcher's uid where root remaps, else the zygote's own),
//!   or an errno (`i32`). A worker cannot write a map to another uid itself
//!   (`user_namespaces(7)`). The zygote keeps its end of a namespaced worker's socket until it
//!   reaps the worker (a plain worker's it closes at once): the worker,
//!   whose parent is outside its pid namespace (`getppid()` reads 0 there), learns from the
//!   hang-up that the zygote died before its parent-death signal was armed.
//!
//! The zygote dies with its parent (and its workers with it: their parent-death signal). The
//! parent starts it from a thread of its own that lives as long as the zygote, because the
//! parent-death signal follows the thread that started a process, not the process.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};

/// The hidden first argument that turns a Rivet binary into a worker launcher.
pub const ZYGOTE_ARG: &str = "__rivet-sandbox-zygote";

/// Descriptors passed with each spawn request: stdin, stdout, stderr, the job socket.
const SPAWN_FDS: usize = 4;
/// A spawn request's length: the lent namespace, the uid, the namespaces flag.
const REQUEST_LEN: usize = 12;
/// The worker's end of its map socket, in the worker.
const MAP_FD: RawFd = 3;
/// "No uid" in a spawn request: `(uid_t) -1` is never a uid.
const NO_UID: u32 = u32::MAX;

/// Starts sandbox workers for one parent process, through a zygote started at first use and
/// again whenever the previous one died or was retired.
#[derive(Debug)]
pub struct Launcher {
    program: PathBuf,
    current: Mutex<Option<Arc<Zygote>>>,
    /// How long a zygote may take to answer a request with the worker's pid.
    pid_timeout: std::time::Duration,
}

/// A running zygote: the parent's end of its control socket. Dropping the last reference
/// closes it; the zygote then exits once its workers have been reaped.
#[derive(Debug)]
pub struct Zygote {
    control: OwnedFd,
    pid: i32,
}

/// A started worker: its pipes, and the handle that kills and reaps it.
#[derive(Debug)]
pub struct Launched {
    pub stdin: File,
    pub stdout: File,
    pub stderr: File,
    pub worker: Worker,
}

/// A worker process: dropping it without [`Worker::kill_and_wait`] kills it all the same.
#[derive(Debug)]
pub struct Worker {
    /// The worker's pid, which is also its process group id.
    pub pid: i32,
    /// The zygote that forked it.
    pub zygote: Arc<Zygote>,
    job: OwnedFd,
    /// The host uid its job runs as: the owner of the scratch directory it may leave.
    job_uid: u32,
}

/// What a worker is made in.
#[derive(Debug, Clone, Copy, Default)]
pub struct Spawn {
    /// Fresh user and pid namespaces, made by the zygote's `clone` (the worker makes the rest).
    pub namespaces: bool,
    /// A network namespace descriptor this process lends: a namespaced worker is made in it.
    pub netns: Option<RawFd>,
    /// The host uid the worker's user namespace maps its root to, when the zygote is root (the
    /// policy's `sandbox.job_uid`).
    pub job_uid: Option<u32>,
}

impl Spawn {
    /// What `request` needs: namespaces for a run unless its policy turns them off (a lint has
    /// no host access to isolate), its policy's job uid, and `netns` if one is lent.
    pub fn for_request(request: &crate::job::JobRequest, netns: Option<RawFd>) -> Self {
        let sandbox = &request.policy.sandbox;
        Self {
            namespaces: request.mode == crate::job::Mode::Run
                && sandbox.namespaces != rivet_core::policy::NamespaceMode::Off,
            netns,
            job_uid: sandbox.job_uid,
        }
    }
}

/// The host uid a job runs as instead of `host_uid`, the uid of the process that starts it:
/// the policy's `job_uid`, where that process is root (only root may take or map another uid)
/// and it names another uid than root's. The one rule the zygote's maps, the worker's check of
/// them and the worker without namespaces all follow.
pub(super) fn remapped_uid(job_uid: Option<u32>, host_uid: u32) -> Option<u32> {
    job_uid.filter(|&u| host_uid == 0 && u != 0)
}

/// How the zygote started a worker, as the worker learns it (it runs on a copy of the zygote's
/// memory, so this is simply handed over).
#[derive(Debug)]
pub(super) enum Start {
    /// A plain fork: no namespaces were asked for.
    Plain,
    /// Namespaces were asked for and could not be made: why.
    Unavailable(String),
    /// In fresh user and pid namespaces (pid 1 there).
    Namespaced {
        /// Made in the network namespace the launcher lent.
        lent_network: bool,
        /// The zygote's effective uid: the worker's on the host unless remapped.
        host_uid: u32,
    },
}

fn last_error(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

pub(super) fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair fills the two-element array we own.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    } != 0
    {
        return Err(last_error("socketpair"));
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A pipe as (read end, write end), both close-on-exec.
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(last_error("pipe"));
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Sends `data` with `fds` attached (`SCM_RIGHTS`).
pub(super) fn send_with_fds(sock: RawFd, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of_val(fds) as u32) } as usize;
    // u64 words: the buffer is read as a `cmsghdr`, which must be aligned.
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: msghdr and its control buffer are ours and sized by CMSG_SPACE; the CMSG macros
    // stay inside that buffer; sendmsg only reads them.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !fds.is_empty() {
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(fds) as u32) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr(),
                libc::CMSG_DATA(cmsg).cast::<RawFd>(),
                fds.len(),
            );
        }
        loop {
            if libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

/// Receives one message into `buf`, with the descriptors attached to it (close-on-exec).
/// Returns the message's length (0: the other end closed) and the descriptors.
fn recv_with_fds(sock: RawFd, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let space = unsafe { libc::CMSG_SPACE((SPAWN_FDS * size_of::<RawFd>()) as u32) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: as in send_with_fds; recvmsg writes at most the lengths given; every descriptor
    // the kernel installed is taken into an OwnedFd exactly once.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let n = loop {
            let n = libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC);
            if n >= 0 {
                break n as usize;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        };
        let mut fds = Vec::new();
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for i in 0..len / size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        if msg.msg_flags & (libc::MSG_CTRUNC | libc::MSG_TRUNC) != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a truncated message",
            ));
        }
        Ok((n, fds))
    }
}

/// Reads one `i32` message; `None` when the other end closed.
pub(super) fn recv_i32(sock: RawFd) -> io::Result<Option<i32>> {
    let mut buf = [0u8; 4];
    match recv_with_fds(sock, &mut buf)? {
        (0, _) => Ok(None),
        (4, _) => Ok(Some(i32::from_le_bytes(buf))),
        (n, _) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a {n}-byte message where 4 were expected"),
        )),
    }
}

impl Launcher {
    /// Workers will be forked from a zygote that executes `program` (which must call
    /// [`maybe_run_worker`](super::maybe_run_worker) first thing in `main`).
    pub fn new(program: PathBuf) -> Self {
        Self {
            program,
            current: Mutex::new(None),
            pid_timeout: PID_TIMEOUT,
        }
    }

    /// The same, with another limit on how long a zygote may take to answer a request with
    /// the worker's pid (30 s by default: a fork answers at once).
    pub fn with_pid_timeout(self, pid_timeout: std::time::Duration) -> Self {
        Self {
            pid_timeout,
            ..self
        }
    }

    /// The zygote that forks the next worker, started now if there is none.
    pub fn zygote(&self) -> io::Result<Arc<Zygote>> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(z) = current.as_ref() {
            return Ok(z.clone());
        }
        let z = Arc::new(Zygote::start(&self.program)?);
        *current = Some(z.clone());
        Ok(z)
    }

    /// Stops handing out `zygote`: the next worker comes from a freshly executed one. The old
    /// one exits when its last worker has been reaped.
    pub fn retire(&self, zygote: &Arc<Zygote>) {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.as_ref().is_some_and(|z| Arc::ptr_eq(z, zygote)) {
            *current = None;
        }
    }

    /// Starts a worker as `spawn` says (a lent network namespace is opened by the zygote
    /// through this process's `/proc` entry). A zygote that died or did not answer is
    /// replaced once.
    pub fn launch(&self, spawn: Spawn) -> io::Result<Launched> {
        let mut failed = Failed::Gone;
        for _ in 0..2 {
            let zygote = self.zygote()?;
            match zygote.fork(Pipes::new()?, spawn, self.pid_timeout) {
                Ok(launched) => return Ok(launched),
                Err(Failed::Refused(e)) => return Err(e),
                Err(gone_or_silent) => {
                    self.retire(&zygote);
                    failed = gone_or_silent;
                }
            }
        }
        Err(match failed {
            Failed::Silent => io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the worker launcher did not answer within {:?}",
                    self.pid_timeout
                ),
            ),
            _ => io::Error::other("the worker launcher ended at once"),
        })
    }
}

/// The descriptors of one worker: its three pipes and its job socket, each as (our end, the
/// worker's end).
struct Pipes {
    stdin: (OwnedFd, OwnedFd),
    stdout: (OwnedFd, OwnedFd),
    stderr: (OwnedFd, OwnedFd),
    job: (OwnedFd, OwnedFd),
}

impl Pipes {
    fn new() -> io::Result<Self> {
        let (stdin_r, stdin_w) = pipe()?;
        Ok(Self {
            stdin: (stdin_w, stdin_r),
            stdout: pipe()?,
            stderr: pipe()?,
            job: seqpacket_pair()?,
        })
    }
}

/// Why a zygote started no worker.
enum Failed {
    /// It is gone: its socket was closed.
    Gone,
    /// `fork` failed there.
    Refused(io::Error),
    /// It did not answer in time.
    Silent,
}

impl Zygote {
    fn start(program: &std::path::Path) -> io::Result<Self> {
        let (ours, theirs) = seqpacket_pair()?;
        let mut cmd = Command::new(program);
        cmd.arg(ZYGOTE_ARG)
            .arg(std::process::id().to_string())
            .env_clear()
            .current_dir("/")
            // Not in the parent's process group: a Ctrl-C or a supervisor's signal to that
            // group must not kill the zygote (and every running worker with it) while the
            // parent drains its jobs.
            .process_group(0)
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let (tx, rx) = mpsc::channel();
        // The thread waits for the zygote, and so lives exactly as long: the zygote's
        // parent-death signal follows this thread.
        std::thread::Builder::new()
            .name("rivet-zygote".into())
            .spawn(move || match cmd.spawn() {
                Ok(mut child) => {
                    let _ = tx.send(Ok(child.id() as i32));
                    // Our copy of the zygote's end closes with `cmd`, so the zygote sees the
                    // end of its control socket when the last `Zygote` handle is dropped.
                    drop(cmd);
                    let _ = child.wait();
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            })?;
        let pid = rx
            .recv()
            .map_err(|_| io::Error::other("the worker launcher's thread ended"))?
            .map_err(|e| io::Error::new(e.kind(), format!("starting the worker launcher: {e}")))?;
        Ok(Self { control: ours, pid })
    }

    /// The zygote's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    fn fork(
        self: &Arc<Self>,
        pipes: Pipes,
        spawn: Spawn,
        pid_timeout: std::time::Duration,
    ) -> Result<Launched, Failed> {
        let Pipes {
            stdin,
            stdout,
            stderr,
            job,
        } = pipes;
        let fds = [
            stdin.1.as_raw_fd(),
            stdout.1.as_raw_fd(),
            stderr.1.as_raw_fd(),
            job.1.as_raw_fd(),
        ];
        let mut request = [0u8; REQUEST_LEN];
        request[..4].copy_from_slice(&spawn.netns.unwrap_or(-1).to_le_bytes());
        request[4..8].copy_from_slice(&spawn.job_uid.unwrap_or(NO_UID).to_le_bytes());
        request[8..].copy_from_slice(&u32::from(spawn.namespaces).to_le_bytes());
        send_with_fds(self.control.as_raw_fd(), &request, &fds).map_err(|_| Failed::Gone)?;
        // Only the worker holds these ends now: its exit closes our stdout and stderr.
        drop((stdin.1, stdout.1, stderr.1, job.1));
        // A fork answers at once; a launcher that does not (a program that is no launcher)
        // must not hang the job.
        if !readable_within(&job.0, pid_timeout) {
            return Err(Failed::Silent);
        }
        let answer = recv_i32(job.0.as_raw_fd());
        match answer {
            Ok(Some(pid)) if pid > 0 => Ok(Launched {
                stdin: File::from(stdin.0),
                stdout: File::from(stdout.0),
                stderr: File::from(stderr.0),
                worker: Worker {
                    pid,
                    zygote: self.clone(),
                    job: job.0,
                    job_uid: {
                        // SAFETY: geteuid has no preconditions.
                        let me = unsafe { libc::geteuid() };
                        remapped_uid(spawn.job_uid, me).unwrap_or(me)
                    },
                },
            }),
            Ok(Some(errno)) if errno < 0 => {
                Err(Failed::Refused(io::Error::from_raw_os_error(-errno)))
            }
            _ => Err(Failed::Gone),
        }
    }
}

/// How long a zygote may take, by default, to answer a request for a worker with its pid.
const PID_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A pidfd of process `pid` (Linux 5.3): readable once the process has ended.
pub fn pidfd(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open returns a new descriptor, or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    if fd < 0 {
        return Err(last_error(&format!("pidfd_open({pid})")));
    }
    // SAFETY: the descriptor was just made and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether `fd` has something to read (or was closed; a pidfd: its process ended) within
/// `timeout`.
pub fn readable_within(fd: &OwnedFd, timeout: std::time::Duration) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let until = std::time::Instant::now() + timeout;
    loop {
        let ms = until
            .saturating_duration_since(std::time::Instant::now())
            .as_millis()
            .min(i32::MAX as u128) as i32;
        // SAFETY: poll on one pollfd we own.
        match unsafe { libc::poll(&mut p, 1, ms) } {
            -1 if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => continue,
            n => return n == 1,
        }
    }
}

impl Worker {
    /// SIGKILLs the worker's process group, then reaps the worker and returns how it ended (a
    /// worker that had already exited keeps its own status), and removes the worker's scratch
    /// directory on the host if it left one.
    pub fn kill_and_wait(self) -> io::Result<ExitStatus> {
        let status = self.reap();
        // A worker without namespaces keeps its job's HOME and TMPDIR on the host, named by
        // its pid, and removes them itself when it ends by itself; one that was killed or died
        // could not. Only a directory its job's uid owns is removed: anything else at that
        // name is not this worker's (a namespaced worker keeps them in a tmpfs of its own, and
        // for it this is one failed `open`), and the runner, maybe root, deletes nothing of
        // other users'. The owner is checked on the directory opened, not by a second lookup.
        // (The kernel hands out pids in turn, so the one just reaped is nobody's again this
        // soon.)
        if let Ok(pid) = u32::try_from(self.pid) {
            let dir = super::isolation::scratch_dir(pid);
            let _ = crate::remove::remove_tree_owned_by(&dir, self.job_uid);
        }
        status
    }

    fn reap(&self) -> io::Result<ExitStatus> {
        send_with_fds(self.job.as_raw_fd(), &[1], &[])?;
        match recv_i32(self.job.as_raw_fd())? {
            Some(status) => Ok(ExitStatus::from_raw(status)),
            None => Err(io::Error::other(
                "the worker launcher ended before it reaped the worker",
            )),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The zygote's side.

/// One forked worker, as the zygote tracks it.
struct Child {
    pid: i32,
    job: OwnedFd,
    /// Set once its group was killed: readable when it has exited.
    exited: Option<OwnedFd>,
    /// Whether the launcher waits for the status (it asked, rather than closing the socket).
    answer: bool,
    /// Our end of a namespaced worker's map socket, held until it is reaped: its hang-up tells
    /// the worker that this process died.
    maps: Option<OwnedFd>,
}

/// What the zygote learns about itself once, at start.
struct Zygote0 {
    /// The launcher's pid.
    parent: i32,
    /// This process's effective uid and gid.
    uid: u32,
    gid: u32,
    /// Its own network namespace, to come back to after making a worker in a lent one.
    own_network: Option<OwnedFd>,
    /// Where namespaced workers can be made: glibc's thread id field (`tid_field`); otherwise
    /// why not. Learnt at the first request for one ([`probe`]).
    namespaces: Option<Result<usize, String>>,
    /// The main thread's robust futex list, registered again in each namespaced worker.
    robust_list: (usize, usize),
}

/// The zygote's loop: fork a worker per request, kill and reap on request, exit when the
/// control socket (fd 0) is closed and every worker has been reaped. Never returns.
pub(super) fn zygote_main(parent: i32) -> ! {
    // Whatever the parent let us inherit besides stdin, stdout and stderr, we do not need.
    let _ = close_from(3);
    // SAFETY: plain syscalls on this single-threaded process.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    // A worker is born with our supplementary groups and, once its user namespace denies
    // `setgroups`, cannot drop them: root drops them here, for every worker (a job remapped
    // to another uid must not keep root's groups). Without root there is nothing to drop to.
    // SAFETY: as above.
    if uid == 0 && unsafe { libc::setgroups(0, std::ptr::null()) } != 0 {
        eprintln!(
            "rivet worker launcher: dropping supplementary groups: {}",
            io::Error::last_os_error()
        );
        // SAFETY: ending this process.
        unsafe { libc::_exit(super::EXIT_BAD_REQUEST) };
    }
    let mut me = Zygote0 {
        parent,
        uid,
        gid,
        own_network: File::open("/proc/self/ns/net").ok().map(OwnedFd::from),
        namespaces: None,
        robust_list: robust_list(),
    };
    let mut children: Vec<Child> = Vec::new();
    let mut control_open = true;
    loop {
        if !control_open && children.is_empty() {
            // SAFETY: ending this process.
            unsafe { libc::_exit(0) };
        }
        // fds[0] is the control socket; then each child's job socket (or pidfd once killed).
        let pollin = |fd: RawFd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let mut fds: Vec<libc::pollfd> = std::iter::once(if control_open { 0 } else { -1 })
            .chain(
                children
                    .iter()
                    .map(|c| c.exited.as_ref().unwrap_or(&c.job).as_raw_fd()),
            )
            .map(pollin)
            .collect();
        // SAFETY: poll over pollfd structs we own.
        if unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) } < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // SAFETY: ending this process; its workers die with it (parent-death signal).
            unsafe { libc::_exit(1) };
        }
        // Job sockets, backwards, so that removing one does not move those still to be looked
        // at.
        for i in (0..children.len()).rev() {
            if fds[i + 1].revents == 0 {
                continue;
            }
            let child = &mut children[i];
            if child.exited.is_none() {
                // The "kill and reap" byte (an answer is awaited), or the socket closed.
                child.answer = got_byte(child.job.as_raw_fd());
                if kill_group(child) {
                    continue;
                }
            }
            finish(children.swap_remove(i));
        }
        if fds[0].fd >= 0 && fds[0].revents != 0 {
            let mut buf = [0u8; REQUEST_LEN];
            match recv_with_fds(0, &mut buf) {
                // A message that did not fit (its descriptors, if any came, are closed): that
                // request only is dropped; its launcher sees its job socket closed.
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {}
                // The launcher is done with us, or the socket failed: close it, so requests
                // still queued on it are dropped and their launchers see them refused.
                Ok((0, _)) | Err(_) => {
                    control_open = false;
                    // SAFETY: closing our own control socket; nothing else refers to fd 0.
                    unsafe { libc::close(0) };
                }
                Ok((REQUEST_LEN, fds)) if fds.len() == SPAWN_FDS => {
                    let word = |i: usize| [buf[i], buf[i + 1], buf[i + 2], buf[i + 3]];
                    let netns = i32::from_le_bytes(word(0));
                    let spawn = Spawn {
                        netns: (netns >= 0).then_some(netns),
                        job_uid: Some(u32::from_le_bytes(word(4))).filter(|&u| u != NO_UID),
                        namespaces: u32::from_le_bytes(word(8)) != 0,
                    };
                    if let Some(child) = self::spawn(&mut me, spawn, fds) {
                        children.push(child);
                    }
                }
                // A malformed request: its descriptors are closed with it, and the launcher
                // waiting on its job socket (if one came) sees it closed.
                Ok(_) => {}
            }
        }
    }
}

/// Writes the maps of child `pid`'s fresh user namespace: its root is `uid` and `gid` on the
/// host, `setgroups` denied.
fn write_maps(pid: i32, uid: u32, gid: u32) -> io::Result<()> {
    [
        ("setgroups", "deny".to_owned()),
        ("uid_map", format!("0 {uid} 1")),
        ("gid_map", format!("0 {gid} 1")),
    ]
    .iter()
    .try_for_each(|(file, text)| std::fs::write(format!("/proc/{pid}/{file}"), text))
}

/// Joins the network namespace the launcher lent (its descriptor `fd`, through its `/proc`
/// entry), when this process can come back to its own.
fn join_lent(me: &Zygote0, fd: RawFd) -> bool {
    if me.own_network.is_none() {
        return false;
    }
    let Ok(ns) = File::open(format!("/proc/{}/fd/{fd}", me.parent)) else {
        return false;
    };
    // SAFETY: setns on this single-threaded process, with a descriptor we own.
    unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) == 0 }
}

/// The head of `struct clone_args` (`<linux/sched.h>`, `CLONE_ARGS_SIZE_VER0`): the same on
/// every architecture, unlike the argument order of `clone`.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
}

/// Where glibc keeps this (the main) thread's kernel id, in its thread descriptor.
///
/// glibc's `fork` has the kernel write the child's id there (`CLONE_CHILD_SETTID`), and a
/// `clone` made here must do the same: glibc's recursive locks (the dynamic loader's, taken by
/// `pthread_create`, `dlopen` and unwinding) name their owner by that id, so a worker whose
/// main thread kept the zygote's id would share it with whichever of its own threads came to
/// hold that number in its pid namespace. glibc says where the field is to debuggers
/// (`_thread_db_pthread_tid`: bit size, count, offset); the answer is checked against this
/// thread's id from the kernel.
fn tid_field() -> Result<usize, String> {
    // SAFETY: dlsym with a NUL-terminated name; RTLD_DEFAULT is the null handle in glibc.
    let desc = unsafe { libc::dlsym(std::ptr::null_mut(), c"_thread_db_pthread_tid".as_ptr()) }
        as *const u32;
    if desc.is_null() {
        return Err(
            "glibc's thread descriptor layout is unknown (no _thread_db_pthread_tid)".into(),
        );
    }
    // SAFETY: the symbol is glibc's `db_desc_t`, three u32s.
    let (bits, count, offset) = unsafe { (desc.read(), desc.add(1).read(), desc.add(2).read()) };
    // SAFETY: pthread_self is this thread's descriptor; gettid has no preconditions.
    let (field, tid) = unsafe {
        (
            (libc::pthread_self() as *mut u8).wrapping_add(offset as usize) as *mut libc::pid_t,
            libc::syscall(libc::SYS_gettid) as libc::pid_t,
        )
    };
    // SAFETY: only read once the descriptor says the field is one 32-bit value inside it.
    if bits == 32 && count == 1 && offset < 4096 && unsafe { field.read() } == tid {
        Ok(field as usize)
    } else {
        Err(format!(
            "glibc's thread id field is not where it says ({bits} bits x {count} at {offset})"
        ))
    }
}

/// This thread's robust futex list (its head and length), as glibc registered it.
fn robust_list() -> (usize, usize) {
    let (mut head, mut len) = (0usize, 0usize);
    // SAFETY: get_robust_list of this thread into two words we own.
    unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            0,
            &mut head as *mut usize,
            &mut len as *mut usize,
        )
    };
    (head, len)
}

/// A plain `fork`, or with `namespaced` (glibc's thread id field, see [`tid_field`], and the
/// robust futex list) a `clone3` into a fresh user and pid namespace (the child is that
/// namespace's pid 1) that does in the child what glibc's `_Fork` does: the kernel writes the
/// child's thread id into glibc's descriptor, and the child registers the robust futex list
/// again (the kernel clears it). glibc's other work in `fork` is for locks other threads might
/// hold and for `pthread_atfork` handlers: this process has one thread, holds no lock here and
/// registers no handler (nothing in the zygote may).
fn fork_into(namespaced: Option<(usize, (usize, usize))>) -> io::Result<libc::pid_t> {
    let Some((field, (head, len))) = namespaced else {
        // SAFETY: this process is single-threaded, so fork is safe.
        let pid = unsafe { libc::fork() };
        return if pid < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(pid)
        };
    };
    let flags = libc::CLONE_NEWUSER
        | libc::CLONE_NEWPID
        | libc::CLONE_CHILD_SETTID
        | libc::CLONE_CHILD_CLEARTID;
    let args = CloneArgs {
        flags: flags as u64,
        child_tid: field as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 without CLONE_VM and without a stack is fork: the child continues here on
    // its own copy of this single-threaded process; `args` outlives the call.
    let mut pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            size_of::<CloneArgs>(),
        )
    };
    if pid < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
        // Some seccomp filters refuse clone3 so that callers fall back to clone, whose flags
        // they can inspect; glibc does the same.
        pid = legacy_clone(flags | libc::SIGCHLD, field);
    }
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: set_robust_list of this (the child's only) thread to glibc's own list; the
        // field is glibc's, checked by `tid_field`; gettid has no preconditions.
        unsafe {
            libc::syscall(libc::SYS_set_robust_list, head, len);
            // A `clone` whose arguments were in the wrong order would have left the zygote's
            // thread id there: such a child stops before anything runs in it.
            if (field as *const libc::pid_t).read()
                != libc::syscall(libc::SYS_gettid) as libc::pid_t
            {
                let why = b"rivet worker launcher: the clone left glibc's thread id stale\n";
                libc::write(2, why.as_ptr().cast(), why.len());
                libc::_exit(STALE_TID);
            }
        }
    }
    Ok(pid as libc::pid_t)
}

/// How a namespaced child ends when its thread id in glibc was not updated (see [`fork_into`]);
/// no `unshare` error number is this large.
const STALE_TID: libc::c_int = 255;

/// `clone` with no new stack and `child_tid`, in this architecture's argument order
/// (clone(2)); -1 with ENOSYS where that order is not known here.
fn legacy_clone(flags: libc::c_int, child_tid: usize) -> libc::c_long {
    let flags = flags as libc::c_ulong;
    // SAFETY: as clone3 above: fork semantics, the child on its own copy of this process.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        return libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, child_tid, 0usize);
        #[cfg(target_arch = "aarch64")]
        return libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, child_tid);
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            let _ = (flags, child_tid);
            *libc::__errno_location() = libc::ENOSYS;
            -1
        }
    }
}

/// What the first request for a namespaced worker learns, once for this zygote.
enum Probed {
    /// They can be made: glibc's thread id field.
    Able(usize),
    /// They cannot be made here, and why: for good (the kernel, a security module, glibc).
    Unable(String),
    /// This attempt failed for a reason that may pass (no memory, a process limit): the start
    /// is refused, as a failed `fork` would be, and the next request asks again.
    Passing(io::Error),
}

/// Whether namespaced workers can be made here. Beyond what the worker needs of the kernel
/// (`isolation::unavailable`) and of glibc ([`tid_field`]), one test worker is made as every
/// namespaced worker will be and tries the namespaces it makes itself, so that a kernel (or a
/// security module) that allows a user namespace but not what the worker does in it is found
/// before any job runs there, and `auto` can run jobs without namespaces instead of failing
/// each.
fn probe(robust: (usize, usize)) -> Probed {
    if let Some(why) = super::isolation::unavailable() {
        return Probed::Unable(why);
    }
    let field = match tid_field() {
        Ok(field) => field,
        Err(why) => return Probed::Unable(why),
    };
    let pid = match fork_into(Some((field, robust))) {
        Err(e) if means_unavailable(&e) => return Probed::Unable(format!("clone: {e}")),
        Err(e) => return Probed::Passing(e),
        Ok(pid) => pid,
    };
    if pid == 0 {
        let flags = libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWNET;
        // SAFETY: in the test child: one system call, then its end.
        unsafe {
            let code = if libc::unshare(flags) == 0 {
                0
            } else {
                *libc::__errno_location()
            };
            libc::_exit(code)
        }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    let waited = loop {
        match unsafe { libc::waitpid(pid, &mut status, 0) } {
            r if r == pid => break Ok(()),
            _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
            _ => break Err(io::Error::last_os_error()),
        }
    };
    match (waited, libc::WIFEXITED(status), libc::WEXITSTATUS(status)) {
        (Err(e), _, _) => Probed::Passing(e),
        (Ok(()), true, 0) => Probed::Able(field),
        (Ok(()), true, STALE_TID) => {
            Probed::Unable("a namespaced clone left glibc's thread id stale".into())
        }
        (Ok(()), true, errno) => {
            let e = io::Error::from_raw_os_error(errno);
            if means_unavailable(&e) {
                Probed::Unable(format!("unshare: {e}"))
            } else {
                Probed::Passing(e)
            }
        }
        (Ok(()), false, _) => Probed::Passing(io::Error::other(format!(
            "the test worker ended with wait status {status}"
        ))),
    }
}

/// Whether a namespace system call failing with `e` means namespaces are not to be had here
/// (rather than, say, no memory, which may pass).
fn means_unavailable(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPERM | libc::EINVAL | libc::ENOSPC | libc::EUSERS | libc::ENOSYS)
    )
}

/// Whether a one-byte message could be read from `sock` at once (rather than its end closed).
fn got_byte(sock: RawFd) -> bool {
    let mut b = [0u8; 1];
    // SAFETY: reading into a one-byte buffer we own, without blocking (poll said readable).
    unsafe { libc::recv(sock, b.as_mut_ptr().cast(), 1, libc::MSG_DONTWAIT) == 1 }
}

/// SIGKILLs the child's process group (its leader is not reaped yet, so the group id is still
/// its own) and opens a pidfd that becomes readable when the leader has exited. Returns
/// whether it did; without one the caller reaps at once, blocking (briefly: it was killed).
fn kill_group(child: &mut Child) -> bool {
    // SAFETY: signalling a group whose leader is our unreaped child.
    unsafe { libc::kill(-child.pid, libc::SIGKILL) };
    child.exited = pidfd(child.pid).ok();
    child.exited.is_some()
}

/// Reaps a killed child and answers with its status if the launcher asked.
fn finish(child: Child) {
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe {
        while libc::waitpid(child.pid, &mut status, 0) < 0
            && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
        {}
    }
    if child.answer {
        let _ = send_with_fds(child.job.as_raw_fd(), &status.to_le_bytes(), &[]);
    }
}

/// Closes every descriptor from `first` up: `close_range(2)` (Linux 5.9), else one by one as
/// `/proc/self/fd` lists them (older kernels, or a seccomp filter refusing the call).
fn close_from(first: RawFd) -> io::Result<()> {
    // SAFETY: closing descriptors of this process that nothing here uses any more.
    if unsafe { libc::syscall(libc::SYS_close_range, first as u32, u32::MAX, 0u32) } == 0 {
        return Ok(());
    }
    let open: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd >= first)
        .collect();
    for fd in open {
        // SAFETY: as above (the listing's own descriptor is closed already and fails harmlessly).
        unsafe { libc::close(fd) };
    }
    Ok(())
}

/// Forks one worker as `spawn` says: in the child, `fds` become its stdin, stdout and stderr,
/// its map socket fd 3, and it runs the job as an executed worker would; here, the job socket
/// gets its pid.
fn spawn(me: &mut Zygote0, spawn: Spawn, fds: Vec<OwnedFd>) -> Option<Child> {
    let [stdin, stdout, stderr, job]: [OwnedFd; SPAWN_FDS] = fds.try_into().ok()?;
    let zygote = std::process::id() as i32;
    let refuse = |job: &OwnedFd, e: io::Error| {
        let errno = -e.raw_os_error().unwrap_or(libc::EAGAIN);
        let _ = send_with_fds(job.as_raw_fd(), &errno.to_le_bytes(), &[]);
    };
    let (maps, worker_maps) = match seqpacket_pair() {
        Ok(pair) => pair,
        Err(e) => {
            refuse(&job, e);
            return None;
        }
    };
    if spawn.namespaces && me.namespaces.is_none() {
        me.namespaces = match probe(me.robust_list) {
            Probed::Able(field) => Some(Ok(field)),
            Probed::Unable(why) => Some(Err(why)),
            Probed::Passing(e) => {
                refuse(&job, e);
                return None;
            }
        };
    }
    let namespaced = match (&me.namespaces, spawn.namespaces) {
        (Some(Ok(field)), true) => Some((*field, me.robust_list)),
        _ => None,
    };
    let lent_network = namespaced.is_some() && spawn.netns.is_some_and(|fd| join_lent(me, fd));
    // Once a test worker showed that namespaces can be made here, a `clone` that fails is
    // refused like a failed `fork` (a namespace count reached under load must not make a job
    // run without them).
    let made = fork_into(namespaced);
    if lent_network && !matches!(made, Ok(0)) {
        let back = me.own_network.as_ref().map(|own| {
            // SAFETY: setns on this single-threaded process, with a descriptor we own.
            unsafe { libc::setns(own.as_raw_fd(), libc::CLONE_NEWNET) }
        });
        if back != Some(0) {
            // Every later worker would be made in the lent namespace: stop instead (the
            // worker, if any, dies with us; the launcher starts another zygote).
            eprintln!(
                "rivet worker launcher: leaving a lent network namespace: {}",
                io::Error::last_os_error()
            );
            // SAFETY: ending this process.
            unsafe { libc::_exit(1) };
        }
    }
    let start = match (&me.namespaces, spawn.namespaces) {
        (_, true) if namespaced.is_some() => Start::Namespaced {
            lent_network,
            host_uid: me.uid,
        },
        (Some(Err(why)), true) => Start::Unavailable(why.clone()),
        _ => Start::Plain,
    };
    let pid = match made {
        Ok(pid) => pid,
        Err(e) => {
            drop((stdin, stdout, stderr, worker_maps, maps));
            refuse(&job, e);
            return None;
        }
    };
    if pid == 0 {
        // SAFETY: in the fresh child: dup2 onto 0, 1, 2 (which clears close-on-exec there)
        // and the map socket onto 3 (close-on-exec set again: it is closed before any job
        // code runs, and must never reach a program the job starts), then close everything
        // else the zygote held (its control socket was fd 0, now replaced; other workers' job
        // and map sockets; pidfds; its own network namespace); the OwnedFds are never dropped
        // here.
        unsafe {
            if libc::dup2(stdin.as_raw_fd(), 0) < 0
                || libc::dup2(stdout.as_raw_fd(), 1) < 0
                || libc::dup2(stderr.as_raw_fd(), 2) < 0
                || (worker_maps.as_raw_fd() != MAP_FD
                    && libc::dup2(worker_maps.as_raw_fd(), MAP_FD) < 0)
                || libc::fcntl(MAP_FD, libc::F_SETFD, libc::FD_CLOEXEC) < 0
                || close_from(MAP_FD + 1).is_err()
            {
                libc::_exit(super::EXIT_BAD_REQUEST);
            }
            std::mem::forget((stdin, stdout, stderr, job, maps, worker_maps));
            libc::setpgid(0, 0);
        }
        // A panic must not unwind into the zygote's frames (their descriptors are closed here,
        // and their numbers may be the worker's own by now); the hook has printed it.
        let _ = std::panic::catch_unwind(|| {
            // SAFETY: fd 3 is the map socket set up above, owned by nothing else here.
            let maps = unsafe { OwnedFd::from_raw_fd(MAP_FD) };
            super::child::become_worker(zygote, start, maps)
        });
        // SAFETY: ending this process.
        unsafe { libc::_exit(101) };
    }
    drop((stdin, stdout, stderr, worker_maps));
    // Here too, so that the group exists before the launcher learns the pid (a kill of the
    // group must not miss a child that has not run yet).
    // SAFETY: setpgid on our own child.
    unsafe { libc::setpgid(pid, pid) };
    let mut child = Child {
        pid,
        job,
        exited: None,
        answer: false,
        // Only a namespaced worker hears from us on it.
        maps: matches!(start, Start::Namespaced { .. }).then_some(maps),
    };
    if let (Start::Namespaced { .. }, Some(maps)) = (&start, &child.maps) {
        // Root maps the job to the uid its launcher named; anyone else to themselves (the
        // only map an unprivileged process may write). The worker checks the map against its
        // request before it goes on.
        let (uid, gid) = match remapped_uid(spawn.job_uid, me.uid) {
            Some(u) => (u, u),
            None => (me.uid, me.gid),
        };
        let answer: i32 = match write_maps(pid, uid, gid) {
            Ok(()) => 0,
            Err(e) => e.raw_os_error().unwrap_or(libc::EIO),
        };
        let _ = send_with_fds(maps.as_raw_fd(), &answer.to_le_bytes(), &[]);
    }
    if send_with_fds(child.job.as_raw_fd(), &pid.to_le_bytes(), &[]).is_err() {
        // The launcher is gone already: kill and reap at once.
        kill_group(&mut child);
        finish(child);
        return None;
    }
    Some(child)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// glibc's thread id field, as the parent found it, for the child to read (the child of a
    /// multi-threaded test process must not call into glibc: another thread may have held one
    /// of its locks at the clone).
    static FIELD: AtomicUsize = AtomicUsize::new(0);

    /// glibc's record of the thread's id in a namespaced worker is the worker's own (1, its pid
    /// namespace's first), as after glibc's `fork`, not the zygote's: glibc's recursive locks
    /// compare it with their owner's. And its robust futex list is glibc's again.
    #[test]
    fn a_namespaced_clone_leaves_glibcs_thread_id_right() {
        let field = tid_field().expect("glibc says where its thread id is");
        FIELD.store(field, Ordering::SeqCst);
        let robust = robust_list();
        assert_ne!(
            robust.0, 0,
            "glibc registers a robust list for every thread"
        );
        match fork_into(Some((field, robust))).expect("clone") {
            0 => {
                // SAFETY: in the child: memory reads and raw system calls only, then its end.
                unsafe {
                    let tid = libc::syscall(libc::SYS_gettid) as libc::pid_t;
                    let recorded = (FIELD.load(Ordering::SeqCst) as *const libc::pid_t).read();
                    let code = if recorded != tid {
                        1
                    } else if tid != 1 {
                        2
                    } else if robust_list() != robust {
                        3
                    } else {
                        0
                    };
                    libc::_exit(code)
                }
            }
            pid => {
                let mut status = 0;
                // SAFETY: waiting for our own child.
                assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
                assert!(libc::WIFEXITED(status), "wait status {status}");
                assert_eq!(
                    libc::WEXITSTATUS(status),
                    0,
                    "1, or 255 from fork_into's own check: glibc's thread id field holds another \
                     id; 2: not pid 1; 3: no robust list"
                );
            }
        }
        // And the probe a zygote makes finds namespaced workers possible here.
        assert!(matches!(probe(robust), Probed::Able(f) if f == field));
    }
}
