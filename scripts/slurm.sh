#!/usr/bin/env bash
# A private single-node Slurm (slurmctld + slurmd) with its own munged, from
# Debian's packages, for the Slurm builder's tests and benchmark:
#   scripts/slurm.sh start    starts it unless it answers; prints SLURM_CONF=<path>
#   scripts/slurm.sh stop     stops the daemons it started, by recorded PID
#   scripts/slurm.sh status   exits 0 when the node is idle/allocated/mixed
# Clients (srun, sbatch, squeue) find this cluster through the environment
# variable SLURM_CONF=$CAIRN_SLURM_DIR/etc/slurm.conf; nothing under /etc is
# read or written. Config, a privately generated munge key, state, spool, pid
# and log files live under $CAIRN_SLURM_DIR (default /var/lib/cairn-slurm).
# The daemons run as root (SlurmUser=root, SlurmdUser=root) without cgroups
# (ProctrackType=proctrack/linuxproc, TaskPlugin=task/none), on private
# ports, one node named cairn1 at 127.0.0.1 in the partition `cairn`.
# Installs nothing (scripts/system-deps.sh does); fails loudly, so tests
# fail rather than skip.
set -euo pipefail

base=${CAIRN_SLURM_DIR:-/var/lib/cairn-slurm}
port=${CAIRN_SLURM_PORT:-18617}
# Slots on the node: more than the cores here on purpose (the builder tests
# run sleeping jobs side by side); config_overrides keeps slurmd from
# draining a node whose hardware is smaller than configured.
cpus=${CAIRN_SLURM_CPUS:-8}
conf=$base/etc run=$base/run log=$base/run/slurm.log
export SLURM_CONF=$conf/slurm.conf
node=cairn1 partition=cairn
daemons=(slurmd slurmctld munged)

usage() { echo "usage: scripts/slurm.sh start|stop|status" >&2; exit 2; }
[ $# -eq 1 ] || usage

# The PID recorded for a daemon, if that process is alive and is still ours
# (its command line names our state dir: a reused PID is not).
live_pid() {
  local f=$run/$1.pid pid
  [ -f "$f" ] || return 1
  pid=$(cat "$f")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$base/" || return 1
  echo "$pid"
}

# The node answers and can take jobs (not down, drained or unknown).
answers() {
  local state
  state=$(timeout 10 sinfo -h -n "$node" -o '%T' 2>/dev/null) || return 1
  [[ $state =~ ^(idle|allocated|mixed|completing)$ ]]
}

stop() {
  local d pid
  for d in "${daemons[@]}"; do
    if pid=$(live_pid "$d"); then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$run/$d.pid"
  done
}

write_config() {
  mkdir -p "$conf" "$run" "$base/state" "$base/spool" "$base/munge"
  # munged refuses group- or world-writable directories on its paths.
  chmod 0755 "$base" "$conf" "$run"
  chmod 0700 "$base/munge" "$base/state" "$base/spool"
  if [ ! -s "$conf/munge.key" ]; then
    # A key of our own: never /etc/munge/munge.key, so nothing else can
    # submit to (or impersonate) this cluster with a system-wide key.
    (umask 077 && dd if=/dev/urandom of="$conf/munge.key.tmp" bs=1024 count=1 status=none)
    mv "$conf/munge.key.tmp" "$conf/munge.key"
  fi
  chmod 0400 "$conf/munge.key"
  local mem
  mem=$(awk '/^MemTotal:/ { print int($2 / 1024 / 2) }' /proc/meminfo)
  : >"$conf/plugstack.conf"
  cat >"$conf/slurm.conf.tmp" <<EOF
ClusterName=cairn
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$base/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$base/state
SlurmdSpoolDir=$base/spool
SlurmctldPidFile=$run/slurmctld.daemon.pid
SlurmdPidFile=$run/slurmd.daemon.pid
SlurmctldLogFile=$run/slurmctld.log
SlurmdLogFile=$run/slurmd.log
PlugStackConfig=$conf/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=256
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=60
KillWait=5
InactiveLimit=0
SlurmdTimeout=30
NodeName=$node NodeHostname=$(hostname -s) NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$partition Nodes=$node Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
  mv "$conf/slurm.conf.tmp" "$conf/slurm.conf"
}

launch() {
  local d=$1
  shift
  # setsid + foreground daemons: the PID recorded is the daemon's own, and
  # the daemons outlive the shell (and test run) that started them.
  setsid "$@" >>"$log" 2>&1 </dev/null &
  echo $! >"$run/$d.pid"
}

start() {
  # live_pid first: sinfo against a controller that is not there retries for ~10 s.
  if live_pid slurmctld >/dev/null && answers; then echo "SLURM_CONF=$SLURM_CONF"; return 0; fi
  local t missing=()
  for t in munged slurmctld slurmd sinfo srun sbatch squeue scancel; do
    command -v "$t" >/dev/null || missing+=("$t")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "slurm.sh: not installed: ${missing[*]} (bash scripts/system-deps.sh installs them)" >&2
    exit 1
  fi
  # Whatever is left of an earlier start that no longer answers goes first.
  stop
  write_config
  : >"$log"
  launch munged munged --foreground --force --key-file="$conf/munge.key" --socket="$base/munge/munge.socket" \
    --pid-file="$run/munged.daemon.pid" --log-file="$run/munged.log" --seed-file="$base/munge/seed"
  for _ in $(seq 1 100); do [ -S "$base/munge/munge.socket" ] && break; sleep 0.05; done
  # -i: a fresh start ignores saved jobs of an earlier run (a test cluster).
  launch slurmctld slurmctld -D -i -f "$SLURM_CONF"
  launch slurmd slurmd -D -N "$node" -f "$SLURM_CONF"
  for _ in $(seq 1 300); do
    if answers; then
      echo "slurm.sh: Slurm answers (partition $partition, node $node; log: $run)" >&2
      echo "SLURM_CONF=$SLURM_CONF"
      return 0
    fi
    for t in "${daemons[@]}"; do
      if ! live_pid "$t" >/dev/null; then
        echo "slurm.sh: $t exited during start; last lines of its logs:" >&2
        tail -n 20 "$log" "$run/$t.log" >&2 2>/dev/null || true
        stop
        exit 1
      fi
    done
    sleep 0.1
  done
  echo "slurm.sh: the node did not come up within 30 s ($(sinfo -h -N -o '%N %T %E' 2>&1 || true))" >&2
  tail -n 20 "$log" "$run/slurmctld.log" "$run/slurmd.log" >&2 2>/dev/null || true
  stop
  exit 1
}

case $1 in
  start) start ;;
  stop) stop ;;
  status)
    if live_pid slurmctld >/dev/null && answers; then echo "SLURM_CONF=$SLURM_CONF"; else echo "slurm.sh: no Slurm node answers ($SLURM_CONF)" >&2; exit 1; fi
    ;;
  *) usage ;;
esac
