"""Statistics against hand-computed values and independent closed forms.

The module delegates to scipy, scikit-learn and statsmodels; every expected value here is
worked out by hand or from a textbook formula written in the test, never by the call the
module itself makes, so a wrong library call or argument shows up as a failure.
"""

import json

import numpy as np
import pytest
from scipy.stats import f as f_dist
from scipy.stats import norm
from scipy.stats import t as t_dist

from traitscope.stats import (
    auc,
    auc_with_ci,
    bootstrap_ci,
    clustered_dz_ci,
    clustered_rates,
    cohens_d,
    compare_groups,
    compare_paired,
    first_divergence,
    holm,
    mean_with_ci,
    mean_with_t_ci,
    proportion_with_ci,
    rate_difference_with_ci,
    relative_gain_paired,
    spearman,
    spearman_ci,
    within_interaction,
    youden_threshold,
)

# --- independent reference formulas


def _pair_auc(pos, neg):
    """AUC by counting every (positive, negative) pair: wins count 1, ties 1/2."""
    pos, neg = np.asarray(pos, float)[:, None], np.asarray(neg, float)[None, :]
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


def _welch(a, b):
    """Welch's t, Welch-Satterthwaite df and the two-sided p-value from the t distribution."""
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    t = (np.mean(a) - np.mean(b)) / np.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return t, df, 2 * t_dist.sf(abs(t), df)


def _average_ranks(x):
    """Ranks 1..n, tied values sharing the mean of the ranks they span."""
    x = np.asarray(x, float)
    return np.array([(x < v).sum() + ((x == v).sum() + 1) / 2 for v in x])


def _linear_quantile(values, q):
    """numpy's default (type 7) quantile by hand: interpolate between order statistics."""
    ordered = np.sort(values)
    h = q * (len(ordered) - 1)
    lo = int(np.floor(h))
    return ordered[lo] + (h - lo) * (ordered[lo + 1] - ordered[lo])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_pair_count_with_ties(seed):
    rng = np.random.default_rng(seed)
    pos = rng.integers(0, 5, size=30).astype(float)  # integers force ties
    neg = rng.integers(0, 4, size=25).astype(float)
    assert auc(pos, neg) == pytest.approx(_pair_auc(pos, neg))


def test_auc_hand_computed():
    # pairs (pos > neg): (2>1), (3>1), (3>2), tie (2,2) counts half -> 3.5 / 4
    assert auc([2, 3], [1, 2]) == pytest.approx(0.875)


def test_cohens_d_hand_computed():
    a, b = np.array([2.0, 4.0, 6.0]), np.array([1.0, 2.0, 3.0])
    # var(a)=4, var(b)=1 (ddof=1): pooled = (2*4 + 2*1)/4 = 2.5; d = (4-2)/sqrt(2.5)
    assert cohens_d(a, b) == pytest.approx(2 / np.sqrt(2.5))
    assert cohens_d(b, a) == pytest.approx(-2 / np.sqrt(2.5))


def test_cohens_d_zero_variance():
    assert cohens_d([1.0, 1.0], [1.0, 1.0]) == 0.0
    assert cohens_d([2.0, 2.0], [1.0, 1.0]) == np.inf


# --- helpers for the comparisons below


def _plain_json(result: dict) -> None:
    """Results go straight into JSON reports: plain Python scalars, no NaN or inf."""
    json.dumps(result, allow_nan=False)
    for key, value in result.items():
        assert type(value) in (int, float, str), (key, type(value))


def _mean_diff(a, b):
    return float(np.mean(a) - np.mean(b))


# --- bootstrap_ci


def test_bootstrap_ci_contains_estimate_and_is_seeded():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 1.0, 40), rng.normal(0.0, 1.0, 50)
    low, high = bootstrap_ci(a, b, cohens_d, n_boot=1000, seed=3)
    assert isinstance(low, float) and isinstance(high, float)
    assert low < cohens_d(a, b) < high
    assert bootstrap_ci(a, b, cohens_d, n_boot=1000, seed=3) == (low, high)
    assert bootstrap_ci(a, b, cohens_d, n_boot=1000, seed=4) != (low, high)


def test_bootstrap_ci_level_widens_interval():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0.5, 1.0, 30), rng.normal(0.0, 1.0, 30)
    low90, high90 = bootstrap_ci(a, b, _mean_diff, n_boot=2000, level=0.90)
    low99, high99 = bootstrap_ci(a, b, _mean_diff, n_boot=2000, level=0.99)
    assert low99 < low90 < high90 < high99


def test_bootstrap_ci_width_shrinks_with_n():
    rng = np.random.default_rng(2)
    widths = []
    for n in (20, 80, 320):
        low, high = bootstrap_ci(rng.normal(0.5, 1, n), rng.normal(0, 1, n), cohens_d, n_boot=1000)
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]
    # CI width of a mean difference scales like 1/sqrt(n): quadrupling n roughly halves it
    assert widths[2] / widths[0] == pytest.approx(0.25, abs=0.1)


def test_bootstrap_ci_percentile_hand_computed():
    # a = [0, 1], b = [0, 0]: a resample's mean is 0, 1/2 or 1 with probability 1/4, 1/2, 1/4,
    # so the 2.5% / 97.5% percentiles are 0 and 1, and the 30% / 70% ones (level 0.4) both 1/2
    assert bootstrap_ci([0.0, 1.0], [0.0, 0.0], _mean_diff, level=0.95) == (0.0, 1.0)
    assert bootstrap_ci([0.0, 1.0], [0.0, 0.0], _mean_diff, level=0.4) == (0.5, 0.5)


def test_bootstrap_ci_resamples_each_group_within_itself():
    a, b = np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0, 30.0, 40.0, 50.0])

    def stratified(x, y):  # 1 when the resample keeps both sizes and draws each group from itself
        return float(len(x) == 3 and len(y) == 5 and np.isin(x, a).all() and np.isin(y, b).all())

    assert bootstrap_ci(a, b, stratified, n_boot=300) == (1.0, 1.0)


def test_bootstrap_ci_matches_normal_closed_form():
    # a mean difference of large samples: its bootstrap distribution is close to normal with the
    # plug-in (ddof=0) standard error, so the percentile CI is about diff -/+ z * se
    rng = np.random.default_rng(5)
    a, b = rng.normal(0.3, 1.0, 400), rng.exponential(1.0, 500)
    se = np.sqrt(a.var() / len(a) + b.var() / len(b))
    z = norm.ppf(0.95)
    low, high = bootstrap_ci(a, b, _mean_diff, n_boot=10000, level=0.9)
    # Monte-Carlo error of the quantiles with 10000 resamples is ~0.003; the CI is ~0.22 wide
    assert (low, high) == pytest.approx((_mean_diff(a, b) - z * se, _mean_diff(a, b) + z * se), abs=0.01)


