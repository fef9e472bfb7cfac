//! Removing a directory tree a job made (its workspace, its scratch directory): however deep,
//! with a bounded number of open descriptors and a bounded stack, never following a symbolic
//! link.
//!
//! `std::fs::remove_dir_all` keeps one descriptor open and one stack frame per level. A job
//! that nests directories thousands deep (one `mkdir`/`chdir` loop) makes it fail for want of
//! descriptors, leaving the tree behind for good, or overflow the stack of the thread that
//! calls it, which aborts the whole runner with every job it runs. Here a directory found more
//! than [`MAX_DEPTH`] levels down is first moved up to the top of the tree (one `rename` within
//! it), and emptied from there in a later pass. So at most `MAX_DEPTH` directories are open at
//! once, one descriptor each, and the recursion is as deep.
//!
//! Every name is resolved relative to its parent's descriptor, and opened with `O_NOFOLLOW`: a
//! symbolic link is removed as a link, whatever it points to, and a directory swapped for a
//! link while the tree is removed makes the removal fail, not follow it. An entry that
//! vanished meanwhile is taken as removed.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Directories open at once, at most (the top included).
pub const MAX_DEPTH: usize = 32;

/// The prefix of the names directories moved up to the top are given.
const MOVED: &str = ".rivet-remove-";

/// Removes `path` and everything under it; a symbolic link (or any other file) at `path` is
/// removed itself, not what it points to. See the module's documentation.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.is_dir() {
        return std::fs::remove_file(path);
    }
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))?;
    let mut top = Dir::open(libc::AT_FDCWD, &c_path)?;
    let mut moved = 0u64;
    // Each pass empties the top down to MAX_DEPTH levels and moves what lies deeper up to the
    // top; a pass that moved nothing emptied the tree.
    loop {
        let before = moved;
        top.rewind();
        let top_fd = top.fd();
        empty(&mut top, top_fd, 1, &mut moved)?;
        if moved == before {
            break;
        }
    }
    drop(top);
    std::fs::remove_dir(path)
}

