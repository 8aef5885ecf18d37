"""Command line: ``alliancemeta validate PATH --kind studies|sessions`` and ``alliancemeta config-reference``.

A student can check a file before running anything (the messages are the pipeline's own) and print every
configuration key with its default and meaning, read from the schema (config/README.md holds that table).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from alliancemeta.core.errors import InputError
from alliancemeta.core.inputs import read_sessions, read_studies, read_table


def _validate(args: argparse.Namespace) -> int:
    try:
        if args.kind == "studies":
            frame = read_studies(args.path, args.columns)
            notes = read_table(args.path).notes
            summary = f"{len(frame)} effect sizes"
            if "study_id" in frame:
                summary += f" in {frame['study_id'].nunique()} studies"
        else:
            data = read_sessions(args.path, args.columns)
            frame, notes = data.frame, data.notes
            summary = f"{len(frame)} client-sessions from {frame['client'].nunique()} clients"
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for note in notes:
        print(f"note: {note}")
    print(f"ok: {args.path}: {summary}")
    return 0


def _where(results: Path) -> int:
    """List the headline summary, the report and each dataset's folders; non-zero when the run left none."""
    summary, report = results / "summary.md", results / "report.html"
    if not summary.exists():
        print(f"no results yet in {results}/: run `make run`", file=sys.stderr)
        return 1
    print("\nalliancemeta results:")
    print(f"  headline findings  {summary}")
    if report.exists():
        print(f"  report             {report}  (open it in a browser)")
    for kind in ("studies", "sessions"):
        for folder in sorted((results / kind).glob("*")):
            if folder.is_dir():
                label = "session dataset" if kind == "sessions" else "study dataset"
                print(f"  {label:<18} {folder}/  "
                      "(report/summary.md, tables/, figures/)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="alliancemeta", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    val = sub.add_parser("validate", help="check an input table and print any problem with its line and column")
    val.add_argument("path")
    val.add_argument("--kind", choices=("studies", "sessions"), required=True)
    val.add_argument(
        "--columns", nargs="*", default=[], metavar="COL",
        help="moderator (studies) or grouping (sessions) columns that the config will name",
    )
    sub.add_parser("config-reference", help="print every config key with its default and meaning (Markdown)")
    where = sub.add_parser("where", help="print where the summary, the report and each dataset's results are")
    where.add_argument("--results", default="results", help="the results folder (default: %(default)s)")
    ver = sub.add_parser("verify", help="rerun the pipeline in a temporary folder, print every output that differs")
    ver.add_argument("--results", default="results", help="the results to compare (default: %(default)s)")
    ver.add_argument("--configfile", nargs="*", default=["config/config.yaml"], help="config files of the run")
    ver.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    if args.command == "verify":
        from alliancemeta.report.verify import verify

        snakemake = str(Path(sys.executable).with_name("snakemake"))
        return verify(Path.cwd(), Path(args.results), [Path(c) for c in args.configfile], snakemake, args.keep)
    if args.command == "where":
        return _where(Path(args.results))
    if args.command == "config-reference":
        from alliancemeta.core.settings import config_reference

        print(config_reference(), end="")
        return 0
    return _validate(args)


if __name__ == "__main__":
    sys.exit(main())
