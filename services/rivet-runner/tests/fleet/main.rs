//! The fleet end to end: an orchestrator and several runners with different capabilities and
//! labels, against the real RabbitMQ, PostgreSQL and Redis.

mod helpers;
mod identity;
mod reliability;

use rivet_protocol::http::{JobState, JobView, LogPage, QueueView};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

fn pipeline(name: &str, requires: &str, body: &str) -> String {
    format!(
        "return {{ name = '{name}', requires = {{{requires}}}, inputs = {{ n = {{type = 'number', default = 0}} }},\n\
         stages = {{ {{ name = 'only', script = function()\n{body}\nend }} }} }}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_land_only_on_runners_that_cover_their_requirements() {
    let mut fleet = helpers::start().await;
    let eu = fleet.runner("eu", &["region=eu"], "").await;
    let us = fleet.runner("us", &["region=us"], "").await;
    // No git in its allow-list: it cannot advertise plugin.git.
    let eu_nogit = fleet
        .runner(
            "eu-nogit",
            &["region=eu"],
            "[process]\nallow = ['echo', 'true']\n",
        )
        .await;

    fleet
        .push(&pipeline(
            "only-us",
            "'process', 'label:region=us'",
            "log.info(env.get('RIVET_RUNNER_ID'))",
        ))
        .await;
    fleet
        .push(&pipeline(
            "git-eu",
            "'plugin.git', 'label:region=eu'",
            "log.info(env.get('RIVET_RUNNER_ID'))",
        ))
        .await;
    fleet
        .push(&pipeline(
            "anywhere",
            "",
            "log.info(env.get('RIVET_RUNNER_ID'))",
        ))
        .await;

    let mut jobs: Vec<(&str, JobView)> = Vec::new();
    for _ in 0..4 {
        jobs.push(("only-us", fleet.submit("only-us", json!({})).await));
        jobs.push(("git-eu", fleet.submit("git-eu", json!({})).await));
        jobs.push(("anywhere", fleet.submit("anywhere", json!({})).await));
    }
    let mut ran_on: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (pipeline, job) in &jobs {
        let done = fleet.wait_final(job.id, Duration::from_secs(60)).await;
        assert_eq!(
            done.state,
            JobState::Succeeded,
            "{pipeline}: {:?}",
            done.outcome
        );
        let runner = done.runner_id.clone().unwrap();
        let logs: LogPage = fleet.get(&format!("/jobs/{}/logs", job.id)).await;
        assert_eq!(
            logs.lines
                .iter()
                .find(|l| l.source == "script")
                .map(|l| l.line.as_str()),
            Some(runner.as_str())
        );
        ran_on.entry(pipeline).or_default().push(runner);
    }
    assert!(ran_on["only-us"].iter().all(|r| r == &us), "{ran_on:?}");
    assert!(ran_on["git-eu"].iter().all(|r| r == &eu), "{ran_on:?}");
    assert!(
        ran_on["anywhere"]
            .iter()
            .all(|r| [&eu, &us, &eu_nogit].contains(&r)),
        "{ran_on:?}"
    );
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unschedulable_job_says_why_and_starts_when_a_capable_runner_joins() {
    let mut fleet = helpers::start().await;
    fleet.runner("plain", &["region=eu"], "").await;
    fleet
        .push(&pipeline(
            "needs-gpu",
            "'process', 'label:gpu=yes'",
            "log.info('on a gpu')",
        ))
        .await;
    let job = fleet.submit("needs-gpu", json!({})).await;
    let s = job.schedulability.clone().unwrap();
    assert!(!s.schedulable);
    assert_eq!(s.missing, ["label:gpu=yes"]);
    assert_eq!(s.reason, "no live runner has: label:gpu=yes");
    let shown: JobView = fleet.get(&format!("/jobs/{}", job.id)).await;
    assert_eq!(shown.state, JobState::Queued);
    assert!(!shown.schedulability.unwrap().schedulable);
    let queues: Vec<QueueView> = fleet.get("/queues").await;
    let q = queues
        .iter()
        .find(|q| q.class_key == job.class_key)
        .unwrap();
    assert!(!q.schedulability.schedulable);

    let gpu = fleet.runner("gpu", &["gpu=yes"], "").await;
    let done = fleet.wait_final(job.id, Duration::from_secs(30)).await;
    assert_eq!(done.state, JobState::Succeeded, "{:?}", done.outcome);
    assert_eq!(done.runner_id.as_deref(), Some(gpu.as_str()));
    fleet.stop().await;
}

/// 300 jobs over three runners: every one finishes exactly once, with its logs complete and in
/// order, and nothing is left in any queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hundred_jobs_finish_exactly_once_with_complete_logs() {
    let mut fleet = helpers::start().await;
    for name in ["a", "b", "c"] {
        fleet.runner(name, &[], "").await;
    }
    fleet
        .push(&pipeline(
            "many",
            "",
            "for i = 1, 5 do log.info('job ' .. env.get('n') .. ' line ' .. i) end",
        ))
        .await;
    let mut ids = Vec::new();
    for n in 0..300 {
        ids.push((
            n,
            fleet.submit("many", json!({ "n": n.to_string() })).await.id,
        ));
    }
    let mut per_runner: BTreeMap<String, usize> = BTreeMap::new();
    for (n, id) in &ids {
        let job = fleet.wait_final(*id, Duration::from_secs(180)).await;
        assert_eq!(job.state, JobState::Succeeded, "job {n}: {:?}", job.outcome);
        assert_eq!(job.attempt, 1);
        assert_eq!(job.attempts.len(), 1, "job {n} ran once");
        *per_runner.entry(job.runner_id.unwrap()).or_default() += 1;
        let logs: LogPage = fleet.get(&format!("/jobs/{id}/logs")).await;
        assert!(logs.complete);
        let seqs: Vec<u64> = logs.lines.iter().map(|l| l.seq).collect();
        assert_eq!(
            seqs,
            (0..seqs.len() as u64).collect::<Vec<_>>(),
            "job {n}: log sequence has no gaps"
        );
        let script: Vec<String> = logs
            .lines
            .iter()
            .filter(|l| l.source == "script")
            .map(|l| l.line.clone())
            .collect();
        let expected: Vec<String> = (1..=5).map(|i| format!("job {n} line {i}")).collect();
        assert_eq!(script, expected, "job {n}: logs complete and in order");
    }
    assert_eq!(per_runner.values().sum::<usize>(), 300);
    // Straight from the database: one attempt per job, and every outbox row published.
    use sqlx::Connection;
    let mut db = sqlx::PgConnection::connect(&fleet.database_url)
        .await
        .unwrap();
    let (attempts, unpublished): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM attempts), (SELECT count(*) FROM outbox WHERE published_at IS NULL)",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!((attempts, unpublished), (300, 0));
    let queues: Vec<QueueView> = fleet.get("/queues").await;
    assert!(queues.iter().all(|q| q.depth == 0), "{queues:?}");
    fleet.stop().await;
}

