//! `rivet lint` and `rivet run` as a user runs them: the real binary, real worker processes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn rivet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rivet"))
        .args(args)
        .current_dir(root())
        .env_remove("RIVET_POLICY")
        .env_remove("RIVET_PLUGIN_DIR")
        .output()
        .expect("rivet runs")
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A file in a fresh directory outside /tmp (jobs see a private /tmp).
fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// [`scratch`], and an empty `tmp` in it for rivet's temporary workspaces (TMPDIR).
fn scratch_with_tmp() -> (tempfile::TempDir, PathBuf) {
    let dir = scratch();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    (dir, tmp)
}

fn write(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    path.display().to_string()
}

fn sh(dir: &Path, cmd: &str) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `rivet ARGS` as the tests start it in the background: no policy or plugin directory from
/// the environment, no stdin, output piped, temporary workspaces made in `tmp`.
fn rivet_in(tmp: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rivet"));
    cmd.args(args)
        .env("TMPDIR", tmp)
        .env_remove("RIVET_POLICY")
        .env_remove("RIVET_PLUGIN_DIR")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    cmd
}

/// Reads `out` until a line holds `marker`; what was read. Fails if the output ends first.
fn read_until(out: &mut impl std::io::BufRead, marker: &str) -> String {
    let mut seen = String::new();
    while !seen.contains(marker) {
        let mut line = String::new();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "the output ended before {marker:?}: {seen}"
        );
        seen.push_str(&line);
    }
    seen
}

/// How many entries `dir` holds.
fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

