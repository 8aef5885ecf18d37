"""Benchmark of the session-level analyses on SYNTHETIC data of growing size, and the lagged model's bias study.

``python benchmarks/bench_sessions.py`` prints a Markdown table of wall times per number of clients (10 per
therapist, 4 sites): simulation, the five REML mixed models of the pipeline (``within_between``, ``lagged``,
``therapist``, ``components``, ``split`` with the default settings and the covariate age), descriptives + ruptures
(with the regression-to-the-mean null) + rupture outcome + client level, and two-stage site pooling.  With
``ALLIANCEMETA_BENCH_R=1`` (and ``Rscript`` on the PATH) it also times lme4 + lmerTest (summary with Satterthwaite
df) on the pipeline's ``within_between`` and ``lagged`` specifications, side by side; ``--bayes`` adds the three
Bayesian models (compile + sample with the package defaults).

``--lagged-bias N`` instead fits N seeded replicates of the bundled generator (seeds 1000, 1001, ...) with the
``lagged`` specifications compared in :mod:`alliancemeta.sessions.models` and prints the mean estimate, its
empirical SD and the mean standard error of the lagged alliance effect (true value 1.6) and the autoregression
(true 0.35) per specification.

Not a test: timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time

import numpy as np
import pandas as pd

from alliancemeta.core.mcmc import fit
from alliancemeta.core.settings import SamplerSettings, validate_config
from alliancemeta.core.tables import write_csv
from alliancemeta.pipeline.sessions import (
    client_level_table,
    descriptives_table,
    rupture_outcome_table,
    ruptures_table,
    site_effects_table,
)
from alliancemeta.sessions.bayes import build_session_model, diagnosed, spec_from_model
from alliancemeta.sessions.data import add_covariates, decompose_alliance, lag_frame
from alliancemeta.sessions.lmm import RandomTerm, fit_lmm
from alliancemeta.sessions.models import fit_session_models
from alliancemeta.sessions.synthetic import simulate_sessions

SIZES = (100, 350, 1000, 3000)
#: The configuration's session sampler defaults (from the schema, where every default is written once).
SAMPLER = SamplerSettings.from_config(validate_config({})["sessions_bayes"], "sessions_bayes")
R_SCRIPT = """
suppressPackageStartupMessages({library(lme4); library(lmerTest)})
d <- read.csv(commandArgs(TRUE)[1], colClasses = c(client = "character", therapist = "character"))
wb <- d[complete.cases(d[, c("y", "aw", "ab", "at", "age")]), ]
lg <- d[complete.cases(d[, c("y", "awl", "yl", "age")]), ]
t0 <- proc.time()[["elapsed"]]
f1 <- lmer(y ~ aw + ab + at + sc + age + (1 | therapist) + (1 + sc + aw | client), data = wb)
s1 <- summary(f1)
t1 <- proc.time()[["elapsed"]]
f2 <- lmer(y ~ awl + yl + sc + age + (1 | therapist) + (1 + sc + awl | client), data = lg)
s2 <- summary(f2)
t2 <- proc.time()[["elapsed"]]
cat(t1 - t0, t2 - t1, "\\n")
"""


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def describe_all(frame):
    groups = ["gender", "format"]
    rows, episodes, _, _ = ruptures_table(frame, 0.85, 3, seed=1)
    return (descriptives_table(frame, groups, 15.0), rows, rupture_outcome_table(frame, episodes, True, 0.95),
            client_level_table(frame, True, groups, 0.95, ["age"]))  # fmt: skip


def lme4_seconds(data: pd.DataFrame) -> tuple[float, float] | None:
    if os.environ.get("ALLIANCEMETA_BENCH_R") != "1" or not shutil.which("Rscript"):
        return None
    lagged = lag_frame(data)[["client", "session", "alliance_within_lag", "outcome_lag"]]
    d = data.merge(lagged, on=["client", "session"], how="left")
    out = pd.DataFrame({"therapist": d["therapist"], "client": d["client"], "y": d["y"], "sc": d["session_c"],
                        "aw": d["alliance_within"], "ab": d["alliance_between"], "at": d["alliance_therapist"],
                        "age": d["age"], "awl": d["alliance_within_lag"], "yl": d["outcome_lag"]})  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "s.csv")
        write_csv(out, path)
        script = os.path.join(tmp, "fit.R")
        with open(script, "w") as fh:
            fh.write(R_SCRIPT)
        done = subprocess.run(["Rscript", script, path], capture_output=True, text=True, check=False, timeout=3600)
    if done.returncode != 0:
        return None
    wb, lg = map(float, done.stdout.split()[-2:])
    return wb, lg


def timings(args) -> None:
    header = ["clients", "sessions", "simulate s", "5 mixed models s", "descriptives + ruptures s", "site pooling s"]
    with_r = os.environ.get("ALLIANCEMETA_BENCH_R") == "1"
    if with_r:
        header += ["lme4+lmerTest within_between s", "lme4+lmerTest lagged s"]
    if args.bayes:
        header.append(f"pymc 3 models ({SAMPLER.chains} x {SAMPLER.draws} draws) s")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for n in args.sizes:
        (frame, _), t_sim = timed(simulate_sessions, 1, n_sites=4, n_therapists=max(5, n // 10), n_clients=n)
        data, cov = add_covariates(decompose_alliance(frame, True), ["age"])
        (fits, _), t_models = timed(fit_session_models, data, covariates=cov.terms)
        _, t_desc = timed(describe_all, frame)
        _, t_sites = timed(site_effects_table, data, "REML", "knha", 0.95)
        row = [n, len(frame), t_sim, t_models, t_desc, t_sites]
        if with_r:
            seconds = lme4_seconds(data)
            row += [float("nan")] * 2 if seconds is None else list(seconds)
        if args.bayes:
            start = time.perf_counter()
            for name in ("within_between", "components", "split"):
                result = fits.get(name)
                if result is None or result.fit is None:
                    continue
                s = result.spec
                upper = s.upper.group if s.upper is not None else None
                spec = spec_from_model(name, s.data, s.fixed, therapist=upper == "therapist", case=upper == "case")
                model, _ = build_session_model(spec)
                fit(model, SAMPLER, 1, name, diagnosed(model))
            row.append(time.perf_counter() - start)
        print("| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in row) + " |", flush=True)


#: specification -> (lagged outcome column, client random slopes); see alliancemeta.sessions.models
BIAS_SPECS = {
    "detrend + random slopes (default)": ("outcome_lag", ("session_c", "alliance_within_lag")),
    "detrend": ("outcome_lag", ("session_c",)),
    "random slopes, no detrend": ("outcome_lag", ("alliance_within_lag",)),
    "neither": ("outcome_lag", ()),
    "uncentred lagged outcome, detrend + random slopes": ("y_lag", ("session_c", "alliance_within_lag")),
}


def lagged_bias(n_rep: int) -> None:
    results = {name: [] for name in BIAS_SPECS}
    for rep in range(n_rep):
        frame, _ = simulate_sessions(1000 + rep)
        d = decompose_alliance(frame, True)
        lagged = lag_frame(d)
        prev = d.groupby("client")[["session", "y"]].shift(1)
        raw = d.assign(y_lag=prev["y"].where(prev["session"] == d["session"] - 1))[["client", "session", "y_lag"]]
        lagged = lagged.merge(raw, on=["client", "session"], how="left")
        for name, (ylag, slopes) in BIAS_SPECS.items():
            cols = ["y", "alliance_within_lag", ylag, "session_c"]
            data = lagged.dropna(subset=cols)
            f = fit_lmm(data, "y", ("alliance_within_lag", ylag, "session_c"), RandomTerm("client", slopes),
                        RandomTerm("therapist"), label=name)  # fmt: skip
            results[name].append((f.estimate[1], f.se[1], f.estimate[2]))
    print(f"lagged model on {n_rep} replicates (seeds 1000-{1000 + n_rep - 1}); truth: alliance 1.6, "
          "autoregression 0.35")
    print("| specification | mean estimate | empirical SD | mean SE | mean autoregression |")
    print("|---|---|---|---|---|")
    for name, values in results.items():
        v = np.asarray(values)
        print(f"| {name} | {v[:, 0].mean():.3f} | {v[:, 0].std(ddof=1):.3f} | {v[:, 1].mean():.3f} | "
              f"{v[:, 2].mean():.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bayes", action="store_true", help="also time the three PyMC models (slow)")
    parser.add_argument("--sizes", type=int, nargs="*", default=list(SIZES), help="numbers of clients")
    parser.add_argument("--lagged-bias", type=int, default=0, metavar="N", help="run the lagged-model bias study")
    args, _ = parser.parse_known_args()  # benchmarks/run.py passes its own arguments through
    if args.lagged_bias:
        lagged_bias(args.lagged_bias)
    else:
        timings(args)


if __name__ == "__main__":
    main()
