#!/usr/bin/env bash
# A private single-node OpenStack Swift with the s3api and tempauth
# middleware, from Debian's packages, for the S3 cache tests and benchmarks:
#   scripts/swift.sh start    starts it unless it answers; prints the endpoint
#   scripts/swift.sh stop     stops the processes it started, by recorded PID
#   scripts/swift.sh status   exits 0 when a signed S3 request succeeds
# No systemd and no /etc/swift: config, rings, data, pid and log files live
# under $CAIRN_SWIFT_DIR (default /var/lib/cairn-swift); every server binds
# 127.0.0.1 only, runs one process (workers = 0, so its PID is the server)
# and is detached with setsid. The S3 key pair is access key `test:tester`,
# secret `testing`, region us-east-1, path-style. Installs nothing
# (scripts/system-deps.sh does); fails loudly, so tests fail rather than skip.
set -euo pipefail

base=${CAIRN_SWIFT_DIR:-/var/lib/cairn-swift}
port=${CAIRN_SWIFT_PORT:-18480}
# The account, container and object servers and memcached take the next ports.
acct_port=$((port + 1)) cont_port=$((port + 2)) obj_port=$((port + 3)) mc_port=$((port + 4))
conf=$base/etc run=$base/run data=$base/data log=$base/run/swift.log
endpoint=http://127.0.0.1:$port
servers=(memcached account container object proxy)

usage() { echo "usage: scripts/swift.sh start|stop|status" >&2; exit 2; }
[ $# -eq 1 ] || usage

# A signed S3 request (ListBuckets) through rclone: proves s3api, tempauth,
# memcached and all three storage servers answer, not just the proxy's port.
# (AWS_CA_BUNDLE, set on some hosts, breaks rclone 1.60 even for http://.)
s3_answers() {
  env -u AWS_CA_BUNDLE RCLONE_CONFIG_CAIRNSWIFT_TYPE=s3 RCLONE_CONFIG_CAIRNSWIFT_PROVIDER=Other \
    RCLONE_CONFIG_CAIRNSWIFT_ENV_AUTH=false \
    RCLONE_CONFIG_CAIRNSWIFT_ACCESS_KEY_ID=test:tester RCLONE_CONFIG_CAIRNSWIFT_SECRET_ACCESS_KEY=testing \
    RCLONE_CONFIG_CAIRNSWIFT_ENDPOINT=$endpoint RCLONE_CONFIG_CAIRNSWIFT_REGION=us-east-1 \
    timeout 10 rclone --config /dev/null --low-level-retries 1 --retries 1 lsd cairnswift: >/dev/null 2>&1
}

# The PID recorded for a server, if that process is alive and is still ours
# (its command line names our config dir or port: a reused PID is not).
live_pid() {
  local f=$run/$1.pid pid
  [ -f "$f" ] || return 1
  pid=$(cat "$f")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qE -- "$conf/|-p $mc_port " || return 1
  echo "$pid"
}

stop() {
  local s pid
  for s in proxy object container account memcached; do
    if pid=$(live_pid "$s"); then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$run/$s.pid"
  done
}

write_config() {
  mkdir -p "$conf" "$run" "$data/d1"
  local user
  user=$(id -un)
  cat >"$conf/swift.conf" <<EOF
[swift-hash]
swift_hash_path_suffix = cairn-test
swift_hash_path_prefix = cairn-test
[storage-policy:0]
name = Policy-0
default = yes
EOF
  local kind p
  for kind in account container object; do
    case $kind in account) p=$acct_port ;; container) p=$cont_port ;; object) p=$obj_port ;; esac
    cat >"$conf/$kind-server.conf" <<EOF
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = $p
workers = 0
user = $user
swift_dir = $conf
devices = $data
mount_check = false
log_name = cairn-swift-$kind
[pipeline:main]
pipeline = $kind-server
[app:$kind-server]
use = egg:swift#$kind
EOF
  done
  # s3api before tempauth (tempauth checks the S3 signature s3api parsed);
  # slo after them, as s3api completes multipart uploads as SLO manifests.
  cat >"$conf/proxy-server.conf" <<EOF
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = $port
workers = 0
user = $user
swift_dir = $conf
log_name = cairn-swift-proxy
[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats s3api tempauth copy slo dlo proxy-logging proxy-server
[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
[filter:s3api]
use = egg:swift#s3api
location = us-east-1
[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = testing .admin
[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:$mc_port
[filter:catch_errors]
use = egg:swift#catch_errors
[filter:gatekeeper]
use = egg:swift#gatekeeper
[filter:healthcheck]
use = egg:swift#healthcheck
[filter:proxy-logging]
use = egg:swift#proxy_logging
[filter:listing_formats]
use = egg:swift#listing_formats
[filter:copy]
use = egg:swift#copy
[filter:slo]
use = egg:swift#slo
[filter:dlo]
use = egg:swift#dlo
EOF
  # Rings: one device per server, one replica. Built again whenever the
  # ports change, so a ring can never point at another server's port; kept
  # otherwise (building them is half of a cold start).
  local stamp="$acct_port $cont_port $obj_port"
  if [ "$(cat "$conf/rings.ports" 2>/dev/null)" = "$stamp" ] &&
    [ -f "$conf/account.ring.gz" ] && [ -f "$conf/container.ring.gz" ] && [ -f "$conf/object.ring.gz" ]; then
    return 0
  fi
  rm -f "$conf/rings.ports"
  for kind in account container object; do
    case $kind in account) p=$acct_port ;; container) p=$cont_port ;; object) p=$obj_port ;; esac
    rm -f "$conf/$kind.builder" "$conf/$kind.ring.gz"
    (cd "$conf" && swift-ring-builder "$kind.builder" create 8 1 1 >/dev/null &&
      swift-ring-builder "$kind.builder" add "r1z1-127.0.0.1:$p/d1" 100 >/dev/null &&
      swift-ring-builder "$kind.builder" rebalance >/dev/null) || {
      echo "swift.sh: swift-ring-builder failed for $kind" >&2
      exit 1
    }
  done
  echo "$stamp" >"$conf/rings.ports"
}

