"""The table's sections and `summarize`: every experiment's criteria, written as summary files.

A section lists its planned criteria as `not run` when its experiment is off, so the table
always shows the whole plan; `summarize` reads the enabled experiments' results once and
writes summary.json, summary.md and summary.html.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from traitscope.errors import TraitscopeError
from traitscope.io import atomic_path, write_json
from traitscope.summary.effects import cmaes_criteria, em_criteria, prefill_criteria
from traitscope.summary.records import (
    AUC_MIN,
    CMAES_GAIN_MIN,
    COSINE_RANGE,
    EM_ALPHA,
    EM_D_MIN,
    MET,
    NOT_RUN,
    PREFILL_D_MIN,
    STATUSES,
    Criterion,
    Result,
)
from traitscope.summary.separation import backdoor_criteria, external_criteria, trait_criteria
from traitscope.summary.tables import html_table, markdown_table

# name -> (title, the criteria listed when the experiment did not run)
SECTIONS: dict[str, tuple[str, list[str]]] = {
    "traits": (
        "Trait vectors (extraction check)",
        ["split-half (out-of-sample) AUC >= extraction.auc_threshold"],
    ),
    "external": (
        "External datasets",
        [f"ROC-AUC > {AUC_MIN}", "harm-severity correlation"],
    ),
    "prefill": ("Prefill attack", [f"C2 > C4 on the prefill tokens, Cohen's d > {PREFILL_D_MIN}"]),
    "emergent_misalignment": (
        "Emergent misalignment",
        [f">= 1 trait elevated (Holm p < {EM_ALPHA})", f"d_z > {EM_D_MIN} on a safety trait"],
    ),
    "backdoor": ("Backdoor detection", [f"ROC-AUC > {AUC_MIN}", "signal before the first generated token"]),
    "steering_optimisation": (
        "Steering optimisation (CMA-ES)",
        [f"steering delta > {1 + CMAES_GAIN_MIN:.1f} x mean_diff's", f"cosine in {list(COSINE_RANGE)}"],
    ),
}


def _overall(rows: list[Criterion]) -> str:
    statuses = {r.status for r in rows}
    if statuses == {NOT_RUN}:
        return NOT_RUN
    if statuses == {MET}:
        return MET
    counts = {s: sum(r.status == s for r in rows) for s in STATUSES}
    others = ", ".join(f"{n} {s}" for s, n in counts.items() if n and s != MET)
    return f"{counts[MET]} of {len(rows)} met ({others})"


def summarize(
    inputs: dict[str, str | None], out_json: str | Path, out_md: str | Path, out_html: str | Path
) -> dict:
    """Every section's criteria from the given result files (None: that experiment is off)."""
    readers: dict[str, Callable[[], list[Criterion]]] = {
        "traits": lambda: trait_criteria(results["traits"]),
        "external": lambda: external_criteria(results.get("harmbench"), results.get("beavertails")),
        "prefill": lambda: prefill_criteria(results["prefill"]),
        "emergent_misalignment": lambda: em_criteria(results["emergent_misalignment"]),
        "backdoor": lambda: backdoor_criteria(results["backdoor"]),
        "steering_optimisation": lambda: cmaes_criteria(results["steering_optimisation"]),
    }
    results = {key: Result(path) for key, path in inputs.items() if path is not None}
    sections = []
    for name, (title, planned) in SECTIONS.items():
        keys = ("harmbench", "beavertails") if name == "external" else (name,)
        ran = any(k in results for k in keys)
        if not ran:
            rows = [Criterion(c, NOT_RUN, detail="experiment not enabled") for c in planned]
        else:
            try:
                rows = readers[name]()
            except (KeyError, TypeError) as exc:  # a field `Result.get` did not check
                files = ", ".join(str(results[k].path) for k in keys if k in results)
                raise TraitscopeError(
                    f"{files}: missing or malformed field {exc}; rerun the rule that writes it"
                ) from None
        sections.append(
            {
                "name": name,
                "title": title,
                "sources": [str(results[k].path) for k in keys if k in results],
                "status": _overall(rows),
                "criteria": [asdict(r) for r in rows],
            }
        )
    summary = {
        "what": "the plan's success criteria per experiment, each with the measured number, its 95% CI "
        "(where the result computes one) and n",
        "statuses": STATUSES,
        "em_null": "emergent misalignment is judged misaligned vs control finetune (a finetune on matched "
        "benign data), since finetuning alone shifts activations; misaligned vs base is shown beside it",
        "sections": sections,
    }
    write_json(out_json, summary)
    with atomic_path(out_md) as tmp:
        tmp.write_text(markdown_table(summary))
    with atomic_path(out_html) as tmp:
        tmp.write_text(html_table(summary))
    return summary
