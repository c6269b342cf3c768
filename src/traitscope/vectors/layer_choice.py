"""Per-layer separation of held-out projections, and the (method, layer) it chooses.

The chosen (method, layer) maximises AUC, ties broken by Cohen's d: AUC saturates at 1
on easy traits, and d then says which layer separates with the widest margin.
"""

from __future__ import annotations

import torch

from traitscope.stats import auc, clustered_mean_auc_with_ci, cohens_d
from traitscope.vectors.methods import project


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


def split_half_auc(x: torch.Tensor, table, vectors: dict, layers: list[int], n_boot: int = 2000) -> dict:
    """AUC at a layer chosen on the other half of the held-out questions, averaged both ways,
    with a bootstrap CI of that mean over the scored half's questions (clusters: a question's
    answers go together; the choices held fixed).

    `chosen` picks the layer on the data it is scored on, which flatters it; here each
    half of the questions picks (method, layer) and the other half scores it.
    """
    held = table["split"] == "evaluation"
    questions = sorted(set(table.loc[held, "question"]))
    halves = [set(questions[0::2]), set(questions[1::2])]
    folds, scored_halves = [], []
    for pick, score in ((0, 1), (1, 0)):
        groups = []
        for half in (halves[pick], halves[score]):
            rows = (held & table["question"].isin(half)).to_numpy()
            label = table["label"].to_numpy()
            groups.append((x[torch.tensor(rows & (label == 1))], x[torch.tensor(rows & (label == 0))]))
        (pos_a, neg_a), (pos_b, neg_b) = groups
        if min(len(pos_a), len(neg_a), len(pos_b), len(neg_b)) < 2:
            return {"auc": None, "reason": "fewer than 2 positive and negative rows in a half"}
        picked = choose({m: layer_scores(pos_a, neg_a, v, layers) for m, v in vectors.items()})
        i = layers.index(picked["layer"])
        one = slice(i, i + 1)
        unit = vectors[picked["method"]][one]
        rows = (held & table["question"].isin(halves[score])).to_numpy()
        label, question = table["label"].to_numpy(), table["question"].to_numpy()
        scored = (project(pos_b[:, one], unit)[:, 0].numpy(), project(neg_b[:, one], unit)[:, 0].numpy())
        scored_halves.append((*scored, question[rows & (label == 1)], question[rows & (label == 0)]))
        folds.append({"method": picked["method"], "layer": picked["layer"], "auc_other_half": auc(*scored)})
    try:
        return {**clustered_mean_auc_with_ci(scored_halves, n_boot=n_boot), "folds": folds}
    except ValueError as exc:  # a half of one question: a point, no CI
        point = sum(f["auc_other_half"] for f in folds) / 2
        return {"auc": point, "ci_low": None, "ci_high": None, "reason": f"no CI: {exc}", "folds": folds}
