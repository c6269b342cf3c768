"""What every criterion shares: the statuses and how a CI decides one, the judge gate, a row,
a result file.

The core's trait criteria, every experiment plug-in's `criteria` and the table's rendering all
read these, so a status rule is defined once; each experiment keeps its own thresholds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traitscope.errors import TraitscopeError

MET, NOT_MET, INCONCLUSIVE = "met", "not met", "inconclusive"
NOT_RUN, NOT_MEASURED, NOT_MEASURABLE = "not run", "not measured", "not measurable"

# What each status means (summary.json, the tables' legend): a status is read off the 95% CI,
# never off the point estimate alone, so that a second run (another seed, another number
# format) cannot turn "met" into "not met" while both CIs straddle the line.
STATUSES = {
    MET: "the 95% CI lies entirely on the passing side of the threshold",
    NOT_MET: "the 95% CI lies entirely on the failing side of the threshold",
    INCONCLUSIVE: "the 95% CI straddles the threshold, or the number has no CI (the detail says why)",
    NOT_MEASURABLE: "the number rests on a judge whose agreement with the truth (AUC, CI low) is under "
    "the gate for this trait, or on judge scores no truth set checks (the detail says which)",
    NOT_RUN: "the experiment is not enabled in this config",
    NOT_MEASURED: "the run computes no number for it (the detail says why)",
}
JUDGE_GATE = 0.7  # a judge-based row needs the judge's agreement AUC CI low >= this


@dataclass
class Criterion:
    """One row: what the plan asks, what the run measured, and whether it passes."""

    criterion: str
    status: str
    measured: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    n: str | None = None
    detail: str = ""


class Result:
    """A result JSON read once; `get` names the file and the missing field on a bad key."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.data = json.loads(self.path.read_text())
        except FileNotFoundError:
            raise TraitscopeError(f"{self.path}: no such file; run the experiment first") from None
        except json.JSONDecodeError as exc:
            raise TraitscopeError(f"{self.path}: not JSON ({exc}); rerun the rule that writes it") from None

    def get(self, *keys: str) -> Any:
        node = self.data
        for i, key in enumerate(keys):
            if not isinstance(node, dict) or key not in node:
                field = ".".join(keys[: i + 1])
                raise TraitscopeError(
                    f"{self.path}: missing field {field!r}; rerun the rule that writes it with this version"
                )
            node = node[key]
        return node


def above(low: float | None, high: float | None, threshold: float, inclusive: bool = False) -> str:
    """Status of "measure > threshold", or of "measure >= threshold" when `inclusive`: met when
    every value in the CI passes, not met when every one fails. A CI touching the line passes a
    ">=" criterion and fails a ">" one there, as with `within`'s closed range."""
    if low is None or high is None:
        return INCONCLUSIVE
    if low > threshold or (inclusive and low == threshold):
        return MET
    if high < threshold or (not inclusive and high == threshold):
        return NOT_MET
    return INCONCLUSIVE


def any_above(cis: list[tuple[float | None, float | None]], threshold: float) -> str:
    """Status of "some measure > threshold" over several: met when one CI clears the line, not
    met when every CI lies under it, else inconclusive."""
    statuses = [above(low, high, threshold) for low, high in cis]
    if MET in statuses:
        return MET
    return NOT_MET if statuses and all(s == NOT_MET for s in statuses) else INCONCLUSIVE


def all_of(statuses: list[str]) -> str:
    """Status of several requirements that must all hold: met when every one is met, not met
    when any one is not met (the rest cannot rescue it), else inconclusive."""
    if statuses and all(s == MET for s in statuses):
        return MET
    return NOT_MET if NOT_MET in statuses else INCONCLUSIVE


def within(low: float | None, high: float | None, lower: float, upper: float) -> str:
    """Status of "lower <= measure <= upper": met inside, not met when the CI misses the range."""
    if low is None or high is None:
        return INCONCLUSIVE
    if lower <= low and high <= upper:
        return MET
    if high < lower or low > upper:
        return NOT_MET
    return INCONCLUSIVE


def judge_gate(row: Criterion, trait: str, held_out: dict | None, truth: dict | None = None) -> Criterion:
    """A row whose number rests on judge scores: the judge's agreement beside it, and "not
    measurable" instead of a status where that agreement's CI low is under JUDGE_GATE.

    The gate reads the agreement on the written truth set where the trait has one (labelled by
    construction), the run's held-out answers' (labelled by the instruction a small model may
    not have followed) beside it; else the held-out one."""
    agreement, beside = (truth, held_out) if truth else (held_out, None)
    if not agreement or agreement.get("auc") is None:
        why = (agreement or {}).get("reason") or "no agreement measured"
        row.status, row.detail = NOT_MEASURABLE, f"{row.detail}; judge agreement for {trait}: {why}"
        return row
    low = agreement.get("ci_low")
    text = f"judge agreement AUC for {trait}{_on(agreement)} {_auc(agreement)}"
    if beside and beside.get("auc") is not None:
        text += f"; {_on(beside).strip()} {_auc(beside)}"
    if low is None or low < JUDGE_GATE:
        row.status = NOT_MEASURABLE
        row.detail = f"the judge cannot read {trait} ({text}, CI low under {JUDGE_GATE}); {row.detail}"
    else:
        row.detail = f"{row.detail}; {text}"
    return row


def _auc(agreement: dict) -> str:
    return f"{fmt(agreement['auc'])} [{fmt(agreement.get('ci_low'))}, {fmt(agreement.get('ci_high'))}]"


def _on(agreement: dict) -> str:
    """Which answers an agreement was measured on, as the gate's text names them."""
    return " on the truth set" if agreement.get("split") == "truth set" else " on held-out answers"


def fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def ci_of(entry: dict) -> tuple[float | None, float | None]:
    return entry.get("ci_low"), entry.get("ci_high")


def ci_with_draws(entry: dict) -> tuple[float | None, float | None]:
    """The CI a status reads: over the sample and the vector's refits where the run has them,
    never narrower than the sample's alone (a perfect separation resamples to [1, 1] over refits
    too, where the sample's AUC CI reaches its exact bound)."""
    over = entry.get("over_vector_draws")
    low, high = ci_of(entry)
    if not over:
        return low, high
    if low is None or over["ci_low"] is None:
        return over["ci_low"], over["ci_high"]
    return min(low, over["ci_low"]), max(high, over["ci_high"])
