#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for trying the SLURM launcher and for the `slurm` tests.
#
#   recipes/slurm/local_cluster.sh start     # installs slurm-wlm + munge with apt-get where missing (root),
#                                            # starts munged, slurmctld, slurmd; returns once the node is idle
#   sinfo; squeue                            # plain SLURM commands work (see "client configuration" below)
#   recipes/slurm/local_cluster.sh status    # sinfo of the cluster; exit 1 when it is not up
#   recipes/slurm/local_cluster.sh env       # prints `export SLURM_CONF=...` for other shells
#   recipes/slurm/local_cluster.sh stop      # stops the daemons and removes the cluster's folder
#
# Everything the cluster writes (munge key and socket, slurm.conf, controller state, spool, logs, pid files)
# lives in one folder, $SCORE_SLURM_DIR [/tmp/score-slurm]. The node gets the CPUs and memory slurmd finds
# on the machine (`slurmd -C`, memory less 5 %). The settings suit a container: no cgroup plugins
# (proctrack/linuxproc, task/none), select/cons_tres over cores and memory, no accounting (no sacct), one
# partition `debug`. Client configuration: when /etc/slurm/slurm.conf does not exist it becomes a link to
# the cluster's slurm.conf (removed by stop), so sbatch/squeue/sinfo find it; otherwise export SLURM_CONF.
#
# Idempotent: start on a running cluster says so and returns 0; stop on a stopped one does nothing.
# Exit status 3 (with one line saying why) when the cluster cannot start here: not root, apt-get failed,
# a daemon did not come up. Callers (tests, CI) skip on 3. Environment: SCORE_SLURM_DIR, SCORE_SLURM_PORT
# (slurmctld's port; slurmd takes the next one) [6817], SCORE_SLURM_WAIT (seconds to wait for the node) [60].
set -euo pipefail

dir="${SCORE_SLURM_DIR:-/tmp/score-slurm}"
port="${SCORE_SLURM_PORT:-6817}"
wait_s="${SCORE_SLURM_WAIT:-60}"
conf="$dir/slurm.conf"
etc_conf=/etc/slurm/slurm.conf
DAEMONS="slurmd slurmctld munged"  # stop order

log() { printf '[local_cluster %s] %s\n' "$(date '+%H:%M:%S')" "$*" >&2; }
# cannot WHY: the cluster cannot run here; exit status 3 so that callers skip
cannot() { printf 'cannot start the local SLURM cluster: %s\n' "$*" >&2; exit 3; }