def test_bootstrap_ci_coverage_of_known_shift():
    rng = np.random.default_rng(11)
    true_shift, hits, reps = 0.7, 0, 200
    for rep in range(reps):
        a, b = rng.normal(true_shift, 1.0, 40), rng.normal(0.0, 1.0, 40)
        low, high = bootstrap_ci(a, b, _mean_diff, n_boot=200, seed=rep)
        hits += low <= true_shift <= high
    assert 0.88 <= hits / reps <= 0.99


@pytest.mark.parametrize(
    "a, b, kwargs, match",
    [
        ([1.0], [1.0, 2.0], {}, "at least 2"),
        ([1.0, 2.0], [], {}, "at least 2"),
        ([1.0, np.nan], [1.0, 2.0], {}, "NaN"),
        ([[1.0, 2.0]], [1.0, 2.0], {}, "1-D"),
        ([1.0, 2.0], [1.0, 2.0], {"level": 1.0}, "level"),
        ([1.0, 2.0], [1.0, 2.0], {"n_boot": 0}, "n_boot"),
        # both groups constant: Cohen's d is infinite on every resample
        ([2.0, 2.0], [1.0, 1.0], {}, "infinite in 2000 of 2000"),
        # resamples where both groups come out constant make d infinite in ~25% of resamples
        ([1.0, 2.0], [3.0, 4.0], {}, "CI is not finite"),
    ],
)
def test_bootstrap_ci_rejects_degenerate_input(a, b, kwargs, match):
    with pytest.raises(ValueError, match=match):
        bootstrap_ci(a, b, cohens_d, **kwargs)


def test_bootstrap_ci_rejects_nan_statistic():
    with pytest.raises(ValueError, match="NaN in 100 of 100"):
        bootstrap_ci([1.0, 2.0], [3.0, 4.0], lambda a, b: float("nan"), n_boot=100)


def test_bootstrap_ci_tolerates_rare_infinite_resamples():
    # n=3: both resamples constant (d = +/-inf) in ~1% of resamples, beyond the 2.5/97.5th percentiles
    a, b = np.array([2.0, 4.0, 6.0]), np.array([1.0, 2.0, 3.0])
    boot = []

    def recorded_d(x, y):
        boot.append(cohens_d(x, y))
        return boot[-1]

    low, high = bootstrap_ci(a, b, recorded_d)
    assert len(boot) == 2000
    assert 0 < np.isinf(boot).mean() < 0.025
    expected = (_linear_quantile(boot, 0.025), _linear_quantile(boot, 0.975))
    assert np.isfinite(expected).all()
    assert (low, high) == pytest.approx(expected)


# --- mean_with_ci


def test_mean_with_ci_hand_computed():
    # resample means of [0, 1] are 0, 1/2, 1 with probability 1/4, 1/2, 1/4 (see bootstrap_ci above)
    assert mean_with_ci([0.0, 1.0]) == {"mean": 0.5, "ci_low": 0.0, "ci_high": 1.0, "n": 2}
    assert mean_with_ci([0.0, 1.0], level=0.4) == {"mean": 0.5, "ci_low": 0.5, "ci_high": 0.5, "n": 2}
    assert mean_with_ci([3.0, 3.0, 3.0]) == {"mean": 3.0, "ci_low": 3.0, "ci_high": 3.0, "n": 3}


def test_mean_with_ci_normal_closed_form_and_seed():
    x = np.random.default_rng(6).normal(2.0, 1.5, 500)
    result = mean_with_ci(x, n_boot=10000, seed=1)
    half = norm.ppf(0.975) * x.std() / np.sqrt(len(x))  # plug-in SE of the mean
    assert (result["ci_low"], result["ci_high"]) == pytest.approx(
        (x.mean() - half, x.mean() + half), abs=0.01
    )
    assert mean_with_ci(x, n_boot=500, seed=2) == mean_with_ci(x, n_boot=500, seed=2)
    assert mean_with_ci(x, n_boot=500, seed=2) != mean_with_ci(x, n_boot=500, seed=3)
    _plain_json(result)


def test_mean_with_ci_over_clusters_resamples_whole_questions():
    """Question a's answers 1, 2, 3 and question b's 10: resamples of whole questions are aa, ab,
    ba, bb with means 2, 16 / 4 = 4 (over answers, not over the two question means), 4 and 10,
    probability 1/4, 1/2, 1/4. The 95% CI is [2, 10] and the 40% CI [4, 4]."""
    x, questions = [1.0, 2.0, 3.0, 10.0], ["a", "a", "a", "b"]
    result = mean_with_ci(x, clusters=questions)
    assert result == {
        "mean": 4.0,
        "ci_low": 2.0,
        "ci_high": 10.0,
        "n": 4,
        "n_clusters": 2,
        "ci": "percentile bootstrap over clusters (questions)",
    }
    narrow = mean_with_ci(x, clusters=questions, level=0.4)
    assert (narrow["ci_low"], narrow["ci_high"]) == (4.0, 4.0)
    # two questions whose five answers agree: as ten independent answers the CI is far narrower
    agree, pairs = [0.0] * 5 + [10.0] * 5, ["a"] * 5 + ["b"] * 5
    assert (
        mean_with_ci(agree, clusters=pairs)["ci_low"],
        mean_with_ci(agree, clusters=pairs)["ci_high"],
    ) == (
        0.0,
        10.0,
    )
    plain = mean_with_ci(agree)
    assert plain["ci_high"] - plain["ci_low"] < 7
    with pytest.raises(ValueError, match="at least 2 clusters"):
        mean_with_ci(x, clusters=["a"] * 4)
    with pytest.raises(ValueError, match="3 labels for 4 values"):
        mean_with_ci(x, clusters=["a", "b", "b"])


@pytest.mark.parametrize("x, match", [([1.0], "at least 2"), ([1.0, np.nan], "NaN"), ([[1.0, 2.0]], "1-D")])
def test_mean_with_ci_rejects_degenerate_input(x, match):
    with pytest.raises(ValueError, match=match):
        mean_with_ci(x)


# --- compare_groups


