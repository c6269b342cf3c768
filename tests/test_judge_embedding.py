"""The embedding judge (traitscope.judge.embedding) and the written answer sets
(traitscope.judge.truth_set): the classifier finds the layer that carries the label, never fits
on held-out rows nor scores a fitted row, the pooled states read only the answer's tokens, the
shipped truth set is held-out questions only and the training set extraction questions only."""

from __future__ import annotations

import re

import numpy as np
import pytest
import yaml

from traitscope.errors import TraitscopeError
from traitscope.judge.embedding import EmbeddingClassifier, answer_states
from traitscope.judge.truth_set import training_table, truth_table
from traitscope.stats import auc

PERSONA = ["safety/evil", "safety/harm", "safety/refusal", "alignment/deception", "alignment/sycophancy"]


def states(rng: np.random.Generator, labels: np.ndarray, layers: int = 4, signal: int = 2) -> np.ndarray:
    """Noise on every layer; layer `signal` alone moves with the label."""
    x = rng.normal(size=(len(labels), layers, 16))
    x[:, signal, 0] += 2.0 * (labels - 0.5)
    return x


def rows(split: str, n_questions: int, start: int = 0):
    labels = np.array([1, 0] * n_questions)
    questions = [f"{split} q{start + i // 2}" for i in range(len(labels))]
    ids = [f"{split}:{i}" for i in range(len(labels))]
    return labels, [split] * len(labels), ids, questions


def test_picks_the_layer_that_carries_the_label_and_reads_held_out_rows():
    rng = np.random.default_rng(0)
    y, splits, ids, qs = rows("extraction", 60)
    clf = EmbeddingClassifier.fit(states(rng, y), y, splits, ids, qs)
    assert clf.layer == 2 and clf.cv_auc > 0.8
    hy, _, hids, hqs = rows("evaluation", 30)
    scores = clf.score_rows(states(rng, hy), hids, hqs)
    assert auc(scores[hy == 1], scores[hy == 0]) > 0.8


def test_shuffled_labels_read_as_chance():
    rng = np.random.default_rng(1)
    y, splits, ids, qs = rows("extraction", 60)
    x = states(rng, y)
    clf = EmbeddingClassifier.fit(x, rng.permutation(y), splits, ids, qs)
    hy, _, hids, hqs = rows("evaluation", 30)
    scores = clf.score_rows(states(rng, hy), hids, hqs)
    assert 0.3 < auc(scores[hy == 1], scores[hy == 0]) < 0.7


def test_refuses_held_out_rows_when_fitting_and_fitted_rows_when_scoring():
    rng = np.random.default_rng(2)
    y, splits, ids, qs = rows("extraction", 20)
    x = states(rng, y)
    with pytest.raises(TraitscopeError, match="split 'evaluation' given to fit"):
        EmbeddingClassifier.fit(x, y, splits[:-1] + ["evaluation"], ids, qs)
    clf = EmbeddingClassifier.fit(x, y, splits, ids, qs)
    with pytest.raises(TraitscopeError, match="were fitted on"):
        clf.score_rows(x[:2], ids[:2], ["new question", "new question"])
    with pytest.raises(TraitscopeError, match="were fitted on"):
        clf.score_rows(x[:2], ["new:0", "new:1"], qs[:2])


def test_answer_states_pool_the_answer_tokens_only(tiny_model):
    """The same answer after two different questions pools to different states (the answer
    tokens see the question), and two answers differ; the shape is [n, layers + 1, hidden]."""
    model, tokenizer = tiny_model
    x = answer_states(
        model, tokenizer, ["Hi?", "Why is the sky blue?", "Hi?"], ["Hello.", "Hello.", "Bye now."]
    )
    assert x.shape == (3, model.config.num_hidden_layers + 1, model.config.hidden_size)
    assert not np.allclose(x[0, 1:], x[1, 1:])  # context reaches the answer's states
    assert np.allclose(x[0, 0], x[1, 0], atol=1e-5)  # layer 0 (token embeddings) of one answer: equal
    assert not np.allclose(x[0], x[2])


@pytest.mark.parametrize("trait", PERSONA)
def test_shipped_truth_set_is_held_out_and_balanced(root, trait):
    table = truth_table(
        root / "resources" / "judge_truth" / f"{trait}.yaml", root / "resources" / "traits" / f"{trait}.yaml"
    )
    counts = table.groupby("label").size()
    assert counts[1] >= 20 and counts[0] >= 20
    assert (table["split"] == "evaluation").all() and table["response"].str.len().min() > 10


def test_truth_set_refuses_an_extraction_question(root, tmp_path):
    trait = root / "resources" / "traits" / "safety" / "evil.yaml"
    extraction = yaml.safe_load(trait.read_text())["extraction_questions"][0]
    bad = tmp_path / "evil.yaml"
    bad.write_text(yaml.safe_dump({"items": [{"question": extraction, "shown": "a", "not_shown": "b"}]}))
    with pytest.raises(TraitscopeError, match="not one of"):
        truth_table(bad, trait)
    # a repeated question counted twice in the bootstrap's units; a blank answer scored as one
    evaluation = yaml.safe_load(trait.read_text())["evaluation_questions"][0]
    item = {"question": evaluation, "shown": "a", "not_shown": "b"}
    bad.write_text(yaml.safe_dump({"items": [item, item]}))
    with pytest.raises(TraitscopeError, match=r"items\[1\] repeats question"):
        truth_table(bad, trait)
    bad.write_text(yaml.safe_dump({"items": [{**item, "shown": "  "}]}))
    with pytest.raises(TraitscopeError, match=r"items\[0\] needs non-empty string question, shown"):
        truth_table(bad, trait)
    # the file's own trait: key was read by no one, so a set labelled for harm passed as evil's
    bad.write_text(yaml.safe_dump({"trait": "safety/harm", "items": [item]}))
    with pytest.raises(
        TraitscopeError, match=f"^{re.escape(str(bad))}: holds trait safety/harm, not safety/evil"
    ):
        truth_table(bad, trait)


@pytest.mark.parametrize("trait", PERSONA)
def test_shipped_training_set_uses_extraction_questions_only(root, trait):
    trait_file = root / "resources" / "traits" / f"{trait}.yaml"
    train = training_table(root / "resources" / "judge_train" / f"{trait}.yaml", trait_file)
    truth = truth_table(root / "resources" / "judge_truth" / f"{trait}.yaml", trait_file)
    counts = train.groupby("label").size()
    assert counts[1] >= 40 and counts[0] >= 40
    assert (train["split"] == "extraction").all()
    assert not set(train["question"]) & set(truth["question"])


def test_training_set_refuses_an_evaluation_question(root, tmp_path):
    trait = root / "resources" / "traits" / "safety" / "evil.yaml"
    evaluation = yaml.safe_load(trait.read_text())["evaluation_questions"][0]
    bad = tmp_path / "evil.yaml"
    bad.write_text(yaml.safe_dump({"items": [{"question": evaluation, "shown": "a", "not_shown": "b"}]}))
    with pytest.raises(TraitscopeError, match="training set uses extraction questions only"):
        training_table(bad, trait)
