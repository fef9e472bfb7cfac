#!/usr/bin/env bash
# Starts PostgreSQL, Redis and RabbitMQ (with its management plugin) on this machine when they
# are not already answering, installing them from Debian's packages if missing. Safe to rerun.
#
# Usage: scripts/services.sh [postgres] [redis] [rabbitmq]   (default: all three)
set -euo pipefail

want=("$@")
[ ${#want[@]} -gt 0 ] || want=(postgres redis rabbitmq)

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local name=$1 port=$2
  for _ in $(seq 1 120); do
    port_open "$port" && return 0
    sleep 0.5
  done
  echo "services: $name did not start listening on 127.0.0.1:$port" >&2
  return 1
}

apt_install() {
  if ! command -v apt-get >/dev/null; then
    echo "services: $* missing and apt-get is not available; install it by hand" >&2
    return 1
  fi
  [ -n "${RIVET_APT_UPDATED:-}" ] || { apt-get update -qq; export RIVET_APT_UPDATED=1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

for svc in "${want[@]}"; do
  case "$svc" in
    postgres)
      port_open 5432 && continue
      command -v pg_ctlcluster >/dev/null || apt_install postgresql
      pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -n | tail -n1)" main start
      wait_port postgres 5432
      ;;
    redis)
      port_open 6379 && continue
      command -v redis-server >/dev/null || apt_install redis-server
      mkdir -p /var/lib/redis /var/log/redis
      redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log
      wait_port redis 6379
      ;;
    rabbitmq)
      if ! port_open 5672; then
        command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
        rabbitmq-server -detached
        wait_port rabbitmq 5672
      fi
      # The orchestrator makes each runner's broker user through the management API (API-03).
      # Enabling is recorded in enabled_plugins, so it survives restarts.
      if ! port_open 15672; then
        rabbitmq-plugins enable rabbitmq_management >/dev/null
        wait_port rabbitmq-management 15672
      fi
      ;;
    *)
      echo "services: unknown service $svc (known: postgres redis rabbitmq)" >&2
      exit 2
      ;;
  esac
done
