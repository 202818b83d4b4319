#!/usr/bin/env bash
# A throwaway two-node Slurm cluster (Slurm 22.05 from Debian's packages) with accounting:
# munge, MariaDB, slurmdbd and slurmctld on this host, and one slurmd per node, each node in a
# network namespace of its own (its own address on a bridge this script makes, its own host
# name in a UTS namespace, its own /etc/hosts). All started in the background as root: no
# systemd, no cgroups. Used by the Slurm test tier (`PIPELINE_TEST_SLURM=1 make test`, which
# .ci/run asks for; tests/e2e/test_slurm*.py) and by hand:
#
#   tests/cluster/cluster.sh up         install what is missing, make the network, write the
#                                       configs, start everything, wait until both nodes are idle
#   tests/cluster/cluster.sh down       stop every daemon it started (by pid), remove the
#                                       namespaces, links, per-node files and configs
#   tests/cluster/cluster.sh status     sinfo / squeue
#   tests/cluster/cluster.sh leftovers  what `down` left behind, one per line (exit 1 if any)
#
# The network: bridge $BRIDGE holds $SUBNET.1, the controller's address; node n is namespace
# pipeline-slurm-node<n>, with a veth on the bridge and address $SUBNET.1<n>. Job steps run in
# their node's namespaces, so a training job's ranks find each other by node name and talk
# over these addresses, as on a cluster's network. The shared filesystem is this machine's.
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
NODES=(slurm-node1 slurm-node2)
SUBNET=${SLURM_TEST_SUBNET:-10.213.0}
BRIDGE=plslurm0
ETC=/etc/slurm
CONF=$ETC/slurm.conf
MARKER="# written by the pipeline's tests/cluster/cluster.sh"
DB_SOCKET=$DIR/mysql/mysqld.sock
DB_PASS=pipeline-test-only

log() { echo "cluster: $*" >&2; }