/// Removes everything in `dir`, `depth` levels below the top (`top`), moving directories found
/// at [`MAX_DEPTH`] up to the top instead of opening them; `moved` counts them.
fn empty(dir: &mut Dir, top: RawFd, depth: usize, moved: &mut u64) -> io::Result<()> {
    while let Some((name, kind)) = dir.next()? {
        let is_dir = match kind {
            libc::DT_DIR => true,
            libc::DT_UNKNOWN => match kind_of(dir.fd(), &name) {
                Ok(mode) => mode & libc::S_IFMT == libc::S_IFDIR,
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(e),
            },
            _ => false,
        };
        let done = if !is_dir {
            unlink(dir.fd(), &name, 0)
        } else if depth >= MAX_DEPTH {
            move_to_top(dir.fd(), &name, top, moved)
        } else {
            Dir::open(dir.fd(), &name).and_then(|mut sub| {
                empty(&mut sub, top, depth + 1, moved)?;
                drop(sub);
                unlink(dir.fd(), &name, libc::AT_REMOVEDIR)
            })
        };
        match done {
            Err(e) if !gone(&e) => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// Whether an error says the entry is no longer there (removed meanwhile).
fn gone(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOENT)
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// The file type bits of `name` in `dir`, not following a link.
fn kind_of(dir: RawFd, name: &CStr) -> io::Result<libc::mode_t> {
    // SAFETY: `st` is written by fstatat before it is read; `name` is NUL-terminated.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    cvt(unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(st.st_mode)
}

fn unlink(dir: RawFd, name: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated.
    cvt(unsafe { libc::unlinkat(dir, name.as_ptr(), flags) }).map(|_| ())
}

/// Moves the directory `name` in `dir` to `top`, under a name not taken there. A name taken by
/// a file or a non-empty directory makes the rename fail and the next is tried; one taken by
/// an empty directory is replaced, which only removes an empty directory of the tree early.
fn move_to_top(dir: RawFd, name: &CStr, top: RawFd, moved: &mut u64) -> io::Result<()> {
    loop {
        *moved += 1;
        let to = CString::new(format!("{MOVED}{moved}")).expect("no NUL in a made-up name");
        // SAFETY: both names are NUL-terminated.
        match cvt(unsafe { libc::renameat(dir, name.as_ptr(), top, to.as_ptr()) }) {
            Ok(_) => return Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EEXIST | libc::ENOTEMPTY | libc::ENOTDIR)
                ) => {}
            Err(e) => return Err(e),
        }
    }
}

/// An open directory and the stream of its entries (one descriptor), closed when dropped.
struct Dir(std::ptr::NonNull<libc::DIR>);

impl Dir {
    /// Opens the directory `name` in `at` without following a link.
    fn open(at: RawFd, name: &CStr) -> io::Result<Self> {
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: `name` is NUL-terminated; the descriptor returned is ours alone.
        let fd = cvt(unsafe { libc::openat(at, name.as_ptr(), flags) })?;
        // SAFETY: fdopendir takes the descriptor over, or leaves it to us on failure.
        match std::ptr::NonNull::new(unsafe { libc::fdopendir(fd) }) {
            Some(stream) => Ok(Dir(stream)),
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
        unsafe { libc::dirfd(self.0.as_ptr()) }
    }

    /// Reads the entries again from the first.
    fn rewind(&mut self) {
        // SAFETY: the stream is open until drop.
        unsafe { libc::rewinddir(self.0.as_ptr()) }
    }

    /// The next entry's name and type (`DT_*`), `.` and `..` left out; `None` at the end.
    fn next(&mut self) -> io::Result<Option<(CString, u8)>> {
        loop {
            // readdir reports an error only through errno, which it leaves alone at the end.
            // SAFETY: errno is this thread's.
            unsafe { *libc::__errno_location() = 0 };
            // SAFETY: the stream is open until drop.
            let entry = unsafe { libc::readdir64(self.0.as_ptr()) };
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
        unsafe { libc::closedir(self.0.as_ptr()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("rivet-remove-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Nests `depth` directories named `d` under `top`, each holding a file; built through
    /// descriptors, as a job's `mkdir`/`chdir` loop would, since the path is longer than
    /// PATH_MAX.
    fn nest(top: &Path, depth: usize) {
        let mut dir = Dir::open(
            libc::AT_FDCWD,
            &CString::new(top.as_os_str().as_bytes()).unwrap(),
        )
        .unwrap();
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
            dir = Dir::open(dir.fd(), d).unwrap();
        }
    }

    /// Set in the child process of
    /// `a_tree_deeper_than_descriptors_and_stack_allow_is_removed`.
    const CHILD: &str = "RIVET_REMOVE_TREE_CHILD";

    /// A tree 3,000 levels deep, removed by a process allowed 64 descriptors, on a thread with
    /// a 128 KiB stack: `std::fs::remove_dir_all` runs out of both (EMFILE at level 60 or so,
    /// a stack overflow that aborts the process a little deeper). The limit is set in a child
    /// process (this test binary again, running this test alone) so that no other test
    /// shares it.
    #[test]
    fn a_tree_deeper_than_descriptors_and_stack_allow_is_removed() {
        if std::env::var_os(CHILD).is_some() {
            let top = scratch("deep");
            nest(&top, 3000);
            let limit = libc::rlimit {
                rlim_cur: 64,
                rlim_max: 64,
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
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "remove::tests::a_tree_deeper_than_descriptors_and_stack_allow_is_removed",
                "--nocapture",
            ])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "the child failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
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

    /// A broad tree deeper than [`MAX_DEPTH`], with names at the top that the directories moved
    /// up would take (a file, a non-empty directory, an empty one), and a FIFO and a read-only
    /// file on the way: all of it goes.
    #[test]
    fn a_wide_deep_tree_with_taken_names_is_removed() {
        let tree = scratch("wide");
        std::fs::write(tree.join(format!("{MOVED}1")), "file").unwrap();
        std::fs::create_dir_all(tree.join(format!("{MOVED}2/full"))).unwrap();
        std::fs::create_dir(tree.join(format!("{MOVED}3"))).unwrap();
        for branch in ["x", "y", "z"] {
            std::fs::create_dir(tree.join(branch)).unwrap();
            nest(&tree.join(branch), 2 * MAX_DEPTH + 5);
        }
        let fifo = CString::new(tree.join("x/fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let ro = tree.join("y/d/read-only");
        std::fs::write(&ro, "x").unwrap();
        std::fs::set_permissions(&ro, std::os::unix::fs::PermissionsExt::from_mode(0o400)).unwrap();
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
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
