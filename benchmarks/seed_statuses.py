"""How often each criterion's status holds over sampling seeds: the criteria of several main-job
runs that differ only in a seed (benchmarks/seed_statuses.sh), side by side, with the count of
runs per status.

A status near its threshold is one draw of the sampled answers (docs/results.md); this table says
which rows a different draw would flip.

    python benchmarks/seed_statuses.py SEED=SUMMARY.json [SEED=SUMMARY.json ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from precision_compare import _number, rows  # noqa: E402


def cell(row: dict | None) -> str:
    return "-" if row is None else f"{row['status']}: {_number(row)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="LABEL=path/to/summary.json, one per seed")
    args = parser.parse_args()
    runs = {
        label: rows(json.loads(Path(path).read_text()))
        for label, path in (r.split("=", 1) for r in args.runs)
    }
    keys = list(dict.fromkeys(k for run in runs.values() for k in run))
    print("| experiment | criterion | " + " | ".join(runs) + " | statuses |")
    print("|---|---|" + "---|" * (len(runs) + 1))
    flips = 0
    for key in keys:
        statuses = Counter(run[key]["status"] if key in run else "missing" for run in runs.values())
        flips += len(statuses) > 1
        counts = ", ".join(f"{s} {n}" for s, n in statuses.most_common())
        cells = " | ".join(cell(run.get(key)) for run in runs.values())
        print(f"| {key[0]} | {key[1]} | {cells} | {counts} |")
    print(f"\n{flips} of {len(keys)} criteria change status between the {len(runs)} runs")


if __name__ == "__main__":
    main()
