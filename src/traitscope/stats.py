"""Separation statistics used to score a trait vector on held-out data.

Library implementations (scipy, scikit-learn, statsmodels) do the arithmetic; this module adds
the input checks that turn a degenerate sample into a clear error instead of a NaN in a report.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf
from numpy.typing import ArrayLike
from scipy import stats as _sps
from sklearn.metrics import roc_curve
from statsmodels.stats.anova import anova_lm
from statsmodels.stats.multitest import multipletests


def cohens_d(a: np.ndarray, b: np.ndarray) -> float:
    """Cohen's d with the pooled (n-1) standard deviation; positive when `a` is larger."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    na, nb = len(a), len(b)
    pooled = ((na - 1) * a.var(ddof=1) + (nb - 1) * b.var(ddof=1)) / (na + nb - 2)
    diff = a.mean() - b.mean()
    if pooled == 0:
        return 0.0 if diff == 0 else float(np.sign(diff) * np.inf)
    return float(diff / np.sqrt(pooled))


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """ROC-AUC of scores: P(random positive > random negative), ties counting half."""
    return float(_auc_along(np.asarray(pos, float), np.asarray(neg, float)))


HISTOGRAM_MAX = 20_000_000  # resamples x distinct values: the counting AUC's memory stays ~160 MB


def _auc_along(pos: np.ndarray, neg: np.ndarray, axis: int = -1) -> np.ndarray:
    """AUC along `axis`, vectorised over resamples: P(pos > neg) with ties counting half
    (= Mann-Whitney U / (n_pos n_neg)).

    Thousands of bootstrap resamples per trait, layer and position are scored at once, and
    resamples repeat the sample's few distinct values: each value becomes its index among them,
    each resample's negatives a histogram over those indices, and a positive's share of pairs
    is the histogram's count below its index plus half the count at it. Mann-Whitney's
    tie-aware ranking did the same at several times the cost; it remains the fallback for
    samples with too many distinct values.
    """
    pos, neg = np.moveaxis(np.asarray(pos, float), axis, -1), np.moveaxis(np.asarray(neg, float), axis, -1)
    n_pos, n_neg = pos.shape[-1], neg.shape[-1]
    lead = np.broadcast_shapes(pos.shape[:-1], neg.shape[:-1])
    pos = np.broadcast_to(pos, (*lead, n_pos)).reshape(-1, n_pos)
    neg = np.broadcast_to(neg, (*lead, n_neg)).reshape(-1, n_neg)
    values = np.unique(np.concatenate([np.unique(pos), np.unique(neg)]))
    rows, k = len(pos), len(values)
    if rows * k > HISTOGRAM_MAX:
        u = _sps.mannwhitneyu(pos, neg, axis=-1, method="asymptotic").statistic
        return (u / (n_pos * n_neg)).reshape(lead)
    offset = np.arange(rows)[:, None] * k
    counts = np.bincount((np.searchsorted(values, neg) + offset).ravel(), minlength=rows * k).reshape(rows, k)
    below = np.cumsum(counts, axis=1) - counts
    at = np.searchsorted(values, pos)
    row = np.arange(rows)[:, None]
    u = (below[row, at] + 0.5 * counts[row, at]).sum(axis=1)
    return (u / (n_pos * n_neg)).reshape(lead)


