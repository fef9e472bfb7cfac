//! `filesystem.*`: every path is resolved beneath the job workspace with cap-std, which uses
//! `openat2(RESOLVE_BENEATH)` where the kernel has it and component-wise resolution elsewhere, so
//! `..`, absolute paths and symlinks cannot lead out (FS-01..03). Sizes and totals are capped
//! (RES-09).

use super::JobContext;
use crate::policy_error;
use cap_std::fs::{Dir, OpenOptions};
use mlua::{Lua, Table, Value};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Longest path accepted.
const MAX_PATH: usize = 4096;

/// Checks a workspace-relative path lexically. cap-std then enforces the jail at resolution.
pub fn check_path(raw: &str) -> mlua::Result<PathBuf> {
    if raw.is_empty() {
        return Err(mlua::Error::runtime("path is empty"));
    }
    if raw.contains('\0') {
        return Err(policy_error("fs.path", "path contains a NUL byte"));
    }
    if raw.len() > MAX_PATH {
        return Err(policy_error(
            "fs.path",
            format!("path is longer than {MAX_PATH} bytes"),
        ));
    }
    if raw.starts_with('/') {
        return Err(policy_error(
            "fs.path",
            format!("absolute path `{raw}` refused; paths are relative to the job workspace"),
        ));
    }
    let mut depth: i64 = 0;
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return Err(policy_error(
                        "fs.path",
                        format!("`{raw}` leads outside the workspace"),
                    ));
                }
            }
            _ => depth += 1,
        }
    }
    Ok(PathBuf::from(raw))
}

/// Maps an I/O error on `path` to a Lua error; escapes through symlinks become policy errors.
pub fn io_error(op: &str, path: &str, err: io::Error) -> mlua::Error {
    let text = err.to_string();
    if text.contains("outside of the filesystem") || err.raw_os_error() == Some(libc::EXDEV) {
        return policy_error(
            "fs.path",
            format!("`{path}` resolves outside the workspace"),
        );
    }
    if err.raw_os_error() == Some(libc::ELOOP) {
        return policy_error(
            "fs.path",
            format!("`{path}` has too many levels of symbolic links"),
        );
    }
    let what = match err.kind() {
        io::ErrorKind::NotFound => "no such file or directory".to_owned(),
        io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        io::ErrorKind::AlreadyExists => "already exists".to_owned(),
        _ => text,
    };
    mlua::Error::runtime(format!("filesystem.{op}: `{path}`: {what}"))
}

struct Fs {
    ctx: Rc<JobContext>,
}

impl Fs {
    fn dir(&self) -> mlua::Result<&Dir> {
        self.ctx
            .workspace
            .as_ref()
            .ok_or_else(|| mlua::Error::runtime("filesystem: no workspace in this phase"))
    }

    fn charge(&self, bytes: u64, entries: u64) -> mlua::Result<()> {
        let p = &self.ctx.request.policy.filesystem;
        let (b, e) = self.ctx.fs_usage.get();
        let (b, e) = (b.saturating_add(bytes), e.saturating_add(entries));
        if b > p.max_total_write {
            return Err(policy_error(
                "fs.quota",
                format!(
                    "the job may write at most {} bytes through filesystem",
                    p.max_total_write
                ),
            ));
        }
        if e > p.max_entries {
            return Err(policy_error(
                "fs.quota",
                format!(
                    "the job may create at most {} files and directories",
                    p.max_entries
                ),
            ));
        }
        self.ctx.fs_usage.set((b, e));
        Ok(())
    }

