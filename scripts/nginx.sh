#!/usr/bin/env bash
# A private nginx that serves a directory read-only on 127.0.0.1, for the
# http(s):// cache tests and benchmarks:
#   scripts/nginx.sh start DIR PORT   prints the URL (http://127.0.0.1:PORT)
#   scripts/nginx.sh stop DIR PORT    stops it by the PID it recorded
# Its config, pid file, logs and temp dirs live in $CAIRN_NGINX_DIR/PORT
# (default /var/lib/cairn-nginx/PORT), removed by stop; nothing in
# /etc/nginx is read or changed. Only GET and HEAD are served, symlinks are
# never followed (a cache directory is outside input), and there are no
# directory listings. Idempotent start; fails loudly, so tests fail rather
# than skip. Stop works after DIR is gone.
set -euo pipefail

usage() { echo "usage: scripts/nginx.sh start|stop DIR PORT" >&2; exit 2; }
[ $# -eq 3 ] || usage
cmd=$1 port=$3
[[ $port =~ ^[0-9]+$ ]] && [ "$port" -ge 1 ] && [ "$port" -le 65535 ] || usage
if [ "$cmd" = start ]; then
  dir=$(realpath -e -- "$2") || { echo "nginx.sh: $2 does not exist" >&2; exit 1; }
fi
state=${CAIRN_NGINX_DIR:-/var/lib/cairn-nginx}/$port
pid_file=$state/nginx.pid url=http://127.0.0.1:$port

# The recorded master PID, if it is alive and is still our nginx.
live_pid() {
  local pid
  [ -f "$pid_file" ] || return 1
  pid=$(cat "$pid_file")
  [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q nginx || return 1
  echo "$pid"
}

answers() { curl -s -o /dev/null -m 2 "$url/" ; }

stop() {
  local pid
  if pid=$(live_pid); then
    # TERM makes the master stop its workers and exit.
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  fi
  # The state directory is this port's alone: nothing of it outlives a stop.
  rm -rf "$state"
}

start() {
  if live_pid >/dev/null; then
    if [ "$(cat "$state/root" 2>/dev/null)" = "$dir" ]; then echo "$url"; return 0; fi
    echo "nginx.sh: port $port already serves $(cat "$state/root" 2>/dev/null); stop it first" >&2
    exit 1
  fi
  command -v nginx >/dev/null || { echo "nginx.sh: nginx is not installed (apt-get install nginx)" >&2; exit 1; }
  rm -f "$pid_file"
  mkdir -p "$state/tmp"
  printf '%s' "$dir" >"$state/root"
  # The directory name goes into the config quoted; refuse what would break
  # out of the quotes rather than escape it.
  case $dir in *\"* | *\\* | *\;* | *$'\n'*) echo "nginx.sh: unsupported characters in $dir" >&2; exit 1 ;; esac
  local user
  user=$(id -un)
  cat >"$state/nginx.conf" <<EOF
worker_processes 2;
pid $pid_file;
error_log $state/error.log warn;
$( [ "$(id -u)" -eq 0 ] && echo "user $user;" )
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $state/tmp/body;
  proxy_temp_path $state/tmp/proxy;
  fastcgi_temp_path $state/tmp/fastcgi;
  uwsgi_temp_path $state/tmp/uwsgi;
  scgi_temp_path $state/tmp/scgi;
  types { }
  default_type application/octet-stream;
  sendfile on;
  server_tokens off;
  server {
    listen 127.0.0.1:$port;
    root "$dir";
    # JSON directory listings: how an http(s) cache client finds the realizations of a DRef.
    autoindex on;
    autoindex_format json;
    disable_symlinks on;
    location / { limit_except GET { deny all; } }
  }
}
EOF
  if ! nginx -p "$state" -c "$state/nginx.conf" -e "$state/error.log" 2>>"$state/error.log"; then
    echo "nginx.sh: nginx did not start; last lines of $state/error.log:" >&2
    tail -n 20 "$state/error.log" >&2 || true
    exit 1
  fi
  for _ in $(seq 1 100); do
    if live_pid >/dev/null && answers; then echo "$url"; return 0; fi
    sleep 0.05
  done
  echo "nginx.sh: nginx did not answer on $url within 5 s; last lines of $state/error.log:" >&2
  tail -n 20 "$state/error.log" >&2 || true
  stop
  exit 1
}

case $cmd in
  start) start ;;
  stop) stop ;;
  *) usage ;;
esac
