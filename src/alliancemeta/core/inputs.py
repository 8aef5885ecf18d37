"""Reading and validating input tables, with messages that name file, line, column, value and expectation.

Every problem is reported the way SPEC §7 asks, for example::

    data/raw/x.csv line 12, column r: 1.7 is outside [-1, 1]

Line numbers are those a text editor shows (the header is line 1; quoted fields that span lines
are counted correctly because the file is parsed with :mod:`csv`, which tracks physical lines).
A UTF-8 byte-order mark and Windows line endings are accepted; semicolon-delimited files and
decimal commas are detected and explained rather than misread.
"""

from __future__ import annotations

import csv
import difflib
import io
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from alliancemeta.core.effects import escalc_cor
from alliancemeta.core.errors import InputError

STUDY_REQUIRED = ("study",)
SESSION_REQUIRED = ("client", "session", "alliance", "outcome")
_DECIMAL_COMMA = re.compile(r"^\s*[-+]?\d+,\d+\s*$")


@dataclass(frozen=True)
class Table:
    """A parsed CSV: string cells, the editor line of each data row, and the file's display name."""

    path: str
    columns: list[str]
    cells: pd.DataFrame  # all values as stripped strings; "" for blank
    lines: np.ndarray  # editor line number of each row
    notes: list[str] = field(default_factory=list)  # accepted-but-noteworthy facts (BOM, CRLF)

    def where(self, row: int, column: str) -> str:
        return f"{self.path} line {int(self.lines[row])}, column {column}"


def _display(path: str | os.PathLike) -> str:
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def read_table(path: str | os.PathLike) -> Table:
    """Parse a CSV file into strings, keeping the editor line number of every row."""
    name = _display(path)
    p = Path(path)
    if not p.exists():
        raise InputError(f"{name}: file does not exist")
    raw = p.read_bytes()
    notes = []
    if raw.startswith(b"\xef\xbb\xbf"):
        notes.append("UTF-8 byte-order mark removed")
    if b"\r\n" in raw:
        notes.append("Windows line endings accepted")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise InputError(f"{name} line {line}: the file is not UTF-8 text (save it as UTF-8 CSV)") from None
    if not text.strip():
        raise InputError(f"{name}: the file is empty; expected a header line and at least one data row")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except csv.Error as err:
        raise InputError(f"{name} line 1: cannot parse the header ({err})") from None
    header = [h.strip() for h in header]
    if len(header) == 1 and header[0].count(";") >= 1:
        raise InputError(
            f"{name} line 1: the file looks semicolon-delimited (header {header[0]!r}); "
            "save it as comma-separated CSV with '.' as the decimal separator"
        )
    for i, h in enumerate(header):
        if not h:
            raise InputError(f"{name} line 1, column {i + 1}: empty column name; expected a name for every column")
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise InputError(f"{name} line 1: column {dupes[0]!r} appears more than once; expected unique names")
    rows, lines = [], []
    prev_end = reader.line_num
    try:
        for record in reader:
            start = prev_end + 1
            prev_end = reader.line_num
            if not record or all(not c.strip() for c in record):
                continue  # blank line
            if len(record) != len(header):
                hint = ""
                if len(record) > len(header) and any(_DECIMAL_COMMA.match(",".join(record[j : j + 2]))
                                                     for j in range(len(record) - 1)):
                    hint = "; decimal commas split numbers into two fields: use '.' as the decimal separator"
                raise InputError(
                    f"{name} line {start}: {len(record)} fields, but the header has {len(header)}{hint}"
                )
            rows.append([c.strip() for c in record])
            lines.append(start)
    except csv.Error as err:
        raise InputError(f"{name} line {reader.line_num}: cannot parse the row ({err})") from None
    if not rows:
        raise InputError(f"{name}: the file has a header but no data rows; expected at least one row")
    cells = pd.DataFrame(rows, columns=header, dtype=object)
    return Table(name, header, cells, np.asarray(lines), notes)