    /// Whether `path` exists (following symlinks). Unlike `Dir::exists`, a path that resolves
    /// outside the workspace is an `[fs.path]` error, not "absent" (FS-03).
    fn exists_beneath(&self, path: &Path, raw: &str, op: &str) -> mlua::Result<bool> {
        match self.dir()?.metadata(path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_error(op, raw, e)),
        }
    }

    fn ensure_parent(&self, path: &Path, raw: &str) -> mlua::Result<()> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            if !self.exists_beneath(parent, raw, "write")? {
                self.charge(0, parent.components().count() as u64)?;
                self.dir()?
                    .create_dir_all(parent)
                    .map_err(|e| io_error("write", raw, e))?;
            }
        }
        Ok(())
    }

    fn write(&self, raw: &str, content: &[u8], append: bool) -> mlua::Result<()> {
        let op = if append { "append" } else { "write" };
        let path = check_path(raw)?;
        let p = &self.ctx.request.policy.filesystem;
        if content.len() as u64 > p.max_write {
            return Err(policy_error(
                "fs.size",
                format!("a single {op} may be at most {} bytes", p.max_write),
            ));
        }
        self.ensure_parent(&path, raw)?;
        let existed = self.dir()?.exists(&path);
        self.charge(content.len() as u64, u64::from(!existed))?;
        let mut opts = OpenOptions::new();
        opts.write(true).create(true);
        if append {
            opts.append(true);
        } else {
            opts.truncate(true);
        }
        let mut file = self
            .dir()?
            .open_with(&path, &opts)
            .map_err(|e| io_error(op, raw, e))?;
        file.write_all(content).map_err(|e| io_error(op, raw, e))
    }

    fn read(&self, raw: &str) -> mlua::Result<Vec<u8>> {
        let path = check_path(raw)?;
        let max = self.ctx.request.policy.filesystem.max_read;
        let file = self
            .dir()?
            .open(&path)
            .map_err(|e| io_error("read", raw, e))?;
        let meta = file.metadata().map_err(|e| io_error("read", raw, e))?;
        if !meta.is_file() {
            return Err(mlua::Error::runtime(format!(
                "filesystem.read: `{raw}` is not a regular file"
            )));
        }
        if meta.len() > max {
            return Err(policy_error(
                "fs.size",
                format!("`{raw}` is larger than the read limit of {max} bytes"),
            ));
        }
        let mut buf = Vec::with_capacity(meta.len() as usize);
        file.take(max + 1)
            .read_to_end(&mut buf)
            .map_err(|e| io_error("read", raw, e))?;
        if buf.len() as u64 > max {
            return Err(policy_error(
                "fs.size",
                format!("`{raw}` is larger than the read limit of {max} bytes"),
            ));
        }
        Ok(buf)
    }
}

fn bytes_of(v: &Value, op: &str) -> mlua::Result<Vec<u8>> {
    match v {
        Value::String(s) => Ok(s.as_bytes().to_vec()),
        Value::Integer(i) => Ok(i.to_string().into_bytes()),
        Value::Number(n) => Ok(n.to_string().into_bytes()),
        other => Err(mlua::Error::runtime(format!(
            "filesystem.{op}: content must be a string, got {}",
            other.type_name()
        ))),
    }
}

