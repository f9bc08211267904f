#!/bin/bash
# Bring up a throw-away single-node SLURM cluster (Debian 12 packages, SLURM 22.05) for CI,
# without systemd: munged, [mariadbd + slurmdbd], slurmctld, slurmd.
#  - partitions: cpu (default) and gpu; the node always advertises fake GPUs, ONE by default
#    (GresTypes=gpu, Gres=gpu:1, gres.conf File=/dev/null) so `gpu: 1` rules go through the
#    plugin's GPU path (CUDA_VISIBLE_DEVICES=0, no GPU behind it). FAKE_GPUS=N advertises N
#    (device "files" are symlinks to /dev/null under /var/lib/slurm/fakegpu; nothing behind them).
#  - accounting ON by default (slurmdbd + MariaDB, sacct works, account `ci` holds the user);
#    WITH_DBD=0 disables it (then use `slurm-status-command: squeue` in the Snakemake profile).
#  - daemon PIDs are recorded in $PIDDIR (default /tmp/mdgen-slurm); ci/slurm/down.sh stops them.
#  - re-running: daemons recorded in $PIDDIR by an earlier up.sh are STOPPED first (via down.sh)
#    and restarted with freshly written config, so up.sh is safe to run twice or after down.sh.
#    If SLURM/munge/MariaDB daemons that we did not start are running, it refuses (exit 1).
# Usage (as root):  bash ci/slurm/up.sh            # accounting on
#                   WITH_DBD=0 bash ci/slurm/up.sh # no slurmdbd/MariaDB
#                   bash ci/slurm/down.sh          # stop it again
set -euo pipefail

WITH_DBD=${WITH_DBD:-1}
FAKE_GPUS=${FAKE_GPUS:-1}
PIDDIR=${PIDDIR:-/tmp/mdgen-slurm}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
T0=$(date +%s)

