"""GOSH figure: both layouts (points, binned) draw; PDF + PNG with identical bytes on a rerun."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest

from alliancemeta.plots import gosh as plot
from alliancemeta.studies.gosh import gosh


def simulated(k, seed=1):
    rng = np.random.default_rng(seed)
    n = rng.integers(20, 300, k)
    vi = 1.0 / (n - 3.0)
    return 0.25 + rng.normal(0, 0.1, k) + rng.normal(0, np.sqrt(vi)), vi


def test_gosh_figure_writes_reproducible_files(tmp_path):
    yi, vi = simulated(14)
    results = gosh(yi, vi, ("FE", "REML"), max_k=20, subsets=1_000_000)
    assert results[0].n_subsets > plot.SCATTER_MAX_POINTS  # binned
    files = []
    for run in range(2):
        pdf, png = tmp_path / f"gosh{run}.pdf", tmp_path / f"gosh{run}.png"
        plot.write_gosh_figure(results, pdf, png, dataset_label="toy — SYNTHETIC data")
        files.append((pdf.read_bytes(), png.read_bytes()))
    assert files[0] == files[1]
    assert files[0][0].startswith(b"%PDF") and files[0][1].startswith(b"\x89PNG")
    assert b"/Subtype /Image" in files[0][0]  # the dense layer is an image inside the vector PDF


@pytest.mark.parametrize(("k", "subsets", "binned"), [(8, 1000, False), (14, 6000, True)])
def test_gosh_figure_panels(k, subsets, binned):
    yi, vi = simulated(k)
    fig = plot.gosh_figure(gosh(yi, vi, ("FE", "DL"), max_k=10, subsets=subsets, seed=3), dataset_label="x")
    titles = [ax.get_title(loc="left") for ax in fig.axes]
    how = "all 255 subsets of k = 8" if k == 8 else "6,000 random subsets of k = 14"
    assert f"equal effects (FE)\n{how}" in "|".join(titles)
    assert any(t.startswith("random effects, DerSimonian-Laird") for t in titles)
    assert any(ax.get_ylabel() == "subsets per bin" for ax in fig.axes) is binned
    plt.close(fig)
