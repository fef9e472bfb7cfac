//! Starting workers by `fork` from a launcher (a "zygote") instead of `exec` per job.
//!
//! Executing the runner's binary for every job cost about a third of a worker's CPU time
//! (the kernel's `execve`, the dynamic loader's relocations and `cpuid` probes, the page faults
//! of a fresh image; docs/benchmarks.md). A [`Launcher`] instead executes the binary once, with
//! [`ZYGOTE_ARG`]: that process (the zygote) does nothing but wait on a socket and fork. Each
//! fork becomes one job's worker exactly as an executed one would: it has run no job code, it
//! gets its own stdin, stdout and stderr pipes and process group, dies with its parent, and
//! enters its namespaces itself (`child.rs`, `isolation.rs`).
//!
//! The zygote never sees a job: it receives three pipe ends, a socket and at most a host uid,
//! never a request. Its one privileged act is writing the uid and gid maps of its own child,
//! once, to the uid its launcher named (the map socket, below).
//! What children of one zygote share is what `exec` would have re-randomised: the address
//! layout and the stack canary. So that a crash cannot be used as an oracle to guess them one
//! job at a time, the parent retires a zygote as soon as one of its workers crashes
//! ([`Launcher::retire`]); the next job gets a freshly executed one.
//!
//! Protocol (`SOCK_SEQPACKET`, so every message arrives whole):
//! - control socket, launcher → zygote: the lent network namespace's descriptor number in the
//!   parent (`i32`, -1 for none) and the host uid the job runs as (`u32`, `u32::MAX`, which is
//!   never a uid, for none: no uid remap), with `SCM_RIGHTS` the worker's stdin, stdout and stderr and one end of a per-job
//!   socket;
//! - job socket, zygote → launcher: the worker's pid (`i32`), or `-errno` if `fork` failed;
//! - job socket, launcher → zygote: one byte, "kill and reap": the zygote SIGKILLs the worker's
//!   process group, then reaps it (in that order: an unreaped leader keeps the group id from
//!   being reused) and answers with the raw wait status (`i32`). A job socket closed without
//!   that request is treated the same way, without an answer, so a worker never outlives the
//!   handle its parent holds.
//! - map socket, worker → zygote (a pair the zygote makes for each worker; the worker holds its
//!   end on fd 3 until its isolation is set up, never while job code runs): one byte, "my user
//!   namespace is made, write its maps". Once, and only with a uid from the launcher's request:
//!   the zygote, root in the parent user namespace, writes the worker's `uid_map` and `gid_map`
//!   (`0 UID 1`, `setgroups` denied) and answers `0` or an errno (`i32`). A worker cannot write
//!   a map to another uid itself (`user_namespaces(7)`); before the zygote did, a third
//!   process per job did it (`isolation.rs`).
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
}

fn last_error(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
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

    /// Starts a worker. `netns` is the number of a network namespace descriptor this process
    /// lends (the worker opens it through this process's `/proc` entry); `job_uid` the host uid
    /// the zygote maps the worker's user namespace to when the worker asks (the policy's
    /// `sandbox.job_uid`). A zygote that died is replaced once.
    pub fn launch(&self, netns: Option<RawFd>, job_uid: Option<u32>) -> io::Result<Launched> {
        let zygote = self.zygote()?;
        match zygote.fork(Pipes::new()?, netns, job_uid) {
            Ok(launched) => Ok(launched),
            Err(Failed::Refused(e)) => Err(e),
            Err(Failed::Gone) => {
                self.retire(&zygote);
                self.zygote()?
                    .fork(Pipes::new()?, netns, job_uid)
                    .map_err(|e| match e {
                        Failed::Refused(e) => e,
                        Failed::Gone => io::Error::other("the worker launcher ended at once"),
                    })
            }
        }
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
        netns: Option<RawFd>,
        job_uid: Option<u32>,
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
        let uid = job_uid.unwrap_or(NO_UID);
        let mut request = [0u8; 8];
        request[..4].copy_from_slice(&netns.unwrap_or(-1).to_le_bytes());
        request[4..].copy_from_slice(&uid.to_le_bytes());
        send_with_fds(self.control.as_raw_fd(), &request, &fds).map_err(|_| Failed::Gone)?;
        // Only the worker holds these ends now: its exit closes our stdout and stderr.
        drop((stdin.1, stdout.1, stderr.1, job.1));
        // A fork answers at once; a launcher that does not (a program that is no launcher)
        // must not hang the job.
        if !readable_within(&job.0, PID_TIMEOUT) {
            return Err(Failed::Gone);
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
                },
            }),
            Ok(Some(errno)) if errno < 0 => {
                Err(Failed::Refused(io::Error::from_raw_os_error(-errno)))
            }
            _ => Err(Failed::Gone),
        }
    }
}

/// How long the launcher may take to answer a request for a worker with its pid.
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
    /// worker that had already exited keeps its own status).
    pub fn kill_and_wait(self) -> io::Result<ExitStatus> {
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
    /// Our end of its map socket, until it asked once or closed it.
    maps: Option<OwnedFd>,
    /// The host uid its maps may name (the launcher's word), if any.
    job_uid: Option<u32>,
}