/// A runner whose only slot is taken by a long job does not sit on a job an idle runner could
/// run: with two one-slot runners busy with long jobs, a third long job and a short job of
/// another class queued behind them, the short job runs as soon as the slots free, while the
/// third long job holds one of them. The long jobs run until the test lets them end
/// ([`rivet_orchestrator::testing::GATED`]), so "long" holds however slow the machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_busy_runner_does_not_hold_jobs_an_idle_runner_could_run() {
    let mut fleet = helpers::start().await;
    fleet.runner_with_slots("one", &[], "", 1).await;
    fleet.runner_with_slots("two", &[], "", 1).await;
    fleet
        .push(&pipeline(
            "long",
            "'process'",
            rivet_orchestrator::testing::GATED,
        ))
        .await;
    fleet
        .push(&pipeline("short", "", "log.info('quick')"))
        .await;
    let mut long = Vec::new();
    for _ in 0..3 {
        long.push(fleet.submit("long", json!({})).await.id);
    }
    let short = fleet.submit("short", json!({})).await;
    // Which two long jobs run first is the broker's choice (the relay publishes a batch over
    // several confirm channels, so jobs submitted within a millisecond have no order).
    let first_two = async {
        loop {
            let mut running = Vec::new();
            for id in &long {
                let job: JobView = fleet.get(&format!("/jobs/{id}")).await;
                if job.state == JobState::Running {
                    running.push(job);
                }
            }
            if running.len() == 2 {
                return running;
            }
            tokio::time::sleep(helpers::POLL).await;
        }
    };
    let first_two = tokio::time::timeout(Duration::from_secs(30), first_two)
        .await
        .expect("two long jobs run, one per runner");
    let waiting = *long
        .iter()
        .find(|id| first_two.iter().all(|j| j.id != **id))
        .unwrap();
    let held: JobView = fleet.get(&format!("/jobs/{waiting}")).await;
    assert_eq!(held.state, JobState::Queued, "both slots are busy");
    // One slot frees, and takes the third long job or the short one.
    fleet.open_gate(&first_two[0]);
    let taken = async {
        loop {
            let third: JobView = fleet.get(&format!("/jobs/{waiting}")).await;
            let quick: JobView = fleet.get(&format!("/jobs/{}", short.id)).await;
            if third.state == JobState::Running || quick.state.is_final() {
                return;
            }
            tokio::time::sleep(helpers::POLL).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), taken)
        .await
        .expect("the freed slot takes a job");
    // Then the other slot frees. If the runner that took the third long job (which runs until
    // its gate opens) also held the short job, the short job would wait for ever.
    fleet.open_gate(&first_two[1]);
    let short_done = fleet.wait_final(short.id, Duration::from_secs(30)).await;
    assert_eq!(short_done.state, JobState::Succeeded);
    let third = fleet
        .wait_job(waiting, Duration::from_secs(30), "running", |j| {
            j.state == JobState::Running
        })
        .await;
    fleet.open_gate(&third);
    for id in &long {
        let done = fleet.wait_final(*id, Duration::from_secs(60)).await;
        assert_eq!(done.state, JobState::Succeeded, "{:?}", done.outcome);
    }
    fleet.stop().await;
}

