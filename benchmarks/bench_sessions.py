"""Benchmark of the session-level analyses on SYNTHETIC data of growing size.

Run ``python benchmarks/bench_sessions.py`` (add ``--bayes`` to include the PyMC/nutpie model,
``--r`` to time lme4 on the same data when ``Rscript`` is on the PATH).  For each number of
clients (10 per therapist, 4 sites) it prints a Markdown table of wall times: simulation, the
three REML mixed models, descriptives + ruptures + client-level correlation, two-stage site
pooling, and optionally the Bayesian model (compile + sample with the package defaults).

Not a test: timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time

from alliancemeta.core.mcmc import fit
from alliancemeta.core.settings import SamplerSettings, validate_config
from alliancemeta.core.tables import write_csv
from alliancemeta.pipeline.sessions import client_level_table, descriptives_table, ruptures_table, site_effects_table
from alliancemeta.sessions.bayes import DIAGNOSED, build_within_between_model
from alliancemeta.sessions.data import decompose_alliance
from alliancemeta.sessions.models import fit_session_models
from alliancemeta.sessions.synthetic import simulate_sessions

SIZES = (100, 300, 1000, 3000)
#: The configuration's session sampler defaults (from the schema, where every default is written once).
SAMPLER = SamplerSettings.from_config(validate_config({})["sessions_bayes"], "sessions_bayes")
R_SCRIPT = """
suppressPackageStartupMessages(library(lme4))
d <- read.csv(commandArgs(TRUE)[1], colClasses = c(client = "character", therapist = "character"))
d$y <- -d$outcome
d$cm <- ave(d$alliance, d$client)
cl <- unique(d[, c("client", "therapist", "cm")]); tm <- tapply(cl$cm, cl$therapist, mean)
d$aw <- d$alliance - d$cm; d$ab <- d$cm - tm[d$therapist]; d$at <- tm[d$therapist] - mean(cl$cm)
t0 <- proc.time()[["elapsed"]]
fit <- lmer(y ~ aw + ab + at + session + (1 | therapist) + (1 | client) + (0 + session | client), data = d)
cat(proc.time()[["elapsed"]] - t0, "\\n")
"""


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def describe(frame):
    groups = ["gender", "format"]
    return descriptives_table(frame, groups), ruptures_table(frame), client_level_table(frame, True, groups, 0.95)


def lme4_seconds(frame) -> float | None:
    if not shutil.which("Rscript"):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "s.csv")
        write_csv(frame, path)
        script = os.path.join(tmp, "fit.R")
        with open(script, "w") as fh:
            fh.write(R_SCRIPT)
        done = subprocess.run(["Rscript", script, path], capture_output=True, text=True, check=False, timeout=600)
    return float(done.stdout.split()[-1]) if done.returncode == 0 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bayes", action="store_true", help="also time the PyMC model (slow)")
    parser.add_argument("--r", action="store_true", help="also time lme4's within_between fit")
    parser.add_argument("--sizes", type=int, nargs="*", default=list(SIZES), help="numbers of clients")
    args = parser.parse_args()
    header = ["clients", "sessions", "simulate s", "mixed models s", "descriptives s", "site pooling s"]
    if args.r:
        header.append("lme4 within_between s")
    if args.bayes:
        header.append(f"pymc ({SAMPLER.chains} x {SAMPLER.draws} draws) s")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for n in args.sizes:
        (frame, _), t_sim = timed(simulate_sessions, 1, n_sites=4, n_therapists=max(4, n // 10), n_clients=n)
        data = decompose_alliance(frame, True)
        fits, t_models = timed(fit_session_models, data, 0.95)
        _, t_desc = timed(describe, frame)
        _, t_sites = timed(site_effects_table, data, "REML", "knha", 0.95)
        row = [n, len(frame), t_sim, t_models, t_desc, t_sites]
        if args.r:
            seconds = lme4_seconds(frame)
            row.append(float("nan") if seconds is None else seconds)
        if args.bayes:
            wb = fits["within_between"]
            model = build_within_between_model(data, wb.terms[1:], random_slope=wb.random_slope)
            _, t_bayes = timed(fit, model, SAMPLER, 1, "within_between", DIAGNOSED)
            row.append(t_bayes)
        print("| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in row) + " |")


if __name__ == "__main__":
    main()