#[test]
fn the_readme_example_runs() {
    let out = rivet(&["run", "examples/hello.lua"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for want in [
        "▶ greet",
        "[greet] hello, world",
        "✓ greet",
        "✓ show",
        "succeeded in",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in\n{stdout}");
    }
}

#[test]
fn a_seed_shaped_pipeline_clones_tests_and_reports() {
    let origin = scratch();
    sh(
        origin.path(),
        "git init -q -b main . && printf 'import unittest\\nclass T(unittest.TestCase):\\n    def test_ok(self):\\n        self.assertEqual(1, 1)\\n' > test_ok.py \
         && git add . && git -c user.email=t@t -c user.name=t commit -q -m ok \
         && git checkout -q -b broken && printf 'import unittest\\nclass T(unittest.TestCase):\\n    def test_bad(self):\\n        self.assertEqual(1, 2)\\n' > test_ok.py \
         && git -c user.email=t@t -c user.name=t commit -q -am bad && git checkout -q main",
    );
    let url = format!("repo_url={}", origin.path().display());
    let out = rivet(&["run", "examples/build-and-test.lua", "--input", &url]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for want in [
        "✓ checkout",
        "✓ test",
        "[test] stderr: OK",
        "tested commit",
        "✓ report",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in\n{stdout}");
    }

    let out = rivet(&[
        "run",
        "examples/build-and-test.lua",
        "--input",
        &url,
        "--input",
        "branch=broken",
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(
            "failed in stage `test`: build-and-test.lua:20: process `python3` exited with code 1"
        ),
        "{stderr}"
    );
    assert!(
        stdout.contains("- report skipped: an earlier stage failed"),
        "{stdout}"
    );
}

#[test]
fn missing_and_wrong_inputs_are_field_errors() {
    let out = rivet(&[
        "run",
        "examples/build-and-test.lua",
        "--input",
        "verbose=perhaps",
        "--input",
        "brnach=x",
    ]);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout.contains("error: input `repo_url`: is required"),
        "{stdout}"
    );
    assert!(
        stdout.contains("error: input `verbose`: `perhaps` is not a boolean"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "error: input `brnach`: is not declared by the pipeline (did you mean `branch`?)"
        ),
        "{stdout}"
    );
    assert!(!stdout.contains("▶"), "no stage may start: {stdout}");
}

#[test]
fn lint_lists_every_problem_with_lines() {
    let dir = scratch();
    let file = write(
        dir.path(),
        "pipeline.lua",
        "return {\n  name = 'x',\n  requires = {'proces'},\n  stages = {\n    {name = 'a', scrpit = function() end},\n  },\n}\n",
    );
    let out = rivet(&["lint", &file]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!(
            "{file}:3: requires[1]: unknown requirement `proces` (did you mean `process`?)"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "{file}:5: stages[1]: unknown key `scrpit` (did you mean `script`?)"
        )),
        "{stdout}"
    );
    assert!(stderr.contains("3 problems found"), "{stderr}");

    let out = rivet(&["lint", "examples/build-and-test.lua"]);
    let (stdout, _) = text(&out);
    assert!(out.status.success());
    assert!(
        stdout
            .contains("ok: \"Build and Test\", 3 stages, 3 inputs, requires: process, plugin.git"),
        "{stdout}"
    );

    let out = rivet(&["lint", "--json", "examples/hello.lua"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["definition"]["stages"][1]["name"], "show");
}

#[test]
fn json_output_is_one_event_per_line() {
    let out = rivet(&["run", "--json", "examples/hello.lua", "--input", "who=json"]);
    assert!(out.status.success());
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert!(events
        .iter()
        .any(|e| e["event"] == "log" && e["line"] == "hello, json"));
    assert_eq!(events.last().unwrap()["event"], "summary");
    assert_eq!(events.last().unwrap()["outcome"]["status"], "succeeded");
}

#[test]
fn bytecode_and_bad_files_are_refused_clearly() {
    let dir = scratch();
    let file = write(dir.path(), "evil.lua", "\x1bLuaT\0junk");
    let out = rivet(&["run", &file]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).1.contains("policy violation [lua.bytecode]"),
        "{}",
        text(&out).1
    );

    let out = rivet(&["run", "no/such/file.lua"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("reading no/such/file.lua"));

    let policy = write(dir.path(), "policy.toml", "[process]\nalow = ['sh']\n");
    let out = rivet(&["run", "examples/hello.lua", "--policy", &policy]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).1.contains("unknown field `alow`"),
        "{}",
        text(&out).1
    );
}

#[test]
fn workspace_secrets_and_policy_flags_work() {
    let dir = scratch();
    let ws = dir.path().join("ws");
    let pipeline = write(
        dir.path(),
        "p.lua",
        "return { name = 'p', requires = {'filesystem', 'process'}, stages = { { name = 's', script = function()\n\
           filesystem.write('out.txt', env.get('TOKEN'))\n\
           log.info('token is ' .. env.get('TOKEN'))\n\
           process.run{command = 'sh', args = {'-c', 'echo from sh'}}\n\
         end } } }",
    );
    let policy = write(dir.path(), "policy.toml", "[process]\nallow = ['sh']\n");
    let out = Command::new(env!("CARGO_BIN_EXE_rivet"))
        .args([
            "run",
            &pipeline,
            "--workspace",
            ws.to_str().unwrap(),
            "--secret",
            "MY_TOKEN_FOR_TEST",
            "--policy",
            &policy,
        ])
        .env("MY_TOKEN_FOR_TEST", "hunter2-secret")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    // The secret is named MY_TOKEN_FOR_TEST; the pipeline asks for TOKEN, which is nil.
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");

    let pipeline = pipeline.replace("p.lua", "q.lua");
    std::fs::write(
        &pipeline,
        std::fs::read_to_string(dir.path().join("p.lua"))
            .unwrap()
            .replace("'TOKEN'", "'MY_TOKEN_FOR_TEST'"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rivet"))
        .args([
            "run",
            &pipeline,
            "--workspace",
            ws.to_str().unwrap(),
            "--secret",
            "MY_TOKEN_FOR_TEST",
            "--policy",
            &policy,
        ])
        .env("MY_TOKEN_FOR_TEST", "hunter2-secret")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("token is ***") && !stdout.contains("hunter2"),
        "{stdout}"
    );
    assert!(stdout.contains("[s] from sh"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "workspace: {}",
            std::fs::canonicalize(&ws).unwrap().display()
        )),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read_to_string(ws.join("out.txt")).unwrap(),
        "hunter2-secret"
    );
}

/// A temporary workspace goes when the run ends, however deep the job nested directories in
/// it: 2,000 levels, removed by a `rivet` allowed 256 descriptors (`std::fs::remove_dir_all`,
/// one descriptor a level, gives up with EMFILE and leaves the tree). With --keep-workspace
/// the same tree is kept, which shows the job made it. The job runs under that lower limit
/// (below the policy's), with a note, rather than failing to raise it. `rivet plugin test`'s
/// workspaces go the same way.
#[test]
fn a_temporary_workspace_goes_however_deep_the_job_nested_it() {
    let (dir, tmp) = scratch_with_tmp();
    let pipeline = write(
        dir.path(),
        "deep.lua",
        "return { name = 'deep', requires = {'process'}, stages = { { name = 's', script = function()\n\
           local code = 'import os\\nfor i in range(2000):\\n    os.mkdir(\"d\"); os.chdir(\"d\")\\nprint(i + 1)'\n\
           local r = process.run{command = 'python3', args = {'-c', code}}\n\
           log.info('depth ' .. r.stdout)\n\
         end } } }",
    );
    let policy = write(
        dir.path(),
        "policy.toml",
        "[process]\nallow = ['python3']\n",
    );
    let run = |keep: bool| {
        let mut cmd = Command::new("prlimit");
        cmd.args(["--nofile=256:256", env!("CARGO_BIN_EXE_rivet"), "run"])
            .args([pipeline.as_str(), "--policy", policy.as_str()])
            .env("TMPDIR", &tmp)
            .env_remove("RIVET_POLICY")
            .env_remove("RIVET_PLUGIN_DIR");
        if keep {
            cmd.arg("--keep-workspace");
        }
        let out = cmd.output().unwrap();
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stdout}\n{stderr}");
        assert!(stdout.contains("[s] depth 2000"), "{stdout}");
        // The worker keeps the lower limit it was given, and says so.
        assert!(
            stdout.contains("the limit on open files is 256 on this host, below the policy's"),
            "{stdout}"
        );
        assert!(!stderr.contains("could not remove"), "{stderr}");
        entries(&tmp)
    };
    assert_eq!(run(false), 0, "the workspace was removed");
    assert_eq!(run(true), 1, "the workspace was kept");
    rivet_sandbox::remove_tree(&tmp).unwrap();

    // `rivet plugin test` gives each test such a workspace, removed the same way.
    std::fs::create_dir(&tmp).unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    write(&plugins, "deep.lua", "return { requires = {'process'} }");
    write(
        &plugins,
        "deep_test.lua",
        "return { tests = { nests = function(t)\n\
           local code = 'import os\\nfor i in range(2000):\\n    os.mkdir(\"d\"); os.chdir(\"d\")\\nprint(i + 1)'\n\
           t.eq(process.run{command = 'python3', args = {'-c', code}}.stdout, '2000\\n')\n\
         end } }",
    );
    let out = Command::new("prlimit")
        .args([
            "--nofile=256:256",
            env!("CARGO_BIN_EXE_rivet"),
            "plugin",
            "test",
        ])
        .args([
            plugins.join("deep.lua").to_str().unwrap(),
            "--policy",
            &policy,
        ])
        .env("TMPDIR", &tmp)
        .env_remove("RIVET_POLICY")
        .env_remove("RIVET_PLUGIN_DIR")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("ok   deep: nests"), "{stdout}");
    assert!(!stderr.contains("could not remove"), "{stderr}");
    assert_eq!(entries(&tmp), 0, "the test's workspace was removed");
}