/// A job the broker hands to a runner whose every slot is busy (its long job's message was
/// acknowledged at the start) goes back to its queue within moments: an idle runner runs it,
/// instead of it waiting for the long job to end. The long job runs until the test lets it end
/// ([`rivet_orchestrator::testing::GATED`]): a short job held by the busy runner would never run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_handed_to_a_full_runner_goes_to_an_idle_one() {
    let mut fleet = helpers::start().await;
    fleet
        .push(&pipeline(
            "long",
            "'process'",
            rivet_orchestrator::testing::GATED,
        ))
        .await;
    fleet
        .push(&pipeline("short", "", "log.info('quick')"))
        .await;
    let busy = fleet.runner_with_slots("busy", &[], "", 1).await;
    let long = fleet.submit("long", json!({})).await;
    fleet
        .wait_job(long.id, Duration::from_secs(30), "running", |j| {
            j.state == JobState::Running
        })
        .await;
    let idle = fleet.runner_with_slots("idle", &[], "", 1).await;
    // The broker offers the busy runner's consumer (prefetch 1, nothing unacknowledged) some
    // of these; each must come back and run on the idle runner.
    let mut short = Vec::new();
    for _ in 0..6 {
        short.push(fleet.submit("short", json!({})).await);
    }
    for job in &short {
        let done = fleet.wait_final(job.id, Duration::from_secs(30)).await;
        assert_eq!(done.state, JobState::Succeeded);
        assert_eq!(done.runner_id.as_deref(), Some(idle.as_str()), "{done:?}");
    }
    let still: JobView = fleet.get(&format!("/jobs/{}", long.id)).await;
    assert_eq!(
        still.state,
        JobState::Running,
        "the long job waits for its gate"
    );
    fleet.open_gate(&still);
    let long_done = fleet.wait_final(long.id, Duration::from_secs(60)).await;
    assert_eq!(
        long_done.state,
        JobState::Succeeded,
        "{:?}",
        long_done.outcome
    );
    assert_eq!(long_done.runner_id.as_deref(), Some(busy.as_str()));
    fleet.stop().await;
}

/// `container` jobs land only on a runner whose engine answered at start; there they run in
/// the engine (Podman's API, `scripts/podman-setup.sh`), their output reaches the job's log,
/// and nothing of theirs is left on the engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn container_jobs_run_on_runners_with_an_engine_and_leave_nothing_behind() {
    let host = rivet_container::host_from_env();
    let engine = rivet_container::Engine::connect(&host, "fleet-test-probe").unwrap_or_else(|e| {
        panic!(
            "no container engine at {host} ({}): run `scripts/podman-setup.sh`",
            e.describe()
        )
    });
    let mut fleet = helpers::start().await;
    let plain = fleet.runner("plain", &[], "").await;
    let policy = "[container]\nimages = ['rivet-test/*']\n";
    let podman = fleet
        .runner_with_engine("podman", &[], policy, 2, Some(host.clone()))
        .await;
    let runners: Vec<rivet_protocol::http::RunnerView> = fleet.get("/runners").await;
    let caps = |id: &str| {
        runners
            .iter()
            .find(|r| r.id == id)
            .map(|r| r.capabilities.clone())
            .unwrap()
    };
    assert!(
        !caps(&plain).contains(&"container".to_string()),
        "{:?}",
        caps(&plain)
    );
    for want in ["container", "container.podman"] {
        assert!(
            caps(&podman).contains(&want.to_string()),
            "{:?}",
            caps(&podman)
        );
    }

    fleet
        .push(&pipeline(
            "in-a-container",
            "'container'",
            "local r = container.run{image = 'rivet-test/busybox', command = {'sh', '-c', 'echo from-container'}}\nassert(r.code == 0)",
        ))
        .await;
    let mut jobs = Vec::new();
    for _ in 0..3 {
        jobs.push(fleet.submit("in-a-container", json!({})).await);
    }
    for job in &jobs {
        let done = fleet.wait_final(job.id, Duration::from_secs(60)).await;
        assert_eq!(done.state, JobState::Succeeded, "{:?}", done.outcome);
        assert_eq!(done.runner_id.as_deref(), Some(podman.as_str()));
        let logs: LogPage = fleet.get(&format!("/jobs/{}/logs", job.id)).await;
        assert!(
            logs.lines
                .iter()
                .any(|l| l.source == "stdout" && l.line == "from-container"),
            "{:?}",
            logs.lines
        );
        let left = engine.job_containers(&job.id.to_string()).unwrap();
        assert!(
            left.is_empty(),
            "containers left by job {}: {left:?}",
            job.id
        );
    }
    fleet.stop().await;
}
