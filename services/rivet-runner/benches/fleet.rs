//! Fleet benchmark (a bench binary, not a timed test): an orchestrator and two runners in this
//! process against the real PostgreSQL, Redis and RabbitMQ on this machine.
//!
//! - latency: one trivial job in flight at a time; submit → started and submit → finished, from
//!   the database's own timestamps (p50, p99);
//! - throughput: N trivial jobs submitted at once (32 requests in flight), jobs/s from the first
//!   submission to the last finish; every job must succeed exactly once.
//!
//! Run: `cargo bench -p rivet-runner --bench fleet` (RIVET_BENCH_LATENCY_JOBS=200,
//! RIVET_BENCH_THROUGHPUT_JOBS=2000, RIVET_BENCH_RUNNERS=2, RIVET_BENCH_SLOTS=2 by default;
//! RIVET_BENCH_NAMESPACES=off runs workers without namespaces). See docs/benchmarks.md.

#[path = "../tests/fleet/helpers.rs"]
#[allow(dead_code)]
mod helpers;

use futures_util::StreamExt;
use serde_json::json;
use sqlx::Connection;
use std::time::{Duration, Instant};

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The machine's busy CPU time so far, in clock ticks (all CPUs: user, nice, system, irq,
/// softirq, steal), from `/proc/stat`.
fn busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| fields.get(i))
        .sum()
}

