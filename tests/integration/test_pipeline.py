"""Run the real Snakemake pipeline on the tiny config and check the output contract of SPEC §5.

The workflow (Snakefile, workflow/) is used in place; the working directory is a temporary copy of
tests/integration/{config,data}, so the run writes nothing into the repository.  The clean run is the one
integration run of the test session (fixture ``integration_run``: the whole pipeline and the multiverse),
shared with test_multiverse_workflow.py and test_slurm.py; the killed-and-rerun test makes a second, independent
run of the same targets and compares every file of the two byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from workflow_copy import TARGETS, prepare_workdir

from alliancemeta.report.numbers import bounded, interval, percent
from alliancemeta.report.verify import compare, snapshot

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SNAKEMAKE = Path(sys.executable).with_name("snakemake")

#: SPEC §5 column contracts (extra columns may only follow these).
CONTRACTS = {
    "random_effects.csv": [
        "estimator", "test", "k", "estimate", "se", "stat", "pval", "ci_lb", "ci_ub", "pi_lb", "pi_ub", "tau2",
        "tau2_ci_lb", "tau2_ci_ub", "I2", "I2_ci_lb", "I2_ci_ub", "H2", "Q", "Q_df", "Q_pval", "r", "r_ci_lb",
        "r_ci_ub", "r_pi_lb", "r_pi_ub",
    ],
    "multilevel.csv": [
        "test", "k", "n_studies", "estimate", "se", "stat", "pval", "ci_lb", "ci_ub", "pi_lb", "pi_ub",
        "sigma2_study", "sigma2_within", "r", "r_ci_lb", "r_ci_ub",
    ],
    "moderators.csv": ["moderator", "term", "estimate", "se", "stat", "pval", "ci_lb", "ci_ub"],
    "moderator_tests.csv": [
        "moderator", "test", "k", "QM", "QM_df", "QM_pval", "QE", "QE_df", "QE_pval", "tau2", "R2",
    ],
    "publication_bias.csv": ["method", "statistic", "pval", "estimate", "ci_lb", "ci_ub", "k0"],
    "influence.csv": [
        "study", "rstudent", "dffits", "cooks_distance", "cov_ratio", "tau2_del", "QE_del", "hat", "weight",
        "loo_estimate", "loo_se", "loo_ci_lb", "loo_ci_ub", "loo_tau2", "loo_I2",
    ],
    "influence_multilevel.csv": [
        "study_id", "k", "cooks_distance", "dfbetas", "rstudent_X2", "rstudent_df", "rstudent_pval", "rstandard_X2",
        "hat", "sigma2_study_del", "sigma2_within_del", "loo_estimate", "loo_se", "loo_pval", "loo_ci_lb", "loo_ci_ub",
        "loo_r", "loo_r_ci_lb", "loo_r_ci_ub", "influential",
    ],
    "bayes.csv": ["parameter", "mean", "sd", "eti_lb", "eti_ub", "ess_bulk", "ess_tail", "r_hat"],
    "prior_sensitivity.csv": ["prior", "parameter", "mean", "sd", "eti_lb", "eti_ub"],
    "mixed_models.csv": ["model", "engine", "term", "estimate", "se", "ci_lb", "ci_ub", "pval"],
}  # fmt: skip


def run(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SNAKEMAKE), "-s", str(ROOT / "Snakefile"), "--directory", str(workdir), "--cores", "2", *args],
        capture_output=True, text=True, check=False, timeout=1500,
    )


def digest(paths) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(paths)}


@pytest.fixture(scope="module")
def workdir(integration_run) -> Path:
    """The working directory of the session's clean integration run (raises with Snakemake's output if it failed)."""
    return integration_run.work


@pytest.mark.slow
def test_contract_tables(workdir):
    tables = sorted((workdir / "results").rglob("tables/*.csv"))
    names = {t.name for t in tables}
    assert "random_effects.csv" in names
    for table in tables:
        if table.name in CONTRACTS:
            columns = list(pd.read_csv(table, nrows=0).columns)
            expected = CONTRACTS[table.name]
            assert columns[: len(expected)] == expected, table
    re_table = pd.read_csv(workdir / "results/studies/tiny_synthetic/tables/random_effects.csv")
    assert list(zip(re_table.estimator, re_table.test, strict=True)) == [
        ("REML", "knha"), ("REML", "z"), ("DL", "knha"), ("DL", "z"),
    ]
    assert (re_table.k == 14).all()
    for figure in ("forest.pdf", "forest.png"):
        assert (workdir / "results/studies/tiny_synthetic/figures" / figure).stat().st_size > 1000


@pytest.mark.slow
def test_provenance_records_inputs(workdir):
    prov = json.loads((workdir / "results/provenance.json").read_text())
    data = workdir / "data/tiny_synthetic.csv"
    assert prov["inputs"]["data/tiny_synthetic.csv"]["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert prov["seed"] == 7
    assert prov["packages"]["numpy"]


@pytest.mark.slow
def test_nothing_to_do_on_a_second_run(workdir):
    """A second run with nothing changed plans no job (the byte-identical rerun: the killed-and-rerun test)."""
    proc = run(workdir, "--dry-run", *TARGETS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Nothing to be done" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_bad_input_stops_before_any_job_and_keeps_results(workdir, tmp_path):
    good = digest((workdir / "results").rglob("*.*"))
    bad = tmp_path / "bad"
    shutil.copytree(workdir, bad, ignore=shutil.ignore_patterns(".snakemake"))
    data = bad / "data/tiny_synthetic.csv"
    lines = data.read_text().splitlines()
    fields = lines[11].split(",")
    fields[2] = "1.7"
    lines[11] = ",".join(fields)
    data.write_text("\n".join(lines) + "\n")
    before = digest((bad / "results").rglob("*.*"))
    proc = run(bad)
    assert proc.returncode != 0
    assert "data/tiny_synthetic.csv line 12, column r: 1.7 is outside [-1, 1]" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert digest((bad / "results").rglob("*.*")) == before
    assert digest((workdir / "results").rglob("*.*")) == good


@pytest.mark.slow
def test_summary_numbers_come_from_the_tables(workdir):
    folder = workdir / "results/studies/tiny_synthetic"
    head = pd.read_csv(folder / "tables/random_effects.csv").iloc[0]
    text = (folder / "report/summary.md").read_text()
    assert text.startswith("**SYNTHETIC data**")
    assert f"k = {int(head['k'])} effect sizes" in text
    assert f"r = {bounded(head['r'])}, 95% CI {interval(head['r_ci_lb'], head['r_ci_ub'])}" in text
    assert f"new study was {interval(head['r_pi_lb'], head['r_pi_ub'])}" in text
    assert f"I² = {percent(head['I2'])} (95% CI {interval(head['I2_ci_lb'], head['I2_ci_ub'], percent)})" in text
    assert f"r² = {bounded(head['r'] ** 2, 3)}" in text
    cr2 = pd.read_csv(folder / "tables/multilevel.csv").set_index("test").loc["cr2"]
    assert f"with CR2 robust standard errors {interval(cr2['r_ci_lb'], cr2['r_ci_ub'])}" in text
    bayes = pd.read_csv(folder / "tables/bayes.csv").set_index("parameter").loc["r"]
    assert f"posterior mean r = {bounded(bayes['mean'])}" in text
    for table in ("random_effects", "multilevel", "moderators", "publication_bias", "bayes"):
        assert (folder / f"report/{table}.md").read_text().startswith("*"), table
        assert r"\toprule" in (folder / f"report/{table}.tex").read_text(), table
    assert "| 20b |" in (folder / "report/checklist.md").read_text()
    sessions = workdir / "results/sessions/tiny_sessions_synthetic"
    assert (sessions / "report/summary.md").read_text().startswith("**SYNTHETIC data**")
    assert (sessions / "report/mixed_models.tex").exists()
    overview = (workdir / "results/summary.md").read_text()
    assert "## tiny_synthetic — SYNTHETIC data" in overview
    assert "## tiny_sessions_synthetic — SYNTHETIC data" in overview
    run_record = json.loads((workdir / "results/provenance.json").read_text())["run"]
    assert set(run_record) >= {"command", "started", "finished", "commit", "dirty"}


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


@pytest.mark.slow
def test_report_opens_on_the_headline_and_every_image_loads(workdir):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("no Chromium on this machine (.ci/run installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    proc = run(workdir, "--report", "results/report.html", "--report-metadata", "results/report/metadata.yaml",
               "--report-stylesheet", str(ROOT / "workflow/report/style.css"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    head = pd.read_csv(workdir / "results/studies/tiny_synthetic/tables/random_effects.csv").iloc[0]
    pooled = f"r = {bounded(head['r'])}, 95% CI {interval(head['r_ci_lb'], head['r_ci_ub'])}"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto((workdir / "results/report.html").as_uri())
            headline = page.get_by_text(pooled).first
            headline.wait_for(state="visible", timeout=30_000)
            box = headline.bounding_box()
            assert box is not None and box["y"] + box["height"] <= 800, f"the pooled r is below the first screen: {box}"
            assert page.get_by_text("Headline findings").first.is_visible()
            results = page.evaluate("Object.values(results).map(r => [r.name, r.mime_type, r.caption.length])")
            assert all(length > 0 for _, _, length in results), "every table and figure has a caption"
            images = [name for name, mime, _ in results if mime.startswith("image/")]
            assert {"forest.png", "funnel.png", "posterior.png", "trajectories.png"} <= set(images)
            loaded = page.evaluate("""async () => Promise.all(Object.values(results)
                .filter(r => r.mime_type.startsWith('image/'))
                .map(r => new Promise(done => { const img = new Image();
                    img.onload = () => done([r.name, img.naturalWidth]); img.onerror = () => done([r.name, 0]);
                    img.src = r.data_uri; })))""")
            assert loaded and all(width > 0 for _, width in loaded), loaded
            page.evaluate("r => app.setView({content: 'img', contentPath: r})",
                          next(r for r in page.evaluate("Object.values(results).map(r => r.data_uri)")
                               if r.startswith("data:image/png")))
            shown = page.locator("img").last
            shown.wait_for(state="visible", timeout=10_000)
            assert shown.evaluate("img => img.complete && img.naturalWidth > 0")
        finally:
            browser.close()


@pytest.mark.slow
def test_a_killed_run_reruns_to_the_same_bytes(integration_run, tmp_path):
    """SIGKILL the pipeline at a random moment, rerun it as `make run` does, compare every file with the clean run.

    Every output is thus computed twice, in two working directories (before the kill or in the rerun, and in the
    clean run): the two runs must give the same bytes (SPEC: reproducible)."""
    work = prepare_workdir(tmp_path / "killed")
    seconds = float(os.environ.get("ALLIANCEMETA_KILL_AT", 0)) or random.uniform(
        2.0, max(3.0, 0.7 * integration_run.seconds))
    cmd = [str(SNAKEMAKE), "-s", str(ROOT / "Snakefile"), "--directory", str(work), "--cores", "2", *TARGETS]
    job = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        job.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
    assert run(work, "--unlock").returncode == 0
    proc = run(work, "--rerun-incomplete", *TARGETS)
    assert proc.returncode == 0, f"rerun after a SIGKILL at {seconds:.1f} s failed:\n{proc.stderr[-3000:]}"
    differences = compare(snapshot(integration_run.work / "results"), snapshot(work / "results"))
    assert not differences, f"after a SIGKILL at {seconds:.1f} s (ALLIANCEMETA_KILL_AT to repeat): {differences}"
    assert not list((work / "results").rglob(".*.tmp")), "no temporary file is left behind"