def _did_you_mean(missing: str, present: Iterable[str]) -> str:
    close = difflib.get_close_matches(missing, list(present), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _require_columns(table: Table, required: Sequence[str], what: str) -> None:
    for col in required:
        if col not in table.columns:
            raise InputError(
                f"{table.path} line 1: required column {col!r} is missing{_did_you_mean(col, table.columns)}; "
                f"{what}"
            )


def _numeric(table: Table, col: str, *, allow_blank: bool = False) -> np.ndarray:
    values = table.cells[col].astype(str)
    blank = values.eq("") | values.str.lower().isin(["na", "nan", "null"])
    numbers = pd.to_numeric(values.where(~blank, None), errors="coerce").to_numpy(dtype=float)
    bad = np.flatnonzero(~blank.to_numpy() & ~np.isfinite(numbers))
    if bad.size:
        i = bad[0]
        value = values.iloc[i]
        if _DECIMAL_COMMA.match(value):
            raise InputError(f"{table.where(i, col)}: {value!r} uses a decimal comma; expected '.' as separator")
        raise InputError(f"{table.where(i, col)}: {value!r} is not a number; expected a finite number")
    if not allow_blank and blank.any():
        i = int(np.flatnonzero(blank.to_numpy())[0])
        raise InputError(f"{table.where(i, col)}: value is blank; expected a number")
    return numbers


def _integer(table: Table, col: str, minimum: int, *, allow_blank: bool = False) -> np.ndarray:
    x = _numeric(table, col, allow_blank=allow_blank)
    finite = np.isfinite(x)
    bad = np.flatnonzero(finite & (x != np.round(x)))
    if bad.size:
        i = bad[0]
        raise InputError(f"{table.where(i, col)}: {table.cells[col].iloc[i]} is not a whole number; "
                         f"expected an integer >= {minimum}")
    bad = np.flatnonzero(finite & (x < minimum))
    if bad.size:
        i = bad[0]
        raise InputError(f"{table.where(i, col)}: {table.cells[col].iloc[i]} is below {minimum}; "
                         f"expected an integer >= {minimum}")
    return x


def _labels(table: Table, col: str, *, unique: bool = False) -> pd.Series:
    values = table.cells[col].astype(str)
    blank = np.flatnonzero(values.eq("").to_numpy())
    if blank.size:
        raise InputError(f"{table.where(blank[0], col)}: value is blank; expected a non-empty label")
    if unique:
        dup = values.duplicated(keep="first").to_numpy()
        if dup.any():
            i = int(np.flatnonzero(dup)[0])
            first = int(np.flatnonzero(values.eq(values.iloc[i]).to_numpy())[0])
            raise InputError(
                f"{table.where(i, col)}: {values.iloc[i]!r} repeats the label on line {int(table.lines[first])}; "
                "expected a unique label per row"
            )
    return values


# --------------------------------------------------------------------------------------------------
# study-level tables
# --------------------------------------------------------------------------------------------------


def read_studies(path: str | os.PathLike, moderators: Sequence[str] = ()) -> pd.DataFrame:
    """Read and validate a study-level table; return it with Fisher-z ``yi`` and ``vi`` added.

    Effect sizes come from ``r`` and ``n`` (yi = atanh(r), vi = 1/(n - 3)) or, when both columns
    are present, directly from ``yi`` and ``vi``.  The returned frame has columns ``study, yi, vi``,
    then ``study_id, year, r, n`` where given, then the requested moderators (blank -> missing).
    """
    table = read_table(path)
    _require_columns(table, STUDY_REQUIRED, "expected one row per effect size with a 'study' label")
    has_r = {"r", "n"} <= set(table.columns)
    has_yi = {"yi", "vi"} <= set(table.columns)
    if not (has_r or has_yi):
        wanted = "r" if "r" not in table.columns else "n"
        if "yi" in table.columns or "vi" in table.columns:
            wanted = "vi" if "yi" in table.columns else "yi"
        raise InputError(
            f"{table.path} line 1: required column {wanted!r} is missing{_did_you_mean(wanted, table.columns)}; "
            "expected columns r and n (correlation, sample size) or yi and vi (Fisher z and its variance)"
        )
    for mod in moderators:
        if mod not in table.columns:
            raise InputError(
                f"{table.path} line 1: moderator column {mod!r} named in the config is missing"
                f"{_did_you_mean(mod, table.columns)}"
            )
    out = pd.DataFrame({"study": _labels(table, "study", unique=True).to_numpy()})
    if has_r:
        r = _numeric(table, "r")
        bad = np.flatnonzero(np.abs(r) > 1)
        if bad.size:
            i = bad[0]
            raise InputError(f"{table.where(i, 'r')}: {table.cells['r'].iloc[i]} is outside [-1, 1]")
        bad = np.flatnonzero(np.abs(r) == 1)
        if bad.size:
            i = bad[0]
            raise InputError(
                f"{table.where(i, 'r')}: {table.cells['r'].iloc[i]} is exactly ±1, where Fisher's z is infinite; "
                "expected a correlation strictly between -1 and 1"
            )
        n = _integer(table, "n", 4)
    if has_yi:
        yi = _numeric(table, "yi")
        vi = _numeric(table, "vi")
        bad = np.flatnonzero(vi <= 0)
        if bad.size:
            i = bad[0]
            raise InputError(f"{table.where(i, 'vi')}: {table.cells['vi'].iloc[i]} is not > 0; "
                             "expected a positive sampling variance")
    else:
        es = escalc_cor(r, n, "ZCOR")
        yi, vi = es.yi, es.vi
    out["yi"] = yi
    out["vi"] = vi
    if "study_id" in table.columns:
        out["study_id"] = _labels(table, "study_id").to_numpy()
    if "year" in table.columns:
        year = _integer(table, "year", 1800, allow_blank=True)
        out["year"] = pd.Series(year).astype("Int64").to_numpy()
    if has_r:
        out["r"] = r
        out["n"] = n.astype(int)
    for mod in moderators:
        if mod in ("year",):
            continue
        values = table.cells[mod].astype(str)
        numbers = pd.to_numeric(values.where(values.ne(""), None), errors="coerce")
        if numbers.notna().sum() == values.ne("").sum():
            out[mod] = numbers.to_numpy(dtype=float)  # numeric moderator (blank -> NaN)
        else:
            out[mod] = values.where(values.ne(""), None).to_numpy(dtype=object)
    return out


# --------------------------------------------------------------------------------------------------
# session-level tables
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionData:
    frame: pd.DataFrame
    notes: list[str]


def read_sessions(path: str | os.PathLike, groups: Sequence[str] = ()) -> SessionData:
    """Read and validate a long-format session table (one row per client-session).

    Checks: required columns present; ``session`` an integer >= 1; ``alliance``, ``outcome`` and
    the Bordin subscales finite numbers or blank (a blank, ``NA`` or ``NaN`` cell is a missing
    measurement: the row stays, so the session still counts in the session numbering and lags do
    not bridge it); anything else in those columns is an error naming file, line and column;
    labels non-blank; no client-session pair twice; each client within a single therapist, site
    and case (clients are nested).  Clients observed in one session only are kept (they inform
    between-client effects); they and the numbers of blank cells are listed in the returned notes.
    """
    table = read_table(path)
    _require_columns(
        table, SESSION_REQUIRED, "expected long format: one row per client-session with client, session, "
        "alliance, outcome"
    )
    for g in groups:
        if g not in table.columns:
            raise InputError(
                f"{table.path} line 1: grouping column {g!r} named in the config is missing"
                f"{_did_you_mean(g, table.columns)}"
            )
    frame = pd.DataFrame({"client": _labels(table, "client").to_numpy()})
    frame["session"] = _integer(table, "session", 1).astype(int)
    for col in ("alliance", "outcome"):
        frame[col] = _numeric(table, col, allow_blank=True)
    for col in ("therapist", "site", "case"):
        if col in table.columns:
            frame[col] = _labels(table, col).to_numpy()
    for col in ("alliance_goal", "alliance_task", "alliance_bond"):
        if col in table.columns:
            frame[col] = _numeric(table, col, allow_blank=True)
    for col in table.columns:
        if col not in frame.columns:
            values = table.cells[col].astype(str)
            frame[col] = values.where(values.ne(""), None).to_numpy(dtype=object)
    dup = frame.duplicated(["client", "session"], keep="first").to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        same = (frame["client"] == frame["client"].iloc[i]) & (frame["session"] == frame["session"].iloc[i])
        first = int(np.flatnonzero(same.to_numpy())[0])
        raise InputError(
            f"{table.where(i, 'session')}: client {frame['client'].iloc[i]!r} session {frame['session'].iloc[i]} "
            f"repeats line {int(table.lines[first])}; expected one row per client-session"
        )
    for level in ("therapist", "site", "case"):
        if level in frame.columns:
            n_levels = frame.groupby("client")[level].nunique()
            crossed = n_levels[n_levels > 1]
            if len(crossed):
                client = crossed.index[0]
                rows = np.flatnonzero((frame["client"] == client).to_numpy())
                first_value = frame[level].iloc[rows[0]]
                i = next(r for r in rows if frame[level].iloc[r] != first_value)
                raise InputError(
                    f"{table.where(i, level)}: client {client!r} appears under {level} {frame[level].iloc[i]!r} "
                    f"and {first_value!r}; expected each client nested in one {level}"
                )
    notes = list(table.notes)
    for col in ("alliance", "outcome"):
        n_blank = int(frame[col].isna().sum())
        if n_blank:
            first = int(np.flatnonzero(frame[col].isna().to_numpy())[0])
            notes.append(f"{n_blank} blank {col} cell(s) (first on line {int(table.lines[first])}) are missing "
                         "measurements: the rows stay, models use the complete cases they need")
    counts = frame.groupby("client")["session"].size()
    single = counts[counts == 1]
    if len(single):
        notes.append(
            f"{len(single)} client(s) with a single session (e.g. {single.index[0]!r}) are kept for "
            "between-client effects but carry no within-client information"
        )
    return SessionData(frame.sort_values(["client", "session"], kind="stable").reset_index(drop=True), notes)


