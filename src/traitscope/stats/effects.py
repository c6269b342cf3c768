"""Effect sizes and comparisons of groups: Cohen's d and d_z with CIs, paired gains, the 2x2
interaction of a within-unit factor and the first position where two groups diverge."""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats as _sps

from traitscope.stats.bootstrap import (
    _percentile_bootstrap,
    _sample,
    bootstrap_ci,
    cluster_counts,
    cluster_index,
)
from traitscope.stats.rates import holm


def cohens_d(a: np.ndarray, b: np.ndarray) -> float:
    """Cohen's d with the pooled (n-1) standard deviation; positive when `a` is larger."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    na, nb = len(a), len(b)
    pooled = ((na - 1) * a.var(ddof=1) + (nb - 1) * b.var(ddof=1)) / (na + nb - 2)
    diff = a.mean() - b.mean()
    if pooled == 0:
        return 0.0 if diff == 0 else float(np.sign(diff) * np.inf)
    return float(diff / np.sqrt(pooled))


def cohens_dz(diff: np.ndarray, axis: int = -1) -> np.ndarray:
    """Cohen's d_z of paired differences: mean over their (n-1) standard deviation (along
    `axis`, so bootstrap resamples come in one call)."""
    diff = np.asarray(diff, float)
    sd = diff.std(ddof=1, axis=axis)
    mean = diff.mean(axis=axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sd == 0, np.where(mean == 0, 0.0, np.sign(mean) * np.inf), mean / sd)


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


def clustered_dz_ci(
    diff: ArrayLike, clusters: ArrayLike, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile CI of d_z over pairs, resampling whole clusters (a question's samples go
    together): samples of one question share its effect, so resampling pairs alone would
    count them as independent and narrow the CI."""
    diff = _sample(diff, "diff")
    index, k = cluster_index(clusters, len(diff), "paired differences")
    # per-cluster sufficient statistics: a resample's d_z is a function of their sums
    n_c, s1, s2 = (np.bincount(index, weights=w, minlength=k) for w in (np.ones_like(diff), diff, diff**2))
    counts = cluster_counts(k, n_boot, seed)
    n, t1, t2 = counts @ n_c, counts @ s1, counts @ s2
    mean = t1 / n
    with np.errstate(divide="ignore", invalid="ignore"):
        sd = np.sqrt(np.maximum(t2 - n * mean**2, 0.0) / (n - 1))
        boot = np.where(sd == 0, np.where(mean == 0, 0.0, np.sign(mean) * np.inf), mean / sd)
    tail = (1 - level) / 2 * 100
    low, high = (float(v) for v in np.percentile(boot, [tail, 100 - tail]))
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError("bootstrap CI is not finite: a resample's differences were all equal")
    return low, high


def compare_paired(
    a: ArrayLike, b: ArrayLike, n_boot: int = 2000, seed: int = 0, clusters: ArrayLike | None = None
) -> dict:
    """The paired comparison (same prompts, two models): d_z with a bootstrap CI over pairs,
    paired t and Wilcoxon signed-rank. A finetune that shifts every prompt a little shows up
    here even when the two groups' spreads overlap.

    With `clusters` (several samples per question), the CI resamples clusters and the tests
    run on each cluster's mean difference: its samples are not independent pairs.
    """
    a, b = _sample(a, "a"), _sample(b, "b")
    if len(a) != len(b):
        raise ValueError(f"paired samples need equal lengths, got {len(a)} and {len(b)}")
    diff = a - b
    if np.ptp(diff) == 0:
        raise ValueError("every paired difference is the same: the paired t and d_z are undefined")
    if clusters is None:
        paired, signed = _sps.ttest_rel(a, b), _sps.wilcoxon(a, b)
        low, high = _percentile_bootstrap((diff,), cohens_dz, n_boot, 0.95, seed, vectorized=True)
        design = {"test": "paired_t"}
    else:
        means = pd.Series(diff).groupby(np.asarray(clusters)).mean().to_numpy()
        paired, signed = _sps.ttest_1samp(means, 0.0), _sps.wilcoxon(means)
        low, high = clustered_dz_ci(diff, clusters, n_boot=n_boot, seed=seed)
        design = {"test": "paired_t on cluster means", "n_clusters": len(means)}
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
        **design,
    }


def relative_gain_paired(
    a: ArrayLike,
    b: ArrayLike,
    base: ArrayLike,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    min_gain: float | None = None,
) -> dict:
    """How much larger a's shift from `base` is than b's, relative to b's: (Δa - Δb) / |Δb| with
    Δx = mean(x - base), and a paired bootstrap CI (row i of the three arrays is one unit, e.g. a
    question answered with no vector, vector b and vector a; resamples draw whole rows).

    The ratio is ill-defined when Δb is 0 (no gain) or when Δb changes sign across resamples
    (the CI would mix gains over opposite baselines): the ratio CI is then None with the reason,
    and the difference Δa - Δb, always defined, carries its own CI beside it. With `min_gain`,
    the margin (Δa - Δb) - min_gain x |Δb| and its CI too: positive exactly when the gain exceeds
    `min_gain`, whatever Δb's sign, and continuous where Δb is 0, so "gain > min_gain" is
    decided by a number that always has a CI.
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
    if min_gain is not None:

        def margin(x, y, axis=-1):
            dy = y.mean(axis=axis)
            return x.mean(axis=axis) - dy - min_gain * np.abs(dy)

        low, high = _percentile_bootstrap(
            (shift_a, shift_b), margin, n_boot, level, seed, vectorized=True, paired=True
        )
        record |= {"min_gain": min_gain, "margin": float(margin(shift_a, shift_b))}
        record |= {"margin_ci_low": low, "margin_ci_high": high}
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


def within_interaction(effects_a: ArrayLike, effects_b: ArrayLike, level: float = 0.95) -> dict:
    """The interaction of a 2x2 design with one factor within units and one between them (each
    unit measured without and with the within factor; each unit in one group of the other):
    the within factor's per-unit effects compared between the groups. Welch's t, so unequal
    spreads are allowed; with pooled variances its t squared is the mixed ANOVA's interaction F.
    A two-way ANOVA of the four cells would treat a unit's two measurements as independent."""
    a, b = _sample(effects_a, "effects_a"), _sample(effects_b, "effects_b")
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        raise ValueError("every per-unit effect is constant within both groups: Welch's t is undefined")
    welch = _sps.ttest_ind(a, b, equal_var=False)
    ci = welch.confidence_interval(level)
    return {
        "n_a": len(a),
        "n_b": len(b),
        "difference": float(a.mean() - b.mean()),
        "ci_low": float(ci.low),
        "ci_high": float(ci.high),
        "t": float(welch.statistic),
        "df": float(welch.df),
        "p_value": float(welch.pvalue),
        "test": "Welch t of the per-unit effects, group a vs group b",
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
