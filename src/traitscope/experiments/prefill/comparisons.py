"""The prefill attack's condition comparisons: each condition's pooled scores with the request
they ask, C2 vs C4 and C1 vs C3 as two groups of requests, C1 vs C2 and the harmful x prefill
interaction paired by request (the same requests without and with the prefill)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as _sps

from traitscope.errors import TraitscopeError
from traitscope.stats import compare_groups, compare_paired, holm, within_interaction

COMPARISONS = {
    "C2_vs_C4": ("C2", "C4", "prefill_mean"),
    "C1_vs_C2": ("C1", "C2", "response_mean"),
    "C1_vs_C3": ("C1", "C3", "last_prompt"),
}
PAIRED = {"C1_vs_C2"}  # the same requests without and with the prefill


def chosen_rows(projections: pd.DataFrame) -> pd.DataFrame:
    table = projections[projections["chosen_layer"]]
    if table.empty:
        raise TraitscopeError("projections hold no row at a trait's chosen layer; rerun capture and project")
    return table


def pooled_scores(projections: pd.DataFrame, conditions: pd.DataFrame) -> pd.DataFrame:
    """One row per (prompt, trait, pooled position) at the chosen layer, with its condition and
    the request it asks (its prompt id without the condition and prefill: `conditions_2x2`)."""
    pooled = chosen_rows(projections)
    pooled = pooled[pooled["token_index"] == -1]
    pooled = pooled.merge(conditions[["prompt_id", "condition", "prefill_index"]], on="prompt_id")
    return pooled.assign(request=pooled["prompt_id"].str.replace(r"^C[1-4]:(p\d+:)?", "", regex=True))


def paired_by_request(rows: pd.DataFrame, without: str, with_: str) -> pd.DataFrame:
    """Each `with_` row (one per request and prefill) beside its request's `without` score."""
    plain = rows[rows["condition"] == without].set_index("request")["score"]
    prefilled = rows[rows["condition"] == with_]
    missing = sorted(set(prefilled["request"]) - set(plain.index))
    if missing:
        raise TraitscopeError(
            f"prefill conditions: {with_} asks request(s) {', '.join(missing[:3])} that {without} does not; "
            "rerun prefill_conditions"
        )
    return prefilled.assign(without=prefilled["request"].map(plain).to_numpy())


def compare_with_prefill(rows: pd.DataFrame, n_boot: int, seed: int) -> dict:
    """C1 vs C2 per request (d_z); with several prefills a request's pairs resample together.
    A few requests can leave d_z or its CI undefined (resamples of equal differences): then the
    entry says why, keeps the paired t on the requests' mean differences where it is defined,
    and takes p = 1 (no evidence) into Holm's family where it is not."""
    pairs = paired_by_request(rows, "C1", "C2")
    several = pairs["request"].duplicated().any()
    clusters = pairs["request"].to_numpy() if several else None
    try:
        compared = compare_paired(
            pairs["without"], pairs["score"], n_boot=n_boot, seed=seed, clusters=clusters
        )
    except ValueError as exc:
        means = (pairs["without"] - pairs["score"]).groupby(pairs["request"]).mean().to_numpy()
        with np.errstate(divide="ignore", invalid="ignore"):
            p_value = float(_sps.ttest_1samp(means, 0.0).pvalue) if len(means) > 1 else float("nan")
        compared = {
            "n_pairs": len(pairs),
            "mean_diff": float(means.mean()),
            "cohens_dz": None,
            "ci_low": None,
            "ci_high": None,
            "p_value": p_value if np.isfinite(p_value) else 1.0,
            "undefined": str(exc),
        }
    return {"paired_by": "request", **compared}


def prefill_interaction(rows: pd.DataFrame) -> dict:
    """Harmful x prefill on the response: each request's prefill effect (mean over prefills of
    prefilled - plain), harmful (C2 - C1) against benign (C4 - C3)."""
    effects = {}
    for name, (without, with_) in {"harmful": ("C1", "C2"), "benign": ("C3", "C4")}.items():
        pairs = paired_by_request(rows, without, with_)
        effects[name] = (pairs["score"] - pairs["without"]).groupby(pairs["request"]).mean().to_numpy()
    return {
        **within_interaction(effects["harmful"], effects["benign"]),
        "test": "Welch t of the per-request prefill effects, harmful (C2 - C1) vs benign (C4 - C3)",
    }


def per_request(rows: pd.DataFrame, condition: str) -> pd.DataFrame:
    """A condition's rows, one per request (its first prompt_id, its mean score): with several
    prefills a request's prefilled answers are averaged, so groups count requests, not
    (request, prefill) rows."""
    part = rows[rows["condition"] == condition]
    return part.groupby("request", sort=False).agg(prompt_id=("prompt_id", "first"), score=("score", "mean"))


def compare_conditions(pooled: pd.DataFrame, traits: list[str], n_boot: int, seed: int) -> dict:
    """Every comparison of COMPARISONS per trait, Holm-corrected across traits and comparisons;
    the unpaired ones over requests (`per_request`)."""
    comparisons: dict[str, dict] = {}
    for key, (a, b, position) in COMPARISONS.items():
        comparisons[key] = {}
        for trait in traits:
            rows = pooled[(pooled["trait"] == trait) & (pooled["position"] == position)]
            if key in PAIRED:
                compared = compare_with_prefill(rows, n_boot, seed)
            else:
                xa, xb = (per_request(rows, c)["score"].to_numpy() for c in (a, b))
                compared = compare_groups(xa, xb, n_boot=n_boot, seed=seed)
            comparisons[key][trait] = {"position": position, **compared}
    flat = [(k, t) for k in comparisons for t in comparisons[k]]
    for (k, t), p in zip(flat, holm([comparisons[k][t]["p_value"] for k, t in flat])):
        comparisons[k][t]["p_holm"] = p
    return comparisons
