"""Per-layer separation of held-out projections, and the (method, layer) it chooses.

The chosen (method, layer) maximises the plateau AUC: the lesser of the layer's own AUC and
its AUC smoothed over its captured neighbours under the same method (weights 1-2-1).
Adjacent layers of one trait often score within a few thousandths of each other, and which
of them peaked then moved with the number format, while the experiments downstream read
very different things at neighbouring layers; a layer whose neighbours also separate is the
stable choice, and a lone peak among weaker layers is more likely noise. Ties are broken by
the layer's own AUC, then Cohen's d (AUC saturates at 1 on easy traits, and d then says
which layer separates with the widest margin).
"""

from __future__ import annotations

import numpy as np
import torch

from traitscope.stats import auc, auc_of_codes, cohens_d, column_codes, cross_fitted_auc
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
    """Best (method, layer) by plateau AUC, then the layer's own AUC, then Cohen's d."""
    flat = [(m, s) for m, rows in scores.items() for s in sorted(rows, key=lambda r: r["layer"])]
    aucs = np.array([s["auc"] for _, s in flat])
    method_of = np.array([i for i, rows in enumerate(scores.values()) for _ in rows])
    plateau = _plateau(aucs, method_of)
    best = _first_best(aucs, np.array([s["cohens_d"] for _, s in flat]), method_of)
    method, s = flat[best]
    return {
        "method": method,
        "layer": s["layer"],
        "auc": s["auc"],
        "plateau_auc": float(plateau[best]),
        "cohens_d": s["cohens_d"],
    }


def _plateau(aucs: np.ndarray, method_of: np.ndarray) -> np.ndarray:
    """Each candidate's plateau AUC: the lesser of its own AUC and its AUC smoothed over its
    neighbours (the previous and next captured layer under the same method, weights 1-2-1).
    Candidates are ordered by method, then layer. The lesser of the two, so that a weak layer
    beside a strong one (an edge layer, say) cannot win on its neighbour's strength."""
    total, count = 2.0 * aucs.astype(float), np.full(len(aucs), 2.0)
    same = method_of[1:] == method_of[:-1]  # candidate i and i + 1 are neighbouring layers
    total[:-1] += np.where(same, aucs[1:], 0.0)
    count[:-1] += same
    total[1:] += np.where(same, aucs[:-1], 0.0)
    count[1:] += same
    return np.minimum(aucs, total / count)


def _first_best(aucs: np.ndarray, ds: np.ndarray, method_of: np.ndarray) -> int:
    """The rule every layer choice uses: the highest plateau AUC, ties broken by the layer's own
    AUC, then by Cohen's d, remaining ties by order (AUCs to 6 decimals: they saturate at 1 on
    easy traits)."""
    plateau = np.round(_plateau(aucs, method_of), 6)
    return int(np.lexsort((-ds, -np.round(aucs, 6), -plateau))[0])  # the last key sorts first


def split_half_auc(x: torch.Tensor, table, vectors: dict, layers: list[int], n_boot: int = 2000) -> dict:
    """AUC at a layer chosen on the other half of the held-out questions, averaged both ways,
    with a bootstrap CI of the whole procedure: each resample draws each half's questions with
    replacement (a question's answers go together), chooses (method, layer) again on the
    resampled picking half and scores that choice on the resampled other half.

    `chosen` picks the layer on the data it is scored on, which flatters it; here each half
    of the questions picks (method, layer) and the other half scores it. Where two layers
    nearly tie on a half, which one wins is chance, and a CI that held the choice fixed would
    leave that chance out (two runs that differed only in the number format then fell outside
    each other's CIs); `choice_stability` is the share of resamples whose choices are the
    point estimate's.
    """
    held = (table["split"] == "evaluation").to_numpy()
    label, question = table["label"].to_numpy(), table["question"].to_numpy()
    questions = sorted(set(question[held]))
    halves = [questions[0::2], questions[1::2]]
    rows_of = [[np.flatnonzero(held & (question == q)) for q in half] for half in halves]
    for half in rows_of:
        labels = label[np.concatenate(half)] if half else np.array([])
        if (labels == 1).sum() < 2 or (labels == 0).sum() < 2:
            return {"auc": None, "reason": "fewer than 2 positive and negative rows in a half"}
    candidates = [(m, layer) for m in vectors for layer in layers]
    method_of = np.repeat(np.arange(len(vectors)), len(layers))
    scores = torch.cat([project(x, v) for v in vectors.values()], dim=1).numpy()  # [rows, candidates]
    # each column's scores as their rank among its distinct values, once: the AUC reads only the
    # order, and ranking every resample's columns anew cost most of this function's time
    codes, k = column_codes(scores)
    positive = label == 1

    def pick(rows: np.ndarray) -> int:
        return _best_column(scores[rows], codes[rows], k, positive[rows], method_of)

    found = cross_fitted_auc(scores, positive, [[half] for half in rows_of], pick, n_boot, seed=0)
    folds = [
        {"method": candidates[c][0], "layer": candidates[c][1], "auc_other_half": a}
        for c, a in zip(found["choices"], found["aucs"])
    ]
    if found["ci_low"] is None:
        reason = "no CI: a half has one question, or a resample drew one label only"
        return {"auc": found["auc"], "ci_low": None, "ci_high": None, "reason": reason, "folds": folds}
    return {
        "auc": found["auc"],
        "ci_low": found["ci_low"],
        "ci_high": found["ci_high"],
        "n_clusters": len(questions),
        "choice_stability": found["choice_stability"],
        "folds": folds,
    }


def _best_column(
    scores: np.ndarray, codes: np.ndarray, k: int, positive: np.ndarray, method_of: np.ndarray
) -> int:
    """`choose`'s rule over score columns at once (`positive` rows vs the rest; columns ordered
    by method, then layer); the AUCs from the scores' rank codes (`codes`, in [0, k))."""
    pos, neg = scores[positive], scores[~positive]
    pooled = ((len(pos) - 1) * pos.var(0, ddof=1) + (len(neg) - 1) * neg.var(0, ddof=1)) / (
        len(pos) + len(neg) - 2
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        d = (pos.mean(0) - neg.mean(0)) / np.sqrt(pooled)
    d = np.nan_to_num(d, nan=0.0, posinf=np.inf, neginf=-np.inf)
    return _first_best(auc_of_codes(codes[positive], codes[~positive], k, axis=0), d, method_of)
