#!/usr/bin/env bash
# The whole check, as CI runs it: format, lints, and every test against the real services.
# Usage: scripts/test.sh            (from anywhere in the repository)
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null || { echo "test.sh: $1 is required ($2)" >&2; exit 1; }; }
need cargo "install Rust with rustup"
need git "the git plugin's tests run git: apt-get install git"
need python3 "the CLI tests run a Python test suite: apt-get install python3"
need openssl "the https tests make a test CA and serve TLS with it: apt-get install openssl"

# The sandbox's namespace tests need user namespaces; say so loudly instead of failing obscurely.
if ! unshare --user --map-root-user true 2>/dev/null; then
  echo "test.sh: user namespaces are unavailable here; sandbox isolation tests will fail" >&2
fi

# The tests talk to services on loopback: no proxy the environment names stands in between.
export NO_PROXY="127.0.0.1,localhost,::1${NO_PROXY:+,$NO_PROXY}"
export no_proxy="$NO_PROXY"
# A root run's jobs run as `nobody`: directories the tests make must stay searchable to it.
umask 022

# Services for the crates that talk to RabbitMQ, PostgreSQL and Redis.
scripts/services.sh

# Podman's Docker-compatible API and the local test images (rivet-test/busybox, python:3.11)
# for the container tests; nothing is pulled from a registry.
scripts/podman-setup.sh --python
export RIVET_CONTAINER_HOST="unix://${RIVET_PODMAN_SOCKET:-/run/rivet-podman/podman.sock}"

# Tests clean up after themselves; a test that panicked may not have. Remove what earlier runs
# left: test databases, test queues and runners' broker users (each test uses its own
# `rivet-test-*` namespace).
if command -v psql >/dev/null; then
  psql -h 127.0.0.1 -U postgres -tAc "SELECT datname FROM pg_database WHERE datname LIKE 'rivet\_test\_%' OR datname LIKE 'rivet\_cli\_test\_%'" 2>/dev/null |
    while read -r db; do [ -n "$db" ] && psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" </dev/null >/dev/null 2>&1 || true; done || true
fi
if command -v rabbitmqctl >/dev/null; then
  rabbitmqctl -q list_queues name 2>/dev/null | grep -E '^rivet(-cli)?-test-' |
    while read -r q; do rabbitmqctl -q delete_queue "$q" </dev/null >/dev/null 2>&1 || true; done || true
  rabbitmqctl -q list_users 2>/dev/null | awk '{print $1}' | grep -E '^rivet(-cli)?-test-.*\.runner\.' |
    while read -r u; do rabbitmqctl -q delete_user "$u" </dev/null >/dev/null 2>&1 || true; done || true
fi
if command -v redis-cli >/dev/null; then
  redis-cli -h 127.0.0.1 ACL USERS 2>/dev/null | grep -E '^rivet(-cli)?-test-.*\.runner\.' |
    while read -r u; do redis-cli -h 127.0.0.1 ACL DELUSER "$u" </dev/null >/dev/null 2>&1 || true; done || true
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