def _mann_whitney(a, b):
    """U of `a` by pair counting; two-sided p from the normal approximation with continuity correction."""
    u = _pair_auc(a, b) * len(a) * len(b)
    mu = len(a) * len(b) / 2
    sigma = np.sqrt(len(a) * len(b) * (len(a) + len(b) + 1) / 12)  # no ties in continuous data
    return u, min(1.0, 2 * norm.sf((abs(u - mu) - 0.5) / sigma))


@pytest.mark.parametrize("seed", [0, 1])
def test_compare_groups_matches_closed_forms(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(0.8, 1.0, 25), rng.normal(0.0, 2.0, 40)
    result = compare_groups(a, b, n_boot=500, seed=seed)
    welch_t, _, welch_p = _welch(a, b)
    mw_u, mw_p = _mann_whitney(a, b)
    assert set(result) == {
        "n_a", "n_b", "mean_a", "mean_b", "cohens_d", "ci_low", "ci_high",
        "welch_t", "p_value", "mannwhitney_u", "p_mannwhitney", "test",
    }  # fmt: skip
    assert (result["n_a"], result["n_b"]) == (25, 40)
    assert result["mean_a"] == pytest.approx(a.mean())
    assert result["mean_b"] == pytest.approx(b.mean())
    assert result["welch_t"] == pytest.approx(welch_t)
    assert result["p_value"] == pytest.approx(welch_p)
    assert result["mannwhitney_u"] == pytest.approx(mw_u)
    assert result["p_mannwhitney"] == pytest.approx(mw_p)
    pooled = ((24 * a.var(ddof=1) + 39 * b.var(ddof=1)) / 63) ** 0.5
    assert result["cohens_d"] == pytest.approx((a.mean() - b.mean()) / pooled)
    assert result["ci_low"] < result["cohens_d"] < result["ci_high"]
    assert result["test"] == "welch_t"
    _plain_json(result)


def test_compare_groups_hand_computed():
    # Welch: means 4 and 2, var 4 and 1 (n=3): se = sqrt(4/3 + 1/3) = sqrt(5/3); t = 2 / se
    # U for a: pairs (a > b): 2>1, 4>1, 4>2, 4>3, 6>1, 6>2, 6>3 -> 7 of 9, tie (2, 2) counts half -> 7.5
    result = compare_groups([2.0, 4.0, 6.0], [1.0, 2.0, 3.0], n_boot=200)
    assert result["welch_t"] == pytest.approx(2 / np.sqrt(5 / 3))
    assert result["mannwhitney_u"] == pytest.approx(7.5)
    assert result["cohens_d"] == pytest.approx(2 / np.sqrt(2.5))


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")  # scipy's note on a constant sample
def test_compare_groups_one_constant_group_is_fine():
    b = np.array([0.0, 0.5, -0.5, 0.2, -0.1, 0.3])
    result = compare_groups([1.0, 1.0, 1.0, 1.0, 1.0], b, n_boot=300)
    # Welch with var(a) = 0: t = (1 - mean(b)) / sqrt(var(b) / n_b)
    assert result["welch_t"] == pytest.approx((1 - b.mean()) / np.sqrt(b.var(ddof=1) / 6))
    assert result["mannwhitney_u"] == 30.0  # every a beats every b: 5 * 6
    _plain_json(result)


@pytest.mark.parametrize(
    "a, b, match",
    [
        ([1.0], [1.0, 2.0, 3.0], "at least 2"),
        ([1.0, 2.0, np.nan], [1.0, 2.0, 3.0], "NaN"),
        ([1.0, 2.0, np.inf], [1.0, 2.0, 3.0], "infinite"),
        ([3.0, 3.0, 3.0], [1.0, 1.0], "both groups are constant"),
    ],
)
def test_compare_groups_rejects_degenerate_input(a, b, match):
    with pytest.raises(ValueError, match=match):
        compare_groups(a, b, n_boot=100)


# --- holm


def _holm_reference(p):
    """Textbook Holm: sort, multiply the k-th smallest by (m - k + 1), running max, cap at 1, unsort."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    adjusted, running = [0.0] * m, 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m - k) * p[i]))
        adjusted[i] = running
    return adjusted


def test_relative_gain_paired_hand_computed():
    # shifts from base: a [2, 2], b [1, 2]; gain (2 - 1.5) / 1.5 = 1/3. A resample draws question
    # 1 twice (p 1/4: gain (2 - 1) / 1 = 1, difference 1), one of each (p 1/2: 1/3, 1/2) or question
    # 2 twice (p 1/4: (2 - 2) / 2 = 0, difference 0), so the 2.5% / 97.5% percentiles are 0 and 1
    # for both, and the 30% / 70% ones (level 0.4) the mixed resample's
    out = relative_gain_paired([2.0, 2.0], [1.0, 2.0], [0.0, 0.0])
    assert out["gain"] == pytest.approx(1 / 3) and (out["ci_low"], out["ci_high"]) == (0.0, 1.0)
    assert (out["delta_a"], out["delta_b"], out["difference"], out["n"]) == (2.0, 1.5, 0.5, 2)
    assert (out["difference_ci_low"], out["difference_ci_high"]) == (0.0, 1.0)
    assert "reason" not in out
    narrow = relative_gain_paired([2.0, 2.0], [1.0, 2.0], [0.0, 0.0], level=0.4)
    assert narrow["ci_low"] == pytest.approx(1 / 3) and narrow["ci_high"] == pytest.approx(1 / 3)
    assert (narrow["difference_ci_low"], narrow["difference_ci_high"]) == (0.5, 0.5)
    # the base cancels per question: shifting every arm of a question by the same amount changes nothing
    moved = relative_gain_paired([12.0, -3.0], [11.0, -3.0], [10.0, -5.0])
    assert {k: moved[k] for k in out} == pytest.approx(out)


def test_relative_gain_paired_negative_baseline_shift_uses_its_size():
    # b lowers the score by 2 on every question, a by 1: a's shift is 1 above b's, 50% of |-2|
    out = relative_gain_paired([4.0, 6.0, 8.0], [3.0, 5.0, 7.0], [5.0, 7.0, 9.0])
    assert out["gain"] == pytest.approx(0.5) and (out["ci_low"], out["ci_high"]) == pytest.approx((0.5, 0.5))


def test_relative_gain_paired_undefined_ratio_keeps_the_difference():
    # b's shifts [-1, 2]: mean 0.5, but a resample of question 1 twice has mean -1 (p 1/4), so
    # the ratio's CI would mix opposite baselines; the difference a - b ([2, 1]) keeps its CI
    out = relative_gain_paired([1.0, 3.0], [-1.0, 2.0], [0.0, 0.0])
    assert out["gain"] == pytest.approx(3.0)  # (2 - 0.5) / 0.5, the point estimate
    assert out["ci_low"] is None and out["ci_high"] is None and "changes sign" in out["reason"]
    assert out["difference"] == 1.5 and (out["difference_ci_low"], out["difference_ci_high"]) == (1.0, 2.0)
    flat = relative_gain_paired([1.0, 3.0], [0.0, 0.0], [0.0, 0.0])  # b does not move the score
    assert flat["gain"] is None and flat["ci_low"] is None and "is 0" in flat["reason"]
    assert flat["difference"] == 2.0


def test_relative_gain_paired_margin_hand_computed():
    # "gain > 0.2" as the margin (Δa - Δb) - 0.2 |Δb|: shifts a [1, 3], b [-1, 2]. A resample
    # draws question 1 twice (p 1/4: 2 - 0.2 = 1.8), one of each (Δa 2, Δb 0.5: 1.5 - 0.1 = 1.4)
    # or question 2 twice (1 - 0.4 = 0.6): 1.4 [0.6, 1.8], while the ratio has no CI
    out = relative_gain_paired([1.0, 3.0], [-1.0, 2.0], [0.0, 0.0], min_gain=0.2)
    assert out["min_gain"] == 0.2 and out["margin"] == pytest.approx(1.4)
    assert (out["margin_ci_low"], out["margin_ci_high"]) == pytest.approx((0.6, 1.8))
    assert out["ci_low"] is None  # the ratio's
    # b positive in every resample: the margin is mean(a - 1.2 b), here 1.0 on every question
    flat = relative_gain_paired([2.2, 4.6, 7.0], [1.0, 3.0, 5.0], [0.0, 0.0, 0.0], min_gain=0.2)
    assert (flat["margin"], flat["margin_ci_low"], flat["margin_ci_high"]) == pytest.approx((1.0, 1.0, 1.0))
    # b lowers the score by 2, a by 1: gain 0.5, margin 1 - 0.2 x 2 = 0.6 (not a - 1.2 b = 1.4)
    down = relative_gain_paired([4.0, 6.0, 8.0], [3.0, 5.0, 7.0], [5.0, 7.0, 9.0], min_gain=0.2)
    assert (down["margin"], down["margin_ci_low"], down["margin_ci_high"]) == pytest.approx((0.6, 0.6, 0.6))
    assert "margin" not in relative_gain_paired([1.0, 3.0], [-1.0, 2.0], [0.0, 0.0])


def test_relative_gain_paired_rejects_unpaired_input():
    with pytest.raises(ValueError, match="equal lengths"):
        relative_gain_paired([1.0, 2.0], [1.0, 2.0], [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="at least 2"):
        relative_gain_paired([1.0], [1.0], [0.0])


def test_holm_hand_computed():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # capped at 1, monotone in the raw p-values
    assert holm([0.3, 0.9, 0.4]) == pytest.approx([0.9, 0.9, 0.9])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert holm([0.2]) == pytest.approx([0.2])
    assert holm([]) == []


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_holm_matches_reference_with_ties(seed):
    rng = np.random.default_rng(seed)
    p = np.round(rng.uniform(0, 0.2, 15), 2).tolist()  # rounding forces ties
    adjusted = holm(p)
    assert adjusted == pytest.approx(_holm_reference(p))
    assert all(type(x) is float for x in adjusted)
    order = np.argsort(p, kind="stable")
    assert np.all(np.diff(np.asarray(adjusted)[order]) >= 0)
    assert all(raw <= adj <= 1 for raw, adj in zip(p, adjusted))


@pytest.mark.parametrize("p", [[0.1, np.nan], [0.1, 1.2], [-0.01], [[0.1, 0.2]]])
def test_holm_rejects_non_p_values(p):
    with pytest.raises(ValueError):
        holm(p)


# --- auc_with_ci


@pytest.mark.parametrize("seed", [0, 1])
def test_auc_with_ci_matches_pair_count(seed):
    rng = np.random.default_rng(seed)
    pos, neg = np.round(rng.normal(1.0, 1.0, 30), 1), np.round(rng.normal(0.0, 1.0, 45), 1)  # ties
    result = auc_with_ci(pos, neg, n_boot=500, seed=seed)
    assert result["auc"] == pytest.approx(_pair_auc(pos, neg))
    assert (result["n_pos"], result["n_neg"]) == (30, 45)
    assert result["ci_low"] < result["auc"] < result["ci_high"] <= 1.0
    # the vectorised resampling path draws the same resamples as bootstrap_ci with a pair-count AUC
    reference = bootstrap_ci(pos, neg, _pair_auc, n_boot=500, seed=seed)
    assert (result["ci_low"], result["ci_high"]) == pytest.approx(reference)
    _plain_json(result)


def test_auc_with_ci_hand_computed():
    # negatives tie at 0.5; a resample of positives [0, 1] scores AUC 0, 1/2 or 1 with
    # probability 1/4, 1/2, 1/4 (0 vs 0.5 loses, 1 wins), so the 95% CI runs from 0 to 1
    result = auc_with_ci([0.0, 1.0], [0.5, 0.5])
    assert result == {"auc": 0.5, "ci_low": 0.0, "ci_high": 1.0, "n_pos": 2, "n_neg": 2}


def test_auc_with_ci_perfect_separation_reaches_the_exact_bound():
    """Every stratified resample of a perfect separation scores 1, so the bootstrap says [1, 1]
    at any n. The CI reaches to the exact bound instead: with m = min(n_pos, n_neg), AUCs under
    0.025^(1/m) make m ordered pairs less likely than 2.5%: m = 2 gives sqrt(0.025) = 0.158,
    m = 20 gives 0.8316 (a 0.7 gate: failed by 2 + 3 answers, passed by 20 + 25)."""
    result = auc_with_ci([5.0, 6.0, 7.0], [1.0, 2.0], n_boot=200)
    assert (result["auc"], result["ci_high"]) == (1.0, 1.0)
    assert (
        result["ci_low"] == pytest.approx(0.158113883)
        and result["ci"] == "exact bound of a perfect separation"
    )
    big = auc_with_ci(np.arange(25.0) + 100, np.arange(20.0), n_boot=200)
    assert big["ci_low"] == pytest.approx(0.831567, abs=1e-6) and big["ci_high"] == 1.0
    reversed_ = auc_with_ci([1.0, 2.0], [5.0, 6.0, 7.0], n_boot=200)  # AUC 0: the bound mirrors
    assert (reversed_["auc"], reversed_["ci_low"]) == (0.0, 0.0)
    assert reversed_["ci_high"] == pytest.approx(1 - 0.158113883)
    # short of perfect, the bootstrap's CI stands as it is
    assert "ci" not in auc_with_ci([5.0, 6.0, 0.0], [1.0, 2.0], n_boot=200)


def test_cross_fitted_perfect_separation_reaches_the_exact_bound():
    """A perfect separation on both halves resamples to AUC 1, so the bootstrap's CI is [1, 1];
    it reaches to 0.025^(1/m), m the halves' independent (positive, negative) pairs from distinct
    clusters. Four positive and four negative one-row clusters, alternately in two halves: 2 + 2
    pairs, m = 4, as auc_with_ci's 4 + 4. Four clusters a half holding both labels: 2 disjoint
    pairs a half, m = 4 again. A reversed separation mirrors the bound."""
    from traitscope.stats import cross_fitted_auc

    scores = np.array([[5.0], [6.0], [7.0], [8.0], [1.0], [2.0], [3.0], [4.0]])
    positive = np.array([True] * 4 + [False] * 4)
    rows = [np.array([i]) for i in range(8)]
    by_label = [[rows[0:4][h::2], rows[4:8][h::2]] for h in (0, 1)]
    found = cross_fitted_auc(scores, positive, by_label, lambda r: 0, n_boot=300)
    assert (found["auc"], found["ci_high"]) == (1.0, 1.0)
    assert found["ci_low"] == pytest.approx(0.025**0.25)
    flipped = cross_fitted_auc(-scores, positive, by_label, lambda r: 0, n_boot=300)
    assert (flipped["auc"], flipped["ci_low"]) == (0.0, 0.0)
    assert flipped["ci_high"] == pytest.approx(1 - 0.025**0.25)
    # clusters of a positive and a negative row each (a question asked both ways), 4 a half
    both = np.tile([[5.0], [1.0]], (8, 1))
    labels = np.tile([True, False], 8)
    pairs_of = [np.array([2 * q, 2 * q + 1]) for q in range(8)]
    halves = [[pairs_of[0::2]], [pairs_of[1::2]]]
    found = cross_fitted_auc(both, labels, halves, lambda r: 0, n_boot=300)
    assert found["ci_low"] == pytest.approx(0.025**0.25)


def test_auc_with_ci_rejects_degenerate_input():
    with pytest.raises(ValueError, match="at least 2"):
        auc_with_ci([1.0], [0.0, 0.5])
    with pytest.raises(ValueError, match="NaN"):
        auc_with_ci([1.0, np.nan], [0.0, 0.5])


def test_a_status_reads_the_refits_ci_never_narrower_than_the_samples():
    """Over the vector's refits a perfect separation also resamples to [1, 1]; the sample's own
    CI reaches its exact bound (0.478 on 5 + 5), so the status reads the union of the two."""
    from traitscope.summary.records import ci_with_draws

    perfect = {"ci_low": 0.478, "ci_high": 1.0, "over_vector_draws": {"ci_low": 1.0, "ci_high": 1.0}}
    assert ci_with_draws(perfect) == (0.478, 1.0)
    wider = {"ci_low": 0.6, "ci_high": 0.8, "over_vector_draws": {"ci_low": 0.5, "ci_high": 0.9}}
    assert ci_with_draws(wider) == (0.5, 0.9)
    assert ci_with_draws({"ci_low": 0.6, "ci_high": 0.8}) == (0.6, 0.8)
    no_ci = {"ci_low": None, "ci_high": None, "over_vector_draws": {"ci_low": 0.5, "ci_high": 0.9}}
    assert ci_with_draws(no_ci) == (0.5, 0.9)


# --- within_interaction


def test_within_interaction_hand_computed():
    """Per-unit effects 1, 2, 3 (group a) and 0, 0, 1, 1 (group b): difference 2 - 0.5 = 1.5;
    variances 1 and 1/3, standard error sqrt(1/3 + 1/12) = sqrt(5/12); Welch-Satterthwaite df
    (5/12)^2 / ((1/3)^2 / 2 + (1/12)^2 / 3) = 3.2609."""
    result = within_interaction([1.0, 2.0, 3.0], [0.0, 0.0, 1.0, 1.0])
    se = np.sqrt(5 / 12)
    df = (5 / 12) ** 2 / ((1 / 3) ** 2 / 2 + (1 / 12) ** 2 / 3)
    assert result["difference"] == pytest.approx(1.5)
    assert result["t"] == pytest.approx(1.5 / se) and result["df"] == pytest.approx(df)
    assert result["p_value"] == pytest.approx(2 * t_dist.sf(1.5 / se, df))
    half = t_dist.ppf(0.975, df) * se
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((1.5 - half, 1.5 + half))
    assert (result["n_a"], result["n_b"]) == (3, 4)
    _plain_json(result)


def test_within_interaction_reads_effects_a_cell_anova_cannot_see():
    """Units that differ a lot from each other but move alike under the within factor: the
    per-unit effects find a group difference of 0.5 that the units' spread would drown in a
    two-way ANOVA of the four cells (which treats a unit's two measurements as independent)."""
    rng = np.random.default_rng(0)
    level_a, level_b = rng.normal(0, 5, 20), rng.normal(0, 5, 20)
    without_a, without_b = level_a, level_b
    with_a = level_a + 1.0 + rng.normal(0, 0.1, 20)
    with_b = level_b + 0.5 + rng.normal(0, 0.1, 20)
    result = within_interaction(with_a - without_a, with_b - without_b)
    assert result["p_value"] < 1e-6 and result["ci_low"] > 0.3 and result["ci_high"] < 0.7
    # the two-way ANOVA of the four cells (balanced, closed form) sees no interaction
    cells = [without_a, with_a, without_b, with_b]
    contrast = cells[1].mean() - cells[0].mean() - cells[3].mean() + cells[2].mean()
    ss_within = sum(((c - c.mean()) ** 2).sum() for c in cells)
    f = (20 * contrast**2 / 4) / (ss_within / (4 * 20 - 4))
    assert contrast == pytest.approx(result["difference"]) and f_dist.sf(f, 1, 76) > 0.3


def test_within_interaction_rejects_constant_effects():
    with pytest.raises(ValueError, match="constant within both groups"):
        within_interaction([1.0, 1.0], [2.0, 2.0])
    with pytest.raises(ValueError):
        within_interaction([1.0], [2.0, 3.0])


# --- first_divergence


def _planted_trajectories(diverge_at=5, width=12, n=30, shift=3.0, seed=0):
    rng = np.random.default_rng(seed)
    traj_a = rng.normal(0, 1, (n, width))
    traj_b = traj_a[rng.permutation(n)].copy()  # identical column distributions...
    traj_b[:, diverge_at:] = rng.normal(shift, 1, (n, width - diverge_at))  # ...until here
    return traj_a, traj_b


def test_first_divergence_planted():
    traj_a, traj_b = _planted_trajectories(diverge_at=5)
    assert first_divergence(traj_a, traj_b) == 5
    assert first_divergence(traj_b, traj_a) == 5
    assert first_divergence(traj_a, traj_b, min_run=7) == 5
    assert first_divergence(traj_a, traj_b, min_run=8) is None  # only 7 positions remain


def test_first_divergence_identical_distributions():
    rng = np.random.default_rng(1)
    traj = rng.normal(0, 1, (25, 10))
    assert first_divergence(traj, traj[::-1]) is None
    assert first_divergence(rng.normal(0, 1, (25, 10)), rng.normal(0, 1, (30, 10))) is None


def test_first_divergence_min_run_skips_blips():
    traj_a, traj_b = _planted_trajectories(diverge_at=7, width=14, seed=2)
    traj_b[:, 2] += 5.0  # a single-position blip
    assert first_divergence(traj_a, traj_b) == 2
    assert first_divergence(traj_a, traj_b, min_run=2) == 7
    assert first_divergence(traj_a, traj_b, min_run=3) == 7


def test_first_divergence_applies_holm_across_positions():
    rng = np.random.default_rng(3)
    traj_a = rng.normal(0, 1, (20, 20))
    traj_b = traj_a[rng.permutation(20)].copy()
    col_a = np.linspace(-1, 1, 20)
    traj_a[:, 4], traj_b[:, 4] = col_a, col_a + 0.5
    p_raw = _welch(traj_a[:, 4], traj_b[:, 4])[2]
    assert 0.05 / 20 < p_raw < 0.05  # nominally significant, not after correcting 20 positions
    assert first_divergence(traj_a, traj_b) is None
    assert first_divergence(traj_a[:, 4:5], traj_b[:, 4:5]) == 0  # a single test needs no correction


def test_first_divergence_ragged_with_nan():
    traj_a, traj_b = _planted_trajectories(diverge_at=5, width=12, n=30, seed=4)
    traj_a[:10, 8:] = np.nan  # a third of the prompts end early
    traj_b[::3, 9:] = np.nan
    assert first_divergence(traj_a, traj_b) == 5
    # position 5 keeps a single non-NaN value in group a: skipped, so divergence starts at 6
    traj_a[1:, 5] = np.nan
    assert first_divergence(traj_a, traj_b) == 6
    # the groups may span different widths: the wider one's extra positions are untestable
    assert first_divergence(traj_a[:, :8], traj_b) == 6
    assert first_divergence(traj_a, traj_b[:, :5]) is None


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")  # scipy's note on constant columns
def test_first_divergence_skips_constant_equal_columns():
    traj_a, traj_b = _planted_trajectories(diverge_at=5, width=8, seed=5)
    traj_a[:, 5] = traj_b[:, 5] = 0.0  # nothing to test at 5 (Welch t is 0/0)
    assert first_divergence(traj_a, traj_b) == 6
    with pytest.raises(ValueError, match="no position"):
        first_divergence(np.zeros((5, 3)), np.zeros((4, 3)))


def test_first_divergence_rejects_degenerate_input():
    traj = np.random.default_rng(0).normal(0, 1, (10, 6))
    with pytest.raises(ValueError, match="2-D"):
        first_divergence(traj[:, 0], traj[:, 1])
    with pytest.raises(ValueError, match="no position"):
        first_divergence(traj[:1], traj)
    with pytest.raises(ValueError, match="no position"):
        first_divergence(np.full((5, 3), np.nan), traj)
    with pytest.raises(ValueError, match="infinite"):
        first_divergence(np.where(traj > 1, np.inf, traj), traj)
    with pytest.raises(ValueError, match="alpha"):
        first_divergence(traj, traj, alpha=0.0)
    with pytest.raises(ValueError, match="min_run"):
        first_divergence(traj, traj, min_run=0)


# --- youden_threshold


def test_youden_threshold_hand_computed():
    # at 0.7: 3 of 4 positives and 0 of 3 negatives score >= 0.7 -> J = 0.75;
    # next best at 0.4: TPR 1, FPR 1/3 -> J = 2/3
    result = youden_threshold([0.9, 0.8, 0.7, 0.4], [0.6, 0.3, 0.2])
    assert result == pytest.approx({"threshold": 0.7, "tpr": 0.75, "fpr": 0.0, "j": 0.75})
    _plain_json(result)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_youden_threshold_brute_force(seed):
    rng = np.random.default_rng(seed)
    pos = np.round(rng.normal(1.0, 1.0, 40), 1)  # rounding forces tied scores
    neg = np.round(rng.normal(0.0, 1.0, 35), 1)
    best_j = max((pos >= t).mean() - (neg >= t).mean() for t in np.r_[pos, neg])
    result = youden_threshold(pos, neg)
    t = result["threshold"]
    assert result["tpr"] == pytest.approx((pos >= t).mean())
    assert result["fpr"] == pytest.approx((neg >= t).mean())
    assert result["j"] == pytest.approx(best_j)
    assert result["j"] == pytest.approx(result["tpr"] - result["fpr"])


def test_youden_threshold_no_separation_is_finite():
    result = youden_threshold([1.0, 2.0], [1.0, 2.0])
    assert np.isfinite(result["threshold"])
    assert result["j"] == pytest.approx(0.0)


def test_youden_threshold_rejects_degenerate_input():
    with pytest.raises(ValueError, match="at least 2"):
        youden_threshold([1.0, 2.0], [0.5])
    with pytest.raises(ValueError, match="NaN"):
        youden_threshold([1.0, np.nan], [0.5, 0.1])


# --- spearman


@pytest.mark.parametrize("seed", [0, 1])
def test_spearman_matches_ranked_pearson(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 6, 40).astype(float)  # ties
    y = x + rng.normal(0, 2, 40)
    # Spearman's rho = Pearson's r of average ranks; p from t = rho sqrt((n-2)/(1-rho^2)), n-2 df
    rho = np.corrcoef(_average_ranks(x), _average_ranks(y))[0, 1]
    p = 2 * t_dist.sf(abs(rho) * np.sqrt(38 / (1 - rho**2)), 38)
    result = spearman(x, y)
    assert result["rho"] == pytest.approx(rho)
    assert result["p_value"] == pytest.approx(p)
    assert result["n"] == 40
    _plain_json(result)


def test_spearman_hand_computed():
    assert spearman([1, 2, 3, 4, 5], [1, 8, 27, 64, 125])["rho"] == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4, 5], [5, 4, 3, 2, 1])["rho"] == pytest.approx(-1.0)
    # ranks x = 1..4, y = 2, 1, 4, 3: d^2 = 1+1+1+1 -> rho = 1 - 6*4 / (4*15) = 0.6
    assert spearman([1, 2, 3, 4], [20, 10, 40, 30])["rho"] == pytest.approx(0.6)


