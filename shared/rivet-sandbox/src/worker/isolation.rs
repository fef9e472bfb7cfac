//! OS-level isolation of the worker: fresh user, pid, mount, IPC and (by policy) network
//! namespaces where the kernel allows, with a private `/proc`, private temporary directories,
//! the host filesystem read-only and only the workspace writable.
//!
//! Everything here runs while the worker is still single-threaded (a requirement of
//! `unshare(CLONE_NEWUSER)`).

use crate::execute::Isolation;
use crate::job::{JobRequest, Mode};
use rivet_core::policy::{NamespaceMode, NetworkMode};
use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};

/// Mount points that stay writable (or are virtual) inside the job.
const KEEP_WRITABLE: [&str; 4] = ["/proc", "/sys", "/dev", "/tmp"];
/// Directories that get a fresh, private tmpfs.
const PRIVATE_TMP: [&str; 3] = ["/tmp", "/var/tmp", "/dev/shm"];
/// Container engine API sockets, and directories holding them, hidden from the job (an empty
/// tmpfs over a directory, `/dev/null` over a socket): whoever talks to the engine is root on
/// the host. The parent brokers every container operation (`host::container`).
pub(crate) const ENGINE_SOCKETS: [&str; 7] = [
    "/run/rivet-podman",
    "/run/podman",
    "/var/run/podman",
    "/run/docker.sock",
    "/var/run/docker.sock",
    "/run/containerd",
    "/var/run/containerd",
];

fn errno(what: &str) -> String {
    format!("{what}: {}", io::Error::last_os_error())
}

fn cstr(s: &str) -> CString {
    CString::new(s).expect("paths used here contain no NUL byte")
}

/// Sets up isolation for `request`. Returns what was set up, or an error that fails the job.
pub fn enter(request: &JobRequest) -> Result<Isolation, String> {
    if request.mode == Mode::Lint {
        // A definition's top level has no host access at all (no core modules): rlimits, the
        // process group and the hard deadline suffice, and linting stays fast.
        return fallback(Vec::new());
    }
    match request.policy.sandbox.namespaces {
        NamespaceMode::Off => fallback(vec!["isolation: namespaces are disabled by policy (sandbox.namespaces = \"off\")".into()]),
        mode => match namespaces(request) {
            Ok(iso) => Ok(iso),
            Err(Failure::Unavailable(why)) if mode == NamespaceMode::Auto => fallback(vec![format!(
                "isolation: fresh namespaces are unavailable here ({why}); this job runs with rlimits and a process group only"
            )]),
            Err(Failure::Unavailable(why)) => {
                Err(format!("policy violation [sandbox.namespaces]: namespaces are required by policy but unavailable: {why}"))
            }
            Err(Failure::Fatal(why)) => Err(format!("setting up the job sandbox failed: {why}")),
        },
    }
}

enum Failure {
    /// Nothing was changed; running without namespaces is possible.
    Unavailable(String),
    /// The process is half-isolated; the job cannot run.
    Fatal(String),
}

fn fallback(notes: Vec<String>) -> Result<Isolation, String> {
    let base = std::env::temp_dir().join(format!("rivet-job-{}", std::process::id()));
    let home = base.join("home");
    let tmp = base.join("tmp");
    for d in [&home, &tmp] {
        std::fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    }
    Ok(Isolation {
        home,
        tmp,
        pid_namespace: false,
        notes,
        cleanup: Some(base),
    })
}

