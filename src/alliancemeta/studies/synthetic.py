"""SYNTHETIC study-level alliance-outcome dataset: a seeded generator with documented calibration.

No public study-level dataset of alliance-outcome correlations exists, so the pipeline ships a
simulated one whose *structure* is calibrated to the published three-level meta-analysis of
Flückiger, Del Re, Wampold & Horvath (2018), *Psychotherapy* 55(4), 316-340:

- 295 independent studies, some contributing several effect sizes (``study_id`` groups them);
- a per-study sample size drawn so that the total N exceeds 30,000 (the paper: > 30,000 patients);
- a true mean correlation of about .28 averaged over the moderator mix (the paper: r = .278, 95% CI [.256, .299]);
- heterogeneity realistic for this literature: between-study SD 0.10 and within-study SD 0.05 on
  the Fisher-z scale (the paper reports substantial heterogeneity, I^2 around 50%);
- moderators coded in this literature: alliance rater (client/therapist/observer), measure (WAI,
  CALPAS, HAq, other), timing (early/mid/late), treatment (CBT, psychodynamic, humanistic, other),
  format (face-to-face, internet), population (adult, youth, couple/family) and publication year,
  with small true moderator effects written to the truth file;
- no selective publication is simulated: publication-bias methods should find little.

Every value is simulated. The data are labelled SYNTHETIC in their file name, in data/raw/README.md
and in every report caption; they must never be cited as evidence about the alliance.

Regenerate the bundled file byte for byte with::

    python -m alliancemeta.studies.synthetic --seed 20261121 --out data/raw/alliance_synthetic.csv
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

SEED = 20261121
N_STUDIES = 295

#: Calibration targets (Fisher-z scale unless stated); written next to the data as the truth file.
TRUTH = {
    "mu_r": 0.28,
    "sigma_study": 0.10,
    "sigma_within": 0.05,
    "effects": {
        # shifts of the true Fisher-z effect relative to the reference level of each moderator
        "rater": {"client": 0.0, "therapist": -0.04, "observer": -0.02},
        "measure": {"WAI": 0.0, "CALPAS": 0.01, "HAq": 0.02, "other": -0.02},
        "timing": {"early": 0.0, "mid": 0.01, "late": 0.03},
        "treatment": {"CBT": 0.0, "psychodynamic": 0.0, "humanistic": 0.0, "other": 0.0},
        "format": {"face-to-face": 0.0, "internet": 0.0},
        "population": {"adult": 0.0, "youth": -0.05, "couple/family": -0.02},
        "year_per_decade": 0.0,
    },
    "shares": {
        "rater": {"client": 0.6, "therapist": 0.2, "observer": 0.2},
        "measure": {"WAI": 0.55, "CALPAS": 0.15, "HAq": 0.15, "other": 0.15},
        "timing": {"early": 0.5, "mid": 0.3, "late": 0.2},
        "treatment": {"CBT": 0.4, "psychodynamic": 0.25, "humanistic": 0.15, "other": 0.2},
        "format": {"face-to-face": 0.85, "internet": 0.15},
        "population": {"adult": 0.75, "youth": 0.15, "couple/family": 0.1},
    },
    "effects_per_study": "1 + Poisson(0.35), at most 4",
    "n_per_study": "round(lognormal(log 75, 0.75)), clipped to [15, 1500]",
    "year": "uniform integer 1978-2017",
    "r_rounding": "2 decimals, as most primary studies report",
    "selection": "none",
}


def _choice(rng: np.random.Generator, shares: dict[str, float], size: int) -> np.ndarray:
    levels = list(shares)
    return rng.choice(levels, size=size, p=np.array([shares[lv] for lv in levels]))


def intercept_z() -> float:
    """True Fisher-z effect at the reference levels, chosen so that the share-weighted average
    true effect over all moderator levels equals atanh(mu_r)."""
    shares, effects = TRUTH["shares"], TRUTH["effects"]
    mean_shift = sum(shares[name][lv] * effects[name][lv] for name in shares for lv in shares[name])
    return float(np.arctanh(TRUTH["mu_r"]) - mean_shift)


def simulate_studies(seed: int = SEED, n_studies: int = N_STUDIES) -> tuple[pd.DataFrame, dict]:
    """Simulate the SYNTHETIC study-level dataset.

    Model (Fisher-z scale), for effect size j in study i:

    .. math::

        \\theta_{ij} = \\beta_0 + x_{ij}'\\delta + u_i + w_{ij}, \\quad
        u_i \\sim N(0, 0.10^2), \\; w_{ij} \\sim N(0, 0.05^2)

        z_{ij} \\sim N(\\theta_{ij}, 1/(n_i - 3)), \\quad r_{ij} = \\tanh(z_{ij}) \\text{ rounded to 2 decimals}

    where :math:`\\beta_0` (:func:`intercept_z`) makes the average true effect atanh(.28).

    Returns
    -------
    (DataFrame, dict)
        Columns ``study, study_id, r, n, year, rater, measure, timing, treatment, format,
        population`` and the truth dictionary (the calibration targets plus realised totals).
    """
    rng = np.random.default_rng(seed)
    shares, effects = TRUTH["shares"], TRUTH["effects"]
    n_es = np.minimum(1 + rng.poisson(0.35, n_studies), 4)
    n_study = np.clip(np.round(rng.lognormal(np.log(75), 0.75, n_studies)), 15, 1500).astype(int)
    year = rng.integers(1978, 2018, n_studies)
    study_level = {name: _choice(rng, shares[name], n_studies) for name in ("treatment", "format", "population")}
    u = rng.normal(0.0, TRUTH["sigma_study"], n_studies)

    sid = np.repeat(np.arange(n_studies), n_es)
    k = sid.size
    rows = {
        "study_id": np.array([f"S{i + 1:03d}" for i in sid]),
        "n": n_study[sid],
        "year": year[sid],
        # rater, measure and timing vary between the effect sizes of one study
        "rater": _choice(rng, shares["rater"], k),
        "measure": _choice(rng, shares["measure"], k),
        "timing": _choice(rng, shares["timing"], k),
    }
    for name, values in study_level.items():
        rows[name] = values[sid]
    theta = np.full(k, intercept_z()) + u[sid] + rng.normal(0.0, TRUTH["sigma_within"], k)
    for name in ("rater", "measure", "timing", "treatment", "format", "population"):
        theta += np.vectorize(effects[name].get)(rows[name])
    z = rng.normal(theta, 1.0 / np.sqrt(rows["n"] - 3.0))
    rows["r"] = np.round(np.tanh(z), 2)

    suffix = np.concatenate([np.arange(m) for m in n_es])
    letters = np.array(list("abcd"))
    labels = [
        f"Synthetic {s}" if m == 1 else f"Synthetic {s}{letters[j]}"
        for s, m, j in zip(rows["study_id"], n_es[sid], suffix, strict=True)
    ]
    frame = pd.DataFrame({"study": labels, **rows})
    frame = frame[
        ["study", "study_id", "r", "n", "year", "rater", "measure", "timing", "treatment", "format", "population"]
    ]
    truth = {
        "generator": "alliancemeta.studies.synthetic.simulate_studies",
        "seed": seed,
        "synthetic": True,
        **TRUTH,
        "intercept_z": intercept_z(),
        "realised": {
            "n_studies": int(n_studies),
            "k_effect_sizes": int(k),
            "total_N": int(n_study.sum()),
        },
    }
    return frame, truth


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the SYNTHETIC study-level alliance dataset.")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--out", type=Path, default=Path("data/raw/alliance_synthetic.csv"))
    args = parser.parse_args(argv)
    frame, truth = simulate_studies(args.seed)
    frame.to_csv(args.out, index=False, lineterminator="\n")
    args.out.with_suffix(".truth.json").write_text(json.dumps(truth, indent=2) + "\n")


if __name__ == "__main__":
    main()