def test_spearman_ci_hand_computed():
    # Fisher z: atanh(0.21) = 0.21317; Bonett-Wright se sqrt((1 + 0.21^2 / 2) / 397) = 0.050738;
    # z -/+ 1.95996 se = 0.11373, 0.31262; tanh of those
    assert spearman_ci(0.21, 400) == pytest.approx((0.113237, 0.302817), abs=1e-6)
    # n = 10: se sqrt(1.125 / 7) = 0.40089, z 0.54931 -/+ 0.78573
    assert spearman_ci(0.5, 10) == pytest.approx((-0.232119, 0.870476), abs=1e-6)
    assert spearman_ci(0.5, 3) == (None, None) and spearman_ci(1.0, 50) == (None, None)
    # ranks differ by 1 everywhere: rho = 1 - 6 * 6 / (6 * 35) = 0.828571; z = 1.183562,
    # se sqrt((1 + rho^2 / 2) / 3) = 0.669145: tanh(z -/+ 1.95996 se)
    result = spearman([1, 2, 3, 4, 5, 6], [2, 1, 4, 3, 6, 5])
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((-0.127245, 0.986482), abs=1e-6)


@pytest.mark.parametrize(
    "x, y, match",
    [
        ([1.0, 2.0], [2.0, 1.0], "at least 3"),
        ([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0], "pair up"),
        ([1.0, 1.0, 1.0], [1.0, 2.0, 3.0], "constant"),
        ([1.0, 2.0, np.nan], [1.0, 2.0, 3.0], "NaN"),
    ],
)
def test_spearman_rejects_degenerate_input(x, y, match):
    with pytest.raises(ValueError, match=match):
        spearman(x, y)


