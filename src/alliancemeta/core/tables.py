"""Table writers: atomic CSV output with stable, byte-reproducible formatting.

Every writer goes through :func:`atomic_path`, so a failing job never leaves a half-written file
behind and an earlier good result is replaced only by a complete new one.
"""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pandas as pd

#: 17 significant digits round-trip IEEE doubles exactly, so tables compare bit for bit.
FLOAT_FORMAT = "%.17g"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    A process killed while writing (SIGKILL cannot be caught) leaves its temporary file behind; the next
    write of the same ``path`` removes such leftovers first, so a rerun leaves nothing stale.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_csv(frame: pd.DataFrame, path: str | os.PathLike, columns: Sequence[str] | None = None) -> None:
    """Write ``frame`` as CSV atomically, checking that it has exactly ``columns`` in that order."""
    if columns is not None:
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise ValueError(f"table for {path} lacks contract columns: {', '.join(missing)}")
        frame = frame.loc[:, list(columns)]
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format=FLOAT_FORMAT, lineterminator="\n")
