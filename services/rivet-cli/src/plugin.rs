//! `rivet plugin test PATH`: runs a plugin's own tests in the real sandbox worker, the way
//! `rivet run` runs a pipeline.
//!
//! A plugin `DIR/NAME.lua` keeps its tests in `DIR/NAME_test.lua`, a Lua file returning
//! `{ requires = {...}, tests = { ["what it checks"] = function(t) ... end, ... } }`. Each test
//! becomes one stage of a generated pipeline that requires `plugin.NAME` (plus the suite's own
//! `requires`); every test runs in its own worker and its own fresh workspace, so tests cannot
//! see each other's files or state. `t` holds assertion helpers (see `docs/plugins.md`).

use crate::setup::{read_source, worker_options};
use crate::workspace::TempWorkspace;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use rivet_core::{JobOutcome, StageOutcome};
use rivet_sandbox::events::{Event, Source};
use rivet_sandbox::{JobRequest, Mode};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

const TEST_HELP: &str = "\
Conventions:
  A plugin DIR/NAME.lua keeps its tests in DIR/NAME_test.lua, which returns
    { requires = {\"process\"},                -- optional: what the tests need beyond the plugin
      tests = { [\"what it checks\"] = function(t) ... end, ... } }
  Each test runs as one stage of a pipeline that requires plugin.NAME, in its own sandbox
  worker and its own fresh workspace, under the policy (--policy, default: the safe defaults).
  A test passes when its function returns, and fails with the error it raises. `t` has
  t.eq(got, want, what), t.ok(value, what), t.contains(text, part, what) and
  t.raises(fn, part, what), which calls fn and expects an error containing `part`.

PATH:
  A plugin file (plugins/git.lua), its test file (plugins/git_test.lua), or a directory: every
  NAME.lua in it that has a NAME_test.lua. The plugin under test is the file in PATH's
  directory, not the copy built into rivet.

Output and exit status:
  One line per test (ok / FAIL, with the error and the test's log for failures), then a
  summary. --json prints one JSON object per test, then {\"summary\": ...}. Exit status 0 when
  every test passed, 1 when any failed, 2 when the tests cannot be found or loaded. Ctrl-C (or
  SIGTERM) cancels the running test and runs no further one; rivet then ends by that signal
  (status 130, or 143).

Examples:
  rivet plugin test plugins/git.lua
  rivet plugin test plugins/ --filter clone
";

/// `rivet plugin ...`.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Run a plugin's tests (NAME_test.lua beside NAME.lua) in the sandbox.
    #[command(after_long_help = TEST_HELP)]
    Test(TestArgs),
}

/// Arguments of `rivet plugin test`.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// A plugin file, its `_test.lua` file, or a directory of plugins.
    pub path: PathBuf,
    /// Run only the tests whose name contains this text.
    #[arg(long, value_name = "TEXT")]
    pub filter: Option<String>,
    /// Print one JSON object per test and a summary instead of text.
    #[arg(long)]
    pub json: bool,
    /// Sandbox policy file (TOML). Without it, the safe defaults apply (see docs/policy.md).
    #[arg(long, value_name = "FILE", env = "RIVET_POLICY")]
    pub policy: Option<PathBuf>,
}

/// Runs a plugin subcommand.
pub fn run(cmd: PluginCommand) -> Result<i32> {
    match cmd {
        PluginCommand::Test(args) => test(args),
    }
}

/// One plugin with tests: its directory, name and test file.
#[derive(Debug)]
struct Suite {
    dir: PathBuf,
    name: String,
    test_file: PathBuf,
}

fn suites(path: &Path) -> Result<Vec<Suite>> {
    if path.is_dir() {
        let mut out = Vec::new();
        let entries =
            std::fs::read_dir(path).with_context(|| format!("reading {}", path.display()))?;
        for entry in entries {
            let file = entry?.path();
            let Some(stem) = file.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            if file.extension().and_then(|e| e.to_str()) != Some("lua") || stem.ends_with("_test") {
                continue;
            }
            let test_file = path.join(format!("{stem}_test.lua"));
            if test_file.is_file() {
                out.push(Suite {
                    dir: path.to_path_buf(),
                    name: stem.to_owned(),
                    test_file,
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        if out.is_empty() {
            bail!(
                "no plugin tests in {}: a plugin NAME.lua keeps its tests in NAME_test.lua",
                path.display()
            );
        }
        return Ok(out);
    }
    let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
        bail!("{} is not a plugin file", path.display());
    };
    if path.extension().and_then(|e| e.to_str()) != Some("lua") {
        bail!(
            "{} is not a plugin file (NAME.lua) or a directory",
            path.display()
        );
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let name = stem.strip_suffix("_test").unwrap_or(stem).to_owned();
    let plugin_file = dir.join(format!("{name}.lua"));
    if !plugin_file.is_file() {
        bail!("plugin {} does not exist", plugin_file.display());
    }
    let test_file = dir.join(format!("{name}_test.lua"));
    if !test_file.is_file() {
        bail!(
            "plugin `{name}` has no tests: expected {}",
            test_file.display()
        );
    }
    Ok(vec![Suite {
        dir,
        name,
        test_file,
    }])
}

/// `s` as a Lua long-bracket-free string literal.
fn lua_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for b in s.bytes() {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'"' => out.push_str("\\\""),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            0x20..=0x7e => out.push(b as char),
            other => out.push_str(&format!("\\{other:03}")),
        }
    }
    out.push('"');
    out
}

/// The pipeline that runs `suite`'s tests: one stage per test, each guarded by a condition on
/// the input `rivet_test`, so one job runs exactly one test.
fn harness_source(name: &str, test_file_name: &str, test_source: &str) -> String {
    format!(
        r#"-- Generated by `rivet plugin test` for plugin `{name}`.
local chunk, err = load({source}, "={file}", "t", _ENV)
if not chunk then error(err, 0) end
local suite = chunk()
if type(suite) ~= "table" or type(suite.tests) ~= "table" then
  error("{file} must return a table with `tests` (a table of name = function(t) ... end)", 0)
end
local t = {{}}
local function show(v)
  if type(v) == "string" then return string.format("%q", v) end
  return tostring(v)
end
function t.eq(got, want, what)
  if got ~= want then
    error((what and (what .. ": ") or "") .. "expected " .. show(want) .. ", got " .. show(got), 2)
  end
end
function t.ok(v, what)
  if not v then error((what or "expected a true value") .. " (got " .. show(v) .. ")", 2) end
  return v
end
function t.contains(text, part, what)
  if type(text) ~= "string" or not text:find(part, 1, true) then
    error((what and (what .. ": ") or "") .. "expected " .. show(text) .. " to contain " .. show(part), 2)
  end
end
function t.raises(fn, part, what)
  local ok, e = pcall(fn)
  if ok then error((what and (what .. ": ") or "") .. "expected an error containing " .. show(part) .. ", but it succeeded", 2) end
  e = tostring(e)
  if part and not e:find(part, 1, true) then
    error((what and (what .. ": ") or "") .. "expected an error containing " .. show(part) .. ", got " .. show(e), 2)
  end
  return e
end
local names = {{}}
for n, f in pairs(suite.tests) do
  if type(n) ~= "string" or type(f) ~= "function" then
    error("{file}: every entry of `tests` must be name = function(t) ... end", 0)
  end
  names[#names + 1] = n
end
table.sort(names)
local stages = {{}}
for _, n in ipairs(names) do
  stages[#stages + 1] = {{
    name = n,
    condition = function() return env.get("rivet_test") == n end,
    script = function() suite.tests[n](t) end,
  }}
end
local requires = {{"plugin.{name}"}}
for _, r in ipairs(suite.requires or {{}}) do requires[#requires + 1] = r end
return {{
  name = "plugin test {name}",
  requires = requires,
  inputs = {{ rivet_test = {{ type = "string", required = true }} }},
  stages = stages,
}}
"#,
        source = lua_literal(test_source),
        file = test_file_name,
    )
}

/// How one test ended.
#[derive(Debug, serde::Serialize)]
struct TestResult {
    plugin: String,
    test: String,
    passed: bool,
    duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    log: Vec<String>,
}

fn test(args: TestArgs) -> Result<i32> {
    let policy = rivet_sandbox::read_policy(args.policy.as_deref()).map_err(anyhow::Error::msg)?;
    crate::workspace::warn_if_root_jobs(&policy);
    let mut options = worker_options()?;
    options.cancel = Some(crate::interrupt::cancel_flag());
    // From here a signal cancels the running test and lets this function clean up.
    let _armed = crate::interrupt::arm();
    let binaries = rivet_sandbox::job::resolve_binaries(&policy.process);
    let mut results = Vec::new();
    'suites: for suite in suites(&args.path)? {
        let plugins = rivet_sandbox::plugins::catalog(Some(&suite.dir))
            .with_context(|| format!("reading plugins in {}", suite.dir.display()))?;
        let test_source = read_source(&suite.test_file, policy.limits.max_source)?;
        let file_name = format!("{}_test.lua", suite.name);
        let source = harness_source(&suite.name, &file_name, &test_source);
        let base = JobRequest {
            mode: Mode::Lint,
            file_name: format!("{}_test (harness)", suite.name),
            source,
            inputs: BTreeMap::new(),
            secrets: BTreeMap::new(),
            metadata: BTreeMap::new(),
            workspace: PathBuf::from("/"),
            policy: policy.clone(),
            binaries: binaries.clone(),
            plugins,
        };
        // List the tests: evaluate the generated definition without running anything.
        let report = rivet_sandbox::run_worker(&base, &options, |_| {})
            .context("starting the sandbox worker")?;
        if crate::interrupt::received().is_some() {
            break;
        }
        let spec = match (&report.definition, report.outcome.is_success()) {
            (Some(spec), true) => spec.clone(),
            _ => {
                let mut why = report
                    .problems
                    .iter()
                    .map(|p| p.message.clone())
                    .collect::<Vec<_>>()
                    .join("; ");
                if why.is_empty() {
                    why = report.outcome.to_string();
                }
                bail!("loading the tests of plugin `{}`: {why}", suite.name);
            }
        };
        for stage in &spec.stages {
            if let Some(f) = &args.filter {
                if !stage.name.contains(f.as_str()) {
                    continue;
                }
            }
            if crate::interrupt::received().is_some() {
                break 'suites;
            }
            let result = run_one(&base, &suite.name, &stage.name, &options)?;
            if !args.json {
                print_result(&result);
            } else {
                println!("{}", serde_json::to_string(&result)?);
            }
            results.push(result);
        }
    }
    let failed = results.iter().filter(|r| !r.passed).count();
    let passed = results.len() - failed;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"summary": {"passed": passed, "failed": failed}})
        );
    } else {
        println!(
            "\n{passed} passed, {failed} failed{}",
            if results.is_empty() && crate::interrupt::received().is_none() {
                " (no test matched)"
            } else {
                ""
            }
        );
    }
    if let Some(signal) = crate::interrupt::received() {
        eprintln!("rivet: interrupted; no further test was run");
        return Ok(128 + signal);
    }
    Ok(if failed == 0 && !results.is_empty() {
        0
    } else {
        1
    })
}

fn run_one(
    base: &JobRequest,
    plugin: &str,
    test: &str,
    options: &rivet_sandbox::WorkerOptions,
) -> Result<TestResult> {
    let workspace = TempWorkspace::create("rivet-plugin-test-", false, &base.policy)?;
    let mut request = base.clone();
    request.mode = Mode::Run;
    request.workspace = workspace.path().to_path_buf();
    request.inputs = BTreeMap::from([("rivet_test".to_owned(), test.to_owned())]);
    request.metadata = BTreeMap::from([
        (
            "RIVET_JOB_ID".to_owned(),
            format!("plugin-test-{}", std::process::id()),
        ),
        (
            "RIVET_WORKSPACE".to_owned(),
            request.workspace.display().to_string(),
        ),
    ]);
    let started = Instant::now();
    let mut stage: Option<(StageOutcome, Option<String>)> = None;
    let mut log = Vec::new();
    let report = rivet_sandbox::run_worker(&request, options, |ev| match ev {
        Event::StageFinished {
            name,
            outcome,
            error,
            ..
        } if name == test => stage = Some((*outcome, error.clone())),
        Event::Log { source, line, .. } if *source != Source::System => {
            log.push(line.clone());
        }
        _ => {}
    })
    .context("starting the sandbox worker")?;
    let (passed, error) = match (&report.outcome, stage) {
        (JobOutcome::Succeeded, Some((StageOutcome::Succeeded, _))) => (true, None),
        (_, Some((StageOutcome::Succeeded, _))) | (_, None) => {
            (false, Some(report.outcome.to_string()))
        }
        (_, Some((outcome, error))) => (
            false,
            Some(error.unwrap_or_else(|| format!("{outcome:?}").to_lowercase())),
        ),
    };
    const LOG_TAIL: usize = 20;
    let log = if passed {
        Vec::new()
    } else {
        log.split_off(log.len().saturating_sub(LOG_TAIL))
    };
    Ok(TestResult {
        plugin: plugin.to_owned(),
        test: test.to_owned(),
        passed,
        duration_ms: started.elapsed().as_millis() as u64,
        error,
        log,
    })
}

fn print_result(r: &TestResult) {
    let took = rivet_sandbox::fmt_duration(std::time::Duration::from_millis(r.duration_ms));
    if r.passed {
        println!("ok   {}: {} ({took})", r.plugin, r.test);
        return;
    }
    println!("FAIL {}: {} ({took})", r.plugin, r.test);
    if let Some(e) = &r.error {
        println!("     error: {e}");
    }
    for line in &r.log {
        println!("     | {line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_round_trip_every_byte() {
        assert_eq!(
            lua_literal("a\"b\\c\n\x01é"),
            "\"a\\\"b\\\\c\\n\\001\\195\\169\""
        );
    }
}