# alive NAME: true when the daemon NAME started by this script still runs
alive() {
  local pid
  pid="$(cat "$dir/run/$1.pid" 2>/dev/null)" || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

# node_state: the node's state as sinfo prints it (idle, mix, alloc, down*, ...), empty when unreachable
node_state() {
  SLURM_CONF="$conf" timeout 10 sinfo -h -N -o '%t' 2>/dev/null | head -n 1
}

install_packages() {
  local missing=() cmd
  for cmd in munged slurmctld slurmd sbatch; do command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd"); done
  [ ${#missing[@]} -gt 0 ] || return 0
  command -v apt-get >/dev/null 2>&1 || cannot "missing ${missing[*]} and no apt-get to install slurm-wlm and munge"
  log "installing slurm-wlm and munge with apt-get (missing: ${missing[*]}); log: $dir/apt.log"
  if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      slurm-wlm munge; } > "$dir/apt.log" 2>&1; then
    cannot "apt-get install slurm-wlm munge failed (last line: $(tail -n 1 "$dir/apt.log")); see $dir/apt.log"
  fi
}

write_config() {
  local node mem cpus
  # the machine as slurmd sees it: NodeName=vm CPUs=2 Boards=1 ... RealMemory=24105
  node="$(slurmd -C | head -n 1)" || cannot "slurmd -C could not describe this machine"
  mem="$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<< "$node")"
  # a node that reports less memory than slurm.conf claims is drained: leave 5 % of slack
  mem=$(( mem * 95 / 100 ))
  cpus="$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<< "$node")"
  node="$(sed "s/RealMemory=[0-9]*/RealMemory=$mem/" <<< "$node") NodeAddr=127.0.0.1 State=UNKNOWN"
  cat > "$conf" <<EOF
# written by recipes/slurm/local_cluster.sh: a one-node cluster in $dir, no cgroups, no accounting
ClusterName=score-local
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$(( port + 1 ))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.daemon.pid
SlurmdPidFile=$dir/run/slurmd.daemon.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
# a job that asks for no memory gets its CPUs' share, not the whole node
DefMemPerCPU=$(( mem / cpus ))
# finished jobs stay visible to scontrol for 10 minutes (there is no sacct)
MinJobAge=600
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
$node
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

# launch NAME CMD...: starts a daemon in the foreground mode of its own, detached from this shell
launch() {
  local name="$1"; shift
  setsid "$@" > "$dir/log/$name.out" 2>&1 < /dev/null &
  echo $! > "$dir/run/$name.pid"
}

start() {
  [ "$(id -u)" = 0 ] || cannot "needs root (munged and slurmd run as root here); found uid $(id -u)"
  if alive slurmctld && alive slurmd && alive munged && [ -n "$(node_state)" ]; then
    log "already running ($dir): node $(node_state)"
    print_env
    return 0
  fi
  [ ! -d "$dir" ] || stop_daemons
  mkdir -p "$dir"/{munge,state,spool,run,log}
  install_packages
  dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
  chmod 700 "$dir/munge"; chmod 400 "$dir/munge/munge.key"
  write_config
  launch munged munged -F --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
    --pid-file="$dir/run/munged.daemon.pid" --log-file="$dir/log/munged.log" --seed-file="$dir/munge/seed"
  local t
  for t in $(seq 50); do [ -S "$dir/munge/munge.socket" ] && break; sleep 0.1; done
  [ -S "$dir/munge/munge.socket" ] || { stop_daemons; cannot "munged did not start: $(tail -n 1 "$dir/log/munged.out" "$dir/log/munged.log" 2>/dev/null | tail -n 1)"; }
  launch slurmctld slurmctld -D -f "$conf"
  launch slurmd slurmd -D -f "$conf"
  log "waiting up to ${wait_s} s for the node to be idle (logs: $dir/log)"
  local state=
  for t in $(seq "$wait_s"); do
    state="$(node_state)"
    [[ "$state" != idle* ]] || break
    local d
    for d in munged slurmctld slurmd; do
      alive "$d" || { local why; why="$(tail -n 2 "$dir/log/$d.out" | tr '\n' ' ')"; stop_daemons
                      cannot "$d exited at start ($why); see $dir/log/$d.out"; }
    done
    sleep 1
  done
  if [[ "$state" != idle* ]]; then
    stop_daemons
    cannot "the node did not become idle within $wait_s s (state '${state:-no answer}'); see $dir/log/slurmctld.log and slurmd.log"
  fi
  if [ ! -e "$etc_conf" ] && [ ! -L "$etc_conf" ]; then
    mkdir -p "$(dirname "$etc_conf")"
    ln -s "$conf" "$etc_conf"
  fi
  log "running: one node, $(sed -n 's/^NodeName=\([^ ]*\) CPUs=\([0-9]*\).*RealMemory=\([0-9]*\).*/\1, \2 CPUs, \3 MB/p' "$conf"), partition debug"
  print_env
}

print_env() {
  if [ "$(readlink "$etc_conf" 2>/dev/null)" = "$conf" ]; then
    log "clients read $etc_conf (a link to $conf); in other shells it works as is"
  else
    log "clients need: export SLURM_CONF=$conf"
  fi
}

stop_daemons() {
  local d pid t
  for d in $DAEMONS; do
    alive "$d" || continue
    pid="$(cat "$dir/run/$d.pid")"
    kill "$pid" 2>/dev/null || true
    for t in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
      kill -9 "$pid" 2>/dev/null || true
    fi
  done
}

stop() {
  [ -d "$dir" ] || { log "not running ($dir does not exist)"; return 0; }
  stop_daemons
  # jobs still running under slurmd's step daemons die with their step daemon
  if [ "$(readlink "$etc_conf" 2>/dev/null)" = "$conf" ]; then rm -f "$etc_conf"; fi
  rm -rf "$dir"
  log "stopped; removed $dir"
}

status() {
  if alive slurmctld && alive slurmd && [ -n "$(node_state)" ]; then
    SLURM_CONF="$conf" sinfo
    return 0
  fi
  log "not running (no live slurmctld/slurmd from $dir)"
  return 1
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) printf 'export SLURM_CONF=%s\n' "$conf" ;;
  -h|--help) awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0" ;;
  *) echo "usage: $0 start|stop|status|env (see the comment at the top of $0)" >&2; exit 2 ;;
esac
