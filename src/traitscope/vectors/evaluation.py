"""Held-out evaluation of trait vectors: per-layer separation and the chosen layer.

The chosen (method, layer) maximises the plateau AUC (layer_choice.py says why), and the
split-half AUC beside it is what that choice scores out of sample.
"""

from __future__ import annotations

from pathlib import Path

from traitscope import plotting
from traitscope.errors import TraitscopeError
from traitscope.io import save_figure, write_json
from traitscope.vectors.labelled import labelled_activations, split_groups
from traitscope.vectors.layer_choice import choose, layer_scores, split_half_auc
from traitscope.vectors.settings import TraitSummarySettings
from traitscope.vectors.trait_vector import read_evaluation, read_vectors, require_width


def trait_evaluation(
    vectors_path: str | Path,
    capture_json: str | Path,
    prompts: str | Path,
    out_json: str | Path,
    out_png: str | Path,
    position: str,
    trait: str,
    variant: str,
) -> dict:
    """Score every layer of every method on the held-out split; write JSON and a PNG."""
    vectors, meta = read_vectors(vectors_path)
    table, x, layers = labelled_activations(capture_json, prompts, position)
    require_width(str(vectors_path), vectors["mean_diff"].shape[-1], x.shape[-1], str(capture_json))
    if list(meta["layers"]) != list(layers):
        raise TraitscopeError(
            f"{vectors_path}: vectors of layers {meta['layers']}, {capture_json} holds layers {layers}; "
            "evaluate the vectors on the capture they were fitted from"
        )
    pos, neg = split_groups(table, x, "evaluation")
    if len(pos) < 2 or len(neg) < 2:
        raise TraitscopeError(f"{prompts}: need at least 2 positive and 2 negative evaluation rows")
    scores = {m: layer_scores(pos, neg, v, layers) for m, v in vectors.items()}
    result = {
        "trait": trait,
        "model": variant,
        "position": position,
        "n_positive": len(pos),
        "n_negative": len(neg),
        "methods": scores,
        "chosen_by_method": {m: choose({m: rows}) for m, rows in scores.items()},
        "chosen": choose(scores),
        "chosen_split_half": split_half_auc(x, table, vectors, layers),
    }
    write_json(out_json, result)
    save_figure(out_png, plotting.layer_scores_figure(result))
    return result


def trait_summary(evaluations: list[str | Path], out: str | Path, settings: TraitSummarySettings) -> dict:
    """One table of every trait's chosen layer, so a run's headline fits in one file."""
    rows = {}
    for path in evaluations:
        result = read_evaluation(path)
        missing = [k for k in ("trait", "chosen_split_half", "n_positive", "n_negative") if k not in result]
        if missing:  # an evaluation.json of an older layout, or a hand-edited one
            raise TraitscopeError(f"{path}: no {missing[0]!r} in the evaluation; rerun trait-evaluation")
        rows[result["trait"]] = {
            "auc_split_half": result["chosen_split_half"]["auc"],
            "auc_split_half_ci_low": result["chosen_split_half"].get("ci_low"),
            "auc_split_half_ci_high": result["chosen_split_half"].get("ci_high"),
            "auc_split_half_reason": result["chosen_split_half"].get("reason"),
            "auc_split_half_choice_stability": result["chosen_split_half"].get("choice_stability"),
            **result["chosen"],
            "n_positive": result["n_positive"],
            "n_negative": result["n_negative"],
        }
    summary = {
        "traits": rows,
        "auc_threshold": settings.auc_threshold,
        "n_traits_at_threshold": sum(r["auc"] >= settings.auc_threshold for r in rows.values()),
        "n_traits": len(rows),
    }
    write_json(out, summary)
    return summary
