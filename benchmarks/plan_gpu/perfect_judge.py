"""Between the trait judgements and what reads them, the random judge's scores become a perfect
judge's: trait 100 for an answer under the positive instruction and 0 under the negative one,
coherence 100, all on numbers only.

Why: a random-weight judge gives every answer nearly the same score (about 4.3 for every pair of a
trait, within 0.1), so the plan's judge filter (positive >= 50, negative below, both coherent)
keeps no pair, and the trait vectors, and everything after them, fail. What a judgement costs is
the same whatever it says; with these scores the filter keeps every pair, as on a good judge.
plan_gpu.sh runs it once every judgements.parquet of the call is written.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from traitscope.io import write_parquet


def rewrite(path: Path) -> int:
    """Rewrite one trait's judgements in place; rows rewritten."""
    table = pd.read_parquet(path)
    if "trait_score" in table:
        table["trait_score"] = table["label"].map({1: 100.0, 0: 0.0})
        table["trait_mass"] = 1.0
    if "coherence_score" in table:
        table["coherence_score"] = 100.0
        table["coherence_mass"] = 1.0
    write_parquet(path, table)
    return len(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traits", type=Path, default=Path("results/traits"))
    args = parser.parse_args()
    paths = sorted(args.traits.glob("*/*/*/judgements.parquet"))
    rows = sum(rewrite(p) for p in paths)
    print(f"perfect judge: {rows} judgements in {len(paths)} files")


if __name__ == "__main__":
    main()
