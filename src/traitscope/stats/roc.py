"""ROC-AUC: the counting AUC vectorised over resamples, its CIs (stratified, paired, clustered by
question), differences of AUCs and the Youden threshold."""

from __future__ import annotations

from functools import partial

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats as _sps
from sklearn.metrics import roc_curve

from traitscope.stats.bootstrap import _percentile_bootstrap, _sample

HISTOGRAM_MAX = 20_000_000  # resamples x distinct values: the counting AUC's memory stays ~160 MB


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """ROC-AUC of scores: P(random positive > random negative), ties counting half."""
    return float(_auc_along(np.asarray(pos, float), np.asarray(neg, float)))


def _auc_along(pos: np.ndarray, neg: np.ndarray, axis: int = -1) -> np.ndarray:
    """AUC along `axis`, vectorised over resamples: P(pos > neg) with ties counting half
    (= Mann-Whitney U / (n_pos n_neg)).

    The AUC reads only the scores' order, so the scores become their ranks among the distinct
    values (`rank_codes`) and `auc_of_codes` counts on those.
    """
    (pos, neg), k = rank_codes(pos, neg)
    return auc_of_codes(pos, neg, k, axis=axis)


def rank_codes(*samples: ArrayLike) -> tuple[list[np.ndarray], int]:
    """Each sample's values as their index among the distinct values of all of them, and how
    many distinct values there are: the same order, ties kept, in integers `auc_of_codes` counts."""
    arrays = [np.asarray(x, float) for x in samples]
    values = np.unique(np.concatenate([np.unique(x) for x in arrays]))
    return [np.searchsorted(values, x) for x in arrays], len(values)


def auc_of_codes(pos: np.ndarray, neg: np.ndarray, k: int, axis: int = -1) -> np.ndarray:
    """`_auc_along` on codes in [0, k) (`rank_codes`): each resample's negatives become a histogram
    over the codes, and a positive's share of pairs is the histogram's count below its code plus
    half the count at it.

    Thousands of bootstrap resamples per trait, layer and position are scored at once. The
    bootstrap resamples codes made once (`auc_with_ci`), so no resample is searched or sorted;
    Mann-Whitney's tie-aware ranking, several times the cost, remains the fallback for samples
    with too many distinct values.
    """
    pos, neg = np.moveaxis(np.asarray(pos), axis, -1), np.moveaxis(np.asarray(neg), axis, -1)
    n_pos, n_neg = pos.shape[-1], neg.shape[-1]
    lead = np.broadcast_shapes(pos.shape[:-1], neg.shape[:-1])
    pos = np.broadcast_to(pos, (*lead, n_pos)).reshape(-1, n_pos).astype(np.intp)
    neg = np.broadcast_to(neg, (*lead, n_neg)).reshape(-1, n_neg).astype(np.intp)
    rows = len(pos)
    if rows * k > HISTOGRAM_MAX:
        u = _sps.mannwhitneyu(pos, neg, axis=-1, method="asymptotic").statistic
        return (u / (n_pos * n_neg)).reshape(lead)
    offset = np.arange(rows)[:, None] * k
    counts = np.bincount((neg + offset).ravel(), minlength=rows * k).reshape(rows, k)
    below = np.cumsum(counts, axis=1) - counts
    row = np.arange(rows)[:, None]
    u = (below[row, pos] + 0.5 * counts[row, pos]).sum(axis=1)
    return (u / (n_pos * n_neg)).reshape(lead)


def auc_with_ci(pos: ArrayLike, neg: ArrayLike, n_boot: int = 2000, seed: int = 0) -> dict:
    """ROC-AUC with a stratified bootstrap CI (positives and negatives resampled separately).

    A perfect separation (AUC 1 or 0) resamples to itself, so the bootstrap's CI is [1, 1] at
    any n, and 2 + 2 answers would pass a gate that 200 pass. There the CI reaches to the exact
    bound instead: m = min(n_pos, n_neg) disjoint pairs all ordered has probability at most
    AUC^m, so every AUC under (0.025)^(1/m) makes the observation less likely than 2.5%."""
    pos, neg = _sample(pos, "pos"), _sample(neg, "neg")
    codes, k = rank_codes(pos, neg)
    low, high = _percentile_bootstrap(
        tuple(codes), partial(auc_of_codes, k=k), n_boot, 0.95, seed, vectorized=True
    )
    value = auc(pos, neg)
    result = {"auc": value, "ci_low": low, "ci_high": high, "n_pos": len(pos), "n_neg": len(neg)}
    if value in (0.0, 1.0):
        low, high = perfect_separation_ci(value, low, high, min(len(pos), len(neg)))
        result.update(ci_low=low, ci_high=high, ci="exact bound of a perfect separation")
    return result


def perfect_separation_ci(value: float, low: float, high: float, pairs: int) -> tuple[float, float]:
    """A CI of an AUC of exactly 1 (or 0) reached to the exact bound: `pairs` independent
    (positive, negative) pairs all ordered have probability at most AUC^pairs, so AUCs under
    0.025^(1/pairs) (over 1 minus it, for 0) are excluded at 2.5%, and no further."""
    bound = 0.025 ** (1 / pairs)
    return (min(low, bound), high) if value == 1.0 else (low, max(high, 1 - bound))