def test_compare_paired_hand_computed():
    """diffs 1..10: mean 5.5, sd sqrt(110/12), d_z = 5.5 / sd, t = d_z sqrt(10) on 9 df; every
    difference positive, so the signed-rank statistic (the smaller rank sum) is 0."""
    b = np.array([3.0, -1.0, 0.5, 2.0, 7.0, 1.0, -4.0, 0.0, 2.5, 9.0])
    a = b + np.arange(1, 11)
    r = compare_paired(a, b, n_boot=500, seed=0)
    dz = 5.5 / np.sqrt(110 / 12)
    assert r["n_pairs"] == 10 and r["mean_diff"] == pytest.approx(5.5)
    assert r["cohens_dz"] == pytest.approx(dz)
    assert r["paired_t"] == pytest.approx(dz * np.sqrt(10))
    assert r["p_value"] == pytest.approx(2 * t_dist.sf(dz * np.sqrt(10), 9))
    assert r["wilcoxon_w"] == 0.0 and r["p_wilcoxon"] == pytest.approx(2 / 2**10)
    assert r["ci_low"] < dz < r["ci_high"]


def test_compare_paired_sees_a_shift_that_groups_hide():
    """A small shift shared by every prompt: invisible to Welch across groups, clear in pairs."""
    rng = np.random.default_rng(0)
    base = rng.normal(0, 5, 60)
    shifted = base + 0.3 + rng.normal(0, 0.1, 60)
    assert compare_groups(shifted, base)["p_value"] > 0.5
    paired = compare_paired(shifted, base)
    assert paired["p_value"] < 1e-10 and paired["ci_low"] > 1.0


