"""The trait vectors' own criterion: each trait's out-of-sample (split-half) held-out AUC."""

from __future__ import annotations

from traitscope.summary.records import (
    NOT_MEASURED,
    Criterion,
    Result,
    above,
    fmt,
)


def trait_criteria(result: Result) -> list[Criterion]:
    """Each trait's out-of-sample (split-half) AUC against the run's extraction.auc_threshold."""
    threshold = result.get("auc_threshold")
    rows = []
    for trait, row in result.get("traits").items():
        split_half = row.get("auc_split_half")
        low, high = row.get("auc_split_half_ci_low"), row.get("auc_split_half_ci_high")
        detail = f"{row['method']} layer {row['layer']}; held-out AUC {fmt(row['auc'])} (layer chosen on it)"
        if split_half is None:
            detail += "; too few held-out questions to split"
        elif low is None:
            detail += (
                f"; {row.get('auc_split_half_reason') or 'no CI in the result (rerun trait_evaluation)'}"
            )
        else:
            detail += "; CI: bootstrap over questions, the layer chosen again in each resample"
            stability = row.get("auc_split_half_choice_stability")
            if stability is not None:
                detail += f" (the same choices in {stability:.0%} of them)"
        rows.append(
            Criterion(
                f"{trait}: split-half (out-of-sample) AUC >= {threshold}",
                NOT_MEASURED if split_half is None else above(low, high, threshold, inclusive=True),
                split_half,
                low,
                high,
                n=f"{row['n_positive']}+{row['n_negative']}",
                detail=detail,
            )
        )
    return rows
