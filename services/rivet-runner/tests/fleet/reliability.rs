//! Cancel, retries, timeouts and drain, end to end with in-process runners against the real
//! services. (Faults that need processes killed or services restarted are in `tests/chaos`.)

use crate::helpers;
use rivet_core::JobOutcome;
use rivet_protocol::http::{JobState, JobView, RunnerView};
use serde_json::json;
use std::time::Duration;

fn pipeline(name: &str, extra: &str, body: &str) -> String {
    format!(
        "return {{ name = '{name}', requires = {{'process'}}, {extra}\n\
         stages = {{ {{ name = 'only', script = function()\n{body}\nend }} }} }}"
    )
}

fn script_lines(lines: &[rivet_protocol::messages::LogLine]) -> Vec<&str> {
    lines
        .iter()
        .filter(|l| l.source == "script")
        .map(|l| l.line.as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_queued_job_cancelled_never_starts() {
    let mut fleet = helpers::start().await;
    fleet.push(&pipeline("q", "", "log.info('ran')")).await;
    let job = fleet.submit("q", json!({})).await;
    let r = fleet
        .post(&format!("/jobs/{}/cancel", job.id), json!({}))
        .await;
    assert_eq!(r.status(), 202);
    let cancelled: JobView = r.json().await.unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);
    assert_eq!(cancelled.outcome, Some(JobOutcome::Cancelled));
    // Cancelling again is a conflict with a stable code.
    let again = fleet
        .post(&format!("/jobs/{}/cancel", job.id), json!({}))
        .await;
    assert_eq!(again.status(), 409);
    let body: serde_json::Value = again.json().await.unwrap();
    assert_eq!(body["code"], "job_final");

    // A runner joins: its message is in the queue (published before the cancel, or not at all),
    // and must be dropped, not run. A one-slot runner takes messages in order, so once the next
    // job has finished, the cancelled one's message has been seen.
    fleet.runner_with_slots("late", &[], "", 1).await;
    let next = fleet.submit("q", json!({})).await;
    let next = fleet.wait_final(next.id, Duration::from_secs(30)).await;
    assert_eq!(next.state, JobState::Succeeded);
    let shown: JobView = fleet.get(&format!("/jobs/{}", job.id)).await;
    assert_eq!(shown.state, JobState::Cancelled);
    assert!(
        shown.started_at_ms.is_none(),
        "the cancelled job never started"
    );
    assert!(fleet.logs(job.id, 1).await.is_empty());
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_job_is_killed_on_cancel_and_keeps_its_logs() {
    let mut fleet = helpers::start().await;
    let runner = fleet.runner_with_slots("r", &[], "", 1).await;
    fleet
        .push(&pipeline(
            "long",
            "",
            "log.info('before the sleep')\nprocess.run{command = 'sleep', args = {'60'}}\nlog.info('after the sleep')",
        ))
        .await;
    let job = fleet.submit("long", json!({})).await;
    // Running, and its first line stored (so the worker is inside `sleep`).
    let mut stored = false;
    while !stored {
        let view = fleet
            .wait_job(job.id, Duration::from_secs(30), "running", |j| {
                j.state == JobState::Running
            })
            .await;
        stored = !fleet.logs(job.id, view.attempt).await.is_empty();
        tokio::time::sleep(helpers::POLL).await;
    }
    let asked = std::time::Instant::now();
    let r = fleet
        .post(
            &format!("/jobs/{}/cancel", job.id),
            json!({"reason": "stopped by the test"}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let done = fleet.wait_final(job.id, Duration::from_secs(20)).await;
    let took = asked.elapsed();
    assert_eq!(done.state, JobState::Cancelled, "{:?}", done.outcome);
    assert_eq!(done.runner_id.as_deref(), Some(runner.as_str()));
    let lines = fleet.logs(job.id, 1).await;
    assert_eq!(script_lines(&lines), ["before the sleep"]);
    assert!(
        lines
            .iter()
            .any(|l| l.source == "system" && l.line == "Cancelled: stopped by the test."),
        "{lines:?}"
    );
    eprintln!("cancel of a running job took {took:?}");
    // The slot is free again: the next job runs.
    fleet.push(&pipeline("quick", "", "log.info('ok')")).await;
    let next = fleet.submit("quick", json!({})).await;
    assert_eq!(
        fleet
            .wait_final(next.id, Duration::from_secs(30))
            .await
            .state,
        JobState::Succeeded
    );
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retries_follow_the_pipeline_and_each_attempt_keeps_its_logs() {
    let mut fleet = helpers::start().await;
    fleet.runner("r", &[], "").await;
    fleet
        .push(&pipeline(
            "flaky",
            "retries = {count = 2, on = {'failed'}, backoff = '1s'},",
            "log.info('attempt ' .. env.get('RIVET_ATTEMPT'))\nerror('always fails')",
        ))
        .await;
    fleet
        .push(&pipeline("failing", "", "error('fails once')"))
        .await;
    let flaky = fleet.submit("flaky", json!({})).await;
    let failing = fleet.submit("failing", json!({})).await;

    let done = fleet.wait_final(flaky.id, Duration::from_secs(60)).await;
    assert_eq!(done.state, JobState::Failed);
    assert_eq!(done.attempt, 3, "a first attempt and two retries");
    let shown: JobView = fleet.get(&format!("/jobs/{}", flaky.id)).await;
    let states: Vec<JobState> = shown.attempts.iter().map(|a| a.state).collect();
    assert_eq!(states, [JobState::Failed; 3]);
    for attempt in 1..=3u32 {
        let lines = fleet.logs(flaky.id, attempt).await;
        assert_eq!(script_lines(&lines), [format!("attempt {attempt}")]);
    }
    // The backoff separates attempts.
    let starts: Vec<i64> = shown
        .attempts
        .iter()
        .map(|a| a.started_at_ms.unwrap())
        .collect();
    assert!(starts.windows(2).all(|w| w[1] - w[0] >= 1000), "{starts:?}");

    // Without `retries`, a failing script is not retried.
    let once = fleet.wait_final(failing.id, Duration::from_secs(30)).await;
    assert_eq!((once.state, once.attempt), (JobState::Failed, 1));

    // `rivet job retry`: a finished job runs again as a new attempt with the same inputs.
    let r = fleet
        .post(&format!("/jobs/{}/retry", failing.id), json!({}))
        .await;
    assert_eq!(r.status(), 201);
    let again = fleet
        .wait_job(failing.id, Duration::from_secs(30), "attempt 2 ends", |j| {
            j.attempt == 2 && j.state.is_final()
        })
        .await;
    assert_eq!(again.state, JobState::Failed);
    assert_eq!(again.attempts.len(), 2);
    // A job that is not over cannot be retried.
    fleet
        .push(&pipeline(
            "slow",
            "",
            "process.run{command = 'sleep', args = {'5'}}",
        ))
        .await;
    let slow = fleet.submit("slow", json!({})).await;
    let r = fleet
        .post(&format!("/jobs/{}/retry", slow.id), json!({}))
        .await;
    assert_eq!(r.status(), 409);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn job_and_queue_timeouts_end_jobs_with_the_reason() {
    let mut fleet = helpers::start().await;
    fleet.runner("r", &[], "").await;
    fleet
        .push(&pipeline(
            "too-slow",
            "timeout = '1s',",
            "log.info('started')\nprocess.run{command = 'sleep', args = {'30'}}",
        ))
        .await;
    fleet
        .push(
            "return { name = 'nobody', requires = {'label:gpu=yes'}, queue_timeout = '2s',\n\
             stages = { { name = 'only', script = function() end } } }",
        )
        .await;
    let slow = fleet.submit("too-slow", json!({})).await;
    let unschedulable = fleet.submit("nobody", json!({})).await;

    let done = fleet.wait_final(slow.id, Duration::from_secs(30)).await;
    assert_eq!(done.state, JobState::TimedOut, "{:?}", done.outcome);
    assert_eq!(done.attempt, 1, "a timeout is not retried by default");
    let Some(JobOutcome::TimedOut { error, .. }) = &done.outcome else {
        panic!("{:?}", done.outcome)
    };
    assert!(error.contains("1s"), "{error}");

    let expired = fleet
        .wait_final(unschedulable.id, Duration::from_secs(30))
        .await;
    assert_eq!(expired.state, JobState::TimedOut);
    assert_eq!(
        expired.outcome,
        Some(JobOutcome::TimedOut {
            stage: None,
            error: "no runner started the job within its queue timeout of 2s".into()
        })
    );
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drained_runner_finishes_its_jobs_takes_no_more_and_exits() {
    let mut fleet = helpers::start().await;
    let draining = fleet
        .runner_with_slots("draining", &["pool=a"], "", 1)
        .await;
    fleet
        .push(
            "return { name = 'pool-a', requires = {'process', 'label:pool=a'},\n\
             stages = { { name = 'only', script = function()\n\
             log.info(env.get('RIVET_RUNNER_ID'))\nprocess.run{command = 'sleep', args = {'2'}} end } } }",
        )
        .await;
    let first = fleet.submit("pool-a", json!({})).await;
    fleet
        .wait_job(first.id, Duration::from_secs(30), "running", |j| {
            j.state == JobState::Running
        })
        .await;
    let r = fleet
        .post(&format!("/runners/{draining}/drain"), json!({}))
        .await;
    assert_eq!(r.status(), 202);
    let shown: RunnerView = r.json().await.unwrap();
    assert_eq!(shown.status, "draining");
    // Its running job finishes normally, and it exits cleanly.
    let done = fleet.wait_final(first.id, Duration::from_secs(30)).await;
    assert_eq!(done.state, JobState::Succeeded, "{:?}", done.outcome);
    fleet
        .runner_exit(&draining, Duration::from_secs(30))
        .await
        .expect("a drained runner exits without error");
    // A job submitted now waits for another runner.
    let second = fleet.submit("pool-a", json!({})).await;
    let other = fleet.runner_with_slots("other", &["pool=a"], "", 1).await;
    let second = fleet.wait_final(second.id, Duration::from_secs(30)).await;
    assert_eq!(second.runner_id.as_deref(), Some(other.as_str()));

    // Unknown runners: 404.
    let r = fleet.post("/runners/no-such-runner/drain", json!({})).await;
    assert_eq!(r.status(), 404);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drain_cancels_jobs_still_running_after_the_grace_period() {
    let mut fleet = helpers::start().await;
    // The fleet helper gives runners a 10 s grace period.
    let runner = fleet.runner_with_slots("r", &[], "", 1).await;
    fleet
        .push(&pipeline(
            "endless",
            "",
            "log.info('working')\nprocess.run{command = 'sleep', args = {'120'}}",
        ))
        .await;
    let job = fleet.submit("endless", json!({})).await;
    fleet
        .wait_job(job.id, Duration::from_secs(30), "running", |j| {
            j.state == JobState::Running
        })
        .await;
    fleet.terminate(&runner); // as SIGTERM does
    fleet
        .runner_exit(&runner, Duration::from_secs(40))
        .await
        .expect("the runner exits without error");
    let done = fleet.wait_final(job.id, Duration::from_secs(20)).await;
    assert_eq!(done.state, JobState::Cancelled);
    let lines = fleet.logs(job.id, 1).await;
    assert!(
        lines.iter().any(|l| l.source == "system"
            && l.line == "Cancelled: the runner was drained and its grace period of 10s ran out."),
        "{lines:?}"
    );
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_report_with_nul_bytes_is_stored_and_jams_nothing() {
    let mut fleet = helpers::start().await;
    fleet.runner("r", &[], "").await;
    // PostgreSQL refuses NUL in text and JSONB: the orchestrator must neither retry such a report
    // forever (blocking every job behind it) nor lose it.
    fleet
        .push(&pipeline(
            "nul",
            "",
            "log.info('before')\nerror('bad \\0 byte')",
        ))
        .await;
    fleet.push(&pipeline("fine", "", "log.info('ok')")).await;
    let bad = fleet.submit("nul", json!({})).await;
    let done = fleet.wait_final(bad.id, Duration::from_secs(30)).await;
    assert_eq!(done.state, JobState::Failed);
    let Some(JobOutcome::Failed { error, .. }) = &done.outcome else {
        panic!("{:?}", done.outcome)
    };
    // Lua's error text ends at the NUL; whatever arrives is stored.
    assert!(error.starts_with("pipeline.lua:4: bad"), "{error}");
    for _ in 0..3 {
        let next = fleet.submit("fine", json!({})).await;
        assert_eq!(
            fleet
                .wait_final(next.id, Duration::from_secs(30))
                .await
                .state,
            JobState::Succeeded
        );
    }
    fleet.stop().await;
}

/// A runner running as root runs its jobs as `nobody` on the host (`sandbox.job_uid`): root's
/// files are closed to them, and the workspace is theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_root_runners_jobs_are_not_root_on_the_host() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "the fleet tests run as root");
    let mut fleet = helpers::start().await;
    fleet.runner("r", &[], "").await;
    fleet
        .push(&pipeline(
            "peek",
            "",
            "local shadow = process.run{command = 'python3', args = {'-c', 'open(\"/etc/shadow\").read(1)'}, check = false}\n\
             log.info('shadow exit ' .. shadow.code)\n\
             local mine = process.run{command = 'python3', args = {'-c', 'open(\"mine\", \"w\").write(\"x\"); import os; print(os.stat(\"mine\").st_uid, os.getuid())'}}\n\
             log.info('inside ' .. mine.stdout)",
        ))
        .await;
    let job = fleet.submit("peek", json!({})).await;
    let done = fleet.wait_final(job.id, Duration::from_secs(30)).await;
    assert_eq!(done.state, JobState::Succeeded, "{:?}", done.outcome);
    let logs = fleet.logs(job.id, 1).await;
    let lines = script_lines(&logs);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("shadow exit ") && *l != "shadow exit 0"),
        "{lines:?}"
    );
    assert!(lines.iter().any(|l| l.trim() == "inside 0 0"), "{lines:?}");
    fleet.stop().await;
}

/// A job that nests directories 20,000 deep in its workspace (deeper than a 2 MiB stack
/// recurses through, one level per frame, and than many machines let a process hold
/// descriptors open) leaves nothing behind, and its runner goes on: the workspace is removed
/// with a bounded stack and descriptors (`rivet_sandbox::remove_tree`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_jobs_deep_tree_is_removed_and_the_runner_goes_on() {
    let mut fleet = helpers::start().await;
    // One slot: the next job starts only once the first one's workspace is removed.
    let runner = fleet.runner_with_slots("r", &[], "", 1).await;
    fleet
        .push(&pipeline(
            "deep",
            "",
            r#"local code = [[
import os
for i in range(20000):
    os.mkdir("d"); os.chdir("d")
open("f", "w").write("x")
print(i + 1)
]]
local r = process.run{command = 'python3', args = {'-c', code}}
log.info('depth ' .. r.stdout)"#,
        ))
        .await;
    fleet.push(&pipeline("next", "", "log.info('next')")).await;
    let deep = fleet.submit("deep", json!({})).await;
    let next = fleet.submit("next", json!({})).await;
    let done = fleet.wait_final(deep.id, Duration::from_secs(60)).await;
    assert_eq!(done.state, JobState::Succeeded, "{:?}", done.outcome);
    let logs = fleet.logs(deep.id, 1).await;
    assert!(
        script_lines(&logs)
            .iter()
            .any(|l| l.trim() == "depth 20000"),
        "{:?}",
        script_lines(&logs)
    );
    let after = fleet.wait_final(next.id, Duration::from_secs(60)).await;
    assert_eq!(after.state, JobState::Succeeded, "{:?}", after.outcome);
    let workspace = fleet.workspace(&runner, deep.id, 1);
    assert!(
        std::fs::symlink_metadata(&workspace).is_err(),
        "{} was removed",
        workspace.display()
    );
    fleet.stop().await;
}
