//! Removing a directory tree a job made (its workspace, its scratch directory): however deep,
//! with a bounded number of open descriptors and a bounded stack, never following a symbolic
//! link, never entering a mount.
//!
//! `std::fs::remove_dir_all` keeps one descriptor open and one stack frame per level. A job
//! that nests directories thousands deep (one `mkdir`/`chdir` loop) makes it fail for want of
//! descriptors, leaving the tree behind for good, or overflow the stack of the thread that
//! calls it, which aborts the whole runner with every job it runs. Here a directory found
//! [`MAX_DEPTH`] levels down is first moved up to the top of the tree (one `rename` within it),
//! and emptied from there in a later pass. So at most `MAX_DEPTH` directories are open at once,
//! one descriptor each, and one descriptor more while the next is opened (its `O_PATH` handle,
//! below); the recursion is as deep.
//!
//! Every name is resolved relative to its parent's descriptor, and opened with `O_NOFOLLOW`: a
//! symbolic link is removed as a link, whatever it points to, and a directory swapped for a
//! link while the tree is removed makes the removal fail, not follow it. An entry that
//! vanished meanwhile is taken as removed. The root of a mount (something mounted inside the
//! tree, or on it) is never read: a directory is opened with `O_PATH` first, and only read if
//! the kernel's cached attributes say it is no mount's root, so that a FUSE daemon the job
//! left running is never asked anything it could leave unanswered. A mount point cannot be
//! removed or moved either (`EBUSY`), so what is mounted stays, with its parents. An entry that
//! cannot be removed does not stop the rest: the first error of the last pass is returned once
//! everything else is gone.
//!
//! The work is bounded ([`BUDGET`] entries and attempted moves): a process of the job that
//! outlived it (possible only without namespaces, where a job's processes are not all killed
//! with its worker) could otherwise add entries as fast as they are removed and hold the
//! caller for ever.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Directories open at once, at most (the top included).
pub const MAX_DEPTH: usize = 32;

/// The prefix of the names directories moved up to the top are given.
const MOVED: &str = ".rivet-remove-";

/// Entries (files, directories, attempted moves) one removal handles at most before it gives
/// up.
pub const BUDGET: u64 = 100_000_000;

/// Removes `path` and everything under it; a symbolic link (or any other file) at `path` is
/// removed itself, not what it points to. See the module's documentation.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    remove_within(path, BUDGET, None).map(|_| ())
}

/// Removes the directory `path` and everything under it only if `owner` owns it, checked on
/// the directory opened (not by a second lookup of the path, which another user could race):
/// `Ok(false)`, and nothing removed, for a directory someone else owns and for anything that
/// is not a directory.
pub fn remove_tree_owned_by(path: &Path, owner: u32) -> io::Result<bool> {
    remove_within(path, BUDGET, Some(owner))
}

/// Whether it removed `path` (see [`remove_tree_owned_by`] for `owner`).
fn remove_within(path: &Path, budget: u64, owner: Option<u32>) -> io::Result<bool> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))?;
    let mut top = match Dir::open(libc::AT_FDCWD, &c_path, None) {
        Ok(top) => top,
        // Not a directory: the owner's call removes nothing; otherwise a link, or any other
        // file, is removed itself.
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
            return match owner {
                Some(_) => Ok(false),
                None => std::fs::remove_file(path).map(|()| true),
            };
        }
        Err(e) => return Err(e),
    };
    if owner.is_some_and(|owner| owner != top.uid) {
        return Ok(false);
    }
    let mut walk = Walk {
        top: top.fd(),
        device: top.device,
        moved: 0,
        left: budget,
        error: None,
    };
    // Each pass empties the top down to MAX_DEPTH levels and moves what lies deeper up to the
    // top; a pass that moved nothing emptied the tree, or met errors it cannot get past (those
    // recur in every pass: the last pass's first error is the one returned).
    loop {
        walk.error = None;
        let progress = walk.moved;
        top.rewind();
        if let Err(e) = walk.empty(&mut top, 1) {
            return Err(match walk.error.take() {
                Some(first) if is_budget(&e) => {
                    io::Error::other(BudgetSpent(Some(first.to_string())))
                }
                _ => e,
            });
        }
        if walk.moved == progress {
            break;
        }
    }
    drop(top);
    match walk.error {
        Some(e) => Err(e),
        None => std::fs::remove_dir(path).map(|()| true),
    }
}

