#!/usr/bin/env bash
# Starts the Docker engine that Cairn's container backend and services use,
# unless one already answers on the configured socket. There is no systemd
# here, so dockerd runs in the background with its own data root, bridge
# subnet (10.200.200.0/24), network pool (10.200.128.0/17: other tests use
# 10.200.77.x), pid file and log file. Installs nothing
# (scripts/system-deps.sh does). Fails loudly when the engine cannot be
# started, so tests fail rather than skip.
set -euo pipefail

host=${CAIRN_DOCKER_HOST:-${DOCKER_HOST:-unix:///run/cairn-docker.sock}}
data_root=${CAIRN_DOCKER_DATA_ROOT:-/var/lib/cairn-docker}
state_dir=${CAIRN_DOCKER_STATE_DIR:-/var/run/cairn-docker}
log_file=${CAIRN_DOCKER_LOG:-$state_dir/dockerd.log}
pid_file=$state_dir/dockerd.pid

# The docker client on PATH may be newer than the engine (a 28.x client, the
# docker.io 20.10 engine with API 1.41). Clients negotiate the API version
# down by themselves, so nothing is pinned here.

answers() { docker -H "$host" info --format '{{.ServerVersion}}' >/dev/null 2>&1; }

if answers; then exit 0; fi

case $host in
  unix://*) sock=${host#unix://} ;;
  *) echo "dockerd.sh: $host is not a unix socket and no engine answers there; start one yourself" >&2; exit 1 ;;
esac

if [ "$(id -u)" -ne 0 ]; then
  echo "dockerd.sh: no Docker engine answers on $host, and starting one needs root" >&2
  exit 1
fi
command -v dockerd >/dev/null || { echo "dockerd.sh: dockerd is not installed (apt-get install docker.io)" >&2; exit 1; }

mkdir -p "$data_root" "$state_dir" "$(dirname "$sock")"
# A pid file left by a dead dockerd would make the new one refuse to start.
if [ -f "$pid_file" ] && ! kill -0 "$(cat "$pid_file")" 2>/dev/null; then rm -f "$pid_file"; fi
if [ -f "$pid_file" ]; then
  echo "dockerd.sh: dockerd $(cat "$pid_file") is running but does not answer on $host; see $log_file" >&2
  exit 1
fi

# --exec-root keeps this engine's containerd/runtime state apart from any
# other dockerd; setsid detaches it from the caller's process group so
# `npm test` finishing (or a Ctrl-C) does not take the engine down with it.
setsid dockerd \
  -H "$host" \
  --data-root "$data_root" \
  --exec-root "$state_dir/exec" \
  --pidfile "$pid_file" \
  --bip 10.200.200.1/24 \
  --default-address-pool base=10.200.128.0/17,size=24 \
  >>"$log_file" 2>&1 </dev/null &

for _ in $(seq 1 300); do
  if answers; then
    echo "dockerd.sh: engine started on $host (log: $log_file)" >&2
    exit 0
  fi
  sleep 0.1
done
echo "dockerd.sh: dockerd did not answer on $host within 30 s; last lines of $log_file:" >&2
tail -n 20 "$log_file" >&2 || true
exit 1
