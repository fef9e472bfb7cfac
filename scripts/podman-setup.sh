#!/usr/bin/env bash
# Sets up Podman's Docker-compatible API for Rivet's container module and tests, on a fresh
# Debian machine, with nothing pulled from a registry. Safe to rerun: every step checks first.
#
#   scripts/podman-setup.sh            packages (podman, runc, busybox-static, podman-compose),
#                                      containers.conf, the API socket, rivet-test/busybox
#   scripts/podman-setup.sh --python   the same, plus python:3.11 (a debootstrap root, ~1 minute)
#
# The socket is unix:///run/rivet-podman/podman.sock (RIVET_PODMAN_SOCKET overrides the path);
# tests read it from RIVET_CONTAINER_HOST. Needs root (apt-get, podman as root).
set -euo pipefail

SOCKET="${RIVET_PODMAN_SOCKET:-/run/rivet-podman/podman.sock}"
CACHE="${RIVET_IMAGE_CACHE:-/var/cache/rivet-images}"
CONF=/etc/containers/containers.conf
LOG_FILE="$(dirname "$SOCKET")/service.log"
DEBIAN_MIRROR="${RIVET_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
WANT_PYTHON=0

for arg in "$@"; do
  case "$arg" in
    --python) WANT_PYTHON=1 ;;
    -h | --help)
      sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "podman-setup: unknown argument \`$arg\` (expected --python)" >&2
      exit 2
      ;;
  esac
done

say() { echo "podman-setup: $*"; }
die() {
  echo "podman-setup: error: $*" >&2
  exit 1
}

[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and runs rootful podman)"
command -v curl >/dev/null || die "curl is required to check the API socket"

# 1. Packages.
missing=()
command -v podman >/dev/null || missing+=(podman)
command -v runc >/dev/null || missing+=(runc)
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "ok installed" || missing+=(busybox-static)
# The docker-compose plugin's tests drive podman-compose (Debian's package, no registry).
command -v podman-compose >/dev/null || missing+=(podman-compose)
if [ "$WANT_PYTHON" = 1 ]; then
  command -v debootstrap >/dev/null || missing+=(debootstrap)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
    apt-get update -qq
    apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null
  }
else
  say "packages present (podman $(podman --version | awk '{print $3}'))"
fi

