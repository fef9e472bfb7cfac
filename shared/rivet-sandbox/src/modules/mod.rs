//! Core modules and the per-job context they share.
//!
//! One module per file (`http` asks the parent through a host call); each exposes `register(lua, ctx, env)` and is called only when the job
//! was granted it (`log`, `env` and `json` always are). Module tables are installed as read-only
//! views.

pub mod container;
pub mod env;
pub mod filesystem;
pub mod http;
pub mod json;
pub mod log;
pub mod process;

use crate::events::{Event, Level, Source};
use crate::job::JobRequest;
use crate::vm::Budget;
use rivet_core::policy::LogPolicy;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;

/// Everything the core modules of one job share. Lives in the worker process only.
#[derive(Debug)]
pub struct JobContext {
    /// The request the worker received.
    pub request: JobRequest,
    /// Where events go.
    pub sink: Rc<Sink>,
    /// The VM budget (deadlines for processes are capped by it).
    pub budget: Rc<Budget>,
    /// Values set with `env.set`, visible to later stages.
    pub vars: RefCell<BTreeMap<String, String>>,
    /// Resolved, typed input values.
    pub inputs: RefCell<BTreeMap<String, rivet_core::InputValue>>,
    /// The running stage's `env` table.
    pub stage_env: RefCell<BTreeMap<String, String>>,
    /// The workspace, opened as a capability; `None` when linting.
    pub workspace: Option<cap_std::fs::Dir>,
    /// Private HOME for child processes.
    pub home: PathBuf,
    /// Private TMPDIR for child processes.
    pub tmp: PathBuf,
    /// Whether the worker owns a private pid namespace (so leftovers can be swept).
    pub pid_namespace: bool,
    /// Bytes and entries written through `filesystem`.
    pub fs_usage: Cell<(u64, u64)>,
    /// Host calls to the parent (network, containers).
    pub host: crate::host::HostChannel,
    /// Containers entered with `container.with` or a container stage, innermost last;
    /// `process.run` runs in the last one.
    pub containers: RefCell<Vec<String>>,
    /// Whether `process` was granted (it is installed for `container` too, where it may only
    /// run commands inside a container).
    pub process_granted: Cell<bool>,
}

/// Writes events to the parent: masks secrets, caps line length and the job's total log, and
/// numbers log lines.
#[derive(Debug)]
pub struct Sink {
    out: RefCell<Box<dyn WriteDebug>>,
    policy: LogPolicy,
    masks: Vec<String>,
    started: Instant,
    seq: Cell<u64>,
    lines: Cell<u64>,
    bytes: Cell<u64>,
    truncated: Cell<bool>,
    /// The running stage, stamped on log lines.
    pub stage: RefCell<Option<String>>,
}

/// A `Write` that can be printed in `Debug` output.
pub trait WriteDebug: Write + std::fmt::Debug {}
impl<T: Write + std::fmt::Debug> WriteDebug for T {}

impl Sink {
    /// A sink writing frames to `out`, masking `secrets`.
    pub fn new(
        out: Box<dyn WriteDebug>,
        policy: LogPolicy,
        secrets: impl IntoIterator<Item = String>,
    ) -> Self {
        // Longest first, so a secret that contains another is masked whole.
        let mut masks: Vec<String> = secrets.into_iter().filter(|s| s.len() >= 3).collect();
        masks.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Self {
            out: RefCell::new(out),
            policy,
            masks,
            started: Instant::now(),
            seq: Cell::new(0),
            lines: Cell::new(0),
            bytes: Cell::new(0),
            truncated: Cell::new(false),
            stage: RefCell::new(None),
        }
    }

    /// Sends a non-log event. A parent that went away ends the worker: nobody would see its work.
    pub fn emit(&self, event: &Event) {
        let mut out = self.out.borrow_mut();
        if crate::events::write_frame(&mut *out, event).is_err() {
            std::process::exit(crate::worker::EXIT_PARENT_GONE);
        }
    }

    /// Masks secrets in `text`.
    pub fn mask(&self, text: &str) -> String {
        let mut s = text.to_owned();
        for m in &self.masks {
            if s.contains(m.as_str()) {
                s = s.replace(m.as_str(), "***");
            }
        }
        s
    }

    /// Logs `text`, one event per line.
    pub fn log(&self, level: Level, source: Source, text: &str) {
        let text = text.strip_suffix('\n').unwrap_or(text);
        for line in text.split('\n') {
            self.log_line(level, source, line);
        }
    }

    fn log_line(&self, level: Level, source: Source, line: &str) {
        if self.truncated.get() {
            return;
        }
        let max_line = usize::try_from(self.policy.max_line).unwrap_or(usize::MAX);
        let mut line = self.mask(line.strip_suffix('\r').unwrap_or(line));
        if line.len() > max_line {
            let mut cut = max_line;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            let dropped = line.len() - cut;
            line.truncate(cut);
            line.push_str(&format!(" [... {dropped} bytes cut]"));
        }
        let lines = self.lines.get() + 1;
        let bytes = self.bytes.get() + line.len() as u64;
        if lines > self.policy.max_lines || bytes > self.policy.max_bytes {
            self.truncated.set(true);
            let marker = format!(
                "log truncated: this job reached its log limit ({} lines or {} bytes); later output is dropped",
                self.policy.max_lines, self.policy.max_bytes
            );
            self.write_log(Level::Warn, Source::System, marker);
            return;
        }
        self.lines.set(lines);
        self.bytes.set(bytes);
        self.write_log(level, source, line);
    }

    fn write_log(&self, level: Level, source: Source, line: String) {
        let seq = self.seq.get();
        self.seq.set(seq + 1);
        let event = Event::Log {
            seq,
            at_ms: self.started.elapsed().as_millis() as u64,
            stage: self.stage.borrow().clone(),
            level,
            source,
            line,
        };
        self.emit(&event);
    }
}

impl JobContext {
    /// A Lua error as the job's log and outcome show it: described, with secrets masked.
    pub fn lua_error(&self, err: &mlua::Error) -> String {
        self.sink.mask(&crate::describe_error(err))
    }
}
