//! The sandbox's behaviour as a pipeline author sees it, through a real worker process.

mod helpers;
mod launcher;
// The filters name this architecture's calls, and the zygote's `clone` fallback knows only
// these argument orders.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod refused;

use helpers::*;
use rivet_core::{JobOutcome, StageOutcome};
use rivet_sandbox::events::{Event, Source};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Every global and module field a job can see, compared with the checked-in allow-list.
/// A new global from an mlua upgrade, or a module function added without review, fails here.
/// Regenerate with `RIVET_UPDATE_ALLOWLIST=1 cargo test -p rivet-sandbox --test vm`.
#[test]
fn globals_match_the_checked_in_allow_list() {
    let body = r#"
      local out = {}
      local function walk(prefix, t)
        for k, v in pairs(t) do
          local name = prefix .. tostring(k)
          out[#out + 1] = name .. " " .. type(v)
          if type(v) == "table" and prefix == "" and k ~= "_G" then walk(name .. ".", v) end
        end
      end
      walk("", _G)
      table.sort(out)
      print(table.concat(out, "\n"))
    "#;
    let run = run_stage("'process', 'filesystem', 'http', 'plugin.git'", body);
    assert_eq!(
        run.outcome(),
        &JobOutcome::Succeeded,
        "{:?}",
        run.lines(None)
    );
    let actual = run.script_lines().join("\n") + "\n";
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vm/globals.allow");
    if std::env::var_os("RIVET_UPDATE_ALLOWLIST").is_some() {
        std::fs::write(&path, &actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).expect("tests/vm/globals.allow exists");
    assert_eq!(
        actual, expected,
        "the job's globals changed; review and regenerate the allow-list"
    );
}

#[test]
fn modules_are_present_only_when_required() {
    let run = run_stage("", "assert(process == nil and filesystem == nil and http == nil and container == nil); assert(log and env and json)");
    assert_eq!(
        run.outcome(),
        &JobOutcome::Succeeded,
        "{:?}",
        run.lines(None)
    );
    let run = run_stage("", "return require('plugin.git')");
    assert!(
        run.error().contains("policy violation [plugin.undeclared]"),
        "{}",
        run.error()
    );
    let run = run_stage(
        "'http'",
        "assert(type(http.get) == 'function' and process == nil)",
    );
    assert_eq!(run.outcome(), &JobOutcome::Succeeded, "{}", run.error());
    // `container` brings `process` too, usable only inside a container.
    let run = run_stage(
        "'container'",
        "assert(type(container.run) == 'function' and type(container.with) == 'function' and http == nil and filesystem == nil)\n\
         local ok, err = pcall(process.run, {command = 'true'})\n\
         assert(not ok and tostring(err):find('policy violation [process.grant]', 1, true), tostring(err))",
    );
    assert_eq!(
        run.outcome(),
        &JobOutcome::Succeeded,
        "{:?}",
        run.lines(None)
    );
}

#[test]
fn plugins_grant_their_requirements_and_are_injected() {
    let run = run_stage("'plugin.git'", "assert(git == require('plugin.git')); assert(type(process.run) == 'function'); assert(git.requires[1] == 'process')");
    assert_eq!(
        run.outcome(),
        &JobOutcome::Succeeded,
        "{:?}",
        run.lines(None)
    );
}

#[test]
fn stages_run_in_order_with_env_conditions_and_stage_env() {
    let mut j = job(r#"return {
      name = "flow", requires = {"process"},
      inputs = { who = {type = "string", default = "world"}, n = {type = "number"}, go = {type = "boolean", default = true} },
      stages = {
        { name = "a", script = function() env.set("from_a", "A:" .. env.get("who")); print(math.type(env.get("n")), env.get("go")) end },
        { name = "skipped", condition = function() return false end, script = function() error("must not run") end },
        { name = "b", condition = function() return env.get("from_a") ~= nil end, env = { RIVET_STAGE = "bee" },
          script = function()
            local r = process.run{ command = "sh", args = {"-c", "echo $RIVET_STAGE $RIVET_X"}, env = { RIVET_X = env.get("from_a") } }
            print(r.stdout:gsub("\n", ""))
          end },
      },
    }"#);
    j.request.inputs.insert("n".into(), "3".into());
    let run = j.run();
    assert_eq!(
        run.outcome(),
        &JobOutcome::Succeeded,
        "{:?}",
        run.lines(None)
    );
    assert_eq!(run.script_lines(), ["integer\ttrue", "bee A:world\t1"]);
    let finished: Vec<(String, StageOutcome)> = run
        .events
        .iter()
        .filter_map(|e| match e {
            Event::StageFinished { name, outcome, .. } => Some((name.clone(), *outcome)),
            _ => None,
        })
        .collect();
    assert_eq!(
        finished,
        [
            ("a".into(), StageOutcome::Succeeded),
            ("skipped".into(), StageOutcome::Skipped),
            ("b".into(), StageOutcome::Succeeded)
        ]
    );
}

#[test]
fn a_failing_stage_names_itself_and_skips_the_rest() {
    let run = job(r#"return { name = "f", stages = {
        { name = "ok", script = function() end },
        { name = "broken", script = function() error("boom") end },
        { name = "later", script = function() end } } }"#)
    .run();
    match run.outcome() {
        JobOutcome::Failed { stage, error } => {
            assert_eq!(stage.as_deref(), Some("broken"));
            assert_eq!(error, "pipeline.lua:3: boom");
        }
        other => panic!("{other:?}"),
    }
    assert!(run.events.iter().any(|e| matches!(e, Event::StageFinished { name, outcome: StageOutcome::Skipped, .. } if name == "later")));
}

#[test]
fn inputs_are_checked_before_anything_runs() {
    let mut j = job(
        r#"return { name = "i", inputs = { n = {type = "number", required = true}, mode = {type = "string", options = {"a"}} },
      stages = { { name = "s", script = function() error("ran") end } } }"#,
    );
    j.request.inputs.insert("mode".into(), "b".into());
    j.request.inputs.insert("extra".into(), "1".into());
    let run = j.run();
    let errors: Vec<String> = run
        .report
        .input_errors
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(errors.iter().any(|e| e == "input `n`: is required"));
    assert!(!run
        .events
        .iter()
        .any(|e| matches!(e, Event::StageStarted { .. })));
}