def test_compare_paired_with_clusters_tests_cluster_means():
    """3 questions x 2 samples, differences (1, 3), (2, 4), (5, 7): d_z over the 6 pairs is
    (11/3) / sqrt(14/3); the t-test runs on the question means 2, 3, 6: mean 11/3,
    sd sqrt(13/3), t = (11/3) / (sqrt(13/3) / sqrt(3)) = 11 / sqrt(13) on 2 df."""
    diff = np.array([1.0, 3.0, 2.0, 4.0, 5.0, 7.0])
    r = compare_paired(diff, np.zeros(6), n_boot=400, seed=0, clusters=["q1", "q1", "q2", "q2", "q3", "q3"])
    dz, t = (11 / 3) / np.sqrt(14 / 3), 11 / np.sqrt(13)
    assert r["cohens_dz"] == pytest.approx(dz)
    assert r["n_pairs"] == 6 and r["n_clusters"] == 3
    assert r["paired_t"] == pytest.approx(t)
    assert r["p_value"] == pytest.approx(2 * t_dist.sf(t, 2))
    # a resample of 3 clusters drawn from these: every one is one of finitely many d_z values
    assert r["ci_low"] <= dz <= r["ci_high"]


def test_clustered_dz_ci_widens_when_questions_carry_the_effect():
    """Samples of a question share its effect: resampling pairs counts them as independent
    and narrows the CI; resampling questions does not."""
    rng = np.random.default_rng(1)
    question_effect = rng.normal(0.5, 1.0, 12)
    diff = np.repeat(question_effect, 8) + rng.normal(0, 0.1, 96)
    clusters = np.repeat(np.arange(12), 8)
    pairs = compare_paired(diff, np.zeros(96), n_boot=1000, seed=0)
    questions = compare_paired(diff, np.zeros(96), n_boot=1000, seed=0, clusters=clusters)
    assert questions["cohens_dz"] == pairs["cohens_dz"] == pytest.approx(diff.mean() / diff.std(ddof=1))
    width = questions["ci_high"] - questions["ci_low"]
    assert width > 2 * (pairs["ci_high"] - pairs["ci_low"])
    assert questions["p_value"] > pairs["p_value"]