/// Ctrl-C during a local run cancels the job: its worker (and the `sleep` it runs) is killed,
/// rivet says the job was cancelled, removes the temporary workspace and ends by SIGINT. The
/// signal is sent once the job's first line is out, so the job surely runs.
#[test]
fn ctrl_c_cancels_a_local_run_and_cleans_up() {
    let (dir, tmp) = scratch_with_tmp();
    let pipeline = write(
        dir.path(),
        "long.lua",
        "return { name = 'long', requires = {'process'}, stages = { { name = 's', script = function()\n\
           log.info('sleeping')\n\
           process.run{command = 'sleep', args = {'60'}}\n\
         end } } }",
    );
    let mut child = rivet_in(&tmp, &["run", &pipeline]).spawn().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let seen = read_until(&mut stdout, "[s] sleeping");
    // SAFETY: kill(2) on our own child, not yet reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    // Without the cancel, the job would end after its 60 s sleep, and exit 0.
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    // Ended by the signal, as a shell expects (it stops a script).
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGINT), "{seen}\n{stderr}");
    assert!(stderr.contains("long.lua: cancelled"), "{stderr}");
    assert_eq!(entries(&tmp), 0, "the temporary workspace was removed");
}

/// A rivet started with SIGINT ignored (as a script starts its background jobs) leaves it
/// ignored: the job runs to its end and rivet exits 0. The signal is sent once the job runs.
#[test]
fn an_ignored_sigint_stays_ignored() {
    let dir = scratch();
    let pipeline = write(
        dir.path(),
        "short.lua",
        "return { name = 'short', requires = {'process'}, stages = { { name = 's', script = function()\n\
           log.info('sleeping')\n\
           process.run{command = 'sleep', args = {'1'}}\n\
           log.info('woke')\n\
         end } } }",
    );
    let mut rivet = rivet_in(dir.path(), &["run", &pipeline]);
    // SAFETY: only signal(2), async-signal-safe, between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        rivet.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_IGN);
            Ok(())
        });
    }
    let mut child = rivet.spawn().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut seen = read_until(&mut stdout, "[s] sleeping");
    // SAFETY: kill(2) on our own child, not yet reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    std::io::Read::read_to_string(&mut stdout, &mut seen).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}: {seen}");
    assert!(seen.contains("[s] woke"), "{seen}");
}

