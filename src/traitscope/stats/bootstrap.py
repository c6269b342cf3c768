"""The sample checks and the percentile bootstrap every CI here rests on."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats as _sps


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


def cluster_index(clusters: ArrayLike, n: int, what: str) -> tuple[np.ndarray, int]:
    """Each of `n` values' cluster as 0..k-1, and k (at least 2: one cluster has no spread)."""
    labels, index = np.unique(np.asarray(clusters), return_inverse=True)
    if len(index) != n:
        raise ValueError(f"clusters has {len(index)} labels for {n} {what}")
    if len(labels) < 2:
        raise ValueError(f"a clustered CI needs at least 2 clusters, got {len(labels)}")
    return index, len(labels)


def cluster_counts(n_clusters: int, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot, n_clusters]: how often each cluster is drawn in each resample of whole clusters
    with replacement. A statistic of per-cluster sums (n, sum x, sum x^2, k) is then one matrix
    product per resample, however many answers a cluster holds."""
    picks = np.random.default_rng(seed).integers(0, n_clusters, size=(n_boot, n_clusters))
    return np.stack([np.bincount(row, minlength=n_clusters) for row in picks])


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


def mean_with_ci(
    x: ArrayLike, n_boot: int = 2000, level: float = 0.95, seed: int = 0, clusters: ArrayLike | None = None
) -> dict:
    """Mean with a percentile bootstrap CI: the condition means that reports and figures share.

    With `clusters` (a label per value: a question's several sampled answers), resamples draw
    whole clusters, so answers that share their question's pull do not count as independent;
    the mean is still over values."""
    x = _sample(x, "x")
    if clusters is None:
        low, high = _percentile_bootstrap((x,), np.mean, n_boot, level, seed, vectorized=True)
        return {"mean": float(x.mean()), "ci_low": low, "ci_high": high, "n": len(x)}
    index, k = cluster_index(clusters, len(x), "values")
    if not 0 < level < 1:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level}")
    counts = cluster_counts(k, n_boot, seed)
    boot = (counts @ np.bincount(index, weights=x)) / (counts @ np.bincount(index))
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(boot, [tail, 100 - tail])
    return {
        "mean": float(x.mean()),
        "ci_low": float(low),
        "ci_high": float(high),
        "n": len(x),
        "n_clusters": k,
        "ci": "percentile bootstrap over clusters (questions)",
    }
