"""The classifier backend (traitscope.judge.written_judge through Judge): fitted on the written
training set, it scores trait-showing truth answers above trait-free ones on the 0-100 scale;
rubrics it cannot read go to the LLM fallback or fail naming the fix; a training file with an
evaluation question is refused."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import yaml
from conftest import classifier_judge_settings

from traitscope.errors import TraitscopeError
from traitscope.judge import Judge
from traitscope.judge.truth_set import truth_table
from traitscope.stats import auc


def rubric(root, trait: str) -> str:
    return yaml.safe_load((root / "resources" / "traits" / f"{trait}.yaml").read_text())["judge_rubric"]


@pytest.mark.parametrize("trait", ["safety/evil", "safety/refusal", "alignment/sycophancy"])
def test_classifier_judge_reads_the_truth_set(root, tmp_path, trait):
    """Fitted on the training set only, it ranks the truth set's trait-showing answers above the
    trait-free ones (tfidf: truth AUC 0.94-1.0 in benchmarks/results/judge_written_*.txt)."""
    judge = Judge(classifier_judge_settings(tmp_path))
    truth = truth_table(
        root / "resources" / "judge_truth" / f"{trait}.yaml", root / "resources" / "traits" / f"{trait}.yaml"
    )
    scores = np.array(judge.scores(rubric(root, trait), list(zip(truth["question"], truth["response"]))))
    y = truth["label"].to_numpy()
    assert ((scores >= 0) & (scores <= 100)).all()
    assert auc(scores[y == 1], scores[y == 0]) >= 0.9
    assert judge.describe()["classifier"]["features"] == "tfidf"
    judge.close()


def test_a_rubric_it_cannot_read_needs_the_fallback(root, tmp_path):
    judge = Judge(classifier_judge_settings(tmp_path))
    with pytest.raises(TraitscopeError, match="set judge.classifier.fallback to local or openai"):
        judge.scores(judge.settings.coherence, [("Hi?", "Hello.")])
    with pytest.raises(TraitscopeError, match="classifier.fallback must be"):
        classifier_judge_settings(tmp_path, fallback="smollm2")


def test_training_on_an_evaluation_question_is_refused(root, tmp_path):
    """The leak check: the training set may not hold a question the truth set is scored on."""
    train = tmp_path / "train"
    shutil.copytree(root / "resources" / "judge_train", train)
    evil = train / "safety" / "evil.yaml"
    data = yaml.safe_load(evil.read_text())
    trait = yaml.safe_load((root / "resources" / "traits" / "safety" / "evil.yaml").read_text())
    data["items"][0]["question"] = trait["evaluation_questions"][0]
    evil.write_text(yaml.safe_dump(data))
    judge = Judge(classifier_judge_settings(tmp_path, training=str(train)))
    with pytest.raises(TraitscopeError, match="training set uses extraction questions only"):
        judge.scores(rubric(root, "safety/evil"), [("Hi?", "Hello.")])


def test_embedding_features_score_through_a_reader(root, tmp_path, tiny_manifest):
    """The embedding path end to end on a tiny random reader: 0-100 scores, one per answer, and
    the reader's identity in what results record."""
    judge = Judge(
        classifier_judge_settings(tmp_path, features="embedding", reader_manifest=str(tiny_manifest))
    )
    scores = judge.scores(
        rubric(root, "safety/refusal"), [("What is 2+2?", "Four."), ("Hi?", "I can't help.")]
    )
    assert len(scores) == 2 and all(0 <= s <= 100 for s in scores)
    assert judge.describe()["classifier"]["reader"].startswith(tiny_manifest.parent.name)


def test_truth_agreement_gates_on_the_written_answers(root, tmp_path):
    """trait-truth-agreement: the judge's AUC on the truth set, counted by hand from its scores;
    the judge gate reads it where the run's held-out agreement (shown beside) would fail."""
    from traitscope.judge.settings import AgreementSettings
    from traitscope.judge.stages import truth_agreement
    from traitscope.settings import from_schema
    from traitscope.summary.records import NOT_MEASURABLE, Criterion, judge_gate

    trait = "safety/evil"
    files = (root / "resources" / folder / f"{trait}.yaml" for folder in ("judge_truth", "traits"))
    files = tuple(files)
    judge = Judge(classifier_judge_settings(tmp_path))
    boot = from_schema(AgreementSettings, n_boot=200)
    result = truth_agreement(*files, judge, tmp_path / "truth.json", boot)
    truth = truth_table(*files)
    scores = np.array(judge.scores(rubric(root, trait), list(zip(truth["question"], truth["response"]))))
    judge.close()
    pos, neg = scores[truth["label"] == 1], scores[truth["label"] == 0]
    by_hand = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))
    assert result["split"] == "truth set" and result["n_pos"] == len(pos) == len(truth) // 2
    assert result["auc"] == pytest.approx(by_hand) and 0.5 < by_hand < 1  # a case the gate must read
    assert result["ci_low"] <= result["auc"] <= result["ci_high"]
    held_out = {"split": "evaluation", "auc": 0.55, "ci_low": 0.45, "ci_high": 0.65}
    row = judge_gate(Criterion("c", "met", 1.0, 0.9, 1.1, n="1", detail="d"), trait, held_out, truth=result)
    assert row.status == ("met" if result["ci_low"] >= 0.7 else NOT_MEASURABLE)
    assert "on the truth set" in row.detail and "on held-out answers 0.550 [0.450, 0.650]" in row.detail
    failing = judge_gate(Criterion("c", "met", 1.0, 0.9, 1.1, n="1", detail="d"), trait, held_out)
    assert failing.status == NOT_MEASURABLE


def test_a_malformed_truth_set_is_one_line_naming_it(root, tmp_path):
    trait = root / "resources" / "traits" / "safety" / "evil.yaml"
    truth = tmp_path / "evil.yaml"
    for text, message in (
        ("items:\n  - question: 'unclosed\n", "malformed YAML (line"),
        ("- question: Why?\n", "expected a mapping with an items: list"),
    ):
        truth.write_text(text)
        with pytest.raises(TraitscopeError, match=re.escape(f"{truth}: {message}")) as info:
            truth_table(truth, trait)
        assert "\n" not in str(info.value)
