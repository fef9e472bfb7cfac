//! The hardened Lua sandbox and the killable worker process that hosts it.
//!
//! - [`vm`]: a fresh, hardened Lua state per job (defences.md recipe).
//! - [`definition`]: evaluates `pipeline.lua` under tight limits and validates its shape.
//! - [`modules`]: the core modules `log`, `env`, `json`, `process`, `filesystem`.
//! - [`plugins`]: `require("plugin.NAME")` and plugin manifests.
//! - [`worker`]: the sandbox worker process: spawn, isolate, stream events, kill.
//! - [`host`]: host calls the worker asks its parent to make (network), and their handlers.
//! - [`remove`]: removing a tree a job made, however deep, without following links.
//!
//! This is the only crate that depends on `mlua`. It must not depend on any service crate,
//! broker or database: the CLI's local run, the runner and the orchestrator's definition check
//! all use it as it is. Its HTTP client (`reqwest`) runs only in the parent, in [`host`]; the
//! worker never opens a network connection itself.

pub mod convert;
pub mod definition;
pub mod events;
mod execute;
#[doc(hidden)]
pub mod fuzzing;
pub mod host;
pub mod job;
pub mod modules;
pub mod plugins;
pub mod remove;
pub mod vm;
pub mod worker;

pub use host::HostServices;
pub use job::{JobRequest, Mode};
pub use remove::remove_tree;
pub use worker::{job_host_uid, run_worker, NetworkNamespaces, WorkerOptions, WorkerReport};

use std::time::Duration;

/// A Lua error whose text reads `policy violation [<area.rule>]: <what and why>`.
pub fn policy_error(rule: &str, message: impl std::fmt::Display) -> mlua::Error {
    mlua::Error::runtime(format!("policy violation [{rule}]: {message}"))
}

/// Formats a duration for people: `250ms`, `3s`, `2m5s`.
pub fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        let s = d.as_secs_f64();
        if s.fract() < 0.05 {
            format!("{}s", s.round() as u64)
        } else {
            format!("{s:.1}s")
        }
    } else {
        let s = d.as_secs();
        if s.is_multiple_of(60) {
            format!("{}m", s / 60)
        } else {
            format!("{}m{}s", s / 60, s % 60)
        }
    }
}

/// The message of a Lua error as a pipeline author should read it: no "runtime error:" prefix,
/// no Rust type names, the innermost cause of callback errors, and the script position when the
/// error was raised by a core module.
pub fn describe_error(err: &mlua::Error) -> String {
    match err {
        mlua::Error::RuntimeError(s) => match s.find("\nstack traceback:") {
            Some(cut) => s[..cut].to_owned(),
            None => s.clone(),
        },
        mlua::Error::MemoryError(_) => "not enough memory (Lua memory limit reached)".into(),
        mlua::Error::SyntaxError { message, .. } => message.clone(),
        mlua::Error::CallbackError { traceback, cause } => {
            let inner = describe_error(cause);
            match script_position(traceback) {
                Some(pos) if !inner.starts_with(&pos) && !inner.contains(".lua:") => {
                    format!("{pos} {inner}")
                }
                _ => inner,
            }
        }
        mlua::Error::WithContext { context, cause } => {
            format!("{context}: {}", describe_error(cause))
        }
        mlua::Error::BadArgument {
            to,
            pos,
            name,
            cause,
        } => {
            let func = to.as_deref().unwrap_or("?");
            let arg = name
                .as_deref()
                .map(|n| format!(" `{n}`"))
                .unwrap_or_default();
            format!(
                "bad argument #{pos}{arg} to '{func}': {}",
                describe_error(cause)
            )
        }
        mlua::Error::FromLuaConversionError { from, to, message } => match message {
            Some(m) => format!("expected {to}, got {from}: {m}"),
            None => format!("expected {to}, got {from}"),
        },
        other => other.to_string(),
    }
}

/// Reads the policy file at `path` (`None`: the default policy), as the runner, `rivet run` and
/// `rivet plugin test` do: parsed and checked, relative `http.ca_certificates` paths taken from
/// the file's directory, and those certificates loaded once to fail here rather than in a job.
pub fn read_policy(path: Option<&std::path::Path>) -> Result<rivet_core::Policy, String> {
    let Some(path) = path else {
        return Ok(rivet_core::Policy::default());
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("reading policy {}: {e}", path.display()))?;
    let mut policy = rivet_core::Policy::from_toml(&text)
        .map_err(|e| format!("policy {}: {e}", path.display()))?;
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    for ca in &mut policy.http.ca_certificates {
        if ca.is_relative() {
            *ca = dir.join(&*ca);
        }
    }
    host::http::load_roots(&policy.http).map_err(|e| format!("policy {}: {e}", path.display()))?;
    Ok(policy)
}

/// The first `file.lua:N:` position in a Lua traceback that is not inside Rivet itself.
fn script_position(traceback: &str) -> Option<String> {
    traceback.lines().map(str::trim).find_map(|line| {
        let colon = line.find(".lua:")?;
        let rest = &line[colon + 5..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if digits.is_empty() {
            return None;
        }
        Some(format!("{}.lua:{digits}:", &line[..colon]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(fmt_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(fmt_duration(Duration::from_secs(3)), "3s");
        assert_eq!(fmt_duration(Duration::from_secs(125)), "2m5s");
        assert_eq!(fmt_duration(Duration::from_secs(120)), "2m");
    }

    #[test]
    fn traceback_position() {
        let tb = "stack traceback:\n\t[C]: in function 'process.run'\n\tpipeline.lua:12: in function <pipeline.lua:10>";
        assert_eq!(script_position(tb).as_deref(), Some("pipeline.lua:12:"));
    }
}
