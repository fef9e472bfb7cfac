//! Network namespaces for `network = "none"` jobs, made once and reused.
//!
//! Making a network namespace and tearing it down again is the largest kernel cost of a
//! worker (registering and later unregistering a loopback device and every per-namespace
//! sysctl table). The parent therefore keeps a few: one per job running at once, each with
//! nothing in it but `lo`, up. A worker is made in the one it is given (the zygote joins it for
//! the `clone` that makes the worker's user namespace, `zygote.rs`), so the job is not
//! privileged over it: it cannot add interfaces,
//! routes or addresses, nor take `lo` down. The worker also mounts `/proc/sys` read-only, so
//! a job cannot change the namespace's sysctls for the next one.
//!
//! A namespace goes back to the pool only when it is as it was made: the worker exited by
//! itself (so every process of its pid namespace was gone first), and no TCP socket is left
//! in it (a connection in `TIME_WAIT` outlives its process and would keep its port taken).
//! Otherwise it is dropped and the kernel frees it. Where namespaces cannot be made here
//! (not root in the initial user namespace), the pool stays empty and each worker makes its
//! own, as before.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Namespaces kept while unused; more are made on demand when more jobs run at once.
const KEEP: usize = 64;

/// A pool of network namespaces; share one per runner (or CLI process).
#[derive(Debug, Default)]
pub struct NetworkNamespaces {
    free: Mutex<Vec<Netns>>,
    /// Set once making a namespace failed: this process cannot, so it stops trying.
    unavailable: AtomicBool,
}

/// A namespace lent to one worker. Dropped without [`NetnsLease::give_back`], it is freed.
#[derive(Debug)]
pub struct NetnsLease<'a> {
    pool: &'a NetworkNamespaces,
    ns: Netns,
}

/// One namespace: its descriptor, and its socket counters opened from inside it when it was
/// made (a `/proc/.../net` file shows the namespace it was opened in, and reading it again from
/// the start shows the counters as they are then), so that checking it needs no thread to
/// enter it.
#[derive(Debug)]
struct Netns {
    fd: OwnedFd,
    sockstat: File,
    /// `None` without IPv6 in this kernel: no IPv6 sockets either.
    sockstat6: Option<File>,
}

impl NetworkNamespaces {
    /// A namespace for one job: a free one, else a new one; `None` where this process cannot
    /// make them (the worker then makes its own).
    pub fn take(&self) -> Option<NetnsLease<'_>> {
        let reused = self
            .free
            .lock()
            .expect("the namespace pool's lock is never poisoned")
            .pop();
        let ns = match reused {
            Some(ns) => ns,
            None if self.unavailable.load(Ordering::Relaxed) => return None,
            None => match make() {
                Ok(ns) => ns,
                // Not allowed here (not root): stop trying.
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                    self.unavailable.store(true, Ordering::Relaxed);
                    tracing::debug!(error = %e, "Network namespaces cannot be made here; each worker makes its own.");
                    return None;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Making a network namespace failed; this worker makes its own.");
                    return None;
                }
            },
        };
        Some(NetnsLease { pool: self, ns })
    }

    /// Namespaces waiting for a job.
    pub fn idle(&self) -> usize {
        self.free
            .lock()
            .expect("the namespace pool's lock is never poisoned")
            .len()
    }
}

impl NetnsLease<'_> {
    /// The descriptor, open in this process (the zygote opens `/proc/PARENT/fd/N`).
    pub fn raw_fd(&self) -> i32 {
        self.ns.fd.as_raw_fd()
    }

    /// Returns the namespace for the next job when nothing of this one is left in it: call only
    /// once every process that was in it is gone.
    pub fn give_back(self) {
        match has_sockets(&self.ns) {
            Ok(false) => {
                let mut free = self
                    .pool
                    .free
                    .lock()
                    .expect("the namespace pool's lock is never poisoned");
                if free.len() < KEEP {
                    free.push(self.ns);
                }
            }
            Ok(true) => {
                tracing::debug!(
                    "A job left TCP sockets in its network namespace; it is freed, not reused."
                )
            }
            Err(e) => {
                tracing::warn!(error = %e, "Inspecting a job's network namespace failed; it is freed, not reused.")
            }
        }
    }
}

/// Runs `f` on a new thread that first joins or makes a network namespace. Only that thread
/// changes namespace (a network namespace is per thread), and it ends with `f`, so no other
/// code ever runs in it.
fn on_thread<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    std::thread::Builder::new()
        .name("rivet-netns".into())
        .spawn(f)?
        .join()
        .map_err(|_| io::Error::other("the namespace thread panicked"))?
}