log() { echo "[slurm-up +$(( $(date +%s) - T0 ))s] $*"; }
die() { echo "[slurm-up] ERROR: $*" >&2; exit 1; }
# On any failure, stop the daemons this run already started and
# drop a temporary policy-rc.d; logs stay in /var/log/slurm, /var/log/munge for debugging.
STARTED=0; TMP_POLICY=0
cleanup() {
  local rc=$?
  [ "$TMP_POLICY" = 1 ] && rm -f /usr/sbin/policy-rc.d
  if [ "$rc" -ne 0 ] && [ "$STARTED" = 1 ]; then
    echo "[slurm-up] failed (rc=$rc): stopping the daemons started so far" >&2
    PIDDIR="$PIDDIR" bash "$HERE/down.sh" >&2 || true
  fi
}
trap cleanup EXIT
# waitfor N CMD...: retry CMD every 0.5 s, at most N times (bounded); 1 on timeout.
waitfor() { local n=$1; shift; local i; for ((i = 0; i < n; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done; return 1; }
# waitpidfile FILE N: wait for FILE to hold the PID of a live process; prints the PID.
waitpidfile() {
  local f=$1 n=$2 i pid
  for ((i = 0; i < n; i++)); do
    if [ -s "$f" ]; then pid=$(tr -dc '0-9' <"$f"); [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && { echo "$pid"; return 0; }; fi
    sleep 0.5
  done
  return 1
}

[ "$(id -u)" = 0 ] || die "must run as root (installs packages, starts daemons)"
[[ "$FAKE_GPUS" =~ ^[1-9][0-9]?$ ]] || die "FAKE_GPUS must be 1..99 (got '$FAKE_GPUS')"

# ---------------------------------------------------------------- previous run / foreign daemons
if ls "$PIDDIR"/*.pid >/dev/null 2>&1; then
  log "daemons recorded in $PIDDIR from an earlier up.sh: stopping them first"
  PIDDIR="$PIDDIR" bash "$HERE/down.sh"
fi
for d in slurmd slurmctld slurmdbd munged; do
  if pgrep -x "$d" >/dev/null 2>&1; then die "a '$d' we did not start is running (pid $(pgrep -x "$d" | tr '\n' ' ')); stop it first"; fi
done
if [ "$WITH_DBD" = 1 ] && pgrep -x mariadbd >/dev/null 2>&1; then
  die "a 'mariadbd' we did not start is running (pid $(pgrep -x mariadbd | tr '\n' ' ')); stop it first"
fi
mkdir -p "$PIDDIR"
STARTED=1   # from here on, a failure stops whatever this run has started

# ---------------------------------------------------------------- packages
PKGS=(slurm-wlm munge)
[ "$WITH_DBD" = 1 ] && PKGS+=(slurmdbd mariadb-server)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing: ${missing[*]}"
  # keep package scripts from starting services (no systemd here; we start daemons ourselves)
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; TMP_POLICY=1
  fi
  apt-get update -qq || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/tmp/mdgen-slurm-apt.log 2>&1 \
    || { tail -n 20 /tmp/mdgen-slurm-apt.log >&2; die "apt-get install ${missing[*]} failed (full log: /tmp/mdgen-slurm-apt.log)"; }
  if [ "$TMP_POLICY" = 1 ]; then rm -f /usr/sbin/policy-rc.d; TMP_POLICY=0; fi
  log "packages installed"
else
  log "packages already installed (no apt)"
fi

# ---------------------------------------------------------------- munge
[ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
chown munge:munge /etc/munge/munge.key; chmod 600 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
rm -f /run/munge/munged.pid
su -s /bin/sh munge -c '/usr/sbin/munged --force' || die "munged failed to start (see /var/log/munge/munged.log)"
pid=$(waitpidfile /run/munge/munged.pid 20) || die "munged wrote no pid file"
echo "$pid" >"$PIDDIR/munged.pid"
waitfor 20 sh -c 'munge -n | unmunge' || die "munge does not work (see /var/log/munge/munged.log)"
log "munged up (pid $pid)"

# ---------------------------------------------------------------- slurm.conf (+ fake GPU)
HOST=$(hostname -s); CPUS=$(nproc)
MEM=$(( $(free -m | awk '/^Mem:/{print $2}') - 1024 ))
[ "$MEM" -gt 1000 ] || MEM=1000
mkdir -p /etc/slurm /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm
chown -R slurm:slurm /var/lib/slurm /var/log/slurm
# Count= without File= drains the node; File=/dev/null is accepted and nothing is behind it.
if [ "$FAKE_GPUS" = 1 ]; then
  echo "NodeName=${HOST} Name=gpu File=/dev/null" >/etc/slurm/gres.conf
else
  mkdir -p /var/lib/slurm/fakegpu
  # must be character devices (plain files are rejected by slurmd): symlinks to /dev/null
  for ((i = 0; i < FAKE_GPUS; i++)); do ln -sfn /dev/null "/var/lib/slurm/fakegpu/gpu$i"; done
  echo "NodeName=${HOST} Name=gpu File=/var/lib/slurm/fakegpu/gpu[0-$((FAKE_GPUS - 1))]" >/etc/slurm/gres.conf
fi
if [ "$WITH_DBD" = 1 ]; then
  ACCT=$'AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=localhost\nAccountingStorageEnforce=associations\nAccountingStorageTRES=gres/gpu\nAccountingStoreFlags=job_comment'
else
  ACCT="AccountingStorageType=accounting_storage/none"
fi
cat >/etc/slurm/slurm.conf <<CONF
# written by ci/slurm/up.sh
ClusterName=ci
SlurmctldHost=${HOST}(127.0.0.1)
AuthType=auth/munge
CryptoType=crypto/munge
SlurmUser=slurm
SlurmdUser=root
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
${ACCT}
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
Waittime=0
GresTypes=gpu
NodeName=${HOST} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=${MEM} Gres=gpu:${FAKE_GPUS} State=UNKNOWN
PartitionName=cpu Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=${HOST} Default=NO MaxTime=INFINITE State=UP
CONF

# ---------------------------------------------------------------- accounting: MariaDB + slurmdbd
if [ "$WITH_DBD" = 1 ]; then
  mkdir -p /run/mysqld; chown mysql:mysql /run/mysqld
  if [ ! -d /var/lib/mysql/mysql ]; then
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/var/log/slurm/mariadb-install.log 2>&1 \
      || die "mariadb-install-db failed (see /var/log/slurm/mariadb-install.log)"
  fi
  # setsid: a session of its own, so that a signal to the caller's process group does not reach it
  setsid /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 >/var/log/slurm/mariadbd.out 2>&1 </dev/null &
  echo $! >"$PIDDIR/mariadbd.pid"
  waitfor 60 mariadb-admin ping || die "mariadbd not answering after 30 s (see /var/log/slurm/mariadbd.out)"
  log "mariadbd up (pid $(cat "$PIDDIR/mariadbd.pid"))"
  mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  cat >/etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db
CONF
  chown slurm:slurm /etc/slurm/slurmdbd.conf; chmod 600 /etc/slurm/slurmdbd.conf
  rm -f /run/slurmdbd.pid
  /usr/sbin/slurmdbd || die "slurmdbd failed to start (see /var/log/slurm/slurmdbd.log)"
  pid=$(waitpidfile /run/slurmdbd.pid 20) || die "slurmdbd wrote no pid file (see /var/log/slurm/slurmdbd.log)"
  echo "$pid" >"$PIDDIR/slurmdbd.pid"
  waitfor 60 sacctmgr -n show cluster || die "slurmdbd not answering after 30 s (see /var/log/slurm/slurmdbd.log)"
  log "slurmdbd up (pid $pid)"
  USERS=$(id -un); [ -n "${SUDO_USER:-}" ] && [ "${SUDO_USER}" != "$USERS" ] && USERS="$USERS,$SUDO_USER"
  # "add" of something that exists returns non-zero: check afterwards instead
  sacctmgr -i add cluster ci >/dev/null 2>&1 || true
  sacctmgr -i add account ci Cluster=ci Description=ci Organization=ci >/dev/null 2>&1 || true
  sacctmgr -i add user "$USERS" Account=ci DefaultAccount=ci >/dev/null 2>&1 || true
  sacctmgr -n -P show assoc where account=ci user="$(id -un)" format=user | grep -qx "$(id -un)" \
    || die "could not create association account=ci user=$(id -un)"
  log "account ci holds user(s) $USERS"
fi

# ---------------------------------------------------------------- slurmctld + slurmd
rm -f /run/slurmctld.pid /run/slurmd.pid
/usr/sbin/slurmctld || die "slurmctld failed to start (see /var/log/slurm/slurmctld.log)"
pid=$(waitpidfile /run/slurmctld.pid 20) || die "slurmctld wrote no pid file (see /var/log/slurm/slurmctld.log)"
echo "$pid" >"$PIDDIR/slurmctld.pid"
/usr/sbin/slurmd || die "slurmd failed to start (see /var/log/slurm/slurmd.log)"
pid=$(waitpidfile /run/slurmd.pid 20) || die "slurmd wrote no pid file (see /var/log/slurm/slurmd.log)"
echo "$pid" >"$PIDDIR/slurmd.pid"
# ReturnToService=2 brings a node that was DOWN in the saved state back; bounded wait for idle
if ! waitfor 120 sh -c "sinfo -h -n ${HOST} -o %T | grep -qE '^(idle|mixed|allocated)'"; then
  sinfo -N -l >&2 || true
  die "node ${HOST} not idle after 60 s (see /var/log/slurm/slurmctld.log, slurmd.log)"
fi
sinfo
log "cluster ready; pids in $PIDDIR; stop with: bash $HERE/down.sh"
