#!/usr/bin/env bash
# Starts a development fleet on this machine: PostgreSQL, Redis and RabbitMQ (if not running),
# an orchestrator on 127.0.0.1:8080 and N runners (default 2). State lives in .dev/.
# Usage: scripts/dev-up.sh [N]        then: source .dev/env; rivet runner ls
set -euo pipefail
cd "$(dirname "$0")/.."
runners=${1:-2}
[[ "$runners" =~ ^[0-9]+$ ]] || { echo "dev-up: N must be a number" >&2; exit 2; }
command -v cargo >/dev/null || { echo "dev-up: cargo is required" >&2; exit 1; }
command -v psql >/dev/null || { echo "dev-up: psql is required (apt-get install postgresql-client)" >&2; exit 1; }

scripts/services.sh
if [ -f .dev/orchestrator.pid ] && kill -0 "$(cat .dev/orchestrator.pid)" 2>/dev/null; then
  echo "dev-up: already running (scripts/dev-down.sh stops it)" >&2
  exit 1
fi
cargo build -q -p rivet-orchestrator -p rivet-runner -p rivet-cli
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
bin="$target/debug"
mkdir -p .dev/work
psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'rivet'" | grep -q 1 \
  || psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE rivet"
[ -f .dev/token ] || { head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > .dev/token; echo >> .dev/token; }
token=$(cat .dev/token)

export RIVET_DATABASE_URL=postgres://postgres@127.0.0.1:5432/rivet
RIVET_BOOTSTRAP_TOKEN="$token" nohup "$bin/rivet-orchestrator" > .dev/orchestrator.log 2>&1 &
echo $! > .dev/orchestrator.pid
for _ in $(seq 1 100); do
  (exec 3<>/dev/tcp/127.0.0.1/8080) 2>/dev/null && break
  kill -0 "$(cat .dev/orchestrator.pid)" 2>/dev/null || { echo "dev-up: the orchestrator died; see .dev/orchestrator.log" >&2; exit 1; }
  sleep 0.2
done
# Each runner gets a registration of its own (its id and labels come from it); one left by an
# earlier run is revoked first, since a registration's token is shown only once.
for i in $(seq 1 "$runners"); do
  name="dev-runner-$i"
  RIVET_URL=http://127.0.0.1:8080 RIVET_TOKEN="$token" "$bin/rivet" runner revoke "$name" >/dev/null 2>&1 || true
  runner_token=$(RIVET_URL=http://127.0.0.1:8080 RIVET_TOKEN="$token" "$bin/rivet" runner register "$name" --label dev=true --json \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])')
  RIVET_URL=http://127.0.0.1:8080 RIVET_RUNNER_TOKEN="$runner_token" RIVET_WORK_DIR="$PWD/.dev/work/runner-$i" \
    nohup "$bin/rivet-runner" > ".dev/runner-$i.log" 2>&1 &
  echo $! > ".dev/runner-$i.pid"
done
cat > .dev/env <<ENV
export RIVET_URL=http://127.0.0.1:8080
export RIVET_TOKEN=$token
export PATH="$bin:\$PATH"
ENV
echo "dev-up: orchestrator on http://127.0.0.1:8080 with $runners runner(s); logs in .dev/"
echo "dev-up: run 'source .dev/env' to point rivet at it"
