//! `rivet run` as a whole process on a trivial pipeline (a bench binary, not a timed test).
//!
//! Run: `cargo bench -p rivet-cli --bench cli` (prints medians; see docs/benchmarks.md).

use std::process::Command;
use std::time::{Duration, Instant};

fn main() {
    let iterations: usize = std::env::var("RIVET_BENCH_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let file = dir.path().join("trivial.lua");
    std::fs::write(&file, "return { name = 'trivial', stages = { { name = 'one', script = function() log.info('hi') end } } }").unwrap();
    let run = |cmd: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_rivet"))
            .args([cmd, file.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    for (name, cmd) in [
        ("rivet run trivial.lua (whole process)", "run"),
        ("rivet lint trivial.lua (whole process)", "lint"),
    ] {
        for _ in 0..iterations / 10 {
            run(cmd);
        }
        let mut samples: Vec<Duration> = (0..iterations)
            .map(|_| {
                let t = Instant::now();
                run(cmd);
                t.elapsed()
            })
            .collect();
        samples.sort();
        let pick = |q: f64| {
            samples[((samples.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e3
        };
        println!(
            "{name:<48} n={:<5} median {:>7.2} ms   p10 {:>7.2} ms   p90 {:>7.2} ms",
            samples.len(),
            pick(0.5),
            pick(0.1),
            pick(0.9)
        );
    }
}
