"""Two runs' criteria tables side by side (fp32 and bf16 of the same job, benchmarks/precision.sh).

A run is robust to the number format when every criterion has the same status in both, and each
run's number lies inside the other run's 95% CI. Prints one line per criterion and a verdict;
exits 1 when a check fails, so a script can tell.

Usage: python benchmarks/precision_compare.py A/summary.json B/summary.json [--names fp32 bf16]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def rows(summary: dict) -> dict[tuple[str, str], dict]:
    """Every criterion keyed by (section, criterion); a repeated criterion gets its index."""
    out: dict[tuple[str, str], dict] = {}
    for section in summary["sections"]:
        for row in section["criteria"]:
            key = (section["name"], row["criterion"])
            if key in out:
                key = (section["name"], f"{row['criterion']} #{sum(k[0] == section['name'] for k in out)}")
            out[key] = row
    return out


def inside(x: float | None, row: dict) -> bool | None:
    """Whether x lies in row's CI; None where either side has no number or no CI."""
    low, high = row.get("ci_low"), row.get("ci_high")
    if x is None or low is None or high is None:
        return None
    return low <= x <= high


def _number(row: dict) -> str:
    if row.get("measured") is None:
        return "n/a"
    ci = f" [{row['ci_low']:.3f}, {row['ci_high']:.3f}]" if row.get("ci_low") is not None else ""
    return f"{row['measured']:.3f}{ci}"


def compare(a: dict, b: dict, names: tuple[str, str]) -> tuple[list[str], int]:
    """Lines of the side-by-side table and the number of failed checks."""
    ra, rb = rows(a), rows(b)
    lines = [f"| section | criterion | {names[0]} | {names[1]} | same status | each inside the other's CI |"]
    lines.append("|---|---|---|---|---|---|")
    failed = 0
    for key in list(ra) + [k for k in rb if k not in ra]:
        x, y = ra.get(key), rb.get(key)
        if x is None or y is None:
            failed += 1
            lines.append(
                f"| {key[0]} | {key[1]} | {'missing' if x is None else x['status']} | "
                f"{'missing' if y is None else y['status']} | no | - |"
            )
            continue
        same = x["status"] == y["status"]
        crossed = [inside(x.get("measured"), y), inside(y.get("measured"), x)]
        ci_ok = None if None in crossed else all(crossed)
        failed += (not same) + (ci_ok is False)
        lines.append(
            f"| {key[0]} | {key[1]} | {x['status']}: {_number(x)} | {y['status']}: {_number(y)} | "
            f"{'yes' if same else 'NO'} | {'-' if ci_ok is None else 'yes' if ci_ok else 'NO'} |"
        )
    return lines, failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--names", nargs=2, default=("fp32", "bf16"))
    args = parser.parse_args()
    lines, failed = compare(json.loads(args.a.read_text()), json.loads(args.b.read_text()), tuple(args.names))
    print("\n".join(lines))
    print(
        f"\n{'robust' if not failed else f'NOT robust: {failed} failed checks'} "
        f"({len(lines) - 2} criteria; '-': a side has no CI)"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
