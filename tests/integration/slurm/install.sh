#!/usr/bin/env bash
# Install the Debian packages of a single-node Slurm cluster (slurm-wlm, munge) when they are missing.
# Used by .ci/run; needs root and apt-get.  Prints nothing when everything is already installed.
set -euo pipefail
command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && exit 0
[ "$(id -u)" = 0 ] || { echo "install.sh: must run as root to install slurm-wlm and munge" >&2; exit 2; }
command -v apt-get >/dev/null || { echo "install.sh: apt-get not found; install slurm-wlm and munge by hand" >&2; exit 2; }
export DEBIAN_FRONTEND=noninteractive
packages=(slurm-wlm munge)
apt-get install -y -q --no-install-recommends "${packages[@]}" >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${packages[@]}" >/dev/null; }