/// The zygote's loop: fork a worker per request, kill and reap on request, exit when the
/// control socket (fd 0) is closed and every worker has been reaped. Never returns.
pub(super) fn zygote_main(parent: i32) -> ! {
    // Whatever the parent let us inherit besides stdin, stdout and stderr, we do not need.
    let _ = close_from(3);
    let mut children: Vec<Child> = Vec::new();
    let mut control_open = true;
    loop {
        if !control_open && children.is_empty() {
            // SAFETY: ending this process.
            unsafe { libc::_exit(0) };
        }
        // fds[0] is the control socket; then each child's job socket (or pidfd once killed),
        // and its map socket while it has one; `who` says whose each is.
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(2 * children.len() + 1);
        let mut who: Vec<(usize, bool)> = Vec::with_capacity(2 * children.len());
        let pollin = |fd: RawFd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        fds.push(pollin(if control_open { 0 } else { -1 }));
        for (i, c) in children.iter().enumerate() {
            fds.push(pollin(c.exited.as_ref().unwrap_or(&c.job).as_raw_fd()));
            who.push((i, false));
            if let Some(maps) = &c.maps {
                fds.push(pollin(maps.as_raw_fd()));
                who.push((i, true));
            }
        }
        // SAFETY: poll over pollfd structs we own.
        if unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) } < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // SAFETY: ending this process; its workers die with it (parent-death signal).
            unsafe { libc::_exit(1) };
        }
        // Map requests first: they remove no child, so `who`'s indices stay valid.
        for (k, &(i, maps)) in who.iter().enumerate() {
            if maps && fds[k + 1].revents != 0 {
                write_maps(&mut children[i]);
            }
        }
        // Then job sockets, backwards, so that removing one does not move those still to be
        // looked at.
        for (k, &(i, maps)) in who.iter().enumerate().rev() {
            if maps || fds[k + 1].revents == 0 {
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
            let mut buf = [0u8; 8];
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
                Ok((8, fds)) if fds.len() == SPAWN_FDS => {
                    let [n0, n1, n2, n3, u0, u1, u2, u3] = buf;
                    let netns = i32::from_le_bytes([n0, n1, n2, n3]);
                    let job_uid =
                        Some(u32::from_le_bytes([u0, u1, u2, u3])).filter(|&u| u != NO_UID);
                    if let Some(child) = spawn(parent, netns, job_uid, fds) {
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

/// Answers the child's map request, if its map socket carries one (rather than being closed):
/// writes its user namespace's maps to the launcher's uid, once. The socket is closed after
/// either, so a child asks at most once.
fn write_maps(child: &mut Child) {
    let Some(maps) = child.maps.take() else {
        return;
    };
    if !got_byte(maps.as_raw_fd()) {
        return;
    }
    let written = match child.job_uid {
        None => Err(io::Error::from_raw_os_error(libc::EPERM)),
        Some(uid) => [
            ("setgroups", "deny".to_owned()),
            ("uid_map", format!("0 {uid} 1")),
            ("gid_map", format!("0 {uid} 1")),
        ]
        .iter()
        .try_for_each(|(file, text)| std::fs::write(format!("/proc/{}/{file}", child.pid), text)),
    };
    let answer: i32 = match written {
        Ok(()) => 0,
        Err(e) => e.raw_os_error().unwrap_or(libc::EIO),
    };
    let _ = send_with_fds(maps.as_raw_fd(), &answer.to_le_bytes(), &[]);
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

/// Forks one worker: in the child, `fds` become its stdin, stdout and stderr, its map socket
/// fd 3, and it runs the job as an executed worker would; here, the job socket gets its pid.
fn spawn(parent: i32, netns: i32, job_uid: Option<u32>, fds: Vec<OwnedFd>) -> Option<Child> {
    let [stdin, stdout, stderr, job]: [OwnedFd; SPAWN_FDS] = fds.try_into().ok()?;
    let zygote = std::process::id() as i32;
    let (maps, worker_maps) = match seqpacket_pair() {
        Ok(pair) => pair,
        Err(e) => {
            let errno = -e.raw_os_error().unwrap_or(libc::EMFILE);
            let _ = send_with_fds(job.as_raw_fd(), &errno.to_le_bytes(), &[]);
            return None;
        }
    };
    // SAFETY: this process is single-threaded, so fork is safe; the child only rearranges its
    // descriptors before becoming a worker, and never returns.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: in the fresh child: dup2 onto 0, 1, 2 (which clears close-on-exec there)
        // and the map socket onto 3 (close-on-exec set again: it is closed before any job
        // code runs, and must never reach a program the job starts), then close everything
        // else the zygote held (its control socket was fd 0, now replaced; other workers' job
        // and map sockets; pidfds); the OwnedFds are never dropped here.
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
            super::child::become_worker(zygote, (netns >= 0).then_some((parent, netns)), maps)
        });
        // SAFETY: ending this process.
        unsafe { libc::_exit(101) };
    }
    drop((stdin, stdout, stderr, worker_maps));
    if pid > 0 {
        // Here too, so that the group exists before the launcher learns the pid (a kill of the
        // group must not miss a child that has not run yet).
        // SAFETY: setpgid on our own child.
        unsafe { libc::setpgid(pid, pid) };
    }
    if pid < 0 {
        let errno = -io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EAGAIN);
        let _ = send_with_fds(job.as_raw_fd(), &errno.to_le_bytes(), &[]);
        return None;
    }
    let mut child = Child {
        pid,
        job,
        exited: None,
        answer: false,
        maps: Some(maps),
        job_uid,
    };
    if send_with_fds(child.job.as_raw_fd(), &pid.to_le_bytes(), &[]).is_err() {
        // The launcher is gone already: kill and reap at once.
        kill_group(&mut child);
        finish(child);
        return None;
    }
    Some(child)
}
