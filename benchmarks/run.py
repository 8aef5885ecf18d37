"""Run every benchmark script in this folder (bench_*.py) and print their tables (`make bench`)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    scripts = sorted(HERE.glob("bench_*.py"))
    only = set(sys.argv[1:])
    for script in scripts:
        if only and script.stem.removeprefix("bench_") not in only:
            continue
        print(f"\n# {script.stem}\n", flush=True)
        runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
