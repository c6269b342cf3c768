"""Held-out evaluation of trait vectors: per-layer separation and the chosen layer.

The chosen (method, layer) maximises AUC, ties broken by Cohen's d: AUC saturates at 1
on easy traits, and d then says which layer separates with the widest margin.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from traitscope.activations import Activations
from traitscope.errors import TraitscopeError
from traitscope.extraction import load_vectors, read_responses
from traitscope.io import save_figure, write_json
from traitscope.stats import auc, cohens_d
from traitscope.vectors import project


def layer_scores(
    pos: torch.Tensor, neg: torch.Tensor, vectors: torch.Tensor, layers: list[int]
) -> list[dict]:
    """AUC and Cohen's d of projections per layer, positives vs negatives."""
    sp, sn = project(pos, vectors).numpy(), project(neg, vectors).numpy()
    return [
        {
            "layer": layer,
            "auc": auc(sp[:, i], sn[:, i]),
            "cohens_d": cohens_d(sp[:, i], sn[:, i]),
            "mean_positive": float(sp[:, i].mean()),
            "mean_negative": float(sn[:, i].mean()),
        }
        for i, layer in enumerate(layers)
    ]


def choose(scores: dict[str, list[dict]]) -> dict:
    """Best (method, layer) by AUC then Cohen's d."""
    best = max(
        ((m, s) for m, rows in scores.items() for s in rows),
        key=lambda ms: (round(ms[1]["auc"], 6), ms[1]["cohens_d"]),
    )
    method, s = best
    return {"method": method, "layer": s["layer"], "auc": s["auc"], "cohens_d": s["cohens_d"]}


def split_half_auc(x: torch.Tensor, table, vectors: dict, layers: list[int]) -> dict:
    """AUC at a layer chosen on the other half of the held-out questions, averaged both ways.

    `chosen` picks the layer on the data it is scored on, which flatters it; here each
    half of the questions picks (method, layer) and the other half scores it.
    """
    held = table["split"] == "evaluation"
    questions = sorted(set(table.loc[held, "question"]))
    halves = [set(questions[0::2]), set(questions[1::2])]
    folds = []
    for pick, score in ((0, 1), (1, 0)):
        groups = []
        for half in (halves[pick], halves[score]):
            rows = (held & table["question"].isin(half)).to_numpy()
            label = table["label"].to_numpy()
            groups.append(
                (x[torch.from_numpy(rows & (label == 1))], x[torch.from_numpy(rows & (label == 0))])
            )
        (pos_a, neg_a), (pos_b, neg_b) = groups
        if min(len(pos_a), len(neg_a), len(pos_b), len(neg_b)) < 2:
            return {"auc": None, "reason": "fewer than 2 positive and negative rows in a half"}
        picked = choose({m: layer_scores(pos_a, neg_a, v, layers) for m, v in vectors.items()})
        i = layers.index(picked["layer"])
        one = slice(i, i + 1)
        scored = layer_scores(
            pos_b[:, one], neg_b[:, one], vectors[picked["method"]][one], [picked["layer"]]
        )[0]
        folds.append({"method": picked["method"], "layer": picked["layer"], "auc_other_half": scored["auc"]})
    return {"auc": sum(f["auc_other_half"] for f in folds) / 2, "folds": folds}


def evaluate(
    vectors_path: str | Path,
    activations: str | Path,
    responses: str | Path,
    out_json: str | Path,
    out_png: str | Path,
    position: str = "response_mean",
    trait: str = "",
    model_name: str = "",
) -> dict:
    """Score every layer of every method on the evaluation split; write JSON and a PNG."""
    table = read_responses(responses)
    acts = Activations.load(activations)
    vectors = load_vectors(vectors_path)
    held = (table["split"] == "evaluation").to_numpy()
    x = acts.data[position]
    pos = x[torch.from_numpy(held & (table["label"] == 1).to_numpy())]
    neg = x[torch.from_numpy(held & (table["label"] == 0).to_numpy())]
    if len(pos) < 2 or len(neg) < 2:
        raise TraitscopeError(f"{responses}: need at least 2 positive and 2 negative evaluation rows")
    scores = {m: layer_scores(pos, neg, v, acts.layers) for m, v in vectors.items()}
    result = {
        "trait": trait,
        "model": model_name,
        "position": position,
        "n_positive": len(pos),
        "n_negative": len(neg),
        "methods": scores,
        "chosen_by_method": {m: choose({m: rows}) for m, rows in scores.items()},
        "chosen": choose(scores),
        "chosen_split_half": split_half_auc(x, table, vectors, acts.layers),
    }
    write_json(out_json, result)
    save_figure(out_png, _figure(result))
    return result


def _figure(result: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_auc, ax_d) = plt.subplots(1, 2, figsize=(10, 3.8))
    for method, rows in result["methods"].items():
        layers = [r["layer"] for r in rows]
        ax_auc.plot(layers, [r["auc"] for r in rows], marker="o", ms=3, label=method)
        ax_d.plot(
            layers,
            [r["cohens_d"] if np.isfinite(r["cohens_d"]) else np.nan for r in rows],
            marker="o",
            ms=3,
            label=method,
        )
    chosen = result["chosen"]
    for ax in (ax_auc, ax_d):
        ax.axvline(chosen["layer"], color="grey", ls="--", lw=1, label=f"chosen ({chosen['method']})")
        ax.set_xlabel("layer (decoder block output)")
        ax.grid(alpha=0.3)
    ax_auc.set_ylabel("held-out ROC-AUC (positive vs negative)")
    ax_d.set_ylabel("held-out Cohen's d of projection (SD units)")
    ax_auc.legend(fontsize=8)
    fig.suptitle(
        f"{result['trait']} on {result['model']}: separation by layer "
        f"(n={result['n_positive']}+{result['n_negative']})"
    )
    fig.tight_layout()
    return fig


def summarize(evaluations: list[str | Path], out: str | Path, threshold: float = 0.9) -> dict:
    """One table of every trait's chosen layer, so a run's headline fits in one file."""
    import json

    rows = {}
    for path in evaluations:
        result = json.loads(Path(path).read_text())
        rows[result["trait"]] = {
            "auc_split_half": result["chosen_split_half"]["auc"],
            **result["chosen"],
            "n_positive": result["n_positive"],
            "n_negative": result["n_negative"],
        }
    summary = {
        "traits": rows,
        "auc_threshold": threshold,
        "n_traits_at_threshold": sum(r["auc"] >= threshold for r in rows.values()),
        "n_traits": len(rows),
    }
    write_json(out, summary)
    return summary
