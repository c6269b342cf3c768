"""Cross-fitting: a choice among score columns (a layer, a trait) made on one half of the rows
and scored on the other half, both ways, with a bootstrap CI of the whole procedure."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from traitscope.stats.roc import auc, perfect_separation_ci


def cross_fitted_auc(
    scores: np.ndarray,
    positive: np.ndarray,
    halves: list[list[list[np.ndarray]]],
    choose: Callable[[np.ndarray], int],
    n_boot: int = 2000,
    seed: int = 0,
) -> dict:
    """AUC of the column `choose` picks on one half of the rows, scored on the other half,
    averaged both ways, with a percentile bootstrap CI that chooses again in every resample.

    The best column on the rows it is scored on flatters itself; here the choice never sees the
    rows that score it. `scores` is `[rows, columns]`, `positive` the rows' labels and
    `choose(rows)` the column a set of row indices picks. `halves` holds each half's strata
    (labels, say), each a list of clusters (arrays of row indices, a question's answers say): a
    resample draws each stratum's clusters with replacement, so rows that go together are
    resampled together. Where two columns nearly tie on a half, which one wins is chance, and a
    CI that held the choice fixed would leave that chance out; `choice_stability` is the share
    of resamples whose choices are the point estimate's. No CI (None) where a stratum has one
    cluster or a resample drew one label only. A perfect separation resamples to itself, so its
    CI reaches to the exact bound over the halves' independent pairs (`_disjoint_pairs`).
    """

    def procedure(rows: list[np.ndarray]) -> tuple[float, list[int], list[float]]:
        """Mean other-half AUC, each half's chosen column and its AUC on the other half."""
        choices = [choose(rows[0]), choose(rows[1])]
        aucs = [_auc_at(scores, positive, rows[1 - i], c) for i, c in enumerate(choices)]
        return float(np.mean(aucs)), choices, aucs

    point, choices, aucs = procedure([np.concatenate([c for s in half for c in s]) for half in halves])
    found = dict(auc=point, ci_low=None, ci_high=None, choice_stability=None, choices=choices, aucs=aucs)
    if min(len(s) for half in halves for s in half) < 2:
        return found
    rng = np.random.default_rng(seed)
    boot, same = np.empty(n_boot), 0
    for b in range(n_boot):
        drawn = [
            np.concatenate([s[k] for s in half for k in rng.integers(0, len(s), len(s))]) for half in halves
        ]
        if any(positive[r].all() or not positive[r].any() for r in drawn):
            return found
        boot[b], again, _ = procedure(drawn)
        same += again == choices
    low, high = np.percentile(boot, [2.5, 97.5])
    if point in (0.0, 1.0):  # every resample separates perfectly too: reach to the exact bound
        pairs = sum(_disjoint_pairs(half, positive) for half in halves)
        low, high = perfect_separation_ci(point, low, high, pairs)
    return found | {"ci_low": float(low), "ci_high": float(high), "choice_stability": same / n_boot}


def _disjoint_pairs(half: list[list[np.ndarray]], positive: np.ndarray) -> int:
    """How many (positive, negative) pairs one half holds from distinct clusters: independent
    pairs, all of which a perfect separation orders (`auc_with_ci`'s exact bound counts them).
    Clusters holding one label pair with the other label's; a cluster holding both pairs with
    any other."""
    labels = [(positive[c].any(), (~positive[c]).any()) for stratum in half for c in stratum]
    pos = sum(p and not n for p, n in labels)
    neg = sum(n and not p for p, n in labels)
    both = sum(p and n for p, n in labels)
    return min(pos + both, neg + both, (pos + neg + both) // 2)


def _auc_at(scores: np.ndarray, positive: np.ndarray, rows: np.ndarray, column: int) -> float:
    """One column's AUC over some rows, positives against the rest."""
    return auc(scores[rows[positive[rows]], column], scores[rows[~positive[rows]], column])
