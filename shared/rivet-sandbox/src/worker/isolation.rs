//! OS-level isolation of the worker: fresh user, pid, mount and IPC namespaces where the kernel
//! allows, and (by policy) a network namespace with only `lo` (one the parent lent, see
//! `netns.rs`, or a fresh one), with a private `/proc` whose `/proc/sys` is read-only, private
//! temporary directories, the host filesystem read-only and only the workspace writable.
//!
//! The zygote makes the user and pid namespaces (and joins a lent network namespace) with the
//! `clone` that makes the worker, and writes its maps (`zygote.rs`); the worker, pid 1 of its
//! pid namespace and root of its user namespace, makes the rest here, while it is still
//! single-threaded.

use super::zygote::Start;
use crate::execute::Isolation;
use crate::job::{JobRequest, Mode};
use rivet_core::policy::{NamespaceMode, NetworkMode};
use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};

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

/// The worker's end of its map socket (`zygote.rs`): the zygote's word that the worker's maps
/// are written, then, by its hang-up, whether the zygote is still alive.
#[derive(Debug)]
pub struct Mapper {
    /// The worker's end of its map socket.
    pub socket: std::os::fd::OwnedFd,
    /// The zygote's pid (this process's parent; as seen from the host's pid namespace).
    pub zygote: i32,
}

