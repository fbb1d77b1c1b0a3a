#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine (Debian 12: Slurm 22.05, munge, slurmdbd + MariaDB),
# so the SLURM path (slurm/*.sbatch, hydra/launcher=slurm, scripts/submit_paper.sh) can be tried
# and tested without a cluster. Needs root (apt, /etc/slurm).
#
#   scripts/local_slurm.sh start    # install if missing, configure, start, wait for an idle node
#   scripts/local_slurm.sh status   # daemons and node state; exit 0 only if the node is usable
#   scripts/local_slurm.sh stop     # cancel jobs, then stop the daemons by their recorded PIDs
#
# start and stop are idempotent. Env: BNREPRO_SLURM_BASE (state, logs, PIDs; /tmp/bnrepro-slurm),
# BNREPRO_SLURM_WAIT_S (60), BNREPRO_SLURM_FRESH=1 (forget saved jobs).
# Why the settings below: a requeued job may start again only after cred_expire seconds (default
# 120), and the scheduler runs every sched_interval (default 60 s); 5 s and 2 s make a requeued job
# restart in about 7 s. Accounting (slurmdbd) is on because without it sacct fails and submitit
# never learns that a cancelled job is over.
set -euo pipefail
BASE=${BNREPRO_SLURM_BASE:-/tmp/bnrepro-slurm}
WAIT_S=${BNREPRO_SLURM_WAIT_S:-60}
RUN=$BASE/run LOG=$BASE/log
CONF=/etc/slurm/slurm.conf
DAEMONS="munged mariadbd slurmdbd slurmctld slurmd"  # start order; stop goes in reverse

alive() { [ -s "$RUN/$1.pid" ] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }
wait_for() {  # wait_for <what> <command...>: poll every 0.1 s up to WAIT_S
  local what=$1; shift
  for _ in $(seq $((WAIT_S * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "local_slurm: $what not ready after ${WAIT_S}s; logs in $LOG" >&2
  return 1
}
spawn() {  # spawn <name> <command...>: in its own session, PID recorded
  alive "$1" && return 0
  local name=$1; shift
  setsid "$@" >>"$LOG/$name.out" 2>&1 </dev/null &
  echo $! >"$RUN/$name.pid"
}

install() {
  local missing=0
  for b in slurmctld slurmd sbatch munged slurmdbd mariadbd; do command -v "$b" >/dev/null || missing=1; done
  [ "$missing" = 0 ] && return 0
  [ "$(id -u)" = 0 ] || { echo "local_slurm: installing SLURM needs root" >&2; exit 1; }
  ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1 || apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    slurmctld slurmd slurm-client slurmdbd munge mariadb-server >/dev/null
}

write_config() {  # the node is sized by `slurmd -C`; memory rounded so restarts see the same value
  local host hw mem
  host=$(hostname -s)
  getent hosts "$host" >/dev/null || echo "127.0.0.1 $host" >>/etc/hosts
  hw=$(slurmd -C | head -1 | sed -e 's/^NodeName=[^ ]* //' -e 's/ RealMemory=[0-9]*//')
  mem=$(awk '/^MemAvailable:/ {print int($2 / 1024 * 0.9 / 1024) * 1024}' /proc/meminfo)
  mkdir -p /etc/slurm
  cat >"$CONF.new" <<EOF
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=5
MailProg=/bin/true
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool
SlurmctldPidFile=$RUN/slurmctld.daemon.pid
SlurmdPidFile=$RUN/slurmd.daemon.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=10
MinJobAge=600
NodeName=$host $hw RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  if cmp -s "$CONF.new" "$CONF"; then rm "$CONF.new"; else mv "$CONF.new" "$CONF"; CONF_CHANGED=1; fi
  cat >/etc/slurm/slurmdbd.conf <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
PidFile=$RUN/slurmdbd.daemon.pid
LogFile=$LOG/slurmdbd.log
EOF
  chmod 600 /etc/slurm/slurmdbd.conf  # slurmdbd refuses a world-readable config
}

start_munge() {
  alive munged && return 0
  [ -s /etc/munge/munge.key ] || mungekey -c -f
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown munge:munge /etc/munge/munge.key /run/munge /var/lib/munge /var/log/munge
  chmod 400 /etc/munge/munge.key
  if ! { [ -s /run/munge/munged.pid ] && kill -0 "$(cat /run/munge/munged.pid)" 2>/dev/null; }; then
    rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
    runuser -u munge -- /usr/sbin/munged  # daemonises itself and writes /run/munge/munged.pid
  fi
  wait_for munged test -S /run/munge/munge.socket.2
  cp /run/munge/munged.pid "$RUN/munged.pid"
}

start_accounting() {
  if ! alive mariadbd; then
    [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
    spawn mariadbd /usr/sbin/mariadbd --user=mysql
  fi
  wait_for MariaDB mariadb -e 'select 1'
  spawn slurmdbd /usr/sbin/slurmdbd -D
  wait_for slurmdbd bash -c 'exec 3<>/dev/tcp/127.0.0.1/6819'
}

node_state() { sinfo -h -n "$(hostname -s)" -o %T 2>/dev/null; }
node_usable() { case "$(node_state)" in idle | mixed | allocated | completing) return 0 ;; esac; return 1; }

start() {
  local t0=$SECONDS
  CONF_CHANGED=0
  install
  mkdir -p "$BASE"/{state,spool,log,run}
  write_config
  start_munge
  start_accounting
  if [ "$CONF_CHANGED" = 1 ] && alive slurmctld; then scontrol reconfigure; fi
  if [ "${BNREPRO_SLURM_FRESH:-0}" = 1 ] && ! alive slurmctld; then
    spawn slurmctld /usr/sbin/slurmctld -D -c
  else
    spawn slurmctld /usr/sbin/slurmctld -D
  fi
  spawn slurmd /usr/sbin/slurmd -D
  wait_for "the node" node_usable || { tail -n 20 "$LOG/slurmctld.log" "$LOG/slurmd.log" >&2; exit 1; }
  # slurmctld registers the cluster with slurmdbd itself; sacct works once it has
  wait_for accounting bash -c 'sacctmgr -n list cluster format=cluster | grep -qw local'
  echo "local_slurm: up in $((SECONDS - t0))s, node $(hostname -s) $(node_state)"
}

stop() {
  # Stopping slurmd leaves running job steps behind: cancel the jobs first.
  if alive slurmctld; then
    squeue -h -o %A 2>/dev/null | xargs -r scancel 2>/dev/null || true
    for _ in $(seq 150); do [ -z "$(squeue -h -t R,CG 2>/dev/null)" ] && break; sleep 0.1; done
  fi
  local name pid
  for name in $(echo "$DAEMONS" | tr ' ' '\n' | tac); do
    alive "$name" || { rm -f "$RUN/$name.pid"; continue; }
    pid=$(cat "$RUN/$name.pid")
    kill -TERM "$pid"
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && { echo "local_slurm: $name ($pid) ignored SIGTERM for 15 s: SIGKILL"; kill -KILL "$pid"; }
    rm -f "$RUN/$name.pid"
    echo "local_slurm: stopped $name ($pid)"
  done
}

status() {
  local name ok=0
  for name in $DAEMONS; do
    if alive "$name"; then echo "$name: running ($(cat "$RUN/$name.pid"))"; else echo "$name: stopped"; ok=1; fi
  done
  echo "node: $(node_state || echo unreachable)"
  node_usable || ok=1
  return $ok
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
