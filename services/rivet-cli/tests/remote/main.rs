//! The remote commands as a user runs them: the real `rivet` binary against a real orchestrator
//! (PostgreSQL, Redis, RabbitMQ), with a test double playing the runner.

mod helpers;

use helpers::*;
use rivet_core::JobOutcome;
use rivet_protocol::http::{ApiError, JobState, JobView, PipelineSummary, PipelineView};
use rivet_protocol::messages::LogLine;

const PIPELINE: &str = r#"return {
  name = "Hello Fleet",
  requires = {"process"},
  inputs = {
    who = {type = "string", default = "world", description = "whom to greet"},
    n = {type = "number", required = true},
  },
  stages = { { name = "greet", script = function() log.info("hi " .. env.get("who")) end } },
}"#;

/// The job id in `job ID queued: ...`.
fn job_id(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("job ")?.split_once(" queued: "))
        .map(|(id, _)| id.to_owned())
        .unwrap_or_else(|| panic!("no `job ID queued` line in\n{stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_are_pushed_listed_and_shown() {
    let app = spawn_app().await;
    let dir = scratch();
    let file = write(dir.path(), "hello.lua", PIPELINE);

    let out = app.rivet(&["pipeline", "push", &file]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(
        stdout,
        "pushed hello-fleet version 1: \"Hello Fleet\", 1 stage, 2 inputs, requires: process\n"
    );
    let out = app
        .rivet(&["pipeline", "push", &file, "--name", "greeter", "--json"])
        .await;
    let pushed: PipelineView = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((pushed.name.as_str(), pushed.version), ("greeter", 1));
    app.rivet(&["pipeline", "push", &file]).await;

    let out = app.rivet(&["pipeline", "ls"]).await;
    let (stdout, _) = text(&out);
    assert!(stdout.starts_with("NAME  "), "{stdout}");
    assert!(
        stdout.lines().any(|l| l.starts_with("hello-fleet  2 ")),
        "{stdout}"
    );
    let out = app.rivet(&["pipeline", "ls", "--json"]).await;
    let listed: Vec<PipelineSummary> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.len(), 2);

    let out = app
        .rivet(&["pipeline", "show", "hello-fleet", "--version", "1"])
        .await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    for want in [
        "pipeline      hello-fleet (version 1)",
        "display name  Hello Fleet",
        "requires      process",
        "  n     number  yes       -",
        "  who   string  no        world    -        whom to greet",
        "  1  greet",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in\n{stdout}");
    }
    let out = app.rivet(&["pipeline", "show", "nope"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).1.contains("no pipeline `nope`"),
        "{}",
        text(&out).1
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_definition_with_problems_is_listed_like_lint_does() {
    let app = spawn_app().await;
    let dir = scratch();
    let bad = write(
        dir.path(),
        "bad.lua",
        "return {\n  nmae = 'x',\n  stages = {},\n}\n",
    );
    let out = app.rivet(&["pipeline", "push", &bad]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with(&format!("{bad}:")) && l.contains("did you mean `name`")),
        "{stdout}"
    );
    assert!(stderr.contains("found"), "{stderr}");
    let out = app.rivet(&["pipeline", "push", &bad, "--json"]).await;
    assert_eq!(out.status.code(), Some(1));
    let error: ApiError = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(error.code, "invalid_definition");

    // Bytecode never leaves the machine.
    let evil = write(dir.path(), "evil.lua", "\x1bLuaT\0junk");
    let out = app.rivet(&["pipeline", "push", &evil]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("policy violation [lua.bytecode]"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_run_checks_inputs_and_says_why_it_waits() {
    let app = spawn_app().await;
    let dir = scratch();
    let file = write(dir.path(), "hello.lua", PIPELINE);
    app.rivet(&["pipeline", "push", &file]).await;

    let out = app
        .rivet(&["run", "hello-fleet", "-i", "n=many", "-i", "whoo=x"])
        .await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let errors: Vec<&str> = stdout.lines().collect();
    assert_eq!(errors.len(), 2, "{stdout}");
    assert!(
        errors[0].starts_with("error: input `whoo`: is not declared"),
        "{stdout}"
    );
    assert_eq!(errors[1], "error: input `n`: `many` is not a number");

    // Without a terminal, a missing required input is an error, not a question.
    let out = app.rivet(&["run", "hello-fleet"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out).0, "error: input `n`: is required\n");

    let out = app.rivet(&["run", "hello-fleet", "--input", "n=3"]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let id = job_id(&stdout);
    assert!(
        stderr.contains("warning: no runner can take this job now: no runner is online"),
        "{stderr}"
    );
    assert!(stderr.contains("missing capabilities: process"), "{stderr}");

    let out = app.rivet(&["job", "ls", "--pipeline", "hello-fleet"]).await;
    let (stdout, _) = text(&out);
    let row = stdout
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        row.contains("queued") && row.contains("cannot be scheduled: no runner is online"),
        "{row}"
    );
    let out = app
        .rivet(&["job", "ls", "--state", "queued", "--json"])
        .await;
    let jobs: Vec<JobView> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].inputs["who"], "world", "defaults are filled in");

    let out = app.rivet(&["job", "show", &id]).await;
    let (stdout, _) = text(&out);
    for want in [
        format!("job          {id}"),
        "state        queued".into(),
        "inputs       n=3, who=world".into(),
        "schedulable  cannot be scheduled: no runner is online (missing: process)".into(),
    ] {
        assert!(stdout.contains(&want), "missing {want:?} in\n{stdout}");
    }

    let out = app.rivet(&["queue", "ls"]).await;
    let (stdout, _) = text(&out);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("process  ") && l.ends_with("no runner is online")),
        "{stdout}"
    );
    let out = app.rivet(&["runner", "ls"]).await;
    assert_eq!(text(&out).0, "no runners have registered\n");

    // A name the orchestrator does not know: say how the argument was read.
    let out = app.rivet(&["run", "hello"]).await;
    assert_eq!(out.status.code(), Some(2));
    let (_, stderr) = text(&out);
    assert!(stderr.contains("no pipeline `hello`"), "{stderr}");
    assert!(
        stderr.contains("hint: `hello` was taken as a pipeline name"),
        "{stderr}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followed_run_streams_its_logs_and_exits_with_its_result() {
    let app = spawn_app().await;
    let dir = scratch();
    let file = write(dir.path(), "hello.lua", PIPELINE);
    app.rivet(&["pipeline", "push", &file]).await;
    let mut runner = FakeRunner::connect(&app).await;

    // Succeeds: exit 0.
    let mut cmd = app.command(&["run", "hello-fleet", "-i", "n=1", "--follow"]);
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let taken = runner.take().await;
    assert_eq!(taken.job.inputs["n"], "1");
    runner
        .run(
            &taken,
            "greet",
            &["hi world", "second line"],
            JobOutcome::Succeeded,
        )
        .await;
    let out = wait(child).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(job_id(&stdout), taken.job.job_id.to_string());
    for want in [
        "  [greet] hi world\n  [greet] second line\n",
        "✓ greet (1.2s)\n",
        &format!("job {} succeeded in", taken.job.job_id),
    ] {
        assert!(stdout.contains(want), "missing {want:?} in\n{stdout}");
    }

    // Fails, followed from `rivet job logs` as JSON: exit 1.
    let out = app.rivet(&["run", "hello-fleet", "-i", "n=2"]).await;
    let id = job_id(&text(&out).0);
    let mut cmd = app.command(&["job", "logs", &id, "--follow", "--json"]);
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let taken = runner.take().await;
    assert_eq!(taken.job.job_id.to_string(), id);
    let failure = JobOutcome::Failed {
        stage: Some("greet".into()),
        error: "hello.lua:8: boom".into(),
    };
    runner
        .run(&taken, "greet", &["about to fail"], failure.clone())
        .await;
    let out = wait(child).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    let line: LogLine = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(line.line, "about to fail");
    let end: JobView = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(end.state, JobState::Failed);
    assert_eq!(end.outcome, Some(failure));

    // The finished job's logs, once; and its account.
    let out = app.rivet(&["job", "logs", &id]).await;
    assert_eq!(text(&out).0, "  [greet] about to fail\n");
    let out = app.rivet(&["job", "show", &id]).await;
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains("outcome   failed in stage `greet`: hello.lua:8: boom"),
        "{stdout}"
    );
    assert!(
        stdout.contains("attempt 1 on fake-runner: failed in stage `greet`"),
        "{stdout}"
    );
    assert!(stdout.contains("  ✗  greet  failed"), "{stdout}");
    runner.close().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_refused_with_a_hint() {
    let app = spawn_app().await;
    let out = app.rivet(&["job", "ls", "--token", "wrong"]).await;
    assert_eq!(out.status.code(), Some(2));
    let (_, stderr) = text(&out);
    assert!(stderr.contains("(401 unauthorized)"), "{stderr}");
    assert!(stderr.contains("hint: set RIVET_TOKEN"), "{stderr}");
    app.stop().await;
}

/// On a terminal, a missing required input is asked for before the job is queued. `script`
/// (util-linux) gives rivet a pseudo-terminal; the answer is typed on its stdin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_input_is_asked_for_on_a_terminal() {
    use std::io::Write;
    let app = spawn_app().await;
    let dir = scratch();
    let file = write(dir.path(), "hello.lua", PIPELINE);
    app.rivet(&["pipeline", "push", &file]).await;
    let command = format!("{} run hello-fleet", env!("CARGO_BIN_EXE_rivet"));
    let mut child = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        // `script` runs the command with $SHELL, which a CI agent may set to anything.
        .env("SHELL", "/bin/sh")
        .env("RIVET_URL", &app.url)
        .env("RIVET_TOKEN", &app.token)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("`script` from util-linux is installed (apt-get install bsdutils)");
    child.stdin.take().unwrap().write_all(b"7\n").unwrap();
    let out = wait(child).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("n (number): "), "{stdout}");
    assert!(stdout.contains("queued: hello-fleet version 1"), "{stdout}");
    let out = app.rivet(&["job", "ls", "--json"]).await;
    let jobs: Vec<JobView> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].inputs["n"], "7");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_cancelled_and_retried_and_runners_drained_from_the_cli() {
    let app = spawn_app().await;
    let dir = scratch();
    let file = write(dir.path(), "hello.lua", PIPELINE);
    app.rivet(&["pipeline", "push", &file]).await;
    let out = app.rivet(&["run", "hello-fleet", "--input", "n=1"]).await;
    let id = job_id(&text(&out).0);

    // No runner: the job is queued, and a cancel ends it at once.
    let out = app
        .rivet(&["job", "cancel", &id, "--reason", "not needed"])
        .await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(stdout, format!("job {id} cancelled\n"));
    let out = app.rivet(&["job", "cancel", &id]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).1.contains("is already cancelled"),
        "{}",
        text(&out).1
    );

    // A finished job can run again, as attempt 2.
    let out = app.rivet(&["job", "retry", &id]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(
        stdout,
        format!("job {id} queued again as attempt 2 (`rivet job logs -f {id}`)\n")
    );
    let out = app.rivet(&["job", "show", &id, "--json"]).await;
    let job: JobView = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((job.state, job.attempt), (JobState::Queued, 2));
    assert_eq!(job.attempts.len(), 2);
    assert_eq!(job.attempts[0].state, JobState::Cancelled);
    // ...and one that is not over cannot.
    let out = app.rivet(&["job", "retry", &id]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).1.contains("only a finished job can be retried"),
        "{}",
        text(&out).1
    );

    let out = app.rivet(&["runner", "drain", "no-such-runner"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).1.contains("no live runner `no-such-runner`"),
        "{}",
        text(&out).1
    );
    app.stop().await;
}