impl Mapper {
    /// Whether the zygote still holds its end: it sends one message only, so anything to read
    /// after that is its hang-up.
    fn zygote_alive(&self) -> bool {
        use std::os::fd::AsRawFd;
        let mut p = libc::pollfd {
            fd: self.socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one pollfd we own, without waiting.
        unsafe { libc::poll(&mut p, 1, 0) == 0 }
    }
}

/// Why namespaced workers cannot be made on this kernel, if they cannot: the mounts need
/// `mount_setattr(2)` (Linux 5.12). Asked by the zygote, before it makes any.
pub(super) fn unavailable() -> Option<String> {
    (!has_mount_setattr())
        .then(|| "mount_setattr(2) is missing (Linux 5.12 or later is required)".into())
}

/// Sets up isolation for `request`, in a worker the zygote started as `start`. Returns what
/// was set up, or an error that fails the job. `mapper` is closed before this returns,
/// whatever happened: no job code ever holds it.
pub(super) fn enter(
    request: &JobRequest,
    start: Start,
    mapper: Mapper,
) -> Result<Isolation, String> {
    let zygote = mapper.zygote;
    // The launcher asked the zygote for namespaces from this same request (`Spawn`): a worker
    // made otherwise is a bug, and runs nothing.
    let wanted = super::zygote::Spawn::for_request(request, None).namespaces;
    let mode = request.policy.sandbox.namespaces;
    match start {
        Start::Namespaced {
            lent_network,
            host_uid,
        } if wanted => namespaces(request, lent_network, host_uid, mapper)
            .map_err(|why| format!("setting up the job sandbox failed: {why}")),
        Start::Plain if request.mode == Mode::Lint => {
            // A definition's top level has no host access at all (no core modules): rlimits,
            // the process group and the hard deadline suffice, and linting stays fast.
            fallback(request, zygote, Vec::new())
        }
        Start::Plain if mode == NamespaceMode::Off => fallback(request, zygote, vec!["isolation: namespaces are disabled by policy (sandbox.namespaces = \"off\")".into()]),
        Start::Unavailable(why) if wanted && mode == NamespaceMode::Auto => fallback(request, zygote, vec![format!(
            "isolation: fresh namespaces are unavailable here ({why}); this job runs with rlimits and a process group only"
        )]),
        Start::Unavailable(why) if wanted => {
            Err(format!("policy violation [sandbox.namespaces]: namespaces are required by policy but unavailable: {why}"))
        }
        start => Err(format!(
            "setting up the job sandbox failed: the worker was started as {start:?}, which its request does not ask for"
        )),
    }
}

/// Without namespaces: private home and temporary directories, and, when the policy names
/// another host uid and this process may take it (root), that uid: a root runner's job is
/// never host root, with or without namespaces.
fn fallback(request: &JobRequest, zygote: i32, notes: Vec<String>) -> Result<Isolation, String> {
    // SAFETY: geteuid has no preconditions.
    let host_uid = unsafe { libc::geteuid() };
    if let Some(uid) = super::zygote::remapped_uid(request.policy.sandbox.job_uid, host_uid) {
        // SAFETY: setgroups on this single-threaded process.
        if unsafe { libc::setgroups(0, std::ptr::null()) } != 0 {
            return Err(errno("dropping supplementary groups"));
        }
        // SAFETY: getppid has no preconditions (this process is in the zygote's pid namespace).
        take_uid(uid, || unsafe { libc::getppid() } == zygote)?;
    }
    let base = scratch_dir(std::process::id());
    fresh_scratch(&base)?;
    let home = base.join("home");
    let tmp = base.join("tmp");
    for d in [&home, &tmp] {
        std::fs::create_dir(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    }
    Ok(Isolation {
        home,
        tmp,
        pid_namespace: false,
        notes,
        cleanup: Some(base),
    })
}

/// Where a worker without namespaces keeps its job's HOME and TMPDIR on the host: named by
/// its pid, so that its parent can remove it when the worker could not (killed, crashed).
/// `/tmp` itself, not `TMPDIR`: the worker's environment is empty and its parent's is not.
pub(super) fn scratch_dir(pid: u32) -> PathBuf {
    PathBuf::from(format!("/tmp/rivet-job-{pid}"))
}

/// Makes `base` afresh, private (0700) to this process's uid. A directory already there is
/// never used: with this pid now ours, its owner is dead, a worker that died with its runner
/// (nobody was left to remove it), or it was made by someone else to be found; either way
/// what it holds is not this job's. It is removed first (without following a symbolic link),
/// and the job fails if that is not possible.
fn fresh_scratch(base: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    let make = || std::fs::DirBuilder::new().mode(0o700).create(base);
    match make() {
        // A link or a file there is removed itself (`remove_tree` follows no link).
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            crate::remove_tree(base).and_then(|()| make()).map_err(|e| {
                format!(
                    "isolation: {} was already there and could not be replaced ({e}); a job never uses a directory it did not make",
                    base.display()
                )
            })
        }
        r => r.map_err(|e| format!("creating {}: {e}", base.display())),
    }
}

/// Becomes `uid` and gid `uid` (in this process's user namespace), for good, and stays killed
/// with the zygote: the change of credentials clears the parent-death signal (prctl(2)), so it
/// is armed again (or the job would outlive its runner), and if the zygote died meanwhile
/// (`zygote_alive` says no) this process stops. Supplementary groups are the caller's to drop
/// first.
fn take_uid(uid: u32, zygote_alive: impl Fn() -> bool) -> Result<(), String> {
    // SAFETY: credential syscalls and prctl on this single-threaded process.
    unsafe {
        if libc::setresgid(uid, uid, uid) != 0 || libc::setresuid(uid, uid, uid) != 0 {
            return Err(errno("taking the job's uid"));
        }
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    if !zygote_alive() {
        // SAFETY: ending this process.
        unsafe { libc::_exit(super::EXIT_PARENT_GONE) };
    }
    Ok(())
}

/// The namespaced path: this process is pid 1 of a fresh pid namespace and root of a fresh
/// user namespace (the zygote's `clone`), in the lent network namespace if `lent_network`.
/// `host_uid` is the zygote's uid, this process's on the host unless root remapped it.
fn namespaces(
    request: &JobRequest,
    lent_network: bool,
    host_uid: u32,
    mapper: Mapper,
) -> Result<Isolation, String> {
    use std::os::fd::AsRawFd;
    // The zygote's word that our maps are written; until then this process is nobody here.
    match super::zygote::recv_i32(mapper.socket.as_raw_fd()) {
        Ok(Some(0)) => {}
        Ok(Some(errno)) => {
            return Err(format!(
                "the launcher could not write the job's uid map: {}",
                io::Error::from_raw_os_error(errno)
            ))
        }
        // The zygote died before it answered (and before our parent-death signal was armed).
        // SAFETY: ending this process, which has run no job code.
        Ok(None) => unsafe { libc::_exit(super::EXIT_PARENT_GONE) },
        Err(e) => {
            return Err(format!(
                "the launcher's answer about the job's uid map: {e}"
            ))
        }
    }
    if !mapper.zygote_alive() {
        // It answered, then died before our parent-death signal was armed.
        // SAFETY: as above.
        unsafe { libc::_exit(super::EXIT_PARENT_GONE) };
    }
    // The map must be the one this request asks for: root remaps the job to the policy's uid,
    // anyone else runs it as themselves. (Read from inside, the map names host ids.)
    let remap = super::zygote::remapped_uid(request.policy.sandbox.job_uid, host_uid);
    let expected = format!("0 {} 1", remap.unwrap_or(host_uid));
    let map = std::fs::read_to_string("/proc/self/uid_map")
        .map(|m| m.split_whitespace().collect::<Vec<_>>().join(" "))
        .map_err(|e| format!("reading the job's uid map: {e}"))?;
    if map != expected {
        return Err(format!(
            "the launcher could not write the job's uid map: it maps {map:?} where the policy needs {expected:?}"
        ));
    }
    if remap.is_some() {
        // Our host uid (root) is not in the map: become its uid 0, the job's uid outside.
        take_uid(0, || mapper.zygote_alive())?;
    }
    drop(mapper);
    let fresh_network = request.policy.sandbox.network == NetworkMode::None && !lent_network;
    let mut flags = libc::CLONE_NEWNS | libc::CLONE_NEWIPC;
    if fresh_network {
        flags |= libc::CLONE_NEWNET;
    }
    // SAFETY: unshare on this single-threaded process, root of its own user namespace.
    if unsafe { libc::unshare(flags) } != 0 {
        return Err(errno("unshare"));
    }
    let mut notes = Vec::new();
    // No nested user namespaces: their root would hold capabilities again (over nothing of
    // ours, but over a large kernel surface). Written before `/proc` turns read-only.
    std::fs::write("/proc/sys/user/max_user_namespaces", "0")
        .map_err(|e| format!("forbidding nested user namespaces: {e}"))?;
    let pid_namespace = mounts(&request.workspace, &mut notes)?;
    if fresh_network {
        if let Err(e) = loopback_up() {
            notes.push(format!(
                "isolation: could not bring up the loopback device: {e}"
            ));
        }
    }
    let home = PathBuf::from("/tmp/home");
    std::fs::create_dir_all(&home).map_err(|e| format!("creating {}: {e}", home.display()))?;
    drop_capabilities()?;
    Ok(Isolation {
        home,
        tmp: PathBuf::from("/tmp"),
        pid_namespace,
        notes,
        cleanup: None,
    })
}

/// Gives up every capability, for good: the worker is root in its user namespace, and a root
/// with capabilities there could undo every mount made above (unmount `/proc/sys` or the
/// engine socket covers, remount the host read-write). The securebits stop a later `execve` of
/// a uid-0 process from regaining any, the empty bounding set caps what a file could grant, and
/// `no_new_privs` stops set-uid binaries. (Nested user namespaces, which would give a job a
/// fresh set of capabilities to attack the kernel with, are forbidden before the mounts.)
fn drop_capabilities() -> Result<(), String> {
    // SECBIT_NOROOT, _LOCKED, SECBIT_NO_SETUID_FIXUP, _LOCKED, SECBIT_KEEP_CAPS_LOCKED,
    // SECBIT_NO_CAP_AMBIENT_RAISE, _LOCKED (<linux/securebits.h>).
    const SECUREBITS: libc::c_ulong = 0b1110_1111;
    /// `_LINUX_CAPABILITY_VERSION_3`.
    const CAP_V3: u32 = 0x2008_0522;
    #[repr(C)]
    struct CapHeader {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct CapData {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    // SAFETY: prctl and capset on this process with constant arguments and structs that live
    // across the calls.
    unsafe {
        if libc::prctl(libc::PR_SET_SECUREBITS, SECUREBITS, 0, 0, 0) != 0 {
            return Err(errno("setting securebits"));
        }
        for cap in 0..64 {
            if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 {
                if *libc::__errno_location() == libc::EINVAL {
                    break; // past the kernel's last capability
                }
                return Err(errno("dropping the capability bounding set"));
            }
        }
        if libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        ) != 0
        {
            return Err(errno("clearing ambient capabilities"));
        }
        let header = CapHeader {
            version: CAP_V3,
            pid: 0,
        };
        let data = [CapData {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        }; 2];
        if libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) != 0 {
            return Err(errno("dropping capabilities"));
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(errno("setting no_new_privs"));
        }
    }
    Ok(())
}

/// `mount_setattr(2)` (Linux 5.12): sets (`set`) or clears (`clear`) mount attributes of the
/// mount at `path`, and with `recursive` of every mount below it, in one call.
fn mount_setattr(path: &str, recursive: bool, set: u64, clear: u64) -> Result<(), String> {
    /// `struct mount_attr` of `<linux/mount.h>`.
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let attr = MountAttr {
        attr_set: set,
        attr_clr: clear,
        propagation: 0,
        userns_fd: 0,
    };
    let flags = if recursive { libc::AT_RECURSIVE } else { 0 };
    // SAFETY: the syscall reads `attr` (of the size passed) and the C string, both alive here.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            cstr(path).as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r != 0 {
        return Err(errno(&format!(
            "mount_setattr on {path} (Linux 5.12 or later is required)"
        )));
    }
    Ok(())
}

/// Whether the kernel has `mount_setattr(2)`: called with no flags on an invalid descriptor, it
/// fails with `EBADF`/`EINVAL` where it exists, `ENOSYS` where not.
fn has_mount_setattr() -> bool {
    // SAFETY: a syscall with an invalid descriptor and null pointers: it fails without effect.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            -1,
            std::ptr::null::<libc::c_char>(),
            0,
            std::ptr::null::<u8>(),
            0,
        )
    };
    !(r == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS))
}

