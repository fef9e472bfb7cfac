//! The `container` module end to end: Lua in a sandbox worker, host calls to the parent, the
//! parent's checks and the real engine (Podman's API; `scripts/podman-setup.sh` starts it).
//! The CTR- rows of the attack catalogue live here, in the security tests' shape: (a) the
//! policy named, (b) the canary untouched, (c) a follow-up job runs.

mod helpers;

use helpers::*;
use rivet_core::JobOutcome;
use rivet_sandbox::events::{Event, Source};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[test]
fn container_run_streams_output_into_the_job_log_and_returns_the_result() {
    let fx = fixture("run");
    let job = fx.run(
        &policy(),
        &pipeline(
            "\"container\"",
            "",
            &format!(
                r#"local r = container.run{{image = "{BUSYBOX}", command = {{"sh", "-c", "echo hello; echo oops >&2; echo made > made.txt; exit 2"}}, check = false}}
log.info("code=" .. r.code .. " stdout=" .. r.stdout)
local ok, err = pcall(container.run, {{image = "{BUSYBOX}", command = "false"}})
log.info("check: " .. tostring(ok) .. " " .. tostring(err))"#
            ),
        ),
    );
    assert_succeeded(&job, "container.run");
    assert!(
        job.lines(Source::Stdout).contains(&"hello"),
        "{}",
        job.describe()
    );
    assert!(
        job.lines(Source::Stderr).contains(&"oops"),
        "{}",
        job.describe()
    );
    let script = job.lines(Source::Script);
    assert!(
        script.contains(&"code=2 stdout=hello"),
        "{}",
        job.describe()
    );
    assert!(
        script
            .iter()
            .any(|l| l.starts_with("check: false") && l.contains("exited with code 1")),
        "{}",
        job.describe()
    );
    assert_eq!(
        std::fs::read_to_string(ws_file(&fx, "made.txt")).unwrap(),
        "made\n"
    );
    assert_no_containers(&job, "container.run");
}

#[test]
fn container_with_runs_process_run_in_the_image_and_removes_it() {
    let fx = fixture("with");
    // `sh` is not in process.allow: inside the container the image is the boundary.
    let job = fx.run(
        &policy(),
        &pipeline(
            "\"container\", \"process\"",
            "",
            &format!(
                r#"local v = container.with("{BUSYBOX}", function()
  local r = process.run{{command = "sh", args = {{"-c", "echo inside > in.txt; ls /bin/busybox"}}}}
  log.info("inside: " .. r.stdout)
  local ok, err = pcall(process.run, {{command = "/bin/sh", args = {{"-c", "id"}}}})
  log.info("path refused: " .. tostring(err))
  return 7
end)
log.info("with returned " .. v)
local ok, err = pcall(process.run, {{command = "sh", args = {{"-c", "true"}}}})
log.info("outside: " .. tostring(err))"#
            ),
        ),
    );
    assert_succeeded(&job, "container.with");
    let script = job.lines(Source::Script);
    assert!(
        script.contains(&"inside: /bin/busybox"),
        "{}",
        job.describe()
    );
    assert!(
        script
            .iter()
            .any(|l| l.starts_with("path refused:")
                && l.contains("policy violation [process.binary]")),
        "{}",
        job.describe()
    );
    assert!(script.contains(&"with returned 7"), "{}", job.describe());
    assert!(
        script.iter().any(|l| l.starts_with("outside:")
            && l.contains("policy violation [process.binary]")
            && l.contains("allow-list")),
        "outside the container the allow-list applies again\n{}",
        job.describe()
    );
    assert_eq!(
        std::fs::read_to_string(ws_file(&fx, "in.txt")).unwrap(),
        "inside\n"
    );
    assert_no_containers(&job, "container.with");
}

#[test]
fn a_container_stage_runs_its_process_calls_in_the_image() {
    let fx = fixture("stage");
    let job = fx.run(
        &policy(),
        &pipeline(
            "\"container\"",
            &format!("container = \"{BUSYBOX}\","),
            r#"process.run{command = "sh", args = {"-c", "test -x /bin/busybox && pwd > where.txt"}}"#,
        ),
    );
    assert_succeeded(&job, "container stage");
    assert_eq!(
        std::fs::read_to_string(ws_file(&fx, "where.txt")).unwrap(),
        "/workspace\n"
    );
    assert_no_containers(&job, "container stage");
}