/// API-02 from the CLI: an admin registers a runner with its labels (the token printed once),
/// lists registrations and revokes one by name; a runner token opens no API route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_registrations_are_created_listed_and_revoked_from_the_cli() {
    use rivet_protocol::http::RunnerRegistrationView;
    let app = spawn_app().await;
    let out = app
        .rivet(&[
            "runner",
            "register",
            "build-eu",
            "--label",
            "region=eu",
            "--label",
            "deploy=yes",
        ])
        .await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.starts_with("registered runner build-eu (")
            && stdout.contains("with labels: deploy=yes, region=eu\n"),
        "{stdout}"
    );
    let token = stdout.lines().last().unwrap();
    assert!(token.starts_with("rvr_"), "{stdout}");

    let out = app
        .rivet(&[
            "runner", "register", "gpu-1", "--label", "gpu=yes", "--json",
        ])
        .await;
    let gpu: RunnerRegistrationView = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(gpu.labels["gpu"], "yes");
    assert!(gpu.secret.as_deref().is_some_and(|s| s.starts_with("rvr_")));
    let out = app.rivet(&["runner", "register", "gpu-1"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).1.contains("registration_exists"),
        "{}",
        text(&out).1
    );

    let out = app.rivet(&["runner", "registrations", "--json"]).await;
    let all: Vec<RunnerRegistrationView> = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = all.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["build-eu", "gpu-1"]);
    assert!(
        all.iter().all(|r| r.secret.is_none()),
        "tokens are shown once"
    );
    let out = app.rivet(&["runner", "registrations"]).await;
    let (stdout, _) = text(&out);
    assert!(stdout.starts_with("NAME "), "{stdout}");
    assert!(stdout.contains("deploy=yes, region=eu"), "{stdout}");

    // A runner token is no API token.
    let mut cmd = app.command(&["runner", "ls"]);
    cmd.env("RIVET_TOKEN", token);
    let out = wait(
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out).1);
    assert!(
        text(&out).1.contains("(401 unauthorized)"),
        "{}",
        text(&out).1
    );

    let out = app.rivet(&["runner", "revoke", "build-eu", "--json"]).await;
    let revoked: RunnerRegistrationView = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(revoked.name, "build-eu");
    assert!(revoked.revoked_at_ms.is_some());
    let out = app.rivet(&["runner", "revoke", &gpu.id.to_string()]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.starts_with("revoked runner gpu-1 ("), "{stdout}");
    let out = app.rivet(&["runner", "revoke", "build-eu"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out)
            .1
            .contains("no live runner registration `build-eu`"),
        "{}",
        text(&out).1
    );
    app.stop().await;
}