/// `MOUNT_ATTR_RDONLY` of `<linux/mount.h>`.
const MOUNT_ATTR_RDONLY: u64 = 0x1;

/// Private mounts: every inherited mount read-only (one recursive call), then, on top, `/proc`
/// for the new pid namespace (with `/proc/sys` read-only), tmpfs on the temporary directories
/// and the workspace bound writable. New mounts are writable; the inherited ones, `/dev` and
/// `/sys` included, stay read-only (device nodes such as `/dev/null` still take writes).
/// Returns whether `/proc` is private.
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
        mount_setattr("/", true, MOUNT_ATTR_RDONLY, 0)?;
        let proc_ok = libc::mount(
            cstr("proc").as_ptr(),
            cstr("/proc").as_ptr(),
            cstr("proc").as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        ) == 0;
        if proc_ok {
            // The job's uid is the parent's, which may own the network namespace's sysctls
            // (a lent namespace outlives the job): read-only, as every other host setting.
            if libc::mount(
                cstr("/proc/sys").as_ptr(),
                cstr("/proc/sys").as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ) != 0
            {
                return Err(errno("binding /proc/sys"));
            }
            mount_setattr("/proc/sys", false, MOUNT_ATTR_RDONLY, 0)?;
        } else {
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
        // Bind the workspace onto its own path (recreated if a tmpfs now hides it); a bind
        // copies its source's read-only flag, so it is cleared on the new mount.
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
        // Mounts inside the workspace too; one that was read-only on the host stays so (the
        // kernel locked it), and then the workspace mount alone is made writable.
        if mount_setattr(&ws, true, 0, MOUNT_ATTR_RDONLY).is_err() {
            mount_setattr(&ws, false, 0, MOUNT_ATTR_RDONLY)?;
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

/// Brings `lo` up in this thread's network namespace (a fresh one), so a job can talk to
/// servers it starts.
pub(super) fn loopback_up() -> io::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::zygote::{recv_i32, send_with_fds, seqpacket_pair};
    use std::os::fd::AsRawFd;

    /// A namespaced worker's parent is outside its pid namespace, so it learns from the map
    /// socket whether the zygote died before its parent-death signal was armed: the answer,
    /// then the hang-up (or the hang-up with no answer).
    #[test]
    fn a_dead_zygote_is_heard_on_the_map_socket() {
        let (zygote, worker) = seqpacket_pair().unwrap();
        let mapper = Mapper {
            socket: worker,
            zygote: 0,
        };
        send_with_fds(zygote.as_raw_fd(), &0i32.to_le_bytes(), &[]).unwrap();
        assert_eq!(recv_i32(mapper.socket.as_raw_fd()).unwrap(), Some(0));
        assert!(mapper.zygote_alive(), "the zygote holds its end");
        assert!(mapper.zygote_alive(), "asking again changes nothing");
        drop(zygote);
        assert!(!mapper.zygote_alive(), "its end closed with it");

        let (zygote, worker) = seqpacket_pair().unwrap();
        drop(zygote);
        assert_eq!(
            recv_i32(worker.as_raw_fd()).unwrap(),
            None,
            "died before it answered"
        );
    }

    /// A worker without namespaces never uses a scratch directory it did not make: one left
    /// behind (by a worker that died with its runner, whose pid is now this one's) or planted
    /// is removed, and a symbolic link there is removed without being followed.
    #[test]
    fn a_scratch_directory_already_there_is_replaced_not_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("rivet-job-1");

        fresh_scratch(&base).unwrap();
        let mode = std::fs::metadata(&base).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "private to the job's uid");

        std::fs::create_dir_all(base.join("tmp")).unwrap();
        std::fs::write(base.join("tmp/left-behind"), "an earlier job's file").unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o777)).unwrap();
        fresh_scratch(&base).unwrap();
        assert_eq!(std::fs::read_dir(&base).unwrap().count(), 0, "made afresh");
        let mode = std::fs::metadata(&base).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);

        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("kept"), "not the job's").unwrap();
        std::fs::remove_dir(&base).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &base).unwrap();
        fresh_scratch(&base).unwrap();
        assert!(
            std::fs::symlink_metadata(&base).unwrap().is_dir(),
            "a directory, not the link"
        );
        assert!(
            elsewhere.join("kept").exists(),
            "the link's target is untouched"
        );

        std::fs::remove_dir(&base).unwrap();
        std::fs::write(&base, "a file in the way").unwrap();
        fresh_scratch(&base).unwrap();
        assert!(std::fs::symlink_metadata(&base).unwrap().is_dir());
    }
}