launch() {
  local s=$1
  shift
  # setsid: the servers outlive the shell (and test run) that started them.
  setsid "$@" >>"$log" 2>&1 </dev/null &
  echo $! >"$run/$s.pid"
}

start() {
  if s3_answers; then echo "$endpoint"; return 0; fi
  local s missing=()
  for s in memcached swift-ring-builder swift-proxy-server swift-account-server swift-container-server \
      swift-object-server rclone; do
    command -v "$s" >/dev/null || missing+=("$s")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "swift.sh: not installed: ${missing[*]} (bash scripts/system-deps.sh installs them)" >&2
    exit 1
  fi
  # Whatever is left of an earlier start that no longer answers goes first.
  stop
  write_config
  : >"$log"
  launch memcached memcached -l 127.0.0.1 -p "$mc_port" -U 0 -m 64 -u "$(id -un)"
  launch account swift-account-server "$conf/account-server.conf" -v
  launch container swift-container-server "$conf/container-server.conf" -v
  launch object swift-object-server "$conf/object-server.conf" -v
  launch proxy swift-proxy-server "$conf/proxy-server.conf" -v
  for _ in $(seq 1 300); do
    if s3_answers; then
      echo "swift.sh: Swift's S3 API answers on $endpoint (log: $log)" >&2
      echo "$endpoint"
      return 0
    fi
    for s in "${servers[@]}"; do
      if ! live_pid "$s" >/dev/null; then
        echo "swift.sh: $s exited during start; last lines of $log:" >&2
        tail -n 30 "$log" >&2 || true
        stop
        exit 1
      fi
    done
    sleep 0.1
  done
  echo "swift.sh: Swift did not answer on $endpoint within 30 s; last lines of $log:" >&2
  tail -n 30 "$log" >&2 || true
  stop
  exit 1
}

case $1 in
  start) start ;;
  stop) stop ;;
  status)
    if s3_answers; then echo "$endpoint"; else echo "swift.sh: no S3 answer on $endpoint" >&2; exit 1; fi
    ;;
  *) usage ;;
esac
