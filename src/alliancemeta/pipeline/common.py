"""What every stage of the pipeline shares: running a stage with clear errors, reading the processed tables."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from alliancemeta.core.errors import AllianceMetaError


def read_studies_table(path: str | os.PathLike) -> pd.DataFrame:
    """A processed study table (``study, yi, vi`` [+ ``year`` ...]) with its effect columns checked."""
    frame = pd.read_csv(path)
    missing = [c for c in ("study", "yi", "vi") if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: processed study table lacks column(s) {', '.join(missing)}")
    return frame


def year_of(frame: pd.DataFrame):
    """The ``year`` column as floats when present and not entirely missing, else None."""
    if "year" not in frame.columns or frame["year"].isna().all():
        return None
    return frame["year"].to_numpy(dtype=float)



def run_stage(rule: str, log: str | os.PathLike, function: Callable, *args, **kwargs) -> None:
    """Run one rule's package function with its stderr in ``log``; failures end in one clear message.

    An expected failure (:class:`~alliancemeta.core.errors.AllianceMetaError`: bad input, a model that
    cannot be fitted, MCMC that did not converge) prints its message, which names the model and what to
    try, and exits with status 1, so Snakemake removes the rule's outputs.  Anything else is a defect of
    the package: the message says so and the traceback goes to ``<log>.traceback`` for a bug report,
    never to the console.
    """
    sys.stderr = open(log, "w", buffering=1)  # the log stays open for the whole job
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s",
                        force=True)
    try:
        function(*args, **kwargs)
    except AllianceMetaError as err:
        print(f"alliancemeta: rule {rule} failed: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except Exception as err:  # a defect: keep the traceback for the report, give the user one line
        trace = Path(f"{log}.traceback")
        trace.write_text(traceback.format_exc())
        print(f"alliancemeta: rule {rule} failed with an internal error ({type(err).__name__}: {err}); "
              f"please report it with {trace}", file=sys.stderr)
        raise SystemExit(1) from None
