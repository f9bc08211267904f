#!/bin/bash
# Stop the SLURM CI cluster started by ci/slurm/up.sh: only the daemons whose PIDs up.sh recorded
# in $PIDDIR (default /tmp/mdgen-slurm), in reverse start order (slurmd, slurmctld, slurmdbd,
# mariadbd, munged); SIGTERM, bounded wait (10 s each), then SIGKILL. A recorded PID whose process
# is gone or is no longer that daemon (PID reuse) is skipped. Safe to run when nothing is up.
# Usage (as root): bash ci/slurm/down.sh
set -euo pipefail

PIDDIR=${PIDDIR:-/tmp/mdgen-slurm}
T0=$(date +%s)
[ -d "$PIDDIR" ] || { echo "[slurm-down] nothing recorded in $PIDDIR"; exit 0; }

for d in slurmd slurmctld slurmdbd mariadbd munged; do
  f="$PIDDIR/$d.pid"
  [ -s "$f" ] || { rm -f "$f"; continue; }
  pid=$(tr -dc '0-9' <"$f")
  rm -f "$f"
  [ -n "$pid" ] || continue
  if ! kill -0 "$pid" 2>/dev/null; then echo "[slurm-down] $d (pid $pid) already gone"; continue; fi
  comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
  if [ "$comm" != "$d" ]; then echo "[slurm-down] pid $pid is '$comm', not $d: left alone"; continue; fi
  kill "$pid" 2>/dev/null || true
  for ((i = 0; i < 40; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  if kill -0 "$pid" 2>/dev/null; then
    kill -9 "$pid" 2>/dev/null || true
    echo "[slurm-down] $d (pid $pid) killed with SIGKILL after 10 s"
  else
    echo "[slurm-down] stopped $d (pid $pid)"
  fi
done
echo "[slurm-down] done after $(( $(date +%s) - T0 ))s"
