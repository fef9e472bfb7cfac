#!/usr/bin/env bash
# Runs each cargo-fuzz target for a bounded time (default 60 s each); exits non-zero on a crash.
#
#   scripts/fuzz.sh [SECONDS]
#
# cargo-fuzz needs nightly-only compiler flags (-Zsanitizer, sanitizer-coverage). On a stable
# toolchain, RUSTC_BOOTSTRAP=1 unlocks them; that is what this script sets. Findings land in
# fuzz/artifacts/TARGET/; replay one with `scripts/fuzz.sh` after fixing, or
# `RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET fuzz/artifacts/TARGET/crash-...`.
# Where cargo-fuzz cannot run, `cargo test -p rivet-sandbox --test fuzz` runs the same target
# functions over a corpus and random inputs (RIVET_FUZZ_SECONDS, default 10 per target).
set -euo pipefail

seconds="${1:-60}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -eq 0 ]; then
  echo "usage: scripts/fuzz.sh [SECONDS]  (a positive number of seconds per target)" >&2
  exit 2
fi
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/fuzz"

command -v cargo >/dev/null || { echo "fuzz.sh: cargo is not installed" >&2; exit 2; }
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi
command -v c++ >/dev/null || { echo "fuzz.sh: libFuzzer needs a C++ compiler (c++)" >&2; exit 2; }

export RUSTC_BOOTSTRAP=1
# One target directory for the project (CARGO_TARGET_DIR if set), fuzz builds in a subfolder.
target_dir="${CARGO_TARGET_DIR:-$root/target}/fuzz"
sanitizer="${FUZZ_SANITIZER:-address}"
# Seed corpora: the example pipelines and plugins for the definition target.
mkdir -p corpus/definition corpus/convert
cp -n "$root"/examples/*.lua "$root"/plugins/*.lua corpus/definition/ 2>/dev/null || true

status=0
for target in definition convert; do
  echo "== fuzzing $target for ${seconds}s (sanitizer: $sanitizer)" >&2
  if ! cargo fuzz run --sanitizer "$sanitizer" --target-dir "$target_dir" "$target" \
      "corpus/$target" -- -max_total_time="$seconds" -timeout=20 -rss_limit_mb=4096 \
      -max_len=65536; then
    echo "fuzz.sh: $target found a crash: see fuzz/artifacts/$target/" >&2
    status=1
  fi
done
exit "$status"