def _sample(x: ArrayLike, name: str, min_n: int = 2) -> np.ndarray:
    """A 1-D finite float array of at least `min_n` values, so no statistic comes out NaN."""
    arr = np.asarray(x, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if len(arr) < min_n:
        raise ValueError(f"{name} needs at least {min_n} values, got {len(arr)}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _percentile_bootstrap(
    samples: tuple[np.ndarray, ...],
    statistic: Callable,
    n_boot: int,
    level: float,
    seed: int,
    vectorized: bool = False,
    paired: bool = False,
) -> tuple[float, float]:
    """Percentile CI from scipy.stats.bootstrap; each sample is resampled on its own (stratified),
    or, with `paired`, all samples with the same indices (resampling pairs).

    Percentile, not BCa: BCa's jackknife breaks on the infinite Cohen's d of constant resamples,
    which small groups produce, and percentile is what earlier reports used.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        # a NaN or infinite CI is reported below with its cause, so scipy's warning would only repeat it
        warnings.simplefilter("ignore", _sps.DegenerateDataWarning)
        res = _sps.bootstrap(
            samples,
            statistic,
            n_resamples=n_boot,
            vectorized=vectorized,
            paired=paired,
            confidence_level=level,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
    boot = res.bootstrap_distribution
    n_nan = int(np.isnan(boot).sum())
    if n_nan:
        raise ValueError(f"statistic was NaN in {n_nan} of {n_boot} bootstrap resamples")
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (np.isfinite(low) and np.isfinite(high)):
        n_inf = int(np.isinf(boot).sum())
        raise ValueError(
            f"bootstrap CI is not finite: statistic was infinite in {n_inf} of {n_boot} resamples "
            "(groups too small or with too few distinct values)"
        )
    return low, high


def bootstrap_ci(
    a: ArrayLike,
    b: ArrayLike,
    statistic: Callable[[np.ndarray, np.ndarray], float],
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of `statistic(a, b)`; groups resample separately so their sizes stay fixed."""
    a, b = _sample(a, "a"), _sample(b, "b")
    return _percentile_bootstrap((a, b), statistic, n_boot, level, seed)


def mean_with_ci(x: ArrayLike, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> dict:
    """Mean with a percentile bootstrap CI: the condition means that reports and figures share."""
    x = _sample(x, "x")
    low, high = _percentile_bootstrap((x,), np.mean, n_boot, level, seed, vectorized=True)
    return {"mean": float(x.mean()), "ci_low": low, "ci_high": high, "n": len(x)}


def compare_groups(a: ArrayLike, b: ArrayLike, n_boot: int = 2000, seed: int = 0) -> dict:
    """The two-group comparison every experiment reports: effect size with CI, Welch t and Mann-Whitney U."""
    a, b = _sample(a, "a"), _sample(b, "b")
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        raise ValueError("both groups are constant: Welch's t and Cohen's d are undefined")
    welch = _sps.ttest_ind(a, b, equal_var=False)
    mw = _sps.mannwhitneyu(a, b, alternative="two-sided")
    low, high = bootstrap_ci(a, b, cohens_d, n_boot=n_boot, seed=seed)
    return {
        "n_a": len(a),
        "n_b": len(b),
        "mean_a": float(a.mean()),
        "mean_b": float(b.mean()),
        "cohens_d": cohens_d(a, b),
        "ci_low": low,
        "ci_high": high,
        "welch_t": float(welch.statistic),
        "p_value": float(welch.pvalue),
        "mannwhitney_u": float(mw.statistic),
        "p_mannwhitney": float(mw.pvalue),
        "test": "welch_t",
    }


def cohens_dz(diff: np.ndarray, axis: int = -1) -> np.ndarray:
    """Cohen's d_z of paired differences: mean over their (n-1) standard deviation (along
    `axis`, so bootstrap resamples come in one call)."""
    diff = np.asarray(diff, float)
    sd = diff.std(ddof=1, axis=axis)
    mean = diff.mean(axis=axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sd == 0, np.where(mean == 0, 0.0, np.sign(mean) * np.inf), mean / sd)


def compare_paired(a: ArrayLike, b: ArrayLike, n_boot: int = 2000, seed: int = 0) -> dict:
    """The paired comparison (same prompts, two models): d_z with a bootstrap CI over pairs,
    paired t and Wilcoxon signed-rank. A finetune that shifts every prompt a little shows up
    here even when the two groups' spreads overlap."""
    a, b = _sample(a, "a"), _sample(b, "b")
    if len(a) != len(b):
        raise ValueError(f"paired samples need equal lengths, got {len(a)} and {len(b)}")
    diff = a - b
    if np.ptp(diff) == 0:
        raise ValueError("every paired difference is the same: the paired t and d_z are undefined")
    paired = _sps.ttest_rel(a, b)
    signed = _sps.wilcoxon(a, b)
    low, high = _percentile_bootstrap((diff,), cohens_dz, n_boot, 0.95, seed, vectorized=True)
    return {
        "n_pairs": len(diff),
        "mean_a": float(a.mean()),
        "mean_b": float(b.mean()),
        "mean_diff": float(diff.mean()),
        "cohens_dz": float(cohens_dz(diff)),
        "ci_low": low,
        "ci_high": high,
        "paired_t": float(paired.statistic),
        "p_value": float(paired.pvalue),
        "wilcoxon_w": float(signed.statistic),
        "p_wilcoxon": float(signed.pvalue),
        "test": "paired_t",
    }


def relative_gain_paired(
    a: ArrayLike, b: ArrayLike, base: ArrayLike, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> dict:
    """How much larger a's shift from `base` is than b's, relative to b's: (Δa - Δb) / |Δb| with
    Δx = mean(x - base), and a paired bootstrap CI (row i of the three arrays is one unit, e.g. a
    question answered with no vector, vector b and vector a; resamples draw whole rows).

    The ratio is ill-defined when Δb is 0 (no gain) or when Δb changes sign across resamples
    (the CI would mix gains over opposite baselines): the ratio CI is then None with the reason,
    and the difference Δa - Δb, always defined, carries its own CI beside it.
    """
    a, b, base = _sample(a, "a"), _sample(b, "b"), _sample(base, "base")
    if not len(a) == len(b) == len(base):
        raise ValueError(f"paired samples need equal lengths, got {len(a)}, {len(b)} and {len(base)}")
    shift_a, shift_b = a - base, b - base
    delta_a, delta_b = float(shift_a.mean()), float(shift_b.mean())

    def difference(x, y, axis=-1):
        return x.mean(axis=axis) - y.mean(axis=axis)

    diff_low, diff_high = _percentile_bootstrap(
        (shift_a, shift_b), difference, n_boot, level, seed, vectorized=True, paired=True
    )
    record = {
        "gain": None,
        "ci_low": None,
        "ci_high": None,
        "delta_a": delta_a,
        "delta_b": delta_b,
        "difference": delta_a - delta_b,
        "difference_ci_low": diff_low,
        "difference_ci_high": diff_high,
        "n": len(a),
    }
    if delta_b == 0:
        return {**record, "reason": "b's shift from base is 0: the relative gain is undefined"}
    sign = np.sign(delta_b)

    def gain(x, y, axis=-1):
        # NaN where a resample's Δb is 0 or of the other sign: _percentile_bootstrap refuses those
        dy = y.mean(axis=axis)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(np.sign(dy) == sign, (x.mean(axis=axis) - dy) / np.abs(dy), np.nan)

    record["gain"] = (delta_a - delta_b) / abs(delta_b)
    try:
        low, high = _percentile_bootstrap(
            (shift_a, shift_b), gain, n_boot, level, seed, vectorized=True, paired=True
        )
    except ValueError as exc:
        return {**record, "reason": f"ratio CI undefined: b's shift is 0 or changes sign ({exc})"}
    return {**record, "ci_low": low, "ci_high": high}


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values in input order: family-wise control, more power than Bonferroni."""
    p = np.asarray(p_values, dtype=float)
    if p.ndim != 1:
        raise ValueError(f"p_values must be a flat sequence, got shape {p.shape}")
    if not ((p >= 0) & (p <= 1)).all():
        raise ValueError("p_values must all lie in [0, 1] (NaN is not a p-value)")
    if len(p) == 0:  # multipletests rejects an empty family; nothing to adjust
        return []
    return [float(x) for x in multipletests(p, method="holm")[1]]


def auc_with_ci(pos: ArrayLike, neg: ArrayLike, n_boot: int = 2000, seed: int = 0) -> dict:
    """ROC-AUC with a stratified bootstrap CI (positives and negatives resampled separately)."""
    pos, neg = _sample(pos, "pos"), _sample(neg, "neg")
    low, high = _percentile_bootstrap((pos, neg), _auc_along, n_boot, 0.95, seed, vectorized=True)
    return {"auc": auc(pos, neg), "ci_low": low, "ci_high": high, "n_pos": len(pos), "n_neg": len(neg)}


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

    def difference(pa, na, pb, nb, axis=-1):
        return _auc_along(pa, na, axis=axis) - _auc_along(pb, nb, axis=axis)

    low, high = _percentile_bootstrap(
        tuple(arrays), difference, n_boot, 0.95, seed, vectorized=True, paired=True
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

    def difference(p, n, axis=-1):
        return _auc_along(p[0], n[0], axis=axis) - _auc_along(p[1], n[1], axis=axis)

    # rows along axis 0 (what the bootstrap resamples), scorers side by side
    rows = (np.column_stack(pos), np.column_stack(neg))
    low, high = _percentile_bootstrap(rows, difference, n_boot, 0.95, seed, vectorized=True)
    a, b = auc(pos[0], neg[0]), auc(pos[1], neg[1])
    return _difference_record(a, b, low, high, n_pos=len(pos[0]), n_neg=len(neg[0]))


def _difference_record(a: float, b: float, low: float, high: float, **counts: int) -> dict:
    """One AUC difference as every paired comparison reports it, with its sample sizes."""
    return {"difference": a - b, "auc_a": a, "auc_b": b, "ci_low": low, "ci_high": high, **counts}


def auc_columns(pos: ArrayLike, neg: ArrayLike) -> np.ndarray:
    """ROC-AUC of every column at once (`[n_pos, m]` vs `[n_neg, m]` -> `[m]`), ties counting
    half: P(positive > negative) per column, from mid-ranks (as Mann-Whitney U)."""
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    if pos.ndim != 2 or neg.ndim != 2 or pos.shape[1] != neg.shape[1]:
        raise ValueError(f"pos and neg must be [n, m] with the same m, got {pos.shape} and {neg.shape}")
    if not len(pos) or not len(neg):
        raise ValueError("pos and neg need at least one row each")
    ranks = _sps.rankdata(np.vstack([pos, neg]), axis=0)
    n_pos, n_neg = len(pos), len(neg)
    return (ranks[:n_pos].sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def proportion_with_ci(successes: int, n: int, level: float = 0.95) -> dict:
    """A rate with its Wilson score interval (sound at rates near 0 or 1 and for small n)."""
    from statsmodels.stats.proportion import proportion_confint

    if n < 1:
        raise ValueError(f"a proportion needs n >= 1, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in 0..{n}, got {successes}")
    low, high = proportion_confint(successes, n, alpha=1 - level, method="wilson")
    return {
        "rate": successes / n,
        "ci_low": float(low),
        "ci_high": float(high),
        "k": int(successes),
        "n": int(n),
        "ci": "Wilson",
    }


def interaction_test(y: ArrayLike, factor_a: ArrayLike, factor_b: ArrayLike) -> dict:
    """F-test of the a×b interaction in a 2×2 design: does b's effect on y depend on a?

    OLS of `y ~ a * b` with a type 2 ANOVA table (statsmodels). For the interaction, the
    highest-order term, type 2 and type 3 both compare the full model with the additive one
    and give the same F, balanced or not; type 2 is used because its main-effect rows do not
    depend on the 0/1 coding, whereas type 3's do.
    """
    y = _sample(y, "y")
    factors = []
    for name, f in (("factor_a", factor_a), ("factor_b", factor_b)):
        f = np.asarray(f)
        if f.shape != y.shape:
            raise ValueError(f"{name} has shape {f.shape} but y has shape {y.shape}")
        if not np.isin(f, (0, 1)).all():
            raise ValueError(f"{name} must be coded 0/1, got values {np.unique(f).tolist()}")
        factors.append(f.astype(float))
    a, b = factors
    cells = {(i, j): (a == i) & (b == j) for i in (0, 1) for j in (0, 1)}
    small = {f"a={i},b={j}": int(m.sum()) for (i, j), m in cells.items() if m.sum() < 2}
    if small:
        raise ValueError(f"every a×b cell needs at least 2 observations, got {small}")
    if all(np.ptp(y[m]) == 0 for m in cells.values()):
        raise ValueError("y is constant within every cell: residual variance is zero, so F is undefined")
    fit = smf.ols("y ~ a * b", data=pd.DataFrame({"y": y, "a": a, "b": b})).fit()
    row = anova_lm(fit, typ=2).loc["a:b"]
    return {
        "f": float(row["F"]),
        "df_num": int(row["df"]),
        "df_den": int(fit.df_resid),
        "p_value": float(row["PR(>F)"]),
        "interaction_coef": float(fit.params["a:b"]),
        "test": "OLS F-test of the a×b interaction (two-way ANOVA)",
    }


def first_divergence(
    traj_a: ArrayLike, traj_b: ArrayLike, alpha: float = 0.05, min_run: int = 1
) -> int | None:
    """Where trajectories part: first position whose Welch test (Holm) stays significant `min_run` long."""
    ta, tb = np.asarray(traj_a, dtype=float), np.asarray(traj_b, dtype=float)
    if ta.ndim != 2 or tb.ndim != 2:
        raise ValueError(f"trajectories must be 2-D [n_prompts, n_positions], got {ta.shape} and {tb.shape}")
    if np.isinf(ta).any() or np.isinf(tb).any():
        raise ValueError("trajectories contain infinite values")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha}")
    if min_run < 1:
        raise ValueError(f"min_run must be at least 1, got {min_run}")
    width = max(ta.shape[1], tb.shape[1])  # a group with fewer columns has no data (NaN) beyond them
    ta, tb = (np.pad(t, ((0, 0), (0, width - t.shape[1])), constant_values=np.nan) for t in (ta, tb))
    tested, p_values = [], []
    for j in range(width):
        xa, xb = ta[~np.isnan(ta[:, j]), j], tb[~np.isnan(tb[:, j]), j]
        if len(xa) >= 2 and len(xb) >= 2:
            p = _sps.ttest_ind(xa, xb, equal_var=False).pvalue
            if not np.isnan(p):  # both columns constant and equal: nothing to test
                tested.append(j)
                p_values.append(p)
    if not tested:
        raise ValueError("no position has at least 2 non-NaN, non-constant values per group to test")
    significant = np.zeros(width, dtype=bool)
    significant[tested] = np.asarray(holm(p_values)) <= alpha
    run = 0
    for j, sig in enumerate(significant):
        run = run + 1 if sig else 0
        if run == min_run:
            return j - min_run + 1
    return None


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


def clustered_mean_auc_with_ci(
    folds: Sequence[tuple[ArrayLike, ArrayLike, ArrayLike, ArrayLike]], n_boot: int = 2000, seed: int = 0
) -> dict:
    """The mean of several folds' ROC-AUCs with a percentile bootstrap CI that resamples clusters
    (questions): each fold is (pos, neg, pos_cluster, neg_cluster), and a resample draws that
    fold's clusters with replacement and keeps every row of each. Answers to one question share
    it, so resampling answers one by one (as `auc_with_ci` does) would claim more independent
    evidence than the questions give; a held-out set generalises over questions."""
    rng = np.random.default_rng(seed)
    prepared = []
    for i, (pos, neg, pos_c, neg_c) in enumerate(folds):
        pos, neg = _sample(pos, f"fold {i} pos"), _sample(neg, f"fold {i} neg")
        pos_c, neg_c = np.asarray(pos_c), np.asarray(neg_c)
        clusters = np.unique(np.concatenate([pos_c, neg_c]))
        if len(clusters) < 2:
            raise ValueError(f"fold {i} needs at least 2 clusters, got {len(clusters)}")
        prepared.append(([pos[pos_c == c] for c in clusters], [neg[neg_c == c] for c in clusters], pos, neg))
    boot = np.empty(n_boot)
    for b in range(n_boot):
        aucs = []
        for pos_by, neg_by, _, _ in prepared:
            pick = rng.integers(0, len(pos_by), len(pos_by))
            p, n = np.concatenate([pos_by[k] for k in pick]), np.concatenate([neg_by[k] for k in pick])
            aucs.append(auc(p, n) if len(p) and len(n) else np.nan)
        boot[b] = np.mean(aucs)
    if np.isnan(boot).any():
        raise ValueError(
            f"a resample drew no positive or no negative in {int(np.isnan(boot).sum())} of {n_boot}"
        )
    low, high = np.percentile(boot, [2.5, 97.5])
    point = float(np.mean([auc(pos, neg) for _, _, pos, neg in prepared]))
    return {
        "auc": point,
        "ci_low": float(low),
        "ci_high": float(high),
        "n_clusters": sum(len(f[0]) for f in prepared),
    }


def spearman(x: ArrayLike, y: ArrayLike) -> dict:
    """Spearman rank correlation with its p-value: a monotone association robust to outliers and scale."""
    x, y = _sample(x, "x", min_n=3), _sample(y, "y", min_n=3)
    if len(x) != len(y):
        raise ValueError(f"x and y must pair up, got {len(x)} and {len(y)} values")
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        raise ValueError("x or y is constant, so the rank correlation is undefined")
    res = _sps.spearmanr(x, y)
    rho, n = float(res.statistic), len(x)
    low, high = spearman_ci(rho, n)
    return {"rho": rho, "p_value": float(res.pvalue), "n": n, "ci_low": low, "ci_high": high}


def spearman_ci(rho: float, n: int, level: float = 0.95) -> tuple[float | None, float | None]:
    """CI of a Spearman rho by Fisher's z with Bonett and Wright's (2000) variance,
    (1 + rho^2 / 2) / (n - 3), which keeps the coverage near nominal for rank correlations
    where Pearson's 1 / (n - 3) is too narrow. None for n <= 3 or |rho| = 1 (z is infinite)."""
    if n <= 3 or abs(rho) >= 1:
        return None, None
    half = _sps.norm.ppf(0.5 + level / 2) * np.sqrt((1 + rho**2 / 2) / (n - 3))
    z = np.arctanh(rho)
    return float(np.tanh(z - half)), float(np.tanh(z + half))


def rate_difference_with_ci(k1: int, n1: int, k2: int, n2: int, level: float = 0.95) -> dict:
    """Difference of two rates, k1/n1 - k2/n2, with Newcombe's hybrid score interval (his
    method 10: built from the two Wilson intervals), sound at rates near 0 or 1 where the
    Wald interval is not. The rates are treated as independent samples."""
    a, b = proportion_with_ci(k1, n1, level), proportion_with_ci(k2, n2, level)
    diff = a["rate"] - b["rate"]
    return {
        "difference": diff,
        "ci_low": diff - float(np.hypot(a["rate"] - a["ci_low"], b["ci_high"] - b["rate"])),
        "ci_high": diff + float(np.hypot(a["ci_high"] - a["rate"], b["rate"] - b["ci_low"])),
        "k_a": a["k"],
        "n_a": a["n"],
        "k_b": b["k"],
        "n_b": b["n"],
        "ci": "Newcombe hybrid score (from Wilson intervals)",
    }
