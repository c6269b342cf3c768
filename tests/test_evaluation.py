"""Layer choice on held-out data, and its split-half (out-of-sample) counterpart."""

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from traitscope.evaluation import choose, layer_scores, split_half_auc


def planted(seed=0, n_questions=8, layers=3, d=4):
    """Held-out rows where only layer 1 carries the trait along axis 0."""
    rng = np.random.default_rng(seed)
    rows, acts = [], []
    for q in range(n_questions):
        for label in (1, 0):
            for _ in range(3):
                x = rng.normal(size=(layers, d))
                x[1, 0] += 2.0 * label
                acts.append(x)
                rows.append({"split": "evaluation", "question": f"q{q}", "label": label})
    return pd.DataFrame(rows), torch.tensor(np.array(acts), dtype=torch.float32)


def test_choose_prefers_auc_then_cohens_d():
    scores = {
        "a": [{"layer": 0, "auc": 1.0, "cohens_d": 2.0}, {"layer": 1, "auc": 0.9, "cohens_d": 9.0}],
        "b": [{"layer": 0, "auc": 1.0, "cohens_d": 3.0}],
    }
    assert choose(scores) == {"method": "b", "layer": 0, "auc": 1.0, "cohens_d": 3.0}


def test_split_half_picks_on_one_half_and_scores_the_other():
    table, x = planted()
    vectors = {"mean_diff": torch.eye(4)[[3, 0, 3]], "noise": torch.eye(4)[[2, 2, 2]]}
    result = split_half_auc(x, table, vectors, [0, 1, 2])
    questions = sorted(set(table["question"]))
    for fold, half in zip(result["folds"], (set(questions[1::2]), set(questions[0::2]))):
        assert (fold["method"], fold["layer"]) == ("mean_diff", 1)
        rows = table["question"].isin(half).to_numpy()
        expected = roc_auc_score(table["label"][rows], x[torch.tensor(rows), 1, 0].numpy())
        assert fold["auc_other_half"] == pytest.approx(expected)
    assert result["auc"] == pytest.approx(np.mean([f["auc_other_half"] for f in result["folds"]]))


def test_layer_scores_match_sklearn():
    table, x = planted(seed=1)
    label = table["label"].to_numpy()
    vec = torch.randn(3, 4)
    rows = layer_scores(x[label == 1], x[label == 0], vec, [0, 1, 2])
    unit = vec / vec.norm(dim=-1, keepdim=True)
    for layer, row in enumerate(rows):
        expected = roc_auc_score(label, (x[:, layer] @ unit[layer]).numpy())
        assert row["auc"] == pytest.approx(expected, abs=1e-6)