def test_clustered_dz_ci_rejects_one_cluster_or_mismatched_labels():
    with pytest.raises(ValueError, match="at least 2 clusters"):
        clustered_dz_ci([1.0, 2.0, 3.0], ["q", "q", "q"])
    with pytest.raises(ValueError, match="3 labels for 4"):
        clustered_dz_ci([1.0, 2.0, 3.0, 4.0], ["a", "b", "c"])


def test_compare_paired_rejects_unequal_or_constant_differences():
    with pytest.raises(ValueError, match="equal lengths"):
        compare_paired([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="the same"):
        compare_paired([1.0, 2.0, 3.0], [0.0, 1.0, 2.0])


@pytest.mark.parametrize(
    "k1, n1, k2, n2, low, high",
    [  # Newcombe (1998), Stat Med 17:873, Table II, method 10 (hybrid score, no correction)
        (56, 70, 48, 80, 0.0524, 0.3339),
        (9, 10, 3, 10, 0.1705, 0.8090),
        (5, 56, 0, 29, -0.0381, 0.1926),
    ],
)
def test_rate_difference_matches_newcombes_published_intervals(k1, n1, k2, n2, low, high):
    out = rate_difference_with_ci(k1, n1, k2, n2)
    assert out["difference"] == pytest.approx(k1 / n1 - k2 / n2)
    assert (out["ci_low"], out["ci_high"]) == pytest.approx((low, high), abs=1e-4)


def test_auc_counts_ties_half_on_every_resample_row():
    from traitscope.stats import _auc_along

    # pos 1 beats only the 0; pos 2 ties both 2s and beats the 0; pos 3 beats all: (1 + 2 + 3) / 9
    assert auc([1, 2, 3], [2, 2, 0]) == pytest.approx(6 / 9)
    rows_pos = np.array([[1, 2, 3], [3, 3, 3], [0, 0, 0]], float)
    rows_neg = np.array([[2, 2, 0], [2, 2, 0], [0, 0, 0]], float)
    np.testing.assert_allclose(_auc_along(rows_pos, rows_neg), [6 / 9, 1.0, 0.5])
    np.testing.assert_allclose(_auc_along(rows_pos.T, rows_neg.T, axis=0), [6 / 9, 1.0, 0.5])


def test_auc_of_codes_reads_only_the_order_per_column():
    """Rank codes keep the order and the ties, so the AUC on codes is the AUC on the scores:
    column 0 is the tie case above (6/9), column 1 the same scores times -10 (1 - 6/9),
    scored along axis 0 as the layer choice does, and along -1 as the bootstrap does."""
    from traitscope.stats import auc_of_codes, column_codes, rank_codes

    pos = np.array([[1, -30], [2, -20], [3, -10]], float)
    neg = np.array([[2, -20], [2, -20], [0, 0]], float)
    codes, k = column_codes(np.vstack([pos, neg]))
    np.testing.assert_allclose(auc_of_codes(codes[:3], codes[3:], k, axis=0), [6 / 9, 3 / 9])
    (p, n), k = rank_codes([1, 2, 3], [2, 2, 0])
    assert k == 4 and p.tolist() == [1, 2, 3] and n.tolist() == [2, 2, 0]
    assert auc_of_codes(p, n, k) == pytest.approx(6 / 9)


def test_mean_with_t_ci_by_hand():
    """[0.6, 0.7, 0.8]: mean 0.7, sd 0.1, t(0.975, 2 df) = 4.302653, half-width
    4.302653 * 0.1 / sqrt(3) = 0.248414."""
    result = mean_with_t_ci([0.6, 0.7, 0.8])
    assert result["mean"] == pytest.approx(0.7) and result["n"] == 3
    assert result["ci_low"] == pytest.approx(0.7 - 0.248414, abs=1e-6)
    assert result["ci_high"] == pytest.approx(0.7 + 0.248414, abs=1e-6)
    # two runs, 90%: t(0.95, 1 df) = 6.313752, sd 0.0707107, half-width 6.313752 * 0.05 = 0.315688
    two = mean_with_t_ci([0.5, 0.6], level=0.90)
    assert two["ci_high"] - two["mean"] == pytest.approx(0.315688, abs=1e-6)
    with pytest.raises(ValueError):
        mean_with_t_ci([0.5])


# --- clustered_rates


def test_clustered_rates_hand_computed_and_wider_than_wilson_when_clusters_agree():
    """Ten questions of 4 samples, all misaligned in 3 questions and none in 7: the rate is
    12 / 40 either way, but only 10 independent draws back it. Resampling questions widens the CI
    past Wilson's over 40 answers; the difference's point estimate is the rates' difference."""
    k = np.array([[4, 0]] * 3 + [[0, 0]] * 7, dtype=float)
    n = np.full_like(k, 4.0)
    n[0, 1] = 0  # question 0 has no eligible answer of the second variant
    rates, difference = clustered_rates(k, n, n_boot=2000, seed=0)
    assert rates[0]["rate"] == pytest.approx(12 / 40) and (rates[0]["k"], rates[0]["n"]) == (12, 40)
    assert rates[1]["rate"] == 0.0 and (rates[1]["n"], rates[1]["n_clusters"]) == (36, 9)
    wilson = proportion_with_ci(12, 40)
    assert rates[0]["ci_high"] - rates[0]["ci_low"] > 1.3 * (wilson["ci_high"] - wilson["ci_low"])
    assert rates[0]["ci_low"] <= 0.3 <= rates[0]["ci_high"]
    # a rate of 0: every resample gives 0, so the CI is Wilson's over the answers, not [0, 0]
    zero = proportion_with_ci(0, 36)
    assert (rates[1]["ci_low"], rates[1]["ci_high"]) == (0.0, pytest.approx(zero["ci_high"]))
    assert (
        difference["difference"] == pytest.approx(0.3)
        and difference["ci_low"] <= 0.3 <= difference["ci_high"]
    )


def test_clustered_rates_of_clusters_alike_fall_back_to_wilson_and_bad_counts_are_refused():
    """Every question at 1 in 2: the resamples cannot spread, so the CI is Wilson's 6 of 12."""
    rates, difference = clustered_rates([[1], [2], [3]], [[2], [4], [6]], n_boot=200)
    wilson = proportion_with_ci(6, 12)
    assert rates[0]["rate"] == 0.5 and difference is None
    assert (rates[0]["ci_low"], rates[0]["ci_high"]) == pytest.approx((wilson["ci_low"], wilson["ci_high"]))
    with pytest.raises(ValueError, match="0..n"):
        clustered_rates([[3], [0]], [[2], [2]])
    with pytest.raises(ValueError, match="clusters >= 2"):
        clustered_rates([[1]], [[2]])
    with pytest.raises(ValueError, match="no answers in any cluster"):
        clustered_rates([[0, 0], [0, 0]], [[1, 0], [1, 0]])