/// Installs `filesystem`.
pub fn register(lua: &Lua, ctx: &Rc<JobContext>, env: &Table) -> mlua::Result<()> {
    let fs = Rc::new(Fs { ctx: ctx.clone() });
    let m = lua.create_table()?;

    let f = fs.clone();
    m.raw_set(
        "read",
        lua.create_function(move |lua, path: String| lua.create_string(f.read(&path)?))?,
    )?;
    let f = fs.clone();
    m.raw_set(
        "write",
        lua.create_function(move |_, (path, content): (String, Value)| {
            f.write(&path, &bytes_of(&content, "write")?, false)
        })?,
    )?;
    let f = fs.clone();
    m.raw_set(
        "append",
        lua.create_function(move |_, (path, content): (String, Value)| {
            f.write(&path, &bytes_of(&content, "append")?, true)
        })?,
    )?;
    let f = fs.clone();
    m.raw_set(
        "exists",
        lua.create_function(move |_, path: String| {
            let p = check_path(&path)?;
            match f.dir()?.symlink_metadata(&p) {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(io_error("exists", &path, e)),
            }
        })?,
    )?;
    let f = fs.clone();
    m.raw_set(
        "mkdir",
        lua.create_function(move |_, path: String| {
            let p = check_path(&path)?;
            if f.exists_beneath(&p, &path, "mkdir")? && f.dir()?.is_dir(&p) {
                return Ok(());
            }
            f.charge(0, p.components().count() as u64)?;
            f.dir()?
                .create_dir_all(&p)
                .map_err(|e| io_error("mkdir", &path, e))
        })?,
    )?;
    let f = fs.clone();
    m.raw_set(
        "list",
        lua.create_function(move |lua, path: Option<String>| {
            let raw = path.unwrap_or_else(|| ".".into());
            let p = check_path(&raw)?;
            let max = f.ctx.request.policy.filesystem.max_list as usize;
            let mut names = Vec::new();
            for entry in f
                .dir()?
                .read_dir(&p)
                .map_err(|e| io_error("list", &raw, e))?
            {
                let entry = entry.map_err(|e| io_error("list", &raw, e))?;
                if names.len() >= max {
                    return Err(policy_error(
                        "fs.size",
                        format!("`{raw}` has more than {max} entries"),
                    ));
                }
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
            names.sort();
            lua.create_sequence_from(names)
        })?,
    )?;
    let f = fs.clone();
    m.raw_set(
        "remove",
        lua.create_function(move |_, (path, opts): (String, Option<Table>)| {
            let p = check_path(&path)?;
            if p.components()
                .all(|c| matches!(c, std::path::Component::CurDir))
            {
                return Err(policy_error(
                    "fs.path",
                    "the workspace itself cannot be removed",
                ));
            }
            let recursive = match opts {
                Some(t) => crate::convert::Args::new(t, "filesystem.remove", &["recursive"])?
                    .boolean("recursive")?
                    .unwrap_or(false),
                None => false,
            };
            let dir = f.dir()?;
            let meta = dir
                .symlink_metadata(&p)
                .map_err(|e| io_error("remove", &path, e))?;
            let result = if meta.is_dir() {
                if recursive {
                    dir.remove_dir_all(&p)
                } else {
                    dir.remove_dir(&p)
                }
            } else {
                dir.remove_file(&p)
            };
            result.map_err(|e| io_error("remove", &path, e))
        })?,
    )?;
    let f = fs.clone();
    m.raw_set(
        "copy",
        lua.create_function(move |_, (from, to): (String, String)| {
            let src = check_path(&from)?;
            let dst = check_path(&to)?;
            let dir = f.dir()?;
            let meta = dir.metadata(&src).map_err(|e| io_error("copy", &from, e))?;
            if !meta.is_file() {
                return Err(mlua::Error::runtime(format!(
                    "filesystem.copy: `{from}` is not a regular file"
                )));
            }
            if meta.len() > f.ctx.request.policy.filesystem.max_write {
                return Err(policy_error(
                    "fs.size",
                    format!("`{from}` is larger than the write limit"),
                ));
            }
            f.ensure_parent(&dst, &to)?;
            f.charge(meta.len(), u64::from(!dir.exists(&dst)))?;
            dir.copy(&src, dir, &dst)
                .map(|_| ())
                .map_err(|e| io_error("copy", &to, e))
        })?,
    )?;
    let f = fs.clone();
    m.raw_set(
        "stat",
        lua.create_function(move |lua, path: String| {
            let p = check_path(&path)?;
            let meta = match f.dir()?.symlink_metadata(&p) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Value::Nil),
                Err(e) => return Err(io_error("stat", &path, e)),
            };
            let t = lua.create_table()?;
            let kind = if meta.is_symlink() {
                "symlink"
            } else if meta.is_dir() {
                "directory"
            } else if meta.is_file() {
                "file"
            } else {
                "other"
            };
            t.raw_set("type", kind)?;
            t.raw_set("size", meta.len())?;
            if let Ok(modified) = meta.modified() {
                if let Ok(d) = modified.into_std().duration_since(std::time::UNIX_EPOCH) {
                    t.raw_set("modified", d.as_secs())?;
                }
            }
            Ok(Value::Table(t))
        })?,
    )?;
    env.raw_set("filesystem", crate::vm::readonly(lua, &m)?)?;
    Ok(())
}