install_packages() {
  local missing=()
  for pair in munged:munge slurmctld:slurm-wlm slurmd:slurm-wlm slurmdbd:slurmdbd \
    mariadbd:mariadb-server ip:iproute2 unshare:util-linux; do
    command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
  done
  [ ${#missing[@]} -eq 0 ] && return
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends munge slurm-wlm mariadb-server slurmdbd \
    iproute2 util-linux >/dev/null
}

namespace() { echo "pipeline-$1"; }

veth() { echo "plveth$1"; }

make_network() {
  if ip -o addr show | grep -q " inet $SUBNET\.[0-9]*/"; then
    log "$SUBNET.0/24 is in use on this machine: set SLURM_TEST_SUBNET to a free one (e.g. 10.214.0)"
    exit 1
  fi
  ip link add "$BRIDGE" type bridge
  ip addr add "$SUBNET.1/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  local i=1 node ns other j
  for node in "${NODES[@]}"; do
    ns=$(namespace "$node")
    ip netns add "$ns"
    ip link add "$(veth $i)" type veth peer name eth0 netns "$ns"
    ip link set "$(veth $i)" master "$BRIDGE"
    ip link set "$(veth $i)" up
    ip -n "$ns" addr add "$SUBNET.1$i/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    # Mounted over /etc/hosts for what runs in the node (as `ip netns exec` would): the nodes'
    # names resolve to their addresses (gloo and NCCL bind to the address the host name
    # resolves to; MASTER_ADDR is the first node's name).
    mkdir -p "/etc/netns/$ns"
    {
      echo "$MARKER"
      echo "127.0.0.1 localhost"
      echo "$SUBNET.1 $HOST"
      j=1
      for other in "${NODES[@]}"; do
        echo "$SUBNET.1$j $other"
        j=$((j + 1))
      done
    } >"/etc/netns/$ns/hosts"
    i=$((i + 1))
  done
}

remove_network() {
  local i=1 node ns
  for node in "${NODES[@]}"; do
    ns=$(namespace "$node")
    if ip netns list 2>/dev/null | grep -qw "$ns"; then
      # whatever still runs in the node (a job step left behind) goes with it
      ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
      ip netns del "$ns" 2>/dev/null || true
    fi
    ip link del "$(veth $i)" 2>/dev/null || true
    if [ -f "/etc/netns/$ns/hosts" ] && grep -qF "$MARKER" "/etc/netns/$ns/hosts"; then
      rm -f "/etc/netns/$ns/hosts"
      rmdir "/etc/netns/$ns" 2>/dev/null || true
    fi
    i=$((i + 1))
  done
  ip link del "$BRIDGE" 2>/dev/null || true
  rmdir /etc/netns 2>/dev/null || true
}

write_configs() {
  local cpus mem_mb
  cpus=$(nproc)
  # The nodes share this machine's cores; its memory is split between them.
  mem_mb=$((($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 - 1024) / ${#NODES[@]}))
  mkdir -p "$DIR"/{ctld,log,pids} "$ETC"
  for file in "$CONF" "$ETC/slurmdbd.conf"; do
    if [ -f "$file" ] && ! grep -qF "$MARKER" "$file"; then
      log "refusing to overwrite $file: this script did not write it (is this a real cluster?)"
      exit 1
    fi
  done
  cat >"$CONF" <<EOF
$MARKER
ClusterName=$CLUSTER
SlurmctldHost=$HOST($SUBNET.1)
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
# Refuse requests larger than the nodes instead of leaving them pending forever.
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
SlurmctldPidFile=$DIR/pids/slurmctld.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
# Per node (%n: the node's name): each slurmd has its own spool, pid file and log.
SlurmdSpoolDir=$DIR/%n/spool
SlurmdPidFile=$DIR/pids/slurmd-%n.pid
SlurmdLogFile=$DIR/log/slurmd-%n.log
SlurmctldPort=6817
SlurmdPort=6818
EOF
  local i=1 node
  for node in "${NODES[@]}"; do
    echo "NodeName=$node NodeAddr=$SUBNET.1$i CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN" >>"$CONF"
    i=$((i + 1))
  done
  echo "PartitionName=debug Nodes=$(
    IFS=,
    echo "${NODES[*]}"
  ) Default=YES MaxTime=INFINITE State=UP" >>"$CONF"
  cat >"$ETC/slurmdbd.conf" <<EOF
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

wait_for() { # wait_for <seconds> <description> <command...>
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

start_slurmd() { # start_slurmd <node>: in the node's namespaces, under the node's host name
  local node=$1 ns
  ns=$(namespace "$node")
  mkdir -p "$DIR/$node/spool"
  # Not `ip netns exec`, which mounts a sysfs of its own, without the cgroup tree slurmd needs:
  # the node's network namespace, and new UTS and mount namespaces for its name and hosts file.
  if ! nsenter --net="/run/netns/$ns" unshare --uts --mount sh -c \
    "mount --bind /etc/netns/$ns/hosts /etc/hosts && hostname $node && exec slurmd -N $node"; then
    log "slurmd of $node did not start; its log, $DIR/log/slurmd-$node.log, ends with:"
    tail -5 "$DIR/log/slurmd-$node.log" >&2 || true
    exit 1
  fi
}

start_slurm() {
  slurmdbd
  wait_for 30 slurmdbd sacctmgr -n list cluster
  sacctmgr -i add cluster "$CLUSTER" >/dev/null
  sacctmgr -i add account pipeline Cluster="$CLUSTER" Description=tests Organization=tests >/dev/null
  sacctmgr -i add user root Account=pipeline Cluster="$CLUSTER" >/dev/null
  slurmctld -i
  local node
  for node in "${NODES[@]}"; do start_slurmd "$node"; done
  wait_for 60 "the nodes to be idle" sh -c "[ \$(sinfo -h -N -o %T | grep -cx idle) -eq ${#NODES[@]} ]"
}

stop_pid() { # stop_pid <name>
  local file=$DIR/pids/$1.pid pid
  [ -f "$file" ] || return 0
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

down() {
  if [ -f "$CONF" ] && command -v scancel >/dev/null; then scancel --user=root 2>/dev/null || true; fi
  local node
  for node in "${NODES[@]}"; do stop_pid "slurmd-$node"; done
  for daemon in slurmctld slurmdbd mariadbd munged; do stop_pid "$daemon"; done
  remove_network
  rm -f /run/mysqld/mysqld.sock
  # The accounting database and daemon state go too (the database alone is ~180 MB); the logs
  # stay in $DIR/log for a failure's post-mortem.
  rm -rf "$DIR/mysql" "$DIR/ctld" "$DIR/pids"
  for node in "${NODES[@]}"; do rm -rf "${DIR:?}/$node"; done
  # Take our configs away too: with a slurm.conf naming a controller that is not running, every
  # Slurm client waits ~9 s before it fails, and the Snakemake Slurm plugin runs
  # `scontrol show config` whenever Snakemake starts, even for local runs (10.7 s instead of
  # 1.6 s for `snakemake --version`). Without a config scontrol fails at once.
  for file in "$CONF" "$ETC/slurmdbd.conf"; do
    if [ -f "$file" ] && grep -qF "$MARKER" "$file"; then rm -f "$file"; fi
  done
  log "stopped"
}

leftovers() { # what `down` must have removed, one per line; fails if anything is left
  local found=0 node ns daemon file
  for node in "${NODES[@]}"; do
    ns=$(namespace "$node")
    if ip netns list 2>/dev/null | grep -qw "$ns"; then echo "namespace $ns" && found=1; fi
    if [ -e "/etc/netns/$ns" ]; then echo "/etc/netns/$ns" && found=1; fi
  done
  for link in $(ip -o link show 2>/dev/null | grep -Eo "($BRIDGE|plveth[0-9]+)" | sort -u); do
    echo "link $link" && found=1
  done
  for daemon in slurmctld slurmd slurmdbd slurmstepd mariadbd munged; do
    if pgrep -x "$daemon" >/dev/null; then echo "process $daemon" && found=1; fi
  done
  for file in "$CONF" "$ETC/slurmdbd.conf" /run/mysqld/mysqld.sock; do
    if [ -e "$file" ]; then echo "file $file" && found=1; fi
  done
  return $found
}

up() {
  local start=$SECONDS
  install_packages
  down >/dev/null 2>&1 || true
  make_network
  write_configs
  start_munge
  start_database
  start_slurm
  log "up in $((SECONDS - start)) s: $(sinfo -h -N -o '%N %c CPUs %m MB %T' | paste -sd ';')"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) sinfo -N && squeue ;;
  leftovers) leftovers ;;
  *)
    echo "usage: $0 up|down|status|leftovers" >&2
    exit 2
    ;;
esac