#[test]
fn process_run_captures_output_and_reports_exit_codes() {
    let run = run_stage(
        "'process', 'filesystem'",
        r#"
        filesystem.mkdir("sub")
        local r = process.run{ command = "sh", args = {"-c", "pwd; cat; echo err >&2; exit 3"}, cwd = "sub", stdin = "from stdin\n", check = false }
        assert(r.code == 3, r.code)
        assert(r.stdout:match("/sub\nfrom stdin\n$"), r.stdout)
        assert(r.stderr == "err\n", r.stderr)
        assert(type(r.duration_ms) == "number")
        local ok, e = pcall(process.run, { command = "false" })
        assert(not ok and tostring(e):find("process `false` exited with code 1"), tostring(e))
        local ok2, e2 = pcall(process.run, { command = "sleep", args = {"5"}, timeout = 0.2 })
        assert(not ok2 and tostring(e2):find("timed out after 200ms"), tostring(e2))
        local ok3, e3 = pcall(process.run, { command = "echo", argz = {} })
        assert(not ok3 and tostring(e3):find("unknown option `argz` %(did you mean `args`%?%)"), tostring(e3))
        "#,
    );
    assert_eq!(
        run.outcome(),
        &JobOutcome::Succeeded,
        "{:?}",
        run.lines(None)
    );
    let stderr = run.lines(Some(Source::Stderr));
    assert!(stderr.contains(&"err".to_string()), "{stderr:?}");
}

