#!/usr/bin/env bash
# Compares builds with the fleet bench, run alternately in the same rounds (this machine is
# shared and noisy: only ratios within a round mean much). See docs/benchmarks.md.
#
#   scripts/fleet-ab.sh save NAME            # this checkout's bench and worker binaries, as NAME
#   scripts/fleet-ab.sh run ROUNDS NAME...   # ROUNDS rounds of every NAME in turn, then medians
#
# Checkouts that share one CARGO_TARGET_DIR: touch the sources of each before saving it
# (`find . -path ./.git -prune -o -type f -exec touch {} +`). Cargo judges path crates fresh by
# file times, so a checkout made before another's build would be saved as that build.
#
# Saved builds live in $RIVET_AB_DIR (default /var/tmp/rivet-ab). Each run is
# `RIVET_BENCH_LATENCY_JOBS=200 RIVET_BENCH_THROUGHPUT_JOBS=2000` unless those are set; the
# summary gives each build's median throughput, submit→finished p50/p99 and CPU per job by
# part, and every later NAME's throughput ratio to the first NAME's, per round.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${RIVET_AB_DIR:-/var/tmp/rivet-ab}"

case "${1:-}" in
save)
    name="${2:?usage: fleet-ab.sh save NAME}"
    cargo build --release -q -p rivet-runner
    # Not -q: cargo names the bench executable in its status output.
    bench=$(cargo bench -p rivet-runner --bench fleet --no-run 2>&1 |
        sed -n 's/.*Executable benches\/fleet.rs (\(.*\)).*/\1/p' | tail -1)
    [ -n "$bench" ] || { echo "fleet-ab: no bench executable found" >&2; exit 1; }
    target="${CARGO_TARGET_DIR:-target}"
    case "$bench" in /*) ;; *) bench="$PWD/$bench" ;; esac
    mkdir -p "$dir/$name"
    cp "$bench" "$dir/$name/fleet"
    cp "$target/release/rivet-runner" "$dir/$name/rivet-runner"
    echo "fleet-ab: saved $(git rev-parse --short HEAD)$(git diff --quiet || echo '+changes') as $name in $dir/$name"
    ;;
run)
    rounds="${2:?usage: fleet-ab.sh run ROUNDS NAME...}"
    shift 2
    [ $# -gt 0 ] || { echo "usage: fleet-ab.sh run ROUNDS NAME..." >&2; exit 1; }
    for name in "$@"; do
        [ -x "$dir/$name/fleet" ] && [ -x "$dir/$name/rivet-runner" ] ||
            { echo "fleet-ab: no build saved as $name (scripts/fleet-ab.sh save $name)" >&2; exit 1; }
    done
    log="$dir/run-$(date +%Y%m%d-%H%M%S).log"
    mkdir -p "$dir"
    for round in $(seq 1 "$rounds"); do
        for name in "$@"; do
            echo "== round $round $name $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$log"
            (cd services/rivet-runner &&
                RIVET_TEST_WORKER_PROGRAM="$dir/$name/rivet-runner" \
                RIVET_BENCH_LATENCY_JOBS="${RIVET_BENCH_LATENCY_JOBS:-200}" \
                RIVET_BENCH_THROUGHPUT_JOBS="${RIVET_BENCH_THROUGHPUT_JOBS:-2000}" \
                "$dir/$name/fleet" --bench 2>&1) |
                grep -E 'jobs/s|submit→|by part' | tee -a "$log"
        done
    done
    python3 - "$log" <<'EOF'
import re, statistics, sys
runs = {}
name = None
for line in open(sys.argv[1]):
    m = re.match(r"== round \d+ (\S+)", line)
    if m:
        name = m.group(1)
        runs.setdefault(name, {})
        continue
    r = runs[name]
    if m := re.search(r"(\d+) jobs/s", line):
        r.setdefault("jobs/s", []).append(float(m.group(1)))
    if m := re.search(r"submit→finished p50 ([\d.]+) ms p99 ([\d.]+)", line):
        r.setdefault("p50 ms", []).append(float(m.group(1)))
        r.setdefault("p99 ms", []).append(float(m.group(2)))
    if m := re.search(r"client ([\d.]+) ms, sandbox workers ([\d.]+) ms, PostgreSQL ([\d.]+) ms, RabbitMQ ([\d.]+) ms, Redis ([\d.]+)", line):
        for k, v in zip(["bench ms", "workers ms", "postgres ms", "rabbitmq ms", "redis ms"], m.groups()):
            r.setdefault(k, []).append(float(v))
names = list(runs)
for n in names:
    medians = ", ".join(f"{k} {statistics.median(v):g}" for k, v in runs[n].items())
    print(f"{n}: {medians}; jobs/s per round {[int(x) for x in runs[n].get('jobs/s', [])]}")
base = runs[names[0]].get("jobs/s", [])
for n in names[1:]:
    ratios = [b / a for a, b in zip(base, runs[n].get("jobs/s", []))]
    if ratios:
        print(f"{n} / {names[0]} throughput per round {[round(x, 3) for x in ratios]}, median {statistics.median(ratios):.3f}")
EOF
    echo "fleet-ab: log in $log"
    ;;
*)
    sed -n '2,/^set /{/^#/p}' "$0" >&2
    exit 1
    ;;
esac