/// One removal's state.
struct Walk {
    /// The top of the tree.
    top: RawFd,
    /// The top's filesystem (`stx_dev`): where the kernel does not say which directories are
    /// mount roots, a directory on another is taken for one.
    device: (u32, u32),
    /// Directories moved up to the top so far.
    moved: u64,
    /// What is left of the budget.
    left: u64,
    /// The first error met in this pass; the walk goes on past it.
    error: Option<io::Error>,
}

impl Walk {
    /// Takes one from the budget, or fails when it is spent.
    fn charge(&mut self) -> io::Result<()> {
        match self.left.checked_sub(1) {
            Some(left) => {
                self.left = left;
                Ok(())
            }
            None => Err(io::Error::other(BudgetSpent(None))),
        }
    }

    /// Removes everything in `dir`, `depth` levels below the top, moving directories found at
    /// [`MAX_DEPTH`] up to the top instead of opening them. Errors on one entry are kept (the
    /// first) and the rest goes on; only an unreadable `dir` or a spent budget stop.
    fn empty(&mut self, dir: &mut Dir, depth: usize) -> io::Result<()> {
        while let Some((name, kind)) = dir.next()? {
            self.charge()?;
            let is_dir = match kind {
                libc::DT_DIR => Ok(true),
                libc::DT_UNKNOWN => {
                    kind_of(dir.fd(), &name).map(|m| m & libc::S_IFMT == libc::S_IFDIR)
                }
                _ => Ok(false),
            };
            let done = match is_dir {
                Err(e) => Err(e),
                Ok(false) => unlink(dir.fd(), &name, 0),
                Ok(true) if depth >= MAX_DEPTH => self.move_to_top(dir.fd(), &name),
                Ok(true) => self.empty_and_remove(dir, &name, depth),
            };
            match done {
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) if is_budget(&e) => return Err(e),
                Err(e) => {
                    self.error.get_or_insert(e);
                }
                Ok(()) => {}
            }
        }
        Ok(())
    }

    /// Empties the directory `name` in `dir` and removes it; one that is a mount's root is
    /// not entered.
    fn empty_and_remove(&mut self, dir: &Dir, name: &CStr, depth: usize) -> io::Result<()> {
        let mut sub = Dir::open(dir.fd(), name, Some(self.device))?;
        self.empty(&mut sub, depth + 1)?;
        drop(sub);
        unlink(dir.fd(), name, libc::AT_REMOVEDIR)
    }

    /// Moves the directory `name` in `dir` to the top, under a name not taken there. A name
    /// taken by a file or a non-empty directory makes the rename fail and the next is tried
    /// (each try is charged to the budget); one taken by an empty directory is replaced, which
    /// only removes an empty directory of the tree early.
    fn move_to_top(&mut self, dir: RawFd, name: &CStr) -> io::Result<()> {
        let mut n = self.moved;
        loop {
            self.charge()?;
            n += 1;
            let to = CString::new(format!("{MOVED}{n}")).expect("no NUL in a made-up name");
            // SAFETY: both names are NUL-terminated.
            match cvt(unsafe { libc::renameat(dir, name.as_ptr(), self.top, to.as_ptr()) }) {
                Ok(_) => {
                    self.moved = n;
                    return Ok(());
                }
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EEXIST | libc::ENOTEMPTY | libc::ENOTDIR)
                    ) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// The budget's end: it stops the walk, where other errors do not. With the first error the
/// pass had met, if any.
#[derive(Debug)]
struct BudgetSpent(Option<String>);

impl std::fmt::Display for BudgetSpent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the tree kept changing while it was removed: gave up at the end of its budget"
        )?;
        match &self.0 {
            Some(first) => write!(f, " (first error: {first})"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for BudgetSpent {}

fn is_budget(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<BudgetSpent>())
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// The file type bits of `name` in `dir`, not following a link, from the kernel's cached
/// attributes.
fn kind_of(dir: RawFd, name: &CStr) -> io::Result<u32> {
    statx(dir, name, libc::AT_SYMLINK_NOFOLLOW).map(|st| u32::from(st.stx_mode))
}

fn statx(at: RawFd, name: &CStr, flags: libc::c_int) -> io::Result<libc::statx> {
    // SAFETY: `st` is written by statx before it is read; `name` is NUL-terminated.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    let flags = flags | libc::AT_STATX_DONT_SYNC;
    let mask = libc::STATX_TYPE | libc::STATX_MODE | libc::STATX_UID;
    cvt(unsafe { libc::statx(at, name.as_ptr(), flags, mask, &mut st) })?;
    Ok(st)
}

fn unlink(dir: RawFd, name: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated.
    cvt(unsafe { libc::unlinkat(dir, name.as_ptr(), flags) }).map(|_| ())
}

/// An open directory and the stream of its entries (one descriptor), closed when dropped.
struct Dir {
    stream: std::ptr::NonNull<libc::DIR>,
    /// Its filesystem (`stx_dev`).
    device: (u32, u32),
    /// Its owner.
    uid: u32,
}

impl Dir {
    /// Opens the directory `name` in `at` without following a link (`ENOTDIR` for anything
    /// else). A mount's root is refused before it is read; where the kernel does not report
    /// mount roots (before Linux 5.8), a directory whose device is not `tree_device`, the
    /// top's (none for the top itself).
    fn open(at: RawFd, name: &CStr, tree_device: Option<(u32, u32)>) -> io::Result<Self> {
        let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: `name` is NUL-terminated; the descriptor returned is ours alone.
        let path = cvt(unsafe { libc::openat(at, name.as_ptr(), flags) })?;
        // SAFETY: a fresh descriptor, owned by nothing else.
        let path = unsafe { OwnedFd::from_raw_fd(path) };
        let st = statx(path.as_raw_fd(), c"", libc::AT_EMPTY_PATH)?;
        let device = (st.stx_dev_major, st.stx_dev_minor);
        let root = libc::STATX_ATTR_MOUNT_ROOT as u64;
        let mounted = if st.stx_attributes_mask & root != 0 {
            st.stx_attributes & root != 0
        } else {
            tree_device.is_some_and(|d| d != device)
        };
        if mounted {
            return Err(io::Error::new(
                io::ErrorKind::CrossesDevices,
                format!(
                    "{} is a mount point in the tree: not entered",
                    name.to_string_lossy()
                ),
            ));
        }
        let read = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC;
        // SAFETY: "." of a directory we hold; the descriptor returned is ours alone.
        let fd = cvt(unsafe { libc::openat(path.as_raw_fd(), c".".as_ptr(), read) })?;
        // SAFETY: fdopendir takes the descriptor over, or leaves it to us on failure.
        match std::ptr::NonNull::new(unsafe { libc::fdopendir(fd) }) {
            Some(stream) => Ok(Dir {
                stream,
                device,
                uid: st.stx_uid,
            }),
            None => {
                let e = io::Error::last_os_error();
                // SAFETY: fdopendir failed: the descriptor is still ours to close.
                unsafe { libc::close(fd) };
                Err(e)
            }
        }
    }

    fn fd(&self) -> RawFd {
        // SAFETY: the stream is open until drop.
        unsafe { libc::dirfd(self.stream.as_ptr()) }
    }

    /// Reads the entries again from the first.
    fn rewind(&mut self) {
        // SAFETY: the stream is open until drop.
        unsafe { libc::rewinddir(self.stream.as_ptr()) }
    }

    /// The next entry's name and type (`DT_*`), `.` and `..` left out; `None` at the end.
    fn next(&mut self) -> io::Result<Option<(CString, u8)>> {
        loop {
            // readdir reports an error only through errno, which it leaves alone at the end.
            // SAFETY: errno is this thread's.
            unsafe { *libc::__errno_location() = 0 };
            // SAFETY: the stream is open until drop.
            let entry = unsafe { libc::readdir64(self.stream.as_ptr()) };
            if entry.is_null() {
                return match io::Error::last_os_error() {
                    e if e.raw_os_error() == Some(0) => Ok(None),
                    e => Err(e),
                };
            }
            // SAFETY: readdir returned an entry, valid until the next call on this stream; its
            // name is NUL-terminated, and copied before that.
            let (name, kind) = unsafe {
                let entry = &*entry;
                (CStr::from_ptr(entry.d_name.as_ptr()), entry.d_type)
            };
            if matches!(name.to_bytes(), b"." | b"..") {
                continue;
            }
            return Ok(Some((name.to_owned(), kind)));
        }
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        // SAFETY: the stream is ours and closed once.
        unsafe { libc::closedir(self.stream.as_ptr()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::path::PathBuf;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("rivet-remove-test-{name}-{}", std::process::id()));
        let _ = std::process::Command::new("rm")
            .arg("-rf")
            .arg(&dir)
            .status();
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn c(path: &Path) -> CString {
        CString::new(path.as_os_str().as_bytes()).unwrap()
    }

    /// Nests `depth` directories named `d` under `top`, each holding a file; built through
    /// descriptors, as a job's `mkdir`/`chdir` loop would, since the path is longer than
    /// PATH_MAX.
    fn nest(top: &Path, depth: usize) {
        let mut dir = Dir::open(libc::AT_FDCWD, &c(top), None).unwrap();
        let (d, f) = (c"d", c"f");
        for _ in 0..depth {
            // SAFETY: NUL-terminated names, a descriptor we own.
            unsafe {
                cvt(libc::mkdirat(dir.fd(), d.as_ptr(), 0o755)).unwrap();
                let file = cvt(libc::openat(
                    dir.fd(),
                    f.as_ptr(),
                    libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                    0o644,
                ))
                .unwrap();
                libc::close(file);
            }
            dir = Dir::open(dir.fd(), d, None).unwrap();
        }
    }

    /// Set (to a path) in the child processes of the tests that need a process of their own.
    const CHILD: &str = "RIVET_REMOVE_TREE_CHILD";

    /// Runs test `name` of this binary alone in a child process with [`CHILD`] set to `path`,
    /// and checks that it ran and passed; then removes `path` whatever happened.
    fn in_child(name: &str, path: &Path) {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--nocapture"])
            .env(CHILD, path)
            .output()
            .unwrap();
        let _ = std::process::Command::new("rm")
            .arg("-rf")
            .arg(path)
            .status();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "the child failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A tree 3,000 levels deep, removed by a process left exactly the descriptors a removal
    /// needs ([`MAX_DEPTH`] directories and the `O_PATH` handle of the next one opened), on a
    /// thread with a 128 KiB stack: `std::fs::remove_dir_all` runs out of both (EMFILE a few
    /// levels down, a stack overflow that aborts the process a little deeper). The limit is
    /// set in a child process (this test binary again, running this test alone) so that no
    /// other test shares it.
    #[test]
    fn a_tree_deeper_than_descriptors_and_stack_allow_is_removed() {
        let Some(top) = std::env::var_os(CHILD).map(PathBuf::from) else {
            in_child(
                "remove::tests::a_tree_deeper_than_descriptors_and_stack_allow_is_removed",
                &scratch("deep"),
            );
            return;
        };
        nest(&top, 3000);
        // RLIMIT_NOFILE bounds descriptor numbers, not their count: the limit is the one below
        // which exactly MAX_DEPTH + 1 numbers are free, whatever descriptors this process was
        // given (numbers with gaps, or high ones, as some shells and CI agents pass on).
        let listed: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
            .collect();
        // SAFETY: F_GETFD only asks whether the number is open (the listing's own is not now).
        let open = |fd: RawFd| unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0;
        let taken: Vec<RawFd> = listed.into_iter().filter(|&fd| open(fd)).collect();
        let mut free = 0;
        let mut limit = 0;
        while free < MAX_DEPTH + 1 {
            if !taken.contains(&limit) {
                free += 1;
            }
            limit += 1;
        }
        let limit = libc::rlimit {
            rlim_cur: limit as u64,
            rlim_max: limit as u64,
        };
        // SAFETY: setrlimit reads the struct we own.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
        let removing = top.clone();
        let removed = std::thread::Builder::new()
            .stack_size(128 << 10)
            .spawn(move || remove_tree(&removing))
            .unwrap()
            .join()
            .expect("the removal does not panic");
        removed.expect("the deep tree is removed");
        assert!(!top.exists(), "{} is gone", top.display());
    }

    /// Filesystems mounted inside the tree are not entered, one near the top (refused when
    /// opened) and one [`MAX_DEPTH`] levels down (where it would be moved up: the rename fails,
    /// `EBUSY`): what they hold stays, the rest of the tree goes, the removal says why it
    /// could not finish, and it ends at once rather than passing over the tree again and again.
    /// Mounted in a mount namespace of a child process's own, private, so nothing reaches the
    /// host's mounts.
    #[test]
    fn filesystems_mounted_in_the_tree_are_not_entered_and_the_rest_goes() {
        let Some(tree) = std::env::var_os(CHILD).map(PathBuf::from) else {
            // SAFETY: geteuid has no preconditions.
            assert_eq!(
                unsafe { libc::geteuid() },
                0,
                "the sandbox tests run as root"
            );
            in_child(
                "remove::tests::filesystems_mounted_in_the_tree_are_not_entered_and_the_rest_goes",
                &scratch("mounted"),
            );
            return;
        };
        // Siblings on both sides of `a` in any reading order the filesystem has (hash order
        // on ext4, newest first on tmpfs): what follows the error goes too.
        for i in 0..8 {
            std::fs::create_dir_all(tree.join(format!("b{i}/c"))).unwrap();
            std::fs::write(tree.join(format!("b{i}/c/file")), "x").unwrap();
        }
        std::fs::create_dir_all(tree.join("a/mnt")).unwrap();
        std::fs::create_dir(tree.join("deep")).unwrap();
        nest(&tree.join("deep"), MAX_DEPTH - 2);
        let deep_mnt = tree.join(format!("deep/{}mnt", "d/".repeat(MAX_DEPTH - 2)));
        std::fs::create_dir(&deep_mnt).unwrap();
        for i in 0..8 {
            std::fs::write(tree.join(format!("z{i}")), "x").unwrap();
        }
        let mounts = [tree.join("a/mnt"), deep_mnt.clone()];
        // SAFETY: unshare and mount with NUL-terminated strings; this thread alone enters the
        // new mount namespace (CLONE_NEWNS implies CLONE_FS), and runs the rest of the test.
        unsafe {
            assert_eq!(libc::unshare(libc::CLONE_NEWNS), 0);
            let none = std::ptr::null();
            let private = libc::MS_REC | libc::MS_PRIVATE;
            assert_eq!(
                libc::mount(none, c"/".as_ptr(), none, private, std::ptr::null()),
                0
            );
            for mnt in &mounts {
                let tmpfs = c"tmpfs".as_ptr();
                let at = c(mnt);
                assert_eq!(
                    libc::mount(tmpfs, at.as_ptr(), tmpfs, 0, std::ptr::null()),
                    0
                );
                std::fs::write(mnt.join("keep"), "x").unwrap();
            }
        }
        // Threads made now are in this mount namespace too; the wait is bounded.
        let (tx, rx) = std::sync::mpsc::channel();
        let removing = tree.clone();
        // A budget this tree needs a few hundred of: a walk that passed over it again and
        // again would spend it and say so.
        std::thread::spawn(move || {
            let _ = tx.send(remove_within(&removing, 10_000, None));
        });
        let err = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the removal ends")
            .unwrap_err();
        assert!(
            matches!(
                err.kind(),
                io::ErrorKind::CrossesDevices | io::ErrorKind::ResourceBusy
            ),
            "{err}"
        );
        for mnt in &mounts {
            assert_eq!(std::fs::read_to_string(mnt.join("keep")).unwrap(), "x");
        }
        let mut left: Vec<_> = std::fs::read_dir(&tree)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["a", "deep"], "only the mounts' parents are left");
        for mnt in &mounts {
            // SAFETY: a NUL-terminated path.
            assert_eq!(
                unsafe { libc::umount(c(mnt).as_ptr()) },
                0,
                "{}",
                mnt.display()
            );
        }
    }

    /// Links are removed as links: what they point to, outside the tree, is left alone, and a
    /// link given as the tree itself is removed, not its target.
    #[test]
    fn links_are_removed_not_followed() {
        let base = scratch("links");
        let outside = base.join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), "x").unwrap();
        let tree = base.join("tree");
        std::fs::create_dir_all(tree.join("a/b")).unwrap();
        symlink(&outside, tree.join("a/to-dir")).unwrap();
        symlink(outside.join("keep"), tree.join("a/b/to-file")).unwrap();
        symlink("/nonexistent", tree.join("dangling")).unwrap();
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
        assert_eq!(std::fs::read_to_string(outside.join("keep")).unwrap(), "x");

        let link = base.join("link");
        symlink(&outside, &link).unwrap();
        remove_tree(&link).unwrap();
        assert!(
            std::fs::symlink_metadata(&link).is_err(),
            "the link is gone"
        );
        assert!(outside.join("keep").exists(), "its target is not");
        std::fs::remove_dir_all(&base).unwrap();
    }

    /// A directory moved up to the top skips names taken there by a file or a non-empty
    /// directory, and may replace an empty one.
    #[test]
    fn a_directory_moved_up_skips_names_taken_at_the_top() {
        let top = scratch("taken");
        std::fs::write(top.join(format!("{MOVED}1")), "file").unwrap();
        std::fs::create_dir_all(top.join(format!("{MOVED}2/full"))).unwrap();
        std::fs::create_dir(top.join(format!("{MOVED}3"))).unwrap();
        std::fs::create_dir_all(top.join("deep/victim")).unwrap();
        std::fs::write(top.join("deep/victim/marker"), "m").unwrap();
        let top_dir = Dir::open(libc::AT_FDCWD, &c(&top), None).unwrap();
        let deep = Dir::open(top_dir.fd(), c"deep", Some(top_dir.device)).unwrap();
        let mut walk = Walk {
            top: top_dir.fd(),
            device: top_dir.device,
            moved: 0,
            left: 2,
            error: None,
        };
        // Each try is charged: two are not enough.
        let err = walk.move_to_top(deep.fd(), c"victim").unwrap_err();
        assert!(is_budget(&err), "{err}");
        assert!(top.join("deep/victim").is_dir());
        walk.left = 3;
        walk.move_to_top(deep.fd(), c"victim").unwrap();
        assert_eq!(walk.moved, 3);
        let read = |p: &str| std::fs::read_to_string(top.join(p)).unwrap();
        assert_eq!(read(&format!("{MOVED}3/marker")), "m");
        assert_eq!(read(&format!("{MOVED}1")), "file");
        assert!(top.join(format!("{MOVED}2/full")).is_dir());
        assert!(!top.join("deep/victim").exists());
        drop((deep, top_dir));
        remove_tree(&top).unwrap();
    }

    /// A broad tree deeper than [`MAX_DEPTH`] on several branches, with a FIFO on the way,
    /// goes whole.
    #[test]
    fn a_wide_deep_tree_is_removed() {
        let tree = scratch("wide");
        for branch in ["x", "y", "z"] {
            std::fs::create_dir(tree.join(branch)).unwrap();
            nest(&tree.join(branch), 2 * MAX_DEPTH + 5);
        }
        let fifo = c(&tree.join("x/fifo"));
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
    }

    /// A tree that outgrows the budget (as one a leftover process keeps filling would) ends
    /// the removal with an error instead of holding the caller.
    #[test]
    fn a_removal_gives_up_when_its_budget_runs_out() {
        let top = scratch("budget");
        for i in 0..10 {
            std::fs::write(top.join(format!("f{i}")), "x").unwrap();
        }
        let err = remove_within(&top, 4, None).unwrap_err();
        assert!(is_budget(&err), "{err}");
        assert_eq!(
            std::fs::read_dir(&top).unwrap().count(),
            6,
            "four entries went"
        );
        remove_within(&top, 7, None).unwrap();
        assert!(!top.exists());
    }

    /// Only a directory its owner names is removed; a link to one (even to one the owner owns)
    /// or a file is not touched.
    #[test]
    fn an_owners_removal_leaves_what_it_does_not_own() {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "the sandbox tests run as root"
        );
        let base = scratch("owned");
        let theirs = base.join("theirs");
        std::fs::create_dir_all(theirs.join("sub")).unwrap();
        std::os::unix::fs::chown(&theirs, Some(4242), None).unwrap();
        assert!(!remove_tree_owned_by(&theirs, 0).unwrap());
        assert!(theirs.join("sub").is_dir(), "not ours: kept");
        let link = base.join("link");
        symlink(&theirs, &link).unwrap();
        assert!(!remove_tree_owned_by(&link, 4242).unwrap());
        assert!(std::fs::symlink_metadata(&link).is_ok(), "a link: kept");
        std::fs::write(base.join("file"), "x").unwrap();
        assert!(!remove_tree_owned_by(&base.join("file"), 0).unwrap());
        assert!(base.join("file").exists(), "a file: kept");
        assert!(remove_tree_owned_by(&theirs, 4242).unwrap());
        assert!(!theirs.exists(), "its owner's: removed");
        remove_tree(&base).unwrap();
    }

    #[test]
    fn a_missing_tree_is_an_error_and_a_file_is_removed() {
        let base = scratch("missing");
        let err = remove_tree(&base.join("none")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        std::fs::write(base.join("file"), "x").unwrap();
        remove_tree(&base.join("file")).unwrap();
        assert!(!base.join("file").exists());
        remove_tree(&base).unwrap();
        assert!(!base.exists());
    }
}