#[test]
fn filesystem_operations_stay_in_the_workspace() {
    let run = run_stage(
        "'filesystem'",
        r#"
        filesystem.write("a/b.txt", "one")
        filesystem.append("a/b.txt", "two")
        assert(filesystem.read("a/b.txt") == "onetwo")
        filesystem.copy("a/b.txt", "c.txt")
        assert(filesystem.exists("c.txt") and not filesystem.exists("nope"))
        local l = filesystem.list("."); assert(l[1] == "a" and l[2] == "c.txt", table.concat(l, ","))
        local st = filesystem.stat("a/b.txt"); assert(st.type == "file" and st.size == 6)
        assert(filesystem.stat("a").type == "directory")
        filesystem.remove("c.txt")
        local ok, e = pcall(filesystem.remove, "a"); assert(not ok)
        filesystem.remove("a", { recursive = true })
        assert(#filesystem.list() == 0)
        "#,
    );
    assert_eq!(
        run.outcome(),
        &JobOutcome::Succeeded,
        "{:?}",
        run.lines(None)
    );
}

#[test]
fn secrets_are_masked_in_every_sink() {
    let mut j = job(&stage(
        "'process'",
        r#"local t = env.get("TOKEN"); log.info("t=" .. t); print(t); warn(t)
           process.run{ command = "echo", args = { "x" .. t .. "y" } }
           error("token=" .. t)"#,
    ));
    j.request
        .secrets
        .insert("TOKEN".into(), "s3cr3t-value".into());
    let run = j.run();
    let all = run.lines(None).join("\n");
    assert!(!all.contains("s3cr3t-value"), "{all}");
    assert!(all.contains("t=***") && all.contains("x***y"), "{all}");
    assert!(
        !run.error().contains("s3cr3t-value") && run.error().contains("token=***"),
        "{}",
        run.error()
    );
}

#[test]
fn a_stage_past_its_timeout_is_timed_out() {
    let mut j = job("return { name = 't', stages = { { name = 'slow', timeout = 0.3, script = function() while true do end end } } }");
    j.request.policy.limits.instructions = u64::MAX;
    let run = j.run();
    match run.outcome() {
        JobOutcome::TimedOut { stage, error } => {
            assert_eq!(stage.as_deref(), Some("slow"));
            assert!(error.contains("time limit exceeded (300ms)"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    // A process that outlives the stage is killed with it.
    let run = job("return { name = 't', requires = {'process'}, stages = { { name = 'slow', timeout = 0.3, script = function() process.run{command = 'sleep', args = {'30'}} end } } }").run();
    assert!(
        matches!(run.outcome(), JobOutcome::TimedOut { .. }),
        "{:?}",
        run.outcome()
    );
    assert!(run.report.duration < Duration::from_secs(5));
}

#[test]
fn an_os_limit_that_kills_the_worker_is_reported_as_a_crash() {
    let mut j = job("return { name = 'c', stages = { { name = 'spin', script = function() while true do end end } } }");
    j.request.policy.process.max_cpu_seconds = 1;
    j.request.policy.limits.instructions = u64::MAX;
    // The CPU limit, not the stage's deadline, ends it, however little CPU a loaded
    // machine leaves the worker.
    j.request.policy.limits.stage_timeout = Duration::from_secs(120);
    let run = j.run();
    match run.outcome() {
        // SIGKILL at the hard limit, which equals the soft one (the worker, its pid namespace's
        // init, would not even receive a SIGXCPU); SIGXCPU where it is not init.
        JobOutcome::Crashed { reason } => assert!(
            reason.contains("SIGXCPU") || reason.contains("SIGKILL"),
            "{reason}"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn cancel_kills_the_worker_at_once() {
    let j = job("return { name = 'c', stages = { { name = 'spin', script = function() while true do end end } } }");
    let cancel = Arc::new(AtomicBool::new(false));
    let mut options = options();
    options.cancel = Some(cancel.clone());
    let flag = cancel.clone();
    let mut events = Vec::new();
    let report = rivet_sandbox::run_worker(&j.request, &options, |e| {
        if matches!(e, Event::StageStarted { .. }) {
            flag.store(true, Ordering::SeqCst);
        }
        events.push(e.clone());
    })
    .unwrap();
    assert_eq!(report.outcome, JobOutcome::Cancelled);
    assert!(report.duration < Duration::from_secs(3));
}

/// A worker without namespaces keeps its job's HOME and TMPDIR in `/tmp/rivet-job-<pid>` on
/// the host and removes it as the job ends; a killed one cannot, so the handle that reaps it
/// does (`Worker::kill_and_wait`). (CI used to find three of them left after every run.)
#[test]
fn a_killed_worker_without_namespaces_leaves_no_scratch_directory() {
    let mut j = job(&stage(
        "'process'",
        r#"
        local r = process.run{ command = "sh", args = {"-c", "touch $TMPDIR/file $HOME/file; echo $TMPDIR"} }
        log.info("tmp=" .. r.stdout)
        while true do end
        "#,
    ));
    j.request.policy.sandbox.namespaces = rivet_core::policy::NamespaceMode::Off;
    let cancel = Arc::new(AtomicBool::new(false));
    let mut options = options();
    options.cancel = Some(cancel.clone());
    let mut scratch = None;
    let report = rivet_sandbox::run_worker(&j.request, &options, |e| {
        if let Event::Log { line, .. } = e {
            if let Some(tmp) = line.strip_prefix("tmp=") {
                let tmp = std::path::PathBuf::from(tmp.trim());
                // Still there while the job runs: the check below is not vacuous.
                assert!(tmp.join("file").exists(), "{}", tmp.display());
                scratch = tmp.parent().map(|p| p.to_path_buf());
                cancel.store(true, Ordering::SeqCst);
            }
        }
    })
    .unwrap();
    assert_eq!(report.outcome, JobOutcome::Cancelled);
    let scratch = scratch.expect("the job logged its TMPDIR");
    assert!(
        scratch
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("rivet-job-")),
        "{}",
        scratch.display()
    );
    assert!(!scratch.exists(), "{} was left behind", scratch.display());
}

#[test]
fn background_and_setsid_children_do_not_outlive_the_call() {
    let ws = tempfile::tempdir().unwrap();
    let marker = ws.path().join("late");
    let body = format!(
        r#"process.run{{ command = "sh", args = {{"-c", "(sleep 1; touch {m}) & setsid sh -c 'sleep 1; touch {m}' & echo started"}} }}"#,
        m = "late"
    );
    let mut j = job(&stage("'process'", &body));
    j.request.workspace = ws.path().to_path_buf();
    let run = j.run();
    assert_eq!(
        run.outcome(),
        &JobOutcome::Succeeded,
        "{:?}",
        run.lines(None)
    );
    // Wait on the clock the children would have used, then check nothing appeared.
    let check_at = std::time::Instant::now() + Duration::from_millis(1500);
    while std::time::Instant::now() < check_at {
        assert!(!marker.exists(), "a child outlived its process.run call");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!marker.exists(), "a child outlived its process.run call");
}

#[test]
fn lint_mode_reports_the_shape_without_running() {
    let mut j = job("return { name = 'l', requires = {'process'}, stages = { { name = 's', script = function() error('ran') end } } }");
    j.request.mode = rivet_sandbox::Mode::Lint;
    let run = j.run();
    assert_eq!(run.outcome(), &JobOutcome::Succeeded);
    assert_eq!(run.report.definition.as_ref().unwrap().stages[0].name, "s");
    let mut bad = job("return { name = 'l', stages = {} }");
    bad.request.mode = rivet_sandbox::Mode::Lint;
    let run = bad.run();
    assert_eq!(run.report.problems.len(), 1, "{:?}", run.report.problems);
}

#[test]
fn the_git_plugin_clones_and_checks_out_a_branch() {
    // Not under /tmp: the job's /tmp is private, so a host repository there is invisible to it.
    let origin = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let sh = |cmd: &str| {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .current_dir(origin.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sh("git init -q -b main . && git -c user.email=t@t -c user.name=t commit -q --allow-empty -m one \
        && git checkout -q -b dev && echo dev > f && git add f && git -c user.email=t@t -c user.name=t commit -q -m two \
        && git checkout -q main");
    let body = format!(
        r#"local r = git.clone{{ url = "{url}", branch = "dev", dir = "src" }}
           assert(filesystem.read("src/f") == "dev\n")
           assert(#r.commit == 40, r.commit)
           git.checkout{{ ref = "main", dir = "src" }}
           assert(not filesystem.exists("src/f"))
           local ok, e = pcall(git.clone, {{ url = "--upload-pack=touch /tmp/x", dir = "y" }})
           assert(not ok and tostring(e):find("policy violation %[git.option%]"), tostring(e))"#,
        url = origin.path().display()
    );
    let run = run_stage("'plugin.git'", &body);
    assert_eq!(
        run.outcome(),
        &JobOutcome::Succeeded,
        "{:?}",
        run.lines(None)
    );
}