/// CPU time (user + system, ms) used so far by: this process (the orchestrator, the runners and
/// the HTTP client), the sandbox workers (reaped by the runners' worker launchers: the
/// launchers' own and reaped children's times, and those of launchers already reaped), and the
/// PostgreSQL, RabbitMQ and Redis processes (those alive now; PostgreSQL's pooled backends
/// live through the run).
fn cpu_split() -> [f64; 5] {
    fn rusage(who: i32) -> f64 {
        // SAFETY: getrusage fills the struct we own.
        let mut r: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(who, &mut r) };
        let ms = |t: libc::timeval| t.tv_sec as f64 * 1000.0 + t.tv_usec as f64 / 1000.0;
        ms(r.ru_utime) + ms(r.ru_stime)
    }
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut services = [0.0f64; 3];
    let mut launchers = 0.0;
    let me = std::process::id().to_string();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        // After the name: state is field 3, the parent's pid field 4; utime, stime, cutime
        // and cstime are fields 14 to 17.
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let ms = |at: &[usize]| -> f64 {
            at.iter()
                .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<f64>().ok()))
                .sum::<f64>()
                / hz
                * 1000.0
        };
        if fields.get(1) == Some(&me.as_str()) {
            launchers += ms(&[11, 12, 13, 14]);
            continue;
        }
        let slot = match &stat[open + 1..close] {
            "postgres" => 0,
            "beam.smp" => 1,
            "redis-server" => 2,
            _ => continue,
        };
        services[slot] += ms(&[11, 12]);
    }
    [
        rusage(libc::RUSAGE_SELF),
        rusage(libc::RUSAGE_CHILDREN) + launchers,
        services[0],
        services[1],
        services[2],
    ]
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let latency_jobs = env_num("RIVET_BENCH_LATENCY_JOBS", 200);
    let throughput_jobs = env_num("RIVET_BENCH_THROUGHPUT_JOBS", 2000);
    let slots = env_num("RIVET_BENCH_SLOTS", 2) as u32;
    // RIVET_BENCH_NAMESPACES=off measures the fleet without the worker's namespaces.
    let policy = match std::env::var("RIVET_BENCH_NAMESPACES").as_deref() {
        Ok("off") => "[sandbox]\nnamespaces = \"off\"\n",
        _ => "",
    };
    let runners = env_num("RIVET_BENCH_RUNNERS", 2);
    let mut fleet = helpers::start().await;
    for i in 0..runners {
        fleet
            .runner_with_slots(&format!("bench-{i}"), &[], policy, slots)
            .await;
    }
    fleet
        .push("return { name = 'trivial', stages = { { name = 'one', script = function() log.info('hi') end } } }")
        .await;
    let mut db = sqlx::PgConnection::connect(&fleet.database_url)
        .await
        .unwrap();

    // Latency, one job in flight.
    for _ in 0..latency_jobs.min(20) {
        let job = fleet.submit("trivial", json!({})).await;
        fleet.wait_final(job.id, Duration::from_secs(30)).await;
    }
    sqlx::query("DELETE FROM log_lines")
        .execute(&mut db)
        .await
        .unwrap();
    let mut ids = Vec::new();
    for _ in 0..latency_jobs {
        let job = fleet.submit("trivial", json!({})).await;
        let done = fleet.wait_final(job.id, Duration::from_secs(30)).await;
        assert_eq!(done.state, rivet_protocol::http::JobState::Succeeded);
        ids.push(job.id);
    }
    let rows: Vec<(f64, f64)> = sqlx::query_as(
        "SELECT extract(epoch FROM started_at - created_at)::float8 * 1000, extract(epoch FROM finished_at - created_at)::float8 * 1000 \
         FROM jobs WHERE id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&mut db)
    .await
    .unwrap();
    let mut started: Vec<f64> = rows.iter().map(|r| r.0).collect();
    let mut finished: Vec<f64> = rows.iter().map(|r| r.1).collect();
    started.sort_by(f64::total_cmp);
    finished.sort_by(f64::total_cmp);
    println!(
        "latency (n={latency_jobs}, one in flight): submit→started p50 {:.2} ms p99 {:.2} ms; submit→finished p50 {:.2} ms p99 {:.2} ms",
        percentile(&started, 0.5),
        percentile(&started, 0.99),
        percentile(&finished, 0.5),
        percentile(&finished, 0.99)
    );

    // Throughput.
    let ticks0 = busy_ticks();
    let split0 = cpu_split();
    let t0 = Instant::now();
    let submitted: Vec<uuid::Uuid> = futures_util::stream::iter(0..throughput_jobs)
        .map(|_| {
            let fleet = &fleet;
            async move { fleet.submit("trivial", json!({})).await.id }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let submit_secs = t0.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(600);
    // Every earlier job is over, so the run is done when no job is queued or running. Asked
    // that way (the state index), the poll costs PostgreSQL a tenth of matching 2,000 ids
    // every time, which took about 1 % of the machine from the jobs measured.
    loop {
        let (left,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM jobs WHERE state IN ('queued', 'running')")
                .fetch_one(&mut db)
                .await
                .unwrap();
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} of {throughput_jobs} jobs still unfinished after 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let busy = busy_ticks() - ticks0;
    let split1 = cpu_split();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let (ok, attempts, span): (i64, i64, f64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state = 'succeeded'), (SELECT count(*) FROM attempts WHERE job_id = ANY($1)), \
         extract(epoch FROM max(finished_at) - min(created_at))::float8 FROM jobs WHERE id = ANY($1)",
    )
    .bind(&submitted)
    .fetch_one(&mut db)
    .await
    .unwrap();
    let phases: Vec<(f64,)> = sqlx::query_as(
        "SELECT extract(epoch FROM finished_at - started_at)::float8 * 1000 FROM jobs WHERE id = ANY($1) ORDER BY 1",
    )
    .bind(&submitted)
    .fetch_all(&mut db)
    .await
    .unwrap();
    let run_ms: Vec<f64> = phases.into_iter().map(|p| p.0).collect();
    println!(
        "throughput run: started→finished p50 {:.2} ms p90 {:.2} ms (the rest of each job's time is queueing)",
        percentile(&run_ms, 0.5),
        percentile(&run_ms, 0.9)
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "throughput (n={throughput_jobs}, {runners} runners × {slots} slots): {:.0} jobs/s ({span:.2} s from first submit to last finish; submitting took {submit_secs:.2} s); succeeded {ok}, attempts {attempts}, lost {}, duplicated {}",
        throughput_jobs as f64 / span,
        throughput_jobs as i64 - ok,
        attempts - throughput_jobs as i64
    );
    println!(
        "machine CPU per job (every process, both cores, during the throughput run): {:.2} ms",
        busy as f64 / hz * 1000.0 / throughput_jobs as f64
    );
    let per_job: Vec<f64> = split0
        .iter()
        .zip(split1)
        .map(|(a, b)| (b - a) / throughput_jobs as f64)
        .collect();
    println!(
        "CPU per job by part: orchestrator + runners + client {:.2} ms, sandbox workers {:.2} ms, PostgreSQL {:.2} ms, RabbitMQ {:.2} ms, Redis {:.2} ms",
        per_job[0], per_job[1], per_job[2], per_job[3], per_job[4]
    );
    println!("load average after: {}", load.trim());
    fleet.stop().await;
}
