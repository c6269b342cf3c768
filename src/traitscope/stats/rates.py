"""Rates, p-value corrections, rank correlation and small-sample means: Holm, Wilson and
Newcombe intervals, rates over clustered answers, Spearman's rho with its CI, Student's t
interval of a mean."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats as _sps
from statsmodels.stats.multitest import multipletests

from traitscope.stats.bootstrap import _sample, cluster_counts


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


def _cluster_ratios(k: np.ndarray, n: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot, g] ratios sum k / sum n per column of `k`, `n` ([clusters, g]), each resample
    drawing whole clusters (rows) with replacement; NaN where a resample's n sums to 0."""
    counts = cluster_counts(k.shape[0], n_boot, seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (counts @ k) / (counts @ n)


def clustered_rates(
    k: ArrayLike, n: ArrayLike, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[list[dict], dict | None]:
    """Rates whose answers come in clusters (a question's samples share its pull), each sum k /
    sum n, and, for two columns, their difference over the same clusters. Wilson and Newcombe
    count answers as independent, which narrows the CI when a cluster's answers agree; a
    percentile bootstrap over clusters sees that, but not the spread a rate of 0 or 1 hides
    (every resample gives the same rate). So each CI spans both: the cluster bootstrap's,
    widened to Wilson's (Newcombe's for the difference) where that reaches further.
    `k`, `n`: [clusters, columns] counts. A resample whose clusters hold no answer of a column
    has no rate: the bootstrap is taken over the others, and left out when they are under 95%
    of the resamples."""
    k, n = np.asarray(k, float), np.asarray(n, float)
    if k.ndim != 2 or k.shape != n.shape or k.shape[0] < 2:
        raise ValueError(f"k and n must be [clusters >= 2, columns] alike, got {k.shape} and {n.shape}")
    if ((k < 0) | (k > n)).any():
        raise ValueError("every cluster's k must lie in 0..n")
    if (n.sum(axis=0) == 0).any():
        raise ValueError("a column has no answers in any cluster")
    boot = _cluster_ratios(k, n, n_boot, seed)
    tail = (1 - level) / 2 * 100

    def spanned(values: np.ndarray, independent: dict) -> tuple[float, float]:
        values = values[~np.isnan(values)]  # resamples without an answer of a column: no rate
        low, high = independent["ci_low"], independent["ci_high"]
        if len(values) >= 0.95 * n_boot:
            b_low, b_high = np.percentile(values, [tail, 100 - tail])
            low, high = min(low, float(b_low)), max(high, float(b_high))
        return low, high

    what = "percentile bootstrap over clusters (questions), widened to {} where that reaches further"
    rates = []
    for j in range(k.shape[1]):
        wilson = proportion_with_ci(int(k[:, j].sum()), int(n[:, j].sum()), level)
        low, high = spanned(boot[:, j], wilson)
        rates.append(
            {
                **wilson,
                "ci_low": low,
                "ci_high": high,
                "n_clusters": int((n[:, j] > 0).sum()),
                "ci": what.format("Wilson"),
            }
        )
    if k.shape[1] != 2:
        return rates, None
    newcombe = rate_difference_with_ci(rates[0]["k"], rates[0]["n"], rates[1]["k"], rates[1]["n"], level)
    low, high = spanned(boot[:, 0] - boot[:, 1], newcombe)
    difference = {**newcombe, "ci_low": low, "ci_high": high, "ci": what.format("Newcombe")}
    return rates, difference


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


def mean_with_t_ci(x: ArrayLike, level: float = 0.95) -> dict:
    """Mean with Student's t interval: for a handful of independent runs (optimiser restarts),
    where a percentile bootstrap of 3 values can only return their range."""
    x = _sample(x, "x")
    half = _sps.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    mean = float(x.mean())
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "n": len(x)}
