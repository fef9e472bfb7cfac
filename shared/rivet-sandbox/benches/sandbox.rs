//! Sandbox benchmarks (a bench binary, not a timed test): VM creation with modules, and a
//! trivial one-stage pipeline through a worker process, with and without namespaces.
//!
//! Run: `cargo bench -p rivet-sandbox --bench sandbox` (prints medians; see docs/benchmarks.md).

use rivet_core::policy::NamespaceMode;
use rivet_core::{JobOutcome, Policy};
use rivet_sandbox::convert::Bounds;
use rivet_sandbox::modules::{self, JobContext, Sink};
use rivet_sandbox::{JobRequest, Mode, WorkerOptions};
use std::rc::Rc;
use std::time::{Duration, Instant};

fn summarize(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let pick = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "{name:<48} n={:<5} median {:>9.1} µs   p10 {:>9.1} µs   p90 {:>9.1} µs",
        samples.len(),
        us(pick(0.5)),
        us(pick(0.1)),
        us(pick(0.9))
    );
}

fn bench(name: &str, iterations: usize, mut f: impl FnMut()) {
    for _ in 0..iterations / 10 {
        f();
    }
    let samples = (0..iterations)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    summarize(name, samples);
}

fn vm_with_modules(workspace: &std::path::Path, policy: &Policy) {
    let vm = rivet_sandbox::vm::new_vm(policy.limits.memory).unwrap();
    let request = request(workspace, policy.clone(), "");
    let ctx = Rc::new(JobContext {
        sink: Rc::new(Sink::new(
            Box::new(std::io::sink()),
            policy.log.clone(),
            Vec::new(),
        )),
        budget: vm.budget.clone(),
        vars: Default::default(),
        inputs: Default::default(),
        stage_env: Default::default(),
        workspace: Some(
            cap_std::fs::Dir::open_ambient_dir(workspace, cap_std::ambient_authority()).unwrap(),
        ),
        home: workspace.into(),
        tmp: workspace.into(),
        pid_namespace: false,
        fs_usage: Default::default(),
        host: rivet_sandbox::host::HostChannel::closed(),
        containers: Default::default(),
        process_granted: std::cell::Cell::new(true),
        request,
    });
    let g = vm.lua.globals();
    let bounds = Bounds {
        max_depth: 64,
        max_size: 1 << 20,
    };
    modules::log::register(&vm.lua, &ctx, &g).unwrap();
    modules::json::register(&vm.lua, bounds, &g).unwrap();
    modules::env::register(&vm.lua, &ctx, &g).unwrap();
    modules::process::register(&vm.lua, &ctx, &g).unwrap();
    modules::filesystem::register(&vm.lua, &ctx, &g).unwrap();
}

fn request(workspace: &std::path::Path, policy: Policy, source: &str) -> JobRequest {
    JobRequest {
        mode: Mode::Run,
        file_name: "bench.lua".into(),
        source: source.into(),
        inputs: Default::default(),
        secrets: Default::default(),
        metadata: Default::default(),
        workspace: workspace.into(),
        binaries: rivet_sandbox::job::resolve_binaries(&policy.process),
        policy,
        plugins: Default::default(),
    }
}

const TRIVIAL: &str = "return { name = 'trivial', stages = { { name = 'one', script = function() log.info('hi') end } } }";

fn main() {
    let iterations: usize = std::env::var("RIVET_BENCH_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let ws = tempfile::tempdir().unwrap();
    let policy = Policy::default();

    bench("fresh hardened VM (no modules)", iterations * 10, || {
        let vm = rivet_sandbox::vm::new_vm(policy.limits.memory).unwrap();
        drop(vm);
    });
    bench(
        "fresh hardened VM + log/json/env/process/filesystem",
        iterations * 10,
        || vm_with_modules(ws.path(), &policy),
    );

    let options = WorkerOptions::new(env!("CARGO_BIN_EXE_rivet-sandbox-worker").into());
    // The request is built once, as a runner does: allowed programs are resolved at its start,
    // not per job.
    let run = |req: &JobRequest| {
        let report = rivet_sandbox::run_worker(req, &options, |_| {}).unwrap();
        assert_eq!(report.outcome, JobOutcome::Succeeded);
    };
    let with_ns = request(ws.path(), policy.clone(), TRIVIAL);
    bench(
        "trivial pipeline through worker (namespaces)",
        iterations,
        || run(&with_ns),
    );
    let mut plain = policy.clone();
    plain.sandbox.namespaces = NamespaceMode::Off;
    let without_ns = request(ws.path(), plain, TRIVIAL);
    bench(
        "trivial pipeline through worker (no namespaces)",
        iterations,
        || run(&without_ns),
    );
    bench("spawn /bin/true (reference)", iterations, || {
        std::process::Command::new("/bin/true").status().unwrap();
    });
}