/// Ctrl-C during `rivet plugin test` cancels the running test, runs no further one, removes
/// the test's workspace and ends by SIGINT. The signal is sent once the first test has written a
/// file in its workspace, so it surely runs.
#[test]
fn ctrl_c_stops_plugin_tests_and_cleans_up() {
    let (dir, tmp) = scratch_with_tmp();
    write(
        dir.path(),
        "slow.lua",
        "return { requires = {'process', 'filesystem'} }",
    );
    write(
        dir.path(),
        "slow_test.lua",
        r#"return { tests = {
  ["a sleeps"] = function(t)
    filesystem.write("started", "")
    process.run{command = 'sleep', args = {'60'}}
  end,
  ["b is not run"] = function(t) t.ok(true) end,
} }"#,
    );
    let plugin = dir.path().join("slow.lua").display().to_string();
    let mut child = rivet_in(&tmp, &["plugin", "test", &plugin])
        .spawn()
        .unwrap();
    // The first test's workspace holds `started`: poll for it (as long as rivet runs).
    let started = || {
        std::fs::read_dir(&tmp)
            .unwrap()
            .any(|ws| ws.unwrap().path().join("started").exists())
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !started() {
        assert!(child.try_wait().unwrap().is_none(), "rivet ended first");
        assert!(
            std::time::Instant::now() < deadline,
            "the first test did not start within 30 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // SAFETY: kill(2) on our own child, not yet reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = text(&out);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGINT),
        "{stdout}\n{stderr}"
    );
    assert!(stdout.contains("FAIL slow: a sleeps"), "{stdout}");
    assert!(!stdout.contains("b is not run"), "{stdout}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert_eq!(entries(&tmp), 0, "the test's workspace was removed");
}

/// Run as root with `sandbox.job_uid` in the policy, a local job runs as that uid: its
/// workspace (a temporary one, or one --workspace makes) is given to it, so the job can write
/// there, and what it writes is that uid's on the host; an existing directory of someone
/// else's is refused, not handed over. Without `sandbox.job_uid`, a root rivet warns that the
/// job runs as root.
#[test]
fn a_root_local_run_gives_the_workspace_to_the_policys_job_uid() {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "the CLI tests run as root");
    let dir = scratch();
    let pipeline = write(
        dir.path(),
        "w.lua",
        "return { name = 'w', requires = {'filesystem'}, stages = { { name = 's', script = function()\n\
           filesystem.write('out.txt', 'x')\n\
         end } } }",
    );
    let policy = write(dir.path(), "uid.toml", "[sandbox]\njob_uid = 65534\n");
    let out = rivet(&["run", &pipeline, "--policy", &policy, "--keep-workspace"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(!stderr.contains("running as root"), "{stderr}");
    let kept = stdout
        .lines()
        .find_map(|l| l.strip_prefix("workspace: "))
        .expect("the kept workspace's path");
    let kept = Path::new(kept);
    assert_eq!(std::fs::metadata(kept).unwrap().uid(), 65534);
    // No other local user reads a job's files.
    assert_eq!(std::fs::metadata(kept).unwrap().mode() & 0o777, 0o700);
    assert_eq!(
        std::fs::metadata(kept.join("out.txt")).unwrap().uid(),
        65534
    );
    rivet_sandbox::remove_tree(kept).unwrap();

    let ws = dir.path().join("ws");
    // The job's uid must reach the workspace through its parents.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .unwrap();
    let in_workspace = |ws: &Path| {
        rivet(&[
            "run",
            &pipeline,
            "--policy",
            &policy,
            "--workspace",
            ws.to_str().unwrap(),
        ])
    };
    let out = in_workspace(&ws);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(std::fs::metadata(&ws).unwrap().uid(), 65534);
    assert_eq!(std::fs::metadata(ws.join("out.txt")).unwrap().uid(), 65534);
    // Run again in it: it is the jobs' already.
    let out = in_workspace(&ws);
    assert!(out.status.success(), "{:?}", text(&out));
    // A directory that was there and is someone else's is not handed over: owning it would
    // let the job replace what it holds.
    let theirs = dir.path().join("checkout");
    std::fs::create_dir(&theirs).unwrap();
    std::fs::write(theirs.join("build.sh"), "echo root runs this").unwrap();
    let out = in_workspace(&theirs);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("policy violation [sandbox.job_uid]: the workspace")
            && stderr.contains("belongs to uid 0"),
        "{stderr}"
    );
    assert_eq!(std::fs::metadata(&theirs).unwrap().uid(), 0);
    assert!(!theirs.join("out.txt").exists());

    let out = rivet(&["run", &pipeline]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("running as root, the job runs as root on this host"),
        "{stderr}"
    );
}

#[test]
fn run_help_is_a_complete_reference() {
    let out = rivet(&["run", "--help"]);
    let (stdout, _) = text(&out);
    for want in [
        "--input",
        "--secret",
        "--workspace",
        "--keep-workspace",
        "--policy",
        "--plugins",
        "--json",
        "Exit status",
        "Examples",
    ] {
        assert!(stdout.contains(want), "missing {want} in --help");
    }
}

/// On a terminal, a missing required input is asked for. `script` (util-linux) gives rivet a
/// pseudo-terminal; the answer is typed on its stdin.
#[test]
fn a_missing_required_input_is_asked_for_on_a_terminal() {
    let dir = scratch();
    let file = write(
        dir.path(),
        "ask.lua",
        "return { name = 'ask', inputs = { who = {type = 'string', required = true, description = 'Who to greet'} },\n\
         stages = { { name = 's', script = function() log.info('hello ' .. env.get('who')) end } } }",
    );
    let command = format!("{} run {file}", env!("CARGO_BIN_EXE_rivet"));
    // Under a deadline: a prompt nobody answers must fail the test, not hang it.
    let mut child = Command::new("timeout")
        .args(["120", "script", "-qec", &command, "/dev/null"])
        // `script` runs the command with $SHELL, which a CI agent may set to anything.
        .env("SHELL", "/bin/sh")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("`script` from util-linux is installed (apt-get install bsdutils)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"terminal user\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let (stdout, _) = text(&out);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("who (string) — Who to greet: "), "{stdout}");
    assert!(stdout.contains("[s] hello terminal user"), "{stdout}");
    assert!(!stdout.contains("is required"), "{stdout}");
}

/// A stand-in for Slack's incoming webhook on loopback: records each request's method, path and
/// body, answers `ok`.
fn slack_stand_in() -> (String, std::sync::mpsc::Receiver<(String, String)>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://{}/services/T000/B000/XXXX",
        listener.local_addr().unwrap()
    );
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        length = v.trim().parse().unwrap();
                    }
                }
            }
            let mut body = vec![0u8; length];
            reader.read_exact(&mut body).unwrap();
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
            );
            let head = request_line.trim().to_owned();
            if tx
                .send((head, String::from_utf8_lossy(&body).into_owned()))
                .is_err()
            {
                return;
            }
        }
    });
    (url, rx)
}

