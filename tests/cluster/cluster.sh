#!/usr/bin/env bash
# A throwaway single-node Slurm cluster (Slurm 22.05 from Debian's packages) with accounting:
# munge, MariaDB, slurmdbd, slurmctld and slurmd, all started in the background as root, no
# systemd, no cgroups. Used by the Slurm test tier (`PIPELINE_TEST_SLURM=1 make test`, which
# .ci/run asks for; tests/e2e/test_slurm.py) and by hand:
#
#   tests/cluster/cluster.sh up        install what is missing, write configs, start, wait idle
#   tests/cluster/cluster.sh down      stop every daemon it started (by pid), remove its configs
#   tests/cluster/cluster.sh status    sinfo / squeue
#
# State, logs, pid files and the database live in $SLURM_TEST_DIR (default /tmp/pipeline-slurm).
# The configs go to /etc/slurm, where every client finds them: the Snakemake Slurm plugin
# deletes all SLURM_* variables (SLURM_CONF included) inside its jobs, so srun there only finds
# the default location. A config that this script did not write is never overwritten.
# `up` starts from empty state every time: a fresh StateSaveLocation restarts job ids at 1, so
# the accounting database is dropped too (old records would shadow new jobs with the same id).
set -euo pipefail

DIR=${SLURM_TEST_DIR:-/tmp/pipeline-slurm}
CLUSTER=pipeline-test
HOST=$(hostname -s)
ETC=/etc/slurm
CONF=$ETC/slurm.conf
MARKER="# written by the pipeline's tests/cluster/cluster.sh"
DB_SOCKET=$DIR/mysql/mysqld.sock
DB_PASS=pipeline-test-only

log() { echo "cluster: $*" >&2; }

install_packages() {
  local missing=()
  for pair in munged:munge slurmctld:slurm-wlm slurmd:slurm-wlm slurmdbd:slurmdbd mariadbd:mariadb-server; do
    command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
  done
  [ ${#missing[@]} -eq 0 ] && return
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends munge slurm-wlm mariadb-server slurmdbd >/dev/null
}

write_configs() {
  local cpus mem_mb
  cpus=$(nproc)
  mem_mb=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
  mkdir -p "$DIR"/{ctld,d,log,pids} "$ETC"
  for file in "$CONF" "$ETC/slurmdbd.conf"; do
    if [ -f "$file" ] && ! grep -qF "$MARKER" "$file"; then
      log "refusing to overwrite $file: this script did not write it (is this a real cluster?)"
      exit 1
    fi
  done
  cat > "$CONF" <<EOF
$MARKER
ClusterName=$CLUSTER
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
CredType=cred/munge
# No cgroups in a container or CI runner.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# A requeued job runs again after cred_expire + 1 s; frequent scheduling keeps tests short.
SchedulerParameters=bf_interval=1,sched_interval=5
# Refuse requests larger than the node instead of leaving them pending forever.
EnforcePartLimits=ALL
ReturnToService=2
KillWait=5
DefMemPerCPU=2048
MinJobAge=300
# sacct shows the Snakemake rule of each job (the plugin puts it in the comment).
AccountingStoreFlags=job_comment
MpiDefault=none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobCompType=jobcomp/none
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/d
SlurmctldPidFile=$DIR/pids/slurmctld.pid
SlurmdPidFile=$DIR/pids/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
NodeName=$HOST CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
  cat > "$ETC/slurmdbd.conf" <<EOF
$MARKER
DbdHost=localhost
DbdPort=6819
SlurmUser=root
AuthType=auth/munge
StorageType=accounting_storage/mysql
StorageHost=localhost
StoragePort=0
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
PidFile=$DIR/pids/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
EOF
  chmod 600 "$ETC/slurmdbd.conf"
}

wait_for() {  # wait_for <seconds> <description> <command...>
  local seconds=$1 what=$2
  shift 2
  for _ in $(seq $((seconds * 5))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  log "timed out waiting for $what"
  return 1
}

start_munge() {
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  [ -f /etc/munge/munge.key ] || mungekey --create >/dev/null 2>&1 || /usr/sbin/create-munge-key -f
  munged --force --pid-file="$DIR/pids/munged.pid" --socket=/run/munge/munge.socket.2
  wait_for 10 munge sh -c 'munge -n | unmunge'
}

start_database() {
  rm -rf "$DIR/mysql"
  mkdir -p "$DIR/mysql/data"
  mariadb-install-db --user=root --datadir="$DIR/mysql/data" --auth-root-authentication-method=socket \
    >"$DIR/log/mariadb-install.log" 2>&1
  mariadbd --user=root --datadir="$DIR/mysql/data" --socket="$DB_SOCKET" --skip-networking=0 \
    --bind-address=127.0.0.1 --port=3306 --pid-file="$DIR/pids/mariadbd.pid" \
    --log-error="$DIR/log/mariadb.log" >/dev/null 2>&1 &
  wait_for 30 mariadb mariadb --socket="$DB_SOCKET" -e 'select 1'
  mariadb --socket="$DB_SOCKET" <<EOF
DROP DATABASE IF EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
EOF
  # slurmdbd's client library looks for the default socket path.
  mkdir -p /run/mysqld
  ln -sf "$DB_SOCKET" /run/mysqld/mysqld.sock
}

start_slurm() {
  slurmdbd
  wait_for 30 slurmdbd sacctmgr -n list cluster
  sacctmgr -i add cluster "$CLUSTER" >/dev/null
  sacctmgr -i add account pipeline Cluster="$CLUSTER" Description=tests Organization=tests >/dev/null
  sacctmgr -i add user root Account=pipeline Cluster="$CLUSTER" >/dev/null
  slurmctld -i
  slurmd
  wait_for 60 "the node to be idle" sh -c "sinfo -h -o %T | grep -qx idle"
}

stop_pid() {  # stop_pid <name>
  local file=$DIR/pids/$1.pid pid
  [ -f "$file" ] || return 0
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

down() {
  if [ -f "$CONF" ] && command -v scancel >/dev/null; then scancel --user=root 2>/dev/null || true; fi
  for daemon in slurmd slurmctld slurmdbd mariadbd munged; do stop_pid "$daemon"; done
  rm -f /run/mysqld/mysqld.sock
  # Take our configs away too: with a slurm.conf naming a controller that is not running, every
  # Slurm client waits ~9 s before it fails, and the Snakemake Slurm plugin runs
  # `scontrol show config` whenever Snakemake starts, even for local runs (10.7 s instead of
  # 1.6 s for `snakemake --version`). Without a config scontrol fails at once.
  for file in "$CONF" "$ETC/slurmdbd.conf"; do
    if [ -f "$file" ] && grep -qF "$MARKER" "$file"; then rm -f "$file"; fi
  done
  log "stopped"
}

up() {
  local start=$SECONDS
  install_packages
  down >/dev/null 2>&1 || true
  rm -rf "$DIR/ctld" "$DIR/d"
  write_configs
  start_munge
  start_database
  start_slurm
  log "up in $((SECONDS - start)) s: $(sinfo -h -o '%N %c CPUs %m MB %T')"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) sinfo; squeue ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
