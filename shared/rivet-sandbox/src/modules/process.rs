//! `process.run{command, args, env, cwd, timeout, stdin, check}`.
//!
//! - `command` is a bare name from the policy allow-list, resolved to an absolute path once by
//!   the parent; paths, relative names and a user `PATH` are never used (PROC-01).
//! - The environment is cleared and rebuilt: fixed variables, then only allow-listed names,
//!   never the hard deny-list (PROC-04). No shell is involved: argv only (PROC-05).
//! - Git is told to ignore `core.fsmonitor` and hooks for every child (PROC-06, first layer;
//!   the worker's namespaces are the boundary).
//! - Output streams to the log line by line and is capped; past the cap the process is killed
//!   (RES-06). Each child gets its own process group, killed when the call ends; inside the
//!   worker's pid namespace every leftover process (`setsid` included) is swept too.

use super::JobContext;
use crate::convert::Args;
use crate::events::{Level, Source};
use crate::policy_error;
use mlua::{Lua, Table};
use rivet_core::policy::{env_pattern_matches, is_program_name, ENV_DENY};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

const OPTIONS: [&str; 7] = ["command", "args", "env", "cwd", "timeout", "stdin", "check"];
/// Longest value of one variable passed to a child.
const MAX_ENV_VALUE: usize = 32 << 10;
/// Largest `stdin`.
const MAX_STDIN: usize = 16 << 20;
/// How long to drain output after the child exited and its group was killed.
const DRAIN_GRACE: Duration = Duration::from_millis(500);

enum Chunk {
    Data(Source, Vec<u8>),
    Eof,
}

/// Splits a byte stream into log lines, cutting lines longer than the cap.
struct Lines {
    partial: Vec<u8>,
    max: usize,
}

impl Lines {
    fn feed(&mut self, bytes: &[u8], mut emit: impl FnMut(&[u8])) {
        for &b in bytes {
            if b == b'\n' {
                emit(&self.partial);
                self.partial.clear();
            } else if self.partial.len() < self.max + 1 {
                self.partial.push(b);
            }
        }
    }

    fn finish(&mut self, mut emit: impl FnMut(&[u8])) {
        if !self.partial.is_empty() {
            emit(&self.partial);
            self.partial.clear();
        }
    }
}

/// Checks the environment a job asks for and builds the child's whole environment.
pub fn child_env(
    ctx: &JobContext,
    requested: &BTreeMap<String, String>,
) -> mlua::Result<Vec<(String, String)>> {
    let policy = &ctx.request.policy.process;
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in ctx.stage_env.borrow().iter().chain(requested.iter()) {
        if ENV_DENY.iter().any(|p| env_pattern_matches(p, name)) {
            return Err(policy_error(
                "process.env",
                format!("`{name}` cannot be set for a child process"),
            ));
        }
        if !policy
            .env_allow
            .iter()
            .any(|p| env_pattern_matches(p, name))
        {
            return Err(policy_error(
                "process.env",
                format!("`{name}` is not in the allowed names (process.env_allow)"),
            ));
        }
        if value.len() > MAX_ENV_VALUE || value.contains('\0') {
            return Err(policy_error(
                "process.env",
                format!("value of `{name}` is too long or contains NUL"),
            ));
        }
        env.insert(name.clone(), value.clone());
    }
    let fixed = [
        ("PATH", policy.search_path.join(":")),
        ("HOME", ctx.home.display().to_string()),
        ("TMPDIR", ctx.tmp.display().to_string()),
        ("CI", "true".into()),
        ("GIT_CONFIG_NOSYSTEM", "1".into()),
        ("GIT_TERMINAL_PROMPT", "0".into()),
    ];
    for (k, v) in fixed {
        env.insert(k.into(), v);
    }
    for (i, (key, value)) in git_config(policy).into_iter().enumerate() {
        env.insert(format!("GIT_CONFIG_KEY_{i}"), key);
        env.insert(format!("GIT_CONFIG_VALUE_{i}"), value);
        env.insert("GIT_CONFIG_COUNT".into(), (i + 1).to_string());
    }
    env.entry("LANG".into()).or_insert_with(|| "C.UTF-8".into());
    Ok(env.into_iter().collect())
}