/// The brief's "Build and Deploy" example end to end: git checkout of a local repository, the
/// test stage in the locally built `python:3.11` image through Podman's API, and the Slack
/// notification to a stand-in server; then a failing branch, which stops before notifying.
#[test]
fn the_seed_example_runs_end_to_end() {
    let host = std::env::var("RIVET_CONTAINER_HOST")
        .unwrap_or_else(|_| "unix:///run/rivet-podman/podman.sock".into());
    let socket = host.trim_start_matches("unix://");
    assert!(
        Path::new(socket).exists(),
        "no container engine at {host}: run `scripts/podman-setup.sh --python` first"
    );
    let origin = scratch();
    sh(
        origin.path(),
        "git init -q -b main . && mkdir tests && printf 'def test_adds():\\n    assert 1 + 1 == 2\\n' > tests/test_app.py \
         && git add . && git -c user.email=t@t -c user.name=t commit -q -m ok \
         && git checkout -q -b broken && printf 'def test_adds():\\n    assert 1 + 1 == 3\\n' > tests/test_app.py \
         && git -c user.email=t@t -c user.name=t commit -q -am bad && git checkout -q main",
    );
    let dir = scratch();
    let policy = write(
        dir.path(),
        "policy.toml",
        "[container]\nimages = [\"python:3.11\"]\n[http]\nallow_loopback = true\n",
    );
    let (webhook, received) = slack_stand_in();
    let run = |branch: &str| {
        Command::new(env!("CARGO_BIN_EXE_rivet"))
            .args([
                "run",
                "examples/build-and-deploy.lua",
                "--policy",
                &policy,
                "--secret",
                "SLACK_WEBHOOK",
                "--input",
                &format!("repo_url={}", origin.path().display()),
                "--input",
                &format!("branch={branch}"),
            ])
            .current_dir(root())
            .env_remove("RIVET_POLICY")
            .env_remove("RIVET_PLUGIN_DIR")
            .env("RIVET_CONTAINER_HOST", &host)
            .env("SLACK_WEBHOOK", &webhook)
            .output()
            .expect("rivet runs")
    };

    let out = run("main");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for want in ["✓ checkout", "✓ test", "✓ notify", "1 passed"] {
        assert!(
            stdout.contains(want),
            "missing {want:?} in\n{stdout}\n{stderr}"
        );
    }
    assert!(
        !stdout.contains(&webhook),
        "the webhook (a secret) was logged:\n{stdout}"
    );
    let (head, body) = received
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("the Slack stand-in got no request");
    assert!(head.starts_with("POST /services/T000/B000/XXXX "), "{head}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("a JSON payload");
    let message = json["text"].as_str().unwrap_or_default();
    assert!(message.contains("tests passed on main"), "{body}");

    let out = run("broken");
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("1 failed"),
        "pytest's verdict streams into the log:\n{stdout}"
    );
    assert!(stdout.contains("✗ test"), "{stdout}");
    assert!(
        received.try_recv().is_err(),
        "a failed test stage must not notify Slack"
    );
}