# 2. containers.conf: set our three keys, keep everything else the file says.
#    runc (crun is not installed), cgroupfs (no systemd to delegate cgroups to), and no default
#    ulimits (the packaged default asks for more open files than a CI sandbox's hard limit).
set_conf() { # section key value
  local section="$1" key="$2" value="$3" tmp
  tmp="$(mktemp)"
  awk -v section="[$section]" -v key="$key" -v value="$value" '
    function emit() { print key " = " value; done = 1 }
    /^[[:space:]]*\[/ {
      if (in_section && !done) emit()
      hdr = $0; gsub(/[[:space:]]/, "", hdr)
      in_section = (hdr == section); seen = seen || in_section
      print; next
    }
    in_section && $0 ~ "^[[:space:]]*#?[[:space:]]*" key "[[:space:]]*=" {
      if (!done) emit()
      next
    }
    { print }
    END {
      if (in_section && !done) emit()
      else if (!seen) { print ""; print section; emit() }
    }' "$CONF" >"$tmp"
  if ! cmp -s "$tmp" "$CONF"; then
    cat "$tmp" >"$CONF"
    changed=1
  fi
  rm -f "$tmp"
}
mkdir -p "$(dirname "$CONF")"
[ -f "$CONF" ] || : >"$CONF"
changed=0
set_conf containers default_ulimits "[]"
set_conf engine runtime '"runc"'
set_conf engine cgroup_manager '"cgroupfs"'
if [ "$changed" = 1 ]; then say "updated $CONF"; else say "$CONF already configured"; fi

# 3. The API service.
ping() { curl -fsS --max-time 3 --unix-socket "$SOCKET" http://d/_ping 2>/dev/null | grep -q OK; }
# A service whose working directory was deleted (started from a checkout since removed) still
# answers pings, but conmon fails to start any container ("write child: broken pipe").
service_pid="$(cat "$(dirname "$SOCKET")/service.pid" 2>/dev/null || true)"
if [ -n "$service_pid" ] && readlink "/proc/$service_pid/cwd" 2>/dev/null | grep -q ' (deleted)$'; then
  say "the API service (pid $service_pid) lost its working directory; restarting it"
  changed=1
fi
if ping && [ "$changed" = 0 ]; then
  say "API answers on $SOCKET"
else
  if ping; then
    # The configuration changed under a running service: restart it to pick it up.
    pkill_pid="$(cat "$(dirname "$SOCKET")/service.pid" 2>/dev/null || true)"
    if [ -n "$pkill_pid" ] && kill -0 "$pkill_pid" 2>/dev/null; then
      say "restarting the API service (pid $pkill_pid) for the new configuration"
      kill "$pkill_pid"
      for _ in $(seq 50); do kill -0 "$pkill_pid" 2>/dev/null || break; sleep 0.1; done
    fi
  fi
  mkdir -p "$(dirname "$SOCKET")"
  rm -f "$SOCKET"
  say "starting podman system service on unix://$SOCKET (log: $LOG_FILE)"
  # From `/`, so the service never depends on a directory that may be removed.
  (cd / && exec setsid podman system service --time=0 "unix://$SOCKET" >>"$LOG_FILE" 2>&1 </dev/null) &
  echo $! >"$(dirname "$SOCKET")/service.pid"
  for _ in $(seq 100); do
    ping && break
    sleep 0.1
  done
  ping || die "the API did not answer on $SOCKET within 10 s; see $LOG_FILE"
  say "API answers on $SOCKET"
fi

# 4. rivet-test/busybox:latest, a busybox-static root (no registry involved).
image_exists() { podman image exists "$1"; }
if image_exists rivet-test/busybox:latest; then
  say "image rivet-test/busybox:latest present"
else
  root="$(mktemp -d)"
  trap 'rm -rf "$root"' EXIT
  mkdir -p "$root"/{bin,etc,tmp,workspace,proc,sys,dev,root}
  chmod 1777 "$root/tmp"
  cp /bin/busybox "$root/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
  tar -C "$root" -cf "$root.tar" .
  podman import --quiet --change 'CMD ["/bin/sh"]' --change 'ENV PATH=/bin' "$root.tar" \
    rivet-test/busybox:latest >/dev/null
  rm -rf "$root" "$root.tar"
  trap - EXIT
  say "built image rivet-test/busybox:latest from busybox-static"
fi

# 5. python:3.11 (only with --python): a minimal Debian root with python3 and pytest.
if [ "$WANT_PYTHON" = 1 ]; then
  if image_exists docker.io/library/python:3.11; then
    say "image python:3.11 present"
  else
    recipe="bookworm minbase python3 python3-pytest $DEBIAN_MIRROR v1"
    key="$(printf '%s' "$recipe" | sha256sum | cut -c1-16)"
    tarball="$CACHE/python-3.11-$key.tar"
    mkdir -p "$CACHE"
    if [ -s "$tarball" ]; then
      say "using cached root $tarball"
    else
      root="$(mktemp -d)"
      trap 'rm -rf "$root"' EXIT
      say "debootstrap of a python3 + pytest root (about a minute)"
      debootstrap --variant=minbase --include=python3,python3-pytest bookworm "$root" \
        "$DEBIAN_MIRROR" >"$CACHE/debootstrap.log" 2>&1 ||
        die "debootstrap failed; see $CACHE/debootstrap.log"
      # The image needs no package cache, and `python` should name python3 as in the real image.
      rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
      ln -sf python3 "$root/usr/bin/python"
      mkdir -p "$root/workspace"
      tar -C "$root" -cf "$tarball.part" .
      mv "$tarball.part" "$tarball"
      rm -rf "$root"
      trap - EXIT
    fi
    podman import --quiet --change 'CMD ["python3"]' \
      --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' "$tarball" docker.io/library/python:3.11 >/dev/null
    podman tag docker.io/library/python:3.11 python:3.11
    say "built image python:3.11 (docker.io/library/python:3.11)"
  fi
fi

say "done; export RIVET_CONTAINER_HOST=unix://$SOCKET"