/// Makes a network namespace with `lo` up. Jobs hold no capability over it (nor over any), so
/// two things they could do in a namespace of their own are allowed to everyone in this one:
/// binding ports below 1024 and `ping` (ICMP echo sockets).
fn make() -> io::Result<Netns> {
    on_thread(|| {
        // SAFETY: unshare on this thread only (CLONE_NEWNET is per thread); open(2) with a
        // constant C string; the descriptor is owned from here on.
        unsafe {
            if libc::unshare(libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            super::isolation::loopback_up()?;
            // `/proc/thread-self/net` and `/proc/sys/net` show the opening thread's namespace.
            std::fs::write("/proc/sys/net/ipv4/ip_unprivileged_port_start", "0")?;
            std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 2147483647")?;
            let fd = libc::open(
                c"/proc/thread-self/ns/net".as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            );
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(Netns {
                fd: OwnedFd::from_raw_fd(fd),
                sockstat: File::open("/proc/thread-self/net/sockstat")?,
                sockstat6: File::open("/proc/thread-self/net/sockstat6").ok(),
            })
        }
    })
}

/// Whether any socket is left in the namespace (of any kind: one a process passed to another
/// can outlive both; and TCP connections in `TIME_WAIT`, which outlive every process), from its
/// socket counters (`/proc/net/sockstat`; listing the sockets instead walks the kernel's whole
/// connection table, shared by every namespace).
fn has_sockets(ns: &Netns) -> io::Result<bool> {
    /// The whole file, read again from its start (a `/proc` file is made anew then).
    fn read(mut file: &File) -> io::Result<String> {
        use std::io::{Read, Seek};
        file.rewind()?;
        let mut text = String::new();
        file.read_to_string(&mut text)?;
        Ok(text)
    }
    let v4 = read(&ns.sockstat)?;
    let v6 = match &ns.sockstat6 {
        Some(f) => read(f)?,
        None => String::new(),
    };
    Ok(sockets_used(&v4) != Some(0)
        || tcp_in_use(&v4, "TCP:") != Some(0)
        || tcp_in_use(&v6, "TCP6:").unwrap_or(0) != 0)
}

/// From a `sockstat` text, the sockets of every kind in use (`sockets: used N`).
fn sockets_used(sockstat: &str) -> Option<u64> {
    sockstat
        .lines()
        .find_map(|l| l.strip_prefix("sockets: used "))?
        .trim()
        .parse()
        .ok()
}

/// From a `sockstat` text, the TCP sockets of the `row` (`TCP:`, `TCP6:`) in use plus those in
/// `TIME_WAIT` (`tw`, IPv4 only). `None` when the row is missing or unreadable.
fn tcp_in_use(sockstat: &str, row: &str) -> Option<u64> {
    let fields: Vec<&str> = sockstat
        .lines()
        .find(|l| l.starts_with(row))?
        .split_whitespace()
        .skip(1)
        .collect();
    let value = |name: &str| -> Option<u64> {
        let at = fields.iter().position(|f| *f == name)?;
        fields.get(at + 1)?.parse().ok()
    };
    let tw = if row == "TCP:" { value("tw")? } else { 0 };
    Some(value("inuse")? + tw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn sockstat_rows_count_sockets_in_use_and_in_time_wait() {
        let text =
            "sockets: used 26\nTCP: inuse 12 orphan 0 tw 182 alloc 15 mem 0\nUDP: inuse 0 mem 0\n";
        assert_eq!(tcp_in_use(text, "TCP:"), Some(194));
        assert_eq!(
            tcp_in_use("TCP: inuse 0 orphan 0 tw 0 alloc 9 mem 0", "TCP:"),
            Some(0)
        );
        assert_eq!(tcp_in_use("TCP6: inuse 2\n", "TCP6:"), Some(2));
        assert_eq!(
            tcp_in_use("UDP: inuse 0", "TCP:"),
            None,
            "no row: not known clean"
        );
        assert_eq!(tcp_in_use("TCP: inuse x tw 0", "TCP:"), None);
        assert_eq!(sockets_used(text), Some(26));
        assert_eq!(sockets_used("TCP: inuse 0"), None);
    }

    #[test]
    fn a_namespace_is_reused_only_while_no_tcp_socket_is_left_in_it() {
        if !root() {
            // Documented in docs/sandbox.md: without root the pool stays empty.
            assert!(NetworkNamespaces::default().take().is_none());
            return;
        }
        let pool = NetworkNamespaces::default();
        let lease = pool.take().expect("root can make network namespaces");
        let first = lease.raw_fd();
        lease.give_back();
        assert_eq!(pool.idle(), 1, "a clean namespace goes back");

        // A listening socket left behind (as a TIME_WAIT connection would be): not reused.
        let lease = pool.take().expect("the free namespace");
        assert_eq!(lease.raw_fd(), first);
        let ns = lease.ns.fd.try_clone().unwrap();
        let listener = on_thread(move || {
            // SAFETY: setns on this thread only.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            std::net::TcpListener::bind("127.0.0.1:0")
        })
        .expect("lo is up in the namespace");
        lease.give_back();
        assert_eq!(pool.idle(), 0, "a namespace with a socket left is freed");
        drop(listener);
    }
}
