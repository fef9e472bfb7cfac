#!/usr/bin/env bash
# Stops what scripts/dev-up.sh started. --reset also drops the development database and token.
set -euo pipefail
cd "$(dirname "$0")/.."
shopt -s nullglob
for pidfile in .dev/runner-*.pid .dev/orchestrator.pid; do
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
done
if [ "${1:-}" = "--reset" ]; then
  psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS rivet WITH (FORCE)"
  rm -rf .dev
fi
echo "dev-down: stopped"
