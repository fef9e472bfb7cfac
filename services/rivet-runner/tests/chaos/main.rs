//! Fault injection against the real services: runners and the orchestrator killed with SIGKILL,
//! RabbitMQ, PostgreSQL and Redis restarted mid-run. After each scenario every job is final and
//! succeeded, none has two successful attempts, and every stored log is complete.
//!
//! The scenarios restart the machine's shared services, so they run one after another in this
//! binary (`harness = false`); `cargo test -p rivet-runner --test chaos [NAME]` runs them (all, or
//! those whose name contains NAME). Sizes are CI-short by default; `RIVET_CHAOS_JOBS=500` and
//! `RIVET_CHAOS_SOAK_JOBS=2000` give the long versions. Each prints one `chaos:` line with its
//! figures (see docs/reliability.md).

mod cluster;

use cluster::{restart_postgres, restart_rabbitmq, restart_redis, Cluster};
use rivet_protocol::http::{JobState, JobView, RunnerView};
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};
use uuid::Uuid;

const BULK: &str = "return { name = 'bulk', requires = {'process'},\n\
  inputs = { n = {type = 'number', required = true} },\n\
  retries = {count = 5, on = {'lost'}},\n\
  stages = { { name = 'work', script = function()\n\
    for i = 1, 3 do log.info('job ' .. env.get('n') .. ' line ' .. i) end\n\
    process.run{command = 'sleep', args = {'0.2'}}\n\
  end } } }";

/// The soak's jobs last longer, so that kills land on running jobs.
fn soak_pipeline() -> String {
    BULK.replace("'bulk'", "'soak'").replace("'0.2'", "'0.6'")
}

fn bulk_lines(n: i64) -> Vec<String> {
    (1..=3).map(|i| format!("job {n} line {i}")).collect()
}

fn env_count(name: &str, default: i64) -> i64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Submits `count` bulk jobs.
async fn submit_bulk(c: &Cluster, count: i64) -> Vec<(i64, Uuid)> {
    let mut ids = Vec::with_capacity(count as usize);
    for n in 0..count {
        ids.push((
            n,
            c.submit("bulk", serde_json::json!({ "n": n.to_string() }))
                .await,
        ));
    }
    ids
}

fn report(
    name: &str,
    jobs: usize,
    faults: usize,
    recovered: Duration,
    total: Duration,
    v: &cluster::Verdict,
) {
    println!(
        "chaos: {name}: jobs={jobs} faults={faults} recovered-in={:.1}s total={:.1}s lost={} duplicated={} incomplete-logs={} retried={}",
        recovered.as_secs_f64(),
        total.as_secs_f64(),
        v.lost,
        v.duplicated,
        v.incomplete_logs,
        v.retried
    );
}

/// The one process whose command line holds `marker`, found by a look through `/proc`.
fn process_with(marker: &str) -> i32 {
    let found: Vec<i32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            cmdline
                .windows(marker.len())
                .any(|w| w == marker.as_bytes())
                .then_some(pid)
        })
        .collect();
    assert_eq!(found.len(), 1, "processes holding {marker}: {found:?}");
    found[0]
}

