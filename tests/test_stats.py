"""Statistics against sklearn/scipy and hand-computed values."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from traitscope.stats import auc, cohens_d


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    pos = rng.integers(0, 5, size=30).astype(float)  # integers force ties
    neg = rng.integers(0, 4, size=25).astype(float)
    expected = roc_auc_score(np.r_[np.ones(30), np.zeros(25)], np.r_[pos, neg])
    assert auc(pos, neg) == pytest.approx(expected)


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
