"""The pipeline on a real Slurm cluster through Snakemake's executor plugin (SPEC §8).

A single-node cluster (munged, slurmctld, slurmd on 127.0.0.1; tests/integration/slurm/start.sh) runs the tiny
integration config with the multiverse through ``--workflow-profile workflow/profiles/slurm``; every table must
equal the local run's byte for byte.  A cluster that is already up (SLURM_CONF set and the node answering, as
.ci/run leaves it) is used as it is; otherwise the test starts one and stops it afterwards.  Where Slurm cannot
start (not root, packages missing) the test is skipped with the reason, unless ALLIANCEMETA_REQUIRE_SLURM=1
(set by .ci/run), where that is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from workflow_copy import (
    INTEGRATION_MULTIVERSE,
    ROOT,
    SNAKEFILE,
    TARGETS,
    prepare_workdir,
    quiet_env,
    snakemake_command,
    tables,
)

pytestmark = pytest.mark.slow
SLURM = Path(__file__).resolve().parent / "slurm"
PROFILE = ROOT / "workflow" / "profiles" / "slurm"
#: Cluster options of this test cluster: no accounting (no account, status from squeue), and status checks
#: every second, since every job here takes seconds (the profile's 5 s suit a shared cluster).
CLUSTER_ARGS = (
    "--slurm-no-account", "--slurm-status-command", "squeue",
    "--slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks", "1",
)  # fmt: skip


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "starting slurmd and munged needs root"
    missing = [c for c in ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo") if not shutil.which(c)]
    if missing:
        return f"Slurm is not installed ({', '.join(missing)} missing; tests/integration/slurm/install.sh)"
    return None


def _node_answers(env) -> bool:
    proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=env, check=False)
    return proc.returncode == 0 and any(s in proc.stdout for s in ("idle", "mixed", "allocated"))


def _cannot(reason: str):
    if os.environ.get("ALLIANCEMETA_REQUIRE_SLURM") == "1":
        pytest.fail(f"Slurm is required here (ALLIANCEMETA_REQUIRE_SLURM=1) but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Environment for Slurm commands: a running cluster's, or one this fixture starts (and stops)."""
    env = quiet_env()
    if env.get("SLURM_CONF") and shutil.which("sinfo") and _node_answers(env):
        yield env
        return
    reason = _unavailable()
    if reason:
        _cannot(reason)
    state = tmp_path_factory.mktemp("slurm")
    start = time.perf_counter()
    proc = subprocess.run([str(SLURM / "start.sh"), str(state)], capture_output=True, text=True, check=False,
                          timeout=300)  # fmt: skip
    if proc.returncode != 0:
        subprocess.run([str(SLURM / "stop.sh"), str(state)], check=False, timeout=120)
        _cannot(f"the single-node Slurm cluster did not start: {(proc.stdout + proc.stderr)[-1500:]}")
    print(f"Slurm cluster started in {time.perf_counter() - start:.1f} s")
    try:
        yield {**env, "SLURM_CONF": str(state / "slurm.conf")}
    finally:
        subprocess.run([str(SLURM / "stop.sh"), str(state)], check=False, timeout=120)


def test_tables_on_slurm_equal_the_local_run(cluster, request, tmp_path):
    work = prepare_workdir(tmp_path / "slurm")
    start = time.perf_counter()
    proc = subprocess.run(
        snakemake_command(SNAKEFILE, work, "--workflow-profile", str(PROFILE), *CLUSTER_ARGS, *TARGETS),
        capture_output=True, text=True, check=False, timeout=1800, env=cluster,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    # the local run is asked for only now: meanwhile another worker makes it (the Slurm run is mostly waiting)
    _, local_work, local_seconds = request.getfixturevalue("integration_run")
    print(f"local run {local_seconds:.0f} s, Slurm run {seconds:.0f} s")
    assert proc.returncode == 0, proc.stderr[-4000:]
    output = proc.stdout + proc.stderr
    # every job but the local gathers went through Slurm, one job per batch of the multiverse included
    logs = re.findall(r"has been submitted with SLURM jobid \d+ \(log: \S*/slurm_logs/([\w.]+?)/", output)
    submitted = [name.rstrip(".") for name in logs]
    # the MCMC rules and every multiverse batch are jobs of their own; the seconds-long analyses go in groups
    assert {"rule_ingest_studies", "rule_bayes", "rule_robma", "rule_sessions_models"} <= set(submitted)
    n_specs = len(pd.read_csv(work / "results/studies/tiny_synthetic/tables/multiverse.csv"))
    assert submitted.count("rule_multiverse_batch") == -(-n_specs // INTEGRATION_MULTIVERSE["batch_size"])
    for group in ("study_analyses", "session_analyses", "reports"):  # workflow/profiles/slurm/config.yaml
        assert sum(name.startswith(f"group_{group}_") for name in submitted) == 1, (group, submitted)
    assert "rule_random_effects" not in submitted and "rule_apa_study_table" not in submitted
    # the gathers of the multiverse are local rules: never a Slurm job
    assert not any("multiverse_specification_curve" in name or name == "rule_multiverse" for name in submitted)
    expected = tables(local_work)
    actual = tables(work)
    assert sorted(actual) == sorted(expected)
    different = [path for path in expected if actual[path] != expected[path]]
    assert not different, f"tables differ between the Slurm and the local run: {different}"