#[test]
fn the_shipped_plugins_pass_their_own_tests() {
    let out = rivet(&["plugin", "test", "plugins/"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let ok = |plugin: &str| {
        stdout
            .lines()
            .filter(|l| l.starts_with(&format!("ok   {plugin}: ")))
            .count()
    };
    assert!(ok("git") >= 10, "git tests:\n{stdout}");
    assert!(ok("slack") >= 3, "slack tests:\n{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}

#[test]
fn plugin_test_reports_each_failure_and_exits_non_zero() {
    let dir = scratch();
    write(
        dir.path(),
        "demo.lua",
        "return { requires = {'process'}, double = function(x) return x * 2 end }",
    );
    write(
        dir.path(),
        "demo_test.lua",
        r#"return { tests = {
  ["doubles"] = function(t) t.eq(demo.double(2), 4) end,
  ["wrong expectation"] = function(t) log.info("before the failure"); t.eq(demo.double(2), 5, "double") end,
  ["sees only granted modules"] = function(t) t.ok(process and not http, "modules") end,
  ["workspaces are fresh"] = function(t)
    t.ok(not filesystem.exists("left.txt"), "a file from another test"); filesystem.write("left.txt", "x")
  end,
  ["workspaces are fresh, again"] = function(t)
    t.ok(not filesystem.exists("left.txt"), "a file from another test"); filesystem.write("left.txt", "x")
  end,
}, requires = {"filesystem"} }"#,
    );
    let plugin = dir.path().join("demo.lua").display().to_string();
    let out = rivet(&["plugin", "test", &plugin]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    for want in [
        "ok   demo: doubles",
        "ok   demo: sees only granted modules",
        "ok   demo: workspaces are fresh (",
        "ok   demo: workspaces are fresh, again",
        "FAIL demo: wrong expectation",
        "error: demo_test.lua:3: double: expected 5, got 4",
        "| before the failure",
        "4 passed, 1 failed",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in\n{stdout}");
    }

    let out = rivet(&["plugin", "test", &plugin, "--json", "--filter", "doubles"]);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert_eq!(lines[0]["test"], "doubles");
    assert_eq!(lines[0]["passed"], true);
    assert_eq!(lines[1]["summary"]["passed"], 1);
    assert_eq!(lines[1]["summary"]["failed"], 0);
}

#[test]
fn plugin_test_without_tests_or_with_broken_tests_is_an_error() {
    let dir = scratch();
    write(dir.path(), "lonely.lua", "return {}");
    let plugin = dir.path().join("lonely.lua").display().to_string();
    let out = rivet(&["plugin", "test", &plugin]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("plugin `lonely` has no tests: expected"),
        "{stderr}"
    );

    write(dir.path(), "lonely_test.lua", "return { tests = 42 }");
    let out = rivet(&["plugin", "test", &plugin]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("loading the tests of plugin `lonely`")
            && stderr.contains("lonely_test.lua must return a table with `tests`"),
        "{stderr}"
    );
}
