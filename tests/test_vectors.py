"""Vector maths against hand-computed cases."""

import numpy as np
import pytest
import torch

from traitscope.vectors import mean_diff, probe, project, unit


def test_mean_diff_hand_computed():
    pos = torch.tensor([[[1.0, 2.0]], [[3.0, 4.0]]])  # [n=2, L=1, d=2]
    neg = torch.tensor([[[0.0, 0.0]], [[1.0, -2.0]]])
    assert mean_diff(pos, neg).tolist() == [[2.0 - 0.5, 3.0 - (-1.0)]]


def test_project_is_scalar_projection_on_unit_vector():
    acts = torch.tensor([[[3.0, 4.0], [1.0, 0.0]]])  # one prompt, two layers
    vecs = torch.tensor([[0.0, 2.0], [5.0, 0.0]])  # norms 2 and 5 must not matter
    assert project(acts, vecs).tolist() == [[4.0, 1.0]]


def test_unit_keeps_zero_rows_zero():
    out = unit(torch.tensor([[0.0, 0.0], [3.0, 4.0]]))
    assert out[0].tolist() == [0.0, 0.0]
    assert out[1].tolist() == pytest.approx([0.6, 0.8])


def test_probe_finds_the_separating_axis_and_orients_it():
    rng = np.random.default_rng(0)
    n, d = 60, 5
    noise = rng.normal(size=(2 * n, 1, d))
    noise[:, 0, 2] += np.r_[np.ones(n), -np.ones(n)] * 3  # only axis 2 separates
    acts = torch.tensor(noise, dtype=torch.float32)
    w = probe(acts[:n], acts[n:])
    assert w.shape == (1, d)
    assert float(w.norm()) == pytest.approx(1.0, abs=1e-5)
    assert int(w[0].abs().argmax()) == 2 and w[0, 2] > 0.9


def test_probe_direction_matches_sklearn_on_raw_scale():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 1, 4)) * np.array([1.0, 10.0, 0.1, 1.0])
    x[:20, 0, 0] += 1.5
    acts = torch.tensor(x, dtype=torch.float32)
    ours = probe(acts[:20], acts[20:])[0].numpy()
    feats = x[:, 0]
    scaler = StandardScaler().fit(feats)
    clf = LogisticRegression(max_iter=2000).fit(scaler.transform(feats), np.r_[np.ones(20), np.zeros(20)])
    raw = clf.coef_[0] / scaler.scale_
    np.testing.assert_allclose(ours, raw / np.linalg.norm(raw), atol=1e-3)