def auc_difference_paired(
    pos_a: ArrayLike, neg_a: ArrayLike, pos_b: ArrayLike, neg_b: ArrayLike, n_boot: int = 2000, seed: int = 0
) -> dict:
    """AUC(pos_a vs neg_a) - AUC(pos_b vs neg_b) with a paired bootstrap CI.

    Row i of all four arrays is one pair unit (e.g. a problem asked with and without a
    trigger, on two models): resampling draws whole units, so the two AUCs of a resample see
    the same problems and their shared variation cancels in the difference.
    """
    arrays = [
        _sample(x, name)
        for x, name in ((pos_a, "pos_a"), (neg_a, "neg_a"), (pos_b, "pos_b"), (neg_b, "neg_b"))
    ]
    if len({len(x) for x in arrays}) != 1:
        raise ValueError(f"paired AUCs need equal lengths, got {[len(x) for x in arrays]}")

    (pa, na), k_a = rank_codes(*arrays[:2])
    (pb, nb), k_b = rank_codes(*arrays[2:])

    def difference(pa, na, pb, nb, axis=-1):
        return auc_of_codes(pa, na, k_a, axis=axis) - auc_of_codes(pb, nb, k_b, axis=axis)

    low, high = _percentile_bootstrap(
        (pa, na, pb, nb), difference, n_boot, 0.95, seed, vectorized=True, paired=True
    )
    a, b = auc(arrays[0], arrays[1]), auc(arrays[2], arrays[3])
    return _difference_record(a, b, low, high, n_pairs=len(arrays[0]))


def auc_difference_same_rows(
    pos_a: ArrayLike, neg_a: ArrayLike, pos_b: ArrayLike, neg_b: ArrayLike, n_boot: int = 2000, seed: int = 0
) -> dict:
    """AUC of scorer a minus AUC of scorer b on the same rows, with a paired bootstrap CI.

    `pos_a[i]` and `pos_b[i]` score the same positive row (a trait projection and a baseline,
    say), likewise the negatives. Each resample draws positives and negatives separately
    (stratified, as `auc_with_ci`) and gives both scorers the same rows, so the prompts both
    find easy or hard cancel in the difference.
    """
    pos = [_sample(pos_a, "pos_a"), _sample(pos_b, "pos_b")]
    neg = [_sample(neg_a, "neg_a"), _sample(neg_b, "neg_b")]
    if len(pos[0]) != len(pos[1]) or len(neg[0]) != len(neg[1]):
        raise ValueError("both scorers must score the same rows: pos_a/pos_b or neg_a/neg_b differ in length")

    (pos_a, neg_a), k_a = rank_codes(pos[0], neg[0])
    (pos_b, neg_b), k_b = rank_codes(pos[1], neg[1])

    def difference(p, n, axis=-1):
        return auc_of_codes(p[0], n[0], k_a, axis=axis) - auc_of_codes(p[1], n[1], k_b, axis=axis)

    # rows along axis 0 (what the bootstrap resamples), scorers side by side
    rows = (np.column_stack([pos_a, pos_b]), np.column_stack([neg_a, neg_b]))
    low, high = _percentile_bootstrap(rows, difference, n_boot, 0.95, seed, vectorized=True)
    a, b = auc(pos[0], neg[0]), auc(pos[1], neg[1])
    return _difference_record(a, b, low, high, n_pos=len(pos[0]), n_neg=len(neg[0]))


def _difference_record(a: float, b: float, low: float, high: float, **counts: int) -> dict:
    """One AUC difference as every paired comparison reports it, with its sample sizes."""
    return {"difference": a - b, "auc_a": a, "auc_b": b, "ci_low": low, "ci_high": high, **counts}


def auc_columns(pos: ArrayLike, neg: ArrayLike) -> np.ndarray:
    """ROC-AUC of every column at once (`[n_pos, m]` vs `[n_neg, m]` -> `[m]`), ties counting
    half: P(positive > negative) per column."""
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    if pos.ndim != 2 or neg.ndim != 2 or pos.shape[1] != neg.shape[1]:
        raise ValueError(f"pos and neg must be [n, m] with the same m, got {pos.shape} and {neg.shape}")
    if not len(pos) or not len(neg):
        raise ValueError("pos and neg need at least one row each")
    codes, k = column_codes(np.vstack([pos, neg]))
    return auc_of_codes(codes[: len(pos)], codes[len(pos) :], k, axis=0)


def column_codes(scores: np.ndarray) -> tuple[np.ndarray, int]:
    """`rank_codes` per column of `[n, m]` scores (each column ranked among its own values), and
    a k that bounds every column's codes: made once, then any row subset scores with
    `auc_of_codes(..., axis=0)`."""
    codes = (_sps.rankdata(scores, method="dense", axis=0) - 1).astype(np.intp)
    return codes, int(codes.max()) + 1


def youden_threshold(pos: ArrayLike, neg: ArrayLike) -> dict:
    """Score threshold (positive when score >= threshold) that maximises Youden's J = TPR - FPR."""
    pos, neg = _sample(pos, "pos"), _sample(neg, "neg")
    labels = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    fpr, tpr, thresholds = roc_curve(labels, np.r_[pos, neg], drop_intermediate=False)
    # thresholds[0] is sklearn's "nothing is positive" sentinel (inf), never a usable cut-off
    j = tpr[1:] - fpr[1:]
    best = int(np.argmax(j))
    return {
        "threshold": float(thresholds[best + 1]),
        "tpr": float(tpr[best + 1]),
        "fpr": float(fpr[best + 1]),
        "j": float(j[best]),
    }