/// Configuration every git child gets through `GIT_CONFIG_COUNT` (it outranks the repository's
/// own `.git/config`; only `-c` on the command line outranks it): no fsmonitor, no hooks, and
/// only the policy's transports (PROC-06). `file` is `user`: allowed for commands a job runs,
/// refused for submodules and other transports git starts on its own.
pub fn git_config(policy: &rivet_core::policy::ProcessPolicy) -> Vec<(String, String)> {
    let mut out = vec![
        ("core.fsmonitor".to_owned(), "false".to_owned()),
        ("core.hooksPath".to_owned(), "/dev/null".to_owned()),
        ("protocol.allow".to_owned(), "never".to_owned()),
        ("protocol.ext.allow".to_owned(), "never".to_owned()),
    ];
    for proto in &policy.git_protocols {
        let how = if proto == "file" { "user" } else { "always" };
        out.push((format!("protocol.{proto}.allow"), how.to_owned()));
    }
    out
}

fn kill_group(pgid: i32) {
    // SAFETY: kill(2) with a negative pid signals a process group; no memory is touched.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

/// Kills every process in the worker's pid namespace except the worker (pid 1) and reaps them.
/// Only meaningful when the worker is pid 1 of its own namespace with its own `/proc`.
pub fn sweep_namespace() {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let mut others = 0;
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for e in entries.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                    continue;
                };
                if pid == 1 {
                    continue;
                }
                others += 1;
                // SAFETY: signalling a pid inside our own namespace.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        // Reap whatever died (our orphans are re-parented to us, pid 1).
        loop {
            let mut status = 0;
            // SAFETY: waitpid with WNOHANG on any child.
            let r = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if r <= 0 {
                break;
            }
        }
        if others == 0 || Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn run(lua: &Lua, ctx: &Rc<JobContext>, opts: Table) -> mlua::Result<Table> {
    let inside = ctx.containers.borrow().last().cloned();
    if let Some(handle) = inside {
        return super::container::process_run(lua, ctx, &handle, opts);
    }
    if !ctx.process_granted.get() {
        return Err(policy_error(
            "process.grant",
            "`process` is not in this pipeline's `requires`; without it, process.run works only inside a container",
        ));
    }
    let args = Args::new(opts, "process.run", &OPTIONS)?;
    let command = args.required_string("command")?;
    let policy = &ctx.request.policy.process;
    if !is_program_name(&command) {
        return Err(policy_error(
            "process.binary",
            format!("`{command}` is not a bare program name; paths and relative names are refused"),
        ));
    }
    if !policy.allow.iter().any(|a| a == &command) {
        return Err(policy_error(
            "process.binary",
            format!("`{command}` is not in the allow-list (process.allow)"),
        ));
    }
    let Some(program) = ctx.request.binaries.get(&command) else {
        return Err(mlua::Error::runtime(format!(
            "process.run: `{command}` is allowed but not installed on this runner (searched {})",
            policy.search_path.join(":")
        )));
    };
    let argv = args.string_list("args")?;
    let env = child_env(ctx, &args.string_map("env")?)?;
    let stdin = args.string_max("stdin", MAX_STDIN)?;
    let check = args.boolean("check")?.unwrap_or(true);
    let timeout = match args.number("timeout")? {
        Some(secs) => rivet_core::duration::seconds(secs)
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                mlua::Error::runtime("process.run: `timeout` must be a positive number of seconds")
            })?,
        None => policy.default_timeout,
    };
    let workspace = ctx
        .workspace
        .as_ref()
        .ok_or_else(|| mlua::Error::runtime("process.run: no workspace in this phase"))?;
    let cwd_raw = args.string("cwd")?.unwrap_or_else(|| ".".into());
    let cwd_path = super::filesystem::check_path(&cwd_raw)?;
    let cwd = workspace
        .open_dir(&cwd_path)
        .map_err(|e| super::filesystem::io_error("cwd", &cwd_raw, e))?;
    let cwd_fd = cwd.as_raw_fd();

    let stage_left = ctx.budget.time_left();
    let (limit, stage_limited) = if stage_left < timeout {
        (stage_left, true)
    } else {
        (timeout, false)
    };

    let mut cmd = Command::new(program);
    cmd.args(&argv)
        .env_clear()
        .envs(env)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: only async-signal-safe calls (setpgid, fchdir, prctl) run between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setpgid(0, 0) != 0 || libc::fchdir(cwd_fd) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| mlua::Error::runtime(format!("process.run: cannot start `{command}`: {e}")))?;
    drop(cwd);
    let pgid = child.id() as i32;

    let (tx, rx) = mpsc::channel::<Chunk>();
    let mut readers = 0;
    for (source, pipe) in [
        (
            Source::Stdout,
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
        (
            Source::Stderr,
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
    ] {
        let Some(mut pipe) = pipe else { continue };
        let tx = tx.clone();
        readers += 1;
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send(Chunk::Data(source, buf[..n].to_vec())).is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = tx.send(Chunk::Eof);
        });
    }
    drop(tx);
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        std::thread::spawn(move || {
            let _ = pipe.write_all(input.as_bytes());
        });
    }

    let max_output = usize::try_from(policy.max_output).unwrap_or(usize::MAX);
    let max_line = usize::try_from(ctx.request.policy.log.max_line).unwrap_or(usize::MAX);
    let mut out = Vec::new();
    let mut err = Vec::new();
    let mut lines = [
        Lines {
            partial: Vec::new(),
            max: max_line,
        },
        Lines {
            partial: Vec::new(),
            max: max_line,
        },
    ];
    let log_line = |source: Source, bytes: &[u8]| {
        let level = if source == Source::Stderr {
            Level::Error
        } else {
            Level::Info
        };
        ctx.sink.log(level, source, &String::from_utf8_lossy(bytes));
    };
    let deadline = started + limit;
    let mut status = None;
    let mut drain_until: Option<Instant> = None;
    let mut overflow = false;
    let mut timed_out = false;
    let mut eofs = 0;
    while eofs < readers {
        let now = Instant::now();
        if status.is_none() && now >= deadline {
            timed_out = true;
            break;
        }
        if drain_until.is_some_and(|d| now >= d) {
            break;
        }
        let wait = deadline
            .saturating_duration_since(now)
            .min(Duration::from_millis(20));
        match rx.recv_timeout(wait) {
            Ok(Chunk::Data(source, bytes)) => {
                if out.len() + err.len() + bytes.len() > max_output {
                    overflow = true;
                    break;
                }
                let (capture, idx) = if source == Source::Stdout {
                    (&mut out, 0)
                } else {
                    (&mut err, 1)
                };
                capture.extend_from_slice(&bytes);
                lines[idx].feed(&bytes, |l| log_line(source, l));
            }
            Ok(Chunk::Eof) => eofs += 1,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if status.is_none() {
                    if let Ok(Some(s)) = child.try_wait() {
                        status = Some(s);
                        // Background members of the group may hold the pipes open: end them.
                        kill_group(pgid);
                        drain_until = Some(Instant::now() + DRAIN_GRACE);
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    // Both pipes can reach EOF before the child has exited (coreutils close stdout and stderr
    // in an atexit handler): wait for it, up to the deadline, before killing its group, or a
    // program that succeeded is reported as killed by SIGKILL.
    while status.is_none() && !overflow && !timed_out {
        match child.try_wait() {
            Ok(Some(s)) => status = Some(s),
            Ok(None) if Instant::now() >= deadline => timed_out = true,
            Ok(None) => std::thread::sleep(Duration::from_millis(1)),
            Err(_) => break,
        }
    }
    kill_group(pgid);
    let status = match status {
        Some(s) => s,
        None => child.wait().map_err(|e| {
            mlua::Error::runtime(format!("process.run: waiting for `{command}`: {e}"))
        })?,
    };
    for (idx, source) in [(0, Source::Stdout), (1, Source::Stderr)] {
        lines[idx].finish(|l| log_line(source, l));
    }
    if ctx.pid_namespace {
        sweep_namespace();
    }
    let duration = started.elapsed();

    if overflow {
        return Err(policy_error(
            "process.output",
            format!(
                "`{command}` wrote more than {} bytes of output and was killed",
                policy.max_output
            ),
        ));
    }
    if timed_out {
        if stage_limited {
            ctx.budget.expire_deadline();
            return Err(mlua::Error::runtime(format!(
                "process `{command}` was killed: the stage ran out of time after {}",
                crate::fmt_duration(ctx.budget.timeout())
            )));
        }
        return Err(mlua::Error::runtime(format!(
            "process `{command}` timed out after {} and was killed",
            crate::fmt_duration(limit)
        )));
    }
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    if check && !status.success() {
        let how = match status.signal() {
            Some(sig) => format!("was killed by signal {sig}"),
            None => format!("exited with code {code}"),
        };
        return Err(mlua::Error::runtime(format!("process `{command}` {how}")));
    }
    let result = lua.create_table()?;
    result.raw_set("code", code)?;
    result.raw_set("stdout", lua.create_string(&out)?)?;
    result.raw_set("stderr", lua.create_string(&err)?)?;
    result.raw_set("duration_ms", duration.as_millis() as u64)?;
    if let Some(sig) = status.signal() {
        result.raw_set("signal", sig)?;
    }
    Ok(result)
}

/// Installs `process`.
pub fn register(lua: &Lua, ctx: &Rc<JobContext>, env: &Table) -> mlua::Result<()> {
    let m = lua.create_table()?;
    let c = ctx.clone();
    m.raw_set(
        "run",
        lua.create_function(move |lua, opts: Table| run(lua, &c, opts))?,
    )?;
    env.raw_set("process", crate::vm::readonly(lua, &m)?)?;
    Ok(())
}