/// API-01 from the CLI: an admin creates a project and a token scoped to it (printed once); the
/// project token pushes and runs there and sees nothing of `default`; it cannot manage tokens or
/// projects; an admin reaches the project with `--project`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projects_and_project_tokens_from_the_cli() {
    use rivet_protocol::http::{ProjectView, TokenView};
    let app = spawn_app().await;
    let dir = scratch();
    let file = write(dir.path(), "hello.lua", PIPELINE);

    let out = app.rivet(&["project", "create", "team-a"]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.starts_with("created project team-a ("), "{stdout}");
    let out = app.rivet(&["project", "create", "team-b", "--json"]).await;
    let b: ProjectView = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(b.name, "team-b");
    let out = app.rivet(&["project", "ls", "--json"]).await;
    let names: Vec<String> = serde_json::from_slice::<Vec<ProjectView>>(&out.stdout)
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["default", "team-a", "team-b"]);

    let out = app
        .rivet(&["token", "create", "ci-a", "--project", "team-a"])
        .await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.starts_with("created token ci-a (") && stdout.contains(") for project team-a\n"),
        "{stdout}"
    );
    let secret = stdout.lines().last().unwrap().to_owned();
    assert!(secret.starts_with("rvt_"), "{stdout}");
    let out = app
        .rivet(&["token", "create", "ci-b", "--project", "team-b", "--json"])
        .await;
    let token_b: TokenView = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(token_b.project.as_deref(), Some("team-b"));
    let out = app.rivet(&["token", "ls", "--json"]).await;
    let tokens: Vec<TokenView> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(tokens.iter().all(|t| t.secret.is_none()), "shown once");
    let out = app.rivet(&["token", "ls"]).await;
    let (stdout, _) = text(&out);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("ci-a ") && l.contains(" team-a ")),
        "{stdout}"
    );
    assert!(stdout.contains("(admin)"), "{stdout}");

    // In `default`, as the admin: invisible to team-a's token.
    app.rivet(&["pipeline", "push", &file, "--name", "default-only"])
        .await;
    let as_a = |args: &[&str]| {
        let mut cmd = app.command(args);
        cmd.env("RIVET_TOKEN", &secret);
        wait(
            cmd.stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        )
    };
    let out = as_a(&["pipeline", "push", &file]).await;
    assert!(out.status.success(), "{}", text(&out).1);
    let out = as_a(&["run", "hello-fleet", "-i", "n=1"]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let out = as_a(&["pipeline", "ls", "--json"]).await;
    let listed: Vec<PipelineSummary> = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = listed.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["hello-fleet"]);
    let out = as_a(&["pipeline", "show", "default-only"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).1.contains("no pipeline `default-only`"),
        "{}",
        text(&out).1
    );
    let out = as_a(&["pipeline", "ls", "--project", "team-b"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).1.contains("no project `team-b`"),
        "{}",
        text(&out).1
    );
    for admin_only in [
        &["token", "ls"][..],
        &["project", "create", "mine"],
        &["token", "create", "more", "--project", "team-a"],
    ] {
        let out = as_a(admin_only).await;
        assert_eq!(out.status.code(), Some(2), "{admin_only:?}");
        assert!(
            text(&out).1.contains("this needs an admin token"),
            "{admin_only:?}: {}",
            text(&out).1
        );
    }

    // The admin: `default` by default, team-a with --project.
    let out = app.rivet(&["pipeline", "ls", "--json"]).await;
    let listed: Vec<PipelineSummary> = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = listed.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["default-only"]);
    let out = app
        .rivet(&["job", "ls", "--project", "team-a", "--json"])
        .await;
    let jobs: Vec<JobView> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].pipeline, "hello-fleet");
    app.stop().await;
}