/// A runner killed in the middle of a job: the job's processes die with it, and the job
/// finishes on another runner as attempt 2.
async fn kill_a_runner_mid_job() {
    let mut c = Cluster::start("kill-runner").await;
    let a = c.start_runner("a", 1).await;
    let b = c.start_runner("b", 1).await;
    // The first attempt's process says `up`, then sleeps for ten minutes: only the runner's
    // death can end it early.
    // (The comment makes its command line this run's own.)
    let first_code = format!(
        "print('up', flush=True); import time; time.sleep(601)  # {}",
        Uuid::new_v4().simple()
    );
    c.push(&format!(
        "return {{ name = 'long', requires = {{'process'}}, stages = {{ {{ name = 'work', timeout = 900, script = function()\n\
         log.info('on ' .. env.get('RIVET_RUNNER_ID'))\n\
         if env.get('RIVET_ATTEMPT') == '1' then process.run{{command = 'python3', args = {{'-c', \"{first_code}\"}}, timeout = 900}}\n\
         else process.run{{command = 'sleep', args = {{'3'}}}} end\n\
         log.info('done') end }} }} }}"
    ))
    .await;
    let started = Instant::now();
    let id = c.submit("long", serde_json::json!({})).await;
    // Running, and its process's `up` stored in the log.
    let running = async {
        loop {
            if let Ok(j) = c.get::<JobView>(&format!("/jobs/{id}")).await {
                if j.state == JobState::Running {
                    let page: Result<rivet_protocol::http::LogPage, _> =
                        c.get(&format!("/jobs/{id}/logs?attempt=1")).await;
                    if page.is_ok_and(|p| p.lines.iter().any(|l| l.line == "up")) {
                        return j.runner_id.expect("a running job has a runner");
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let victim = tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("the job started");
    let survivor = if victim == a { b.clone() } else { a.clone() };
    let first =
        rivet_sandbox::worker::pidfd(process_with(&first_code)).expect("a pidfd of the sleep");
    let killed_at = Instant::now();
    c.kill_runner(&victim);
    // Far below the sleep's ten minutes and the lease's expiry.
    assert!(
        rivet_sandbox::worker::readable_within(&first, Duration::from_secs(10)),
        "the killed runner's job is still running"
    );
    c.wait_finished(1, Duration::from_secs(90)).await;
    let recovered = killed_at.elapsed();
    let job: JobView = c.get(&format!("/jobs/{id}")).await.expect("the job");
    assert_eq!(job.state, JobState::Succeeded, "{:?}", job.outcome);
    assert_eq!(job.attempt, 2);
    assert_eq!(
        job.attempts[0].state,
        JobState::Lost,
        "{:?}",
        job.attempts[0]
    );
    assert_eq!(job.attempts[0].runner_id.as_deref(), Some(victim.as_str()));
    assert_eq!(job.runner_id.as_deref(), Some(survivor.as_str()));
    let page: rivet_protocol::http::LogPage = c
        .get(&format!("/jobs/{id}/logs?attempt=2"))
        .await
        .expect("logs");
    let script: Vec<&str> = page
        .lines
        .iter()
        .filter(|l| l.source == "script")
        .map(|l| l.line.as_str())
        .collect();
    assert_eq!(script, [format!("on {survivor}").as_str(), "done"]);
    println!(
        "chaos: kill-runner-mid-job: jobs=1 faults=1 finished-after-kill={:.1}s total={:.1}s lost=0 duplicated=0 attempts=2",
        recovered.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    c.stop().await;
}

/// SIGTERM to a runner process: it takes no new job, finishes the running one, exits 0, and
/// the job succeeded on it. The running job goes on until the runner shows it is draining
/// ([`cluster::GATED`]), so the drain surely begins while it runs.
async fn sigterm_drains_a_runner() {
    let mut c = Cluster::start("sigterm").await;
    let runner = c.start_runner("a", 1).await;
    c.push(&format!(
        "return {{ name = 'long', requires = {{'process'}}, stages = {{ {{ name = 'work', script = function()\n\
         log.info('on ' .. env.get('RIVET_RUNNER_ID'))\n\
         {}\n\
         log.info('done') end }} }} }}",
        cluster::GATED
    ))
    .await;
    let first = c.submit("long", serde_json::json!({})).await;
    let running = c.wait_running(first, Duration::from_secs(30)).await;
    let second = c.submit("long", serde_json::json!({})).await;
    c.sigterm(&runner);
    let draining = async {
        loop {
            if let Ok(runners) = c.get::<Vec<RunnerView>>("/runners").await {
                if runners
                    .iter()
                    .any(|r| r.id == runner && r.status == "draining")
                {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), draining)
        .await
        .expect("the runner shows it is draining");
    c.open_gate(&running);
    let code = c.wait_exit(&runner, Duration::from_secs(30)).await;
    assert_eq!(code, Some(0), "a drained runner exits 0");
    // Its reports were confirmed before it exited; the orchestrator applies them just after.
    c.wait_finished(1, Duration::from_secs(30)).await;
    let job: JobView = c.get(&format!("/jobs/{first}")).await.expect("the job");
    assert_eq!(job.state, JobState::Succeeded, "{:?}", job.outcome);
    assert_eq!(job.runner_id.as_deref(), Some(runner.as_str()));
    // The job submitted during the drain was not taken: it waits for another runner.
    let waiting: JobView = c.get(&format!("/jobs/{second}")).await.expect("the job");
    assert_eq!(waiting.state, JobState::Queued);
    let other = c.start_runner("b", 1).await;
    let started = c.wait_running(second, Duration::from_secs(30)).await;
    c.open_gate(&started);
    c.wait_finished(2, Duration::from_secs(60)).await;
    let done: JobView = c.get(&format!("/jobs/{second}")).await.expect("the job");
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(done.runner_id.as_deref(), Some(other.as_str()));
    println!("chaos: sigterm-drains-a-runner: jobs=2 faults=1 exit-code=0 lost=0 duplicated=0");
    c.stop().await;
}

/// Runs `count` bulk jobs over two runners and injects `fault` once a third of them finished.
async fn bulk_with_fault<F>(name: &str, count: i64, fault: F)
where
    F: for<'a> FnOnce(&'a mut Cluster) -> Pin<Box<dyn Future<Output = ()> + 'a>>,
{
    let mut c = Cluster::start(name).await;
    c.start_runner("a", 4).await;
    c.start_runner("b", 4).await;
    c.push(BULK).await;
    let started = Instant::now();
    let jobs = submit_bulk(&c, count).await;
    let third = count / 3;
    let before = async {
        while c.finished().await < third {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(120), before)
        .await
        .expect("a third of the jobs finished before the fault");
    // Time to recover: from the fault's start to the first job finishing after the fault is over.
    let fault_started = Instant::now();
    fault(&mut c).await;
    // Runners go on through most faults, and the orchestrator may apply every report before
    // the count can be read again (a PostgreSQL restart fails that read for a moment): then
    // nothing is left to finish, and waiting for one more job would wait for ever.
    let done_after_fault = c.finished().await;
    if done_after_fault < count {
        c.wait_progress(done_after_fault, Duration::from_secs(90))
            .await;
    }
    let recovered = fault_started.elapsed();
    c.wait_finished(count, Duration::from_secs(300)).await;
    let v = c.verify(&jobs, bulk_lines).await;
    report(name, jobs.len(), 1, recovered, started.elapsed(), &v);
    v.assert_clean();
    c.stop().await;
}

async fn restart_rabbitmq_mid_run() {
    let count = env_count("RIVET_CHAOS_JOBS", 150);
    bulk_with_fault("restart-rabbitmq", count, |_| {
        Box::pin(async { restart_rabbitmq() })
    })
    .await;
}

async fn restart_redis_mid_run() {
    let count = env_count("RIVET_CHAOS_JOBS", 150);
    bulk_with_fault("restart-redis", count, |_| Box::pin(restart_redis())).await;
}

/// Redis restarts empty, then the fleet is replaced: the new runner must learn the classes
/// (rebuilt by the reaper) and finish everything, including the replaced runners' lost jobs.
async fn restart_redis_then_replace_the_runners() {
    let count = env_count("RIVET_CHAOS_JOBS", 150);
    bulk_with_fault("restart-redis-new-runners", count, |c| {
        Box::pin(async move {
            restart_redis().await;
            for id in c.runner_ids() {
                c.kill_runner(&id);
            }
            c.start_runner("fresh", 4).await;
        })
    })
    .await;
}

async fn restart_postgres_mid_run() {
    let count = env_count("RIVET_CHAOS_JOBS", 150);
    bulk_with_fault("restart-postgres", count, |_| {
        Box::pin(async { restart_postgres() })
    })
    .await;
}

async fn kill_the_orchestrator_mid_run() {
    let count = env_count("RIVET_CHAOS_JOBS", 150);
    bulk_with_fault("kill-orchestrator", count, |c| {
        Box::pin(async move {
            c.kill_orchestrator();
            c.start_orchestrator().await;
        })
    })
    .await;
}

/// Many jobs while a runner is killed every few seconds and replaced.
async fn soak_with_runners_killed() {
    let count = env_count("RIVET_CHAOS_SOAK_JOBS", 300);
    let every = Duration::from_secs(2);
    let mut c = Cluster::start("soak").await;
    for name in ["a", "b", "c"] {
        c.start_runner(name, 4).await;
    }
    c.push(&soak_pipeline()).await;
    let started = Instant::now();
    let mut jobs = Vec::with_capacity(count as usize);
    for n in 0..count {
        jobs.push((
            n,
            c.submit("soak", serde_json::json!({ "n": n.to_string() }))
                .await,
        ));
    }
    let mut kills = 0;
    let mut generation = 0;
    while c.finished().await < count {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the soak did not finish within 10 minutes"
        );
        tokio::time::sleep(every).await;
        if c.finished().await >= count {
            break;
        }
        let victim = c.runner_ids()[kills % 3].clone();
        c.kill_runner(&victim);
        kills += 1;
        generation += 1;
        c.start_runner(&format!("r{generation}"), 4).await;
    }
    let total = started.elapsed();
    assert!(
        kills >= 2,
        "only {kills} runner(s) killed: the soak injected too few faults"
    );
    let v = c.verify(&jobs, bulk_lines).await;
    report(
        "soak-runners-killed",
        jobs.len(),
        kills,
        Duration::ZERO,
        total,
        &v,
    );
    v.assert_clean();
    c.stop().await;
}

type Scenario = (&'static str, fn() -> Pin<Box<dyn Future<Output = ()>>>);

fn main() {
    if std::env::var("RIVET_CHAOS_ROLE").as_deref() == Ok("orchestrator") {
        // This binary, started again as the orchestrator under test (configured by RIVET_*).
        use clap::Parser;
        let cli = rivet_orchestrator::Cli::parse_from(["rivet-orchestrator"]);
        rivet_telemetry::init("rivet-orchestrator", "info");
        let rt = tokio::runtime::Runtime::new().expect("a runtime");
        if let Err(e) = rt.block_on(rivet_orchestrator::main(cli)) {
            eprintln!("orchestrator: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    let scenarios: Vec<Scenario> = vec![
        (
            "kill_a_runner_mid_job",
            || Box::pin(kill_a_runner_mid_job()),
        ),
        ("sigterm_drains_a_runner", || {
            Box::pin(sigterm_drains_a_runner())
        }),
        ("restart_rabbitmq_mid_run", || {
            Box::pin(restart_rabbitmq_mid_run())
        }),
        (
            "restart_redis_mid_run",
            || Box::pin(restart_redis_mid_run()),
        ),
        ("restart_redis_then_replace_the_runners", || {
            Box::pin(restart_redis_then_replace_the_runners())
        }),
        ("restart_postgres_mid_run", || {
            Box::pin(restart_postgres_mid_run())
        }),
        ("kill_the_orchestrator_mid_run", || {
            Box::pin(kill_the_orchestrator_mid_run())
        }),
        ("soak_with_runners_killed", || {
            Box::pin(soak_with_runners_killed())
        }),
    ];
    // libtest-like arguments: flags are ignored (with the value of those that take one); the
    // first other argument filters by name.
    let mut filter = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--list" {
            for (name, _) in &scenarios {
                println!("{name}: test");
            }
            return;
        }
        if matches!(
            a.as_str(),
            "--test-threads" | "--skip" | "--color" | "--format" | "--logfile" | "-Z"
        ) {
            args.next();
        } else if !a.starts_with('-') && filter.is_none() {
            filter = Some(a);
        }
    }
    let chosen: Vec<&Scenario> = scenarios
        .iter()
        .filter(|(name, _)| filter.as_ref().is_none_or(|f| name.contains(f.as_str())))
        .collect();
    println!("running {} chaos scenario(s)", chosen.len());
    let mut failed = Vec::new();
    for (name, scenario) in chosen {
        let started = Instant::now();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .expect("a runtime");
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(scenario())));
        drop(rt);
        match outcome {
            Ok(()) => println!(
                "test {name} ... ok ({:.1}s)",
                started.elapsed().as_secs_f64()
            ),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed.push(*name);
            }
        }
    }
    if failed.is_empty() {
        println!("test result: ok");
    } else {
        println!("test result: FAILED: {failed:?}");
        std::process::exit(1);
    }
}
