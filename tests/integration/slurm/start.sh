#!/usr/bin/env bash
# Start a single-node Slurm cluster on this machine: munged, slurmctld and slurmd on 127.0.0.1, with the
# configuration of slurm.conf.in and all state (spool, logs, pid files) under STATE_DIR.  Used by
# tests/integration/test_slurm.py and by .ci/run.  Needs root (slurmd runs jobs as their owners) and the
# Debian packages slurm-wlm and munge (`install.sh`).
#
#   tests/integration/slurm/start.sh STATE_DIR      # then: export SLURM_CONF=STATE_DIR/slurm.conf
#
# Client commands inside jobs (the srun that Snakemake's job step runs) do not see SLURM_CONF, so the configuration
# is also linked at the default path /etc/slurm/slurm.conf; the script refuses to replace a configuration it did
# not write there (a real cluster's).  Idempotent: a cluster already running from STATE_DIR is left as it is.  Ports: ALLIANCEMETA_SLURMCTLD_PORT
# (default 6817) and ALLIANCEMETA_SLURMD_PORT (6818).  Exit status 0 when the node is idle, else non-zero with
# the reason and the daemons' log tails on stderr.  Stop it with stop.sh STATE_DIR.
set -euo pipefail

state=${1:?usage: start.sh STATE_DIR}
here=$(cd "$(dirname "$0")" && pwd)
ctld_port=${ALLIANCEMETA_SLURMCTLD_PORT:-6817}
slurmd_port=${ALLIANCEMETA_SLURMD_PORT:-6818}
timeout=${ALLIANCEMETA_SLURM_START_TIMEOUT:-60}

fail() {
    echo "start.sh: $*" >&2
    for log in "$state/slurmctld.log" "$state/slurmd.log"; do
        [ -f "$log" ] && { echo "--- tail of $log" >&2; tail -n 15 "$log" >&2; }
    done
    exit 1
}

[ "$(id -u)" = 0 ] || { echo "start.sh: must run as root (slurmd starts jobs as their owners)" >&2; exit 2; }
for cmd in munged munge unmunge slurmctld slurmd sinfo scontrol; do
    command -v "$cmd" >/dev/null || { echo "start.sh: $cmd not found; install slurm-wlm and munge (install.sh)" >&2; exit 2; }
done

mkdir -p "$state/ctld" "$state/spool"
state=$(cd "$state" && pwd)
conf="$state/slurm.conf"
export SLURM_CONF="$conf"

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# --- munge: reuse a running munged, else start one as the munge user ---------------------------------
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    [ -s /etc/munge/munge.key ] || { mungekey --create 2>/dev/null || create-munge-key -f; }
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    chmod 755 /run/munge
    runuser -u munge -- munged
    touch "$state/munged.started"   # stop.sh ends only a munged that this script started
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n | unmunge >/dev/null 2>&1 || fail "munged did not start"
fi

# --- slurm.conf from the template ------------------------------------------------------------------
host=$(hostname -s)
# CPUs: the processors online (not `nproc`, which follows OMP_NUM_THREADS), at least
# ALLIANCEMETA_SLURM_MIN_CPUS (default 2) so that the profile's 2-thread rules can be scheduled on a 1-CPU machine
cpus=$(getconf _NPROCESSORS_ONLN)
min_cpus=${ALLIANCEMETA_SLURM_MIN_CPUS:-2}
[ "$cpus" -ge "$min_cpus" ] || cpus=$min_cpus
mem_mb=$(awk '/^MemTotal:/ { printf "%d", $2 / 1024 * 0.9 }' /proc/meminfo)   # below what slurmd detects
if ! alive "$state/slurmctld.pid"; then
    sed -e "s|@HOST@|$host|g" -e "s|@STATE@|$state|g" -e "s|@CPUS@|$cpus|g" -e "s|@MEM_MB@|$mem_mb|g" \
        -e "s|@CTLD_PORT@|$ctld_port|g" -e "s|@SLURMD_PORT@|$slurmd_port|g" "$here/slurm.conf.in" > "$conf"
    slurmctld -f "$conf" -i || fail "slurmctld did not start"
fi
# srun inside a job reads the default path (Snakemake's job step drops SLURM_CONF from the job's environment)
default_conf=/etc/slurm/slurm.conf
if [ -e "$default_conf" ] || [ -L "$default_conf" ]; then
    target=$(readlink "$default_conf" || true)
    case "$target" in
        */slurm.conf) grep -q "^# alliancemeta single-node test cluster" "$default_conf" 2>/dev/null || [ ! -e "$target" ] ||
            fail "$default_conf belongs to another Slurm installation; not replacing it" ;;
        *) fail "$default_conf belongs to another Slurm installation; not replacing it" ;;
    esac
fi
mkdir -p "$(dirname "$default_conf")"
ln -sfn "$conf" "$default_conf"
alive "$state/slurmd.pid" || slurmd -f "$conf" -N "$host" || fail "slurmd did not start"

# --- wait until the node takes jobs --------------------------------------------------------------
deadline=$((SECONDS + timeout))
while :; do
    node_state=$(sinfo -h -N -n "$host" -o %T 2>/dev/null | head -n 1 || true)
    case "$node_state" in
        idle | mixed | allocated) break ;;
        down* | drain* | drained*) scontrol update nodename="$host" state=resume 2>/dev/null || true ;;
    esac
    [ "$SECONDS" -lt "$deadline" ] || fail "node $host not idle after ${timeout}s (state: ${node_state:-no answer})"
    sleep 0.5
done
echo "Slurm cluster up: node $host ($cpus CPUs, $mem_mb MB), SLURM_CONF=$conf"