fn namespaces(request: &JobRequest) -> Result<Isolation, Failure> {
    // SAFETY: plain syscalls on this process; arguments are constants or owned C strings.
    unsafe {
        let uid = libc::geteuid();
        let gid = libc::getegid();
        let mut flags =
            libc::CLONE_NEWUSER | libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWIPC;
        if request.policy.sandbox.network == NetworkMode::None {
            flags |= libc::CLONE_NEWNET;
        }
        if libc::unshare(flags) != 0 {
            return Err(Failure::Unavailable(errno("unshare")));
        }
        let write = |path: &str, text: String| {
            std::fs::write(path, text).map_err(|e| Failure::Fatal(format!("writing {path}: {e}")))
        };
        write("/proc/self/setgroups", "deny".into())?;
        write("/proc/self/uid_map", format!("0 {uid} 1"))?;
        write("/proc/self/gid_map", format!("0 {gid} 1"))?;

        // The new pid namespace applies to children: fork, and let the child be its pid 1. The
        // parent only relays the child's exit status. When pid 1 dies, the kernel kills every
        // process left in the namespace, `setsid` escapees included.
        match libc::fork() {
            -1 => return Err(Failure::Fatal(errno("fork"))),
            0 => {}
            child => relay_exit(child),
        }
        // The relay is outside our pid namespace, so getppid() reads 0 here; the parent kills
        // the whole process group in any case.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    let mut notes = Vec::new();
    let pid_namespace = mounts(&request.workspace, &mut notes).map_err(Failure::Fatal)?;
    if request.policy.sandbox.network == NetworkMode::None {
        if let Err(e) = loopback_up() {
            notes.push(format!(
                "isolation: could not bring up the loopback device: {e}"
            ));
        }
    }
    let home = PathBuf::from("/tmp/home");
    std::fs::create_dir_all(&home)
        .map_err(|e| Failure::Fatal(format!("creating {}: {e}", home.display())))?;
    Ok(Isolation {
        home,
        tmp: PathBuf::from("/tmp"),
        pid_namespace,
        notes,
        cleanup: None,
    })
}

/// Waits for the namespaced child and exits with its status. Never returns.
unsafe fn relay_exit(child: libc::pid_t) -> ! {
    // SAFETY: closing our copies of the event pipes, so the parent sees EOF when the child ends;
    // then waiting on our own child.
    unsafe {
        libc::close(0);
        libc::close(1);
        let mut status = 0;
        loop {
            let r = libc::waitpid(child, &mut status, 0);
            if r == child {
                break;
            }
            if r == -1 && *libc::__errno_location() != libc::EINTR {
                libc::_exit(1);
            }
        }
        if libc::WIFEXITED(status) {
            libc::_exit(libc::WEXITSTATUS(status));
        }
        // Die the way the child died, so the parent's report names the signal.
        let sig = libc::WTERMSIG(status);
        libc::signal(sig, libc::SIG_DFL);
        libc::kill(libc::getpid(), sig);
        libc::_exit(128 + sig);
    }
}

/// Private mounts: `/proc` for the new pid namespace, tmpfs on the temporary directories, the
/// workspace bound writable, everything else read-only. Returns whether `/proc` is private.
fn mounts(workspace: &Path, notes: &mut Vec<String>) -> Result<bool, String> {
    let ws = workspace
        .to_str()
        .ok_or("the workspace path is not UTF-8")?
        .to_owned();
    // SAFETY: mount(2)/open(2) with owned C strings; this process is alone in its mount namespace.
    unsafe {
        if libc::mount(
            std::ptr::null(),
            cstr("/").as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return Err(errno("making mounts private"));
        }
        let ws_fd = libc::open(
            cstr(&ws).as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        );
        if ws_fd < 0 {
            return Err(errno(&format!("opening workspace {ws}")));
        }
        let proc_ok = libc::mount(
            cstr("proc").as_ptr(),
            cstr("/proc").as_ptr(),
            cstr("proc").as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        ) == 0;
        if !proc_ok {
            notes.push(format!(
                "isolation: {}; host processes stay visible in /proc",
                errno("mounting a private /proc")
            ));
        }
        for dir in PRIVATE_TMP {
            if !Path::new(dir).is_dir() {
                continue;
            }
            if libc::mount(
                cstr("tmpfs").as_ptr(),
                cstr(dir).as_ptr(),
                cstr("tmpfs").as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                cstr("mode=1777").as_ptr().cast(),
            ) != 0
            {
                return Err(errno(&format!("mounting a private tmpfs on {dir}")));
            }
        }
        hide_engine_sockets()?;
        // Bind the workspace onto its own path (recreated if a tmpfs now hides it), so it stays
        // writable when everything else turns read-only.
        std::fs::create_dir_all(&ws)
            .map_err(|e| format!("recreating workspace mount point {ws}: {e}"))?;
        let src = format!("/proc/self/fd/{ws_fd}");
        let bind_src = if proc_ok { src } else { ws.clone() };
        if libc::mount(
            cstr(&bind_src).as_ptr(),
            cstr(&ws).as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        ) != 0
        {
            return Err(errno("binding the workspace"));
        }
        libc::close(ws_fd);
        let mut readonly_failures = Vec::new();
        for point in mount_points()? {
            let keep = point == ws
                || point.starts_with(&format!("{ws}/"))
                || KEEP_WRITABLE
                    .iter()
                    .any(|k| point == *k || point.starts_with(&format!("{k}/")))
                || PRIVATE_TMP.contains(&point.as_str());
            if keep {
                continue;
            }
            let c = cstr(&point);
            let mut st: libc::statvfs = std::mem::zeroed();
            if libc::statvfs(c.as_ptr(), &mut st) != 0 {
                continue;
            }
            let mut flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
            for (st_flag, ms_flag) in [
                (libc::ST_NOSUID, libc::MS_NOSUID),
                (libc::ST_NODEV, libc::MS_NODEV),
                (libc::ST_NOEXEC, libc::MS_NOEXEC),
                (libc::ST_NOATIME, libc::MS_NOATIME),
                (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
                (libc::ST_RELATIME, libc::MS_RELATIME),
            ] {
                if st.f_flag & st_flag != 0 {
                    flags |= ms_flag;
                }
            }
            if libc::mount(
                std::ptr::null(),
                c.as_ptr(),
                std::ptr::null(),
                flags,
                std::ptr::null(),
            ) != 0
            {
                readonly_failures.push(point);
            }
        }
        if !readonly_failures.is_empty() {
            notes.push(format!(
                "isolation: could not make these mounts read-only: {}",
                readonly_failures.join(", ")
            ));
        }
        if libc::chdir(cstr(&ws).as_ptr()) != 0 {
            return Err(errno("entering the workspace"));
        }
        Ok(proc_ok)
    }
}

/// Covers every [`ENGINE_SOCKETS`] entry that exists. Fails closed: a socket that cannot be
/// hidden fails the isolation. Runs in the worker's own mount namespace.
fn hide_engine_sockets() -> Result<(), String> {
    let mut done: Vec<PathBuf> = Vec::new();
    for path in ENGINE_SOCKETS {
        let Ok(real) = std::fs::canonicalize(path) else {
            continue;
        };
        if done.contains(&real) {
            continue;
        }
        let Some(target) = real.to_str() else {
            continue;
        };
        let target = cstr(target);
        // SAFETY: mount(2) with owned C strings, in this process's private mount namespace.
        let ok = unsafe {
            if real.is_dir() {
                libc::mount(
                    cstr("tmpfs").as_ptr(),
                    target.as_ptr(),
                    cstr("tmpfs").as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RDONLY,
                    cstr("size=4k,mode=0755").as_ptr().cast(),
                ) == 0
            } else {
                libc::mount(
                    cstr("/dev/null").as_ptr(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ) == 0
            }
        };
        if !ok {
            return Err(errno(&format!(
                "hiding the container engine socket {}",
                real.display()
            )));
        }
        done.push(real);
    }
    Ok(())
}

/// Mount points from `/proc/self/mountinfo` (field 5, with octal escapes decoded).
fn mount_points() -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("reading mountinfo: {e}"))?;
    let mut out: Vec<String> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape)
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Brings `lo` up in the fresh network namespace, so a job can talk to servers it starts.
fn loopback_up() -> io::Result<()> {
    // SAFETY: an ioctl on a socket we own with a zeroed, correctly sized ifreq.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        let result = if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) != 0 {
            Err(io::Error::last_os_error())
        } else {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            if libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) != 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        libc::close(fd);
        result
    }
}