#[test]
fn without_the_requirement_there_is_no_container_module() {
    let fx = fixture("ungranted");
    let job = fx.run(
        &policy(),
        &pipeline(
            "\"process\"",
            "",
            &format!("container.run{{image = \"{BUSYBOX}\", command = \"true\"}}"),
        ),
    );
    assert!(
        job.error()
            .contains("attempt to index a nil value (global 'container')"),
        "{}",
        job.describe()
    );
    assert_no_containers(&job, "ungranted");
}

/// CTR-01: privileges, devices and host namespaces cannot be asked for.
#[test]
fn ctr_01_host_configuration_is_fixed_by_the_runner() {
    let policy = policy();
    let variants = [
        ("privileged", r#"privileged = true"#),
        ("cap_add", r#"cap_add = {"SYS_ADMIN"}"#),
        ("devices", r#"devices = {"/dev/sda1"}"#),
        ("network_mode", r#"network_mode = "host""#),
        ("pid_mode", r#"pid_mode = "host""#),
        ("userns_mode", r#"userns_mode = "host""#),
        (
            "security_opt",
            r#"security_opt = {"seccomp=unconfined", "apparmor=unconfined"}"#,
        ),
        ("volumes", r#"volumes = {["/"] = "/host"}"#),
        ("binds", r#"binds = {"/:/host"}"#),
    ];
    for (label, field) in variants {
        let fx = fixture("ctr01");
        let job = fx.run(
            &policy,
            &pipeline(
                "\"container\"",
                "",
                &format!(
                    r#"container.run{{image = "{BUSYBOX}", command = {{"sh", "-c", "id > /workspace/pwn; mount /dev/sda1 /mnt && cat /mnt/etc/shadow"}}, {field}}}"#
                ),
            ),
        );
        assert_rule(&job, "container.hostconfig", label);
        assert!(!ws_file(&fx, "pwn").exists(), "{label}: the container ran");
        assert_no_containers(&job, label);
        fx.assert_canary();
    }
    assert_follow_up(&policy);
}

/// CTR-03: registries and images outside the allow-list, flag-like image strings, missing
/// images (never pulled), a runaway container (time limit, removed).
#[test]
fn ctr_03_images_are_allow_listed_and_containers_are_bounded() {
    let policy = policy();
    for (label, image, rule) in [
        (
            "untrusted registry",
            "registry.attacker.example/50gb:latest",
            "container.image",
        ),
        ("not listed", "alpine", "container.image"),
        ("flag injection", "alpine --privileged", "container.image"),
        ("flag as image", "--privileged", "container.image"),
    ] {
        let fx = fixture("ctr03");
        let job = fx.run(
            &policy,
            &pipeline(
                "\"container\"",
                "",
                &format!(r#"container.run{{image = "{image}", command = {{"id"}}}}"#),
            ),
        );
        assert_rule(&job, rule, label);
        assert_no_containers(&job, label);
        fx.assert_canary();
    }
    let fx = fixture("ctr03-missing");
    let job = fx.run(
        &policy,
        &pipeline(
            "\"container\"",
            "",
            r#"container.run{image = "rivet-test/absent:1", command = "true"}"#,
        ),
    );
    assert!(
        job.error()
            .contains("is not present on this runner, and pulling images is off"),
        "{}",
        job.describe()
    );

    let fx = fixture("ctr03-runaway");
    let job = fx.run(
        &policy,
        &pipeline("\"container\"", "", &format!(r#"container.run{{image = "{BUSYBOX}", command = {{"sh", "-c", "while :; do :; done"}}, timeout = 1}}"#)),
    );
    assert!(
        matches!(job.report.outcome, JobOutcome::Failed { .. })
            && job.error().contains("timed out after 1s"),
        "{}",
        job.describe()
    );
    assert!(
        job.report.duration < Duration::from_secs(15),
        "{:?}",
        job.report.duration
    );
    assert_no_containers(&job, "runaway");
    fx.assert_canary();
    assert_follow_up(&policy);
}

/// Every container of a job is gone when the job ends: after a failure inside
/// `container.with`, after the stage's deadline kills the worker, and after a cancel.
#[test]
fn containers_are_removed_however_the_job_ends() {
    let policy = policy();
    // A failure inside container.with.
    let fx = fixture("gone-error");
    let job = fx.run(
        &policy,
        &pipeline(
            "\"container\"",
            "",
            &format!(r#"container.with("{BUSYBOX}", function() error("boom inside") end)"#),
        ),
    );
    assert!(job.error().contains("boom inside"), "{}", job.describe());
    assert_no_containers(&job, "error inside container.with");

    // The stage's hard deadline kills the worker while a container command runs.
    let mut short = policy.clone();
    short.limits.stage_timeout = Duration::from_secs(2);
    let fx = fixture("gone-timeout");
    let job = fx.run(
        &short,
        &pipeline(
            "\"container\"",
            "",
            &format!(r#"container.with("{BUSYBOX}", function() process.run{{command = "sleep", args = {{"60"}}, timeout = 60}} end)"#),
        ),
    );
    assert!(
        matches!(
            job.report.outcome,
            JobOutcome::TimedOut { .. } | JobOutcome::Failed { .. }
        ),
        "{}",
        job.describe()
    );
    assert!(
        job.report.duration < Duration::from_secs(15),
        "{:?}",
        job.report.duration
    );
    assert_no_containers(&job, "stage timeout");

    // Cancelled while a long-lived container runs a command.
    let fx = fixture("gone-cancel");
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = cancel.clone();
    let job = fx.run_cancellable(
        &policy,
        &pipeline(
            "\"container\"",
            "",
            &format!(r#"container.with("{BUSYBOX}", function() process.run{{command = "sh", args = {{"-c", "echo running; sleep 60"}}, timeout = 60}} end)"#),
        ),
        Some(cancel),
        |ev| {
            if matches!(ev, Event::Log { source: Source::Stdout, line, .. } if line == "running") {
                flag.store(true, Ordering::SeqCst);
            }
        },
    );
    assert_eq!(
        job.report.outcome,
        JobOutcome::Cancelled,
        "{}",
        job.describe()
    );
    assert_no_containers(&job, "cancel");
    fx.assert_canary();
    assert_follow_up(&policy);
}

/// The engine's API socket is root on the host: a job never sees it, even with programs that
/// could talk to a unix socket. Only the parent reaches the engine.
#[test]
fn ctr_02_the_engine_socket_is_hidden_from_jobs() {
    let socket = host().trim_start_matches("unix://").to_owned();
    assert!(
        std::path::Path::new(&socket).exists(),
        "the engine socket {socket} should exist on the host for this test"
    );
    let fx = fixture("ctr02");
    let job = fx.run(
        &policy(),
        &pipeline(
            "\"process\", \"container\"",
            "",
            &format!(
                r#"local r = process.run{{command = "test", args = {{"-S", "{socket}"}}, check = false}}
log.info("socket visible: " .. tostring(r.code == 0))
local l = process.run{{command = "ls", args = {{"-A", "/run/rivet-podman"}}, check = false}}
log.info("listing: [" .. l.stdout .. "]")"#
            ),
        ),
    );
    assert_succeeded(&job, "probe");
    let script = job.lines(Source::Script);
    assert!(
        script.contains(&"socket visible: false"),
        "{}",
        job.describe()
    );
    assert!(script.contains(&"listing: []"), "{}", job.describe());
    fx.assert_canary();
    assert_follow_up(&policy());
}

/// A policy that lets jobs run podman-compose on the host: namespaces off (the engine's storage
/// and sockets are visible), the tool allowed. Trusted runners only (see the plugin's header).
fn compose_policy() -> rivet_core::Policy {
    let mut p = policy();
    p.sandbox.namespaces = rivet_core::policy::NamespaceMode::Off;
    p.process.allow.push("podman-compose".into());
    // Podman sets up bridge networks with iptables, from /usr/sbin.
    p.process.search_path.push("/usr/sbin".into());
    p.process.default_timeout = Duration::from_secs(60);
    p.limits.stage_timeout = Duration::from_secs(120);
    p.limits.job_timeout = Duration::from_secs(180);
    p
}

#[test]
fn docker_compose_arguments_are_checked_before_any_tool_runs() {
    assert!(
        std::path::Path::new("/usr/bin/podman-compose").exists(),
        "podman-compose is missing: run `scripts/podman-setup.sh`"
    );
    let variants = [
        (
            "file outside",
            r#"docker_compose.up{file = "../compose.yml"}"#,
            "policy violation [docker-compose.argument]",
        ),
        (
            "absolute file",
            r#"docker_compose.up{file = "/etc/compose.yml"}"#,
            "policy violation [docker-compose.argument]",
        ),
        (
            "file as flag",
            r#"docker_compose.ps{file = "--verbose"}"#,
            "policy violation [docker-compose.argument]",
        ),
        (
            "project as flag",
            r#"docker_compose.down{project = "-v"}"#,
            "policy violation [docker-compose.argument]",
        ),
        (
            "service injection",
            r#"docker_compose.up{services = {"db; rm -rf /"}}"#,
            "policy violation [docker-compose.argument]",
        ),
        (
            "service as flag",
            r#"docker_compose.logs{services = {"--follow"}}"#,
            "policy violation [docker-compose.argument]",
        ),
        (
            "unknown option",
            r#"docker_compose.up{privileged = true}"#,
            "unknown option `privileged`",
        ),
        (
            "bad tail",
            r#"docker_compose.logs{tail = "all"}"#,
            "`tail` must be a non-negative integer",
        ),
        (
            "bad volumes",
            r#"docker_compose.down{volumes = "yes"}"#,
            "`volumes` must be a boolean",
        ),
    ];
    for (label, call, needle) in variants {
        let fx = fixture("compose-args");
        let job = fx.run(
            &compose_policy(),
            &pipeline("\"plugin.docker-compose\"", "", call),
        );
        assert!(
            matches!(job.report.outcome, JobOutcome::Failed { .. }) && job.error().contains(needle),
            "{label}: expected `{needle}`\n{}",
            job.describe()
        );
        assert!(
            job.lines(Source::Stdout).is_empty() && job.lines(Source::Stderr).is_empty(),
            "{label}: a tool ran\n{}",
            job.describe()
        );
        fx.assert_canary();
    }
    // Without any compose tool allowed, the plugin is not available at all.
    let fx = fixture("compose-absent");
    let job = fx.run(
        &policy(),
        &pipeline("\"plugin.docker-compose\"", "", "docker_compose.ps{}"),
    );
    assert!(
        job.error()
            .contains("needs the program `docker-compose|podman-compose|docker|podman`"),
        "{}",
        job.describe()
    );
}

#[test]
fn docker_compose_brings_a_project_up_lists_it_reads_its_logs_and_takes_it_down() {
    assert!(
        std::path::Path::new("/usr/bin/podman-compose").exists(),
        "podman-compose is missing: run `scripts/podman-setup.sh`"
    );
    let fx = fixture("compose-e2e");
    let project = format!("rivetct{}", std::process::id());
    std::fs::write(
        fx.workspace.join("compose.yml"),
        format!("services:\n  hello:\n    image: {BUSYBOX}\n    command: [\"sh\", \"-c\", \"echo hello-from-compose; sleep 3600\"]\n"),
    )
    .unwrap();
    let script = format!(
        r#"local p = {{file = "compose.yml", project = "{project}"}}
docker_compose.up(p)
local ps = docker_compose.ps(p)
log.info("ps has service: " .. tostring(ps.stdout:find("{project}_hello_1", 1, true) ~= nil))
local seen = false
for _ = 1, 50 do
  local logs = docker_compose.logs{{file = "compose.yml", project = "{project}", services = {{"hello"}}, tail = 10}}
  if logs.stdout:find("hello-from-compose", 1, true) then seen = true break end
end
log.info("logs seen: " .. tostring(seen))
docker_compose.down{{file = "compose.yml", project = "{project}"}}"#
    );
    let job = fx.run(
        &compose_policy(),
        &pipeline("\"plugin.docker-compose\"", "", &script),
    );
    // Whatever happened, take the project down before asserting.
    let leftover = std::process::Command::new("podman")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=io.podman.compose.project={project}"),
        ])
        .output()
        .unwrap();
    let leftover = String::from_utf8_lossy(&leftover.stdout).trim().to_owned();
    if !leftover.is_empty() {
        let _ = std::process::Command::new("podman")
            .args(["rm", "-f", &leftover])
            .output();
    }
    let _ = std::process::Command::new("podman")
        .args(["network", "rm", &format!("{project}_default")])
        .output();
    assert_succeeded(&job, "compose up/ps/logs/down");
    let lines = job.lines(Source::Script);
    assert!(
        lines.contains(&"ps has service: true"),
        "{}",
        job.describe()
    );
    assert!(lines.contains(&"logs seen: true"), "{}", job.describe());
    assert!(leftover.is_empty(), "down left containers: {leftover}");
}
