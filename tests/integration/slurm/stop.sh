#!/usr/bin/env bash
# Stop the single-node Slurm cluster that start.sh STATE_DIR started: slurmd, slurmctld and, when start.sh
# started it, munged, each by the pid in its pid file.  Cancels the cluster's remaining jobs first.
set -uo pipefail

state=${1:?usage: stop.sh STATE_DIR}
[ -d "$state" ] || exit 0
export SLURM_CONF="$state/slurm.conf"

[ -f "$SLURM_CONF" ] && scancel --full --quiet --state=RUNNING,PENDING --user="$(id -un)" 2>/dev/null

stop_pid_file() {
    local file=$1 pid
    [ -f "$file" ] || return 0
    pid=$(cat "$file")
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null
}

stop_pid_file "$state/slurmd.pid"
# the link start.sh made at the default configuration path, when it still points here
[ "$(readlink /etc/slurm/slurm.conf 2>/dev/null)" = "$SLURM_CONF" ] && rm -f /etc/slurm/slurm.conf
stop_pid_file "$state/slurmctld.pid"
if [ -f "$state/munged.started" ]; then
    stop_pid_file /run/munge/munged.pid
    rm -f "$state/munged.started"
fi
exit 0
