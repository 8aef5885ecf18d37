"""Progress logging of a background nutpie run (core.mcmc): it must never fail, whatever state the chains are in."""

from __future__ import annotations

import logging

import arviz as az
import numpy as np

from alliancemeta.core import mcmc


class FakeSampler:
    """Answers ``inspect`` with the given partial traces, one per poll, then reports itself finished."""

    def __init__(self, parts):
        self.parts = list(parts)
        self.polls = 0

    @property
    def is_finished(self):
        return self.polls >= len(self.parts)

    def inspect(self):
        part = self.parts[self.polls]
        self.polls += 1
        return part

    def wait(self):
        return "idata"


def test_progress_while_tuning_with_empty_and_partial_traces(monkeypatch, caplog):
    monkeypatch.setattr(mcmc, "PROGRESS_SECONDS", 0.0)
    monkeypatch.setattr(mcmc, "POLL_SECONDS", 0.0)
    tuning = az.from_dict(posterior={"mu": np.zeros((4, 0)), "missing": np.zeros((4, 0, 0))})
    empty_var = az.from_dict(posterior={"missing": np.zeros((4, 3, 0)), "mu": np.full((4, 3), np.nan)},
                             sample_stats={"diverging": np.zeros((4, 3), dtype=bool)})  # fmt: skip
    partial = np.full((4, 3), np.nan)
    partial[:2, :2] = 1.0
    running = az.from_dict(posterior={"mu": partial}, sample_stats={"diverging": np.zeros((4, 3), dtype=bool)})
    with caplog.at_level(logging.INFO, logger="alliancemeta.core.mcmc"):
        out = mcmc._wait_logging_progress(FakeSampler([tuning, empty_var, running]), draws=3, tune=5)
    assert out == "idata"
    text = caplog.text
    assert "chains tuning (5 steps each)" in text
    assert "chain 0: 2/3" in text and "chain 3: 0/3" in text
