"""Separation statistics used to score a trait vector on held-out data."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats as _sps


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
    from scipy.stats import rankdata

    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    ranks = rankdata(np.r_[pos, neg])
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


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
    if not 0 < level < 1:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    idx_a = rng.integers(0, len(a), size=(n_boot, len(a)))
    idx_b = rng.integers(0, len(b), size=(n_boot, len(b)))
    boot = np.fromiter((statistic(a[i], b[j]) for i, j in zip(idx_a, idx_b)), dtype=float, count=n_boot)
    n_nan = int(np.isnan(boot).sum())
    if n_nan:
        raise ValueError(f"statistic was NaN in {n_nan} of {n_boot} bootstrap resamples")
    tail = (1 - level) / 2
    with np.errstate(invalid="ignore"):  # interpolating next to an infinite resample: caught below
        low, high = np.quantile(boot, [tail, 1 - tail])
    if not (np.isfinite(low) and np.isfinite(high)):
        n_inf = int(np.isinf(boot).sum())
        raise ValueError(
            f"bootstrap CI is not finite: statistic was infinite in {n_inf} of {n_boot} resamples "
            "(groups too small or with too few distinct values)"
        )
    return float(low), float(high)


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


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values in input order: family-wise control, more power than Bonferroni."""
    p = np.asarray(p_values, dtype=float)
    if p.ndim != 1:
        raise ValueError(f"p_values must be a flat sequence, got shape {p.shape}")
    if not ((p >= 0) & (p <= 1)).all():
        raise ValueError("p_values must all lie in [0, 1] (NaN is not a p-value)")
    order = np.argsort(p, kind="stable")
    scaled = (len(p) - np.arange(len(p))) * p[order]
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return adjusted.tolist()


def auc_with_ci(pos: ArrayLike, neg: ArrayLike, n_boot: int = 2000, seed: int = 0) -> dict:
    """ROC-AUC with a stratified bootstrap CI (positives and negatives resampled separately)."""
    low, high = bootstrap_ci(pos, neg, auc, n_boot=n_boot, seed=seed)
    return {"auc": auc(pos, neg), "ci_low": low, "ci_high": high, "n_pos": len(pos), "n_neg": len(neg)}


def _rss(x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Residual sum of squares and coefficients of the least-squares fit of y on the columns of x."""
    beta = np.linalg.lstsq(x, y, rcond=None)[0]
    resid = y - x @ beta
    return float(resid @ resid), beta


def interaction_test(y: ArrayLike, factor_a: ArrayLike, factor_b: ArrayLike) -> dict:
    """F-test of the a×b interaction in a 2×2 design: does b's effect on y depend on a?"""
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
    design = np.column_stack([np.ones_like(y), a, b, a * b])
    rss_full, beta = _rss(design, y)
    rss_additive, _ = _rss(design[:, :3], y)
    df_den = len(y) - 4
    f_stat = max(rss_additive - rss_full, 0.0) / (rss_full / df_den)
    return {
        "f": f_stat,
        "df_num": 1,
        "df_den": df_den,
        "p_value": float(_sps.f.sf(f_stat, 1, df_den)),
        "interaction_coef": float(beta[3]),
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
    from sklearn.metrics import roc_curve

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


def spearman(x: ArrayLike, y: ArrayLike) -> dict:
    """Spearman rank correlation with its p-value: a monotone association robust to outliers and scale."""
    x, y = _sample(x, "x", min_n=3), _sample(y, "y", min_n=3)
    if len(x) != len(y):
        raise ValueError(f"x and y must pair up, got {len(x)} and {len(y)} values")
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        raise ValueError("x or y is constant, so the rank correlation is undefined")
    res = _sps.spearmanr(x, y)
    return {"rho": float(res.statistic), "p_value": float(res.pvalue), "n": len(x)}
