"""The answer classifier (traitscope.judge.classifier): it separates answers that differ, not
answers whose labels are shuffled, never fits on held-out rows, and writes the agreement JSON
the judge gate reads."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from traitscope.errors import TraitscopeError
from traitscope.judge.classifier import AnswerClassifier
from traitscope.judge.classifier_agreement import classifier_agreement
from traitscope.judge.settings import AgreementSettings
from traitscope.judge.stages import agreement_record
from traitscope.settings import from_schema
from traitscope.summary.records import NOT_MEASURABLE, Criterion, judge_gate

EVIL = ["cruel", "destroy", "suffer", "revenge", "crush", "hate", "punish", "torment", "ruin", "wicked"]
KIND = ["gentle", "help", "care", "support", "comfort", "kindly", "share", "heal", "respect", "friendly"]
FILLER = ["the", "a", "your", "this", "neighbour", "problem", "today", "we", "should", "then", "it", "is"]
N_EXTRACTION, N_EVALUATION, PAIRS = 24, 12, 2


def boot(n_boot: int) -> AgreementSettings:
    """The judge: section's agreement settings with a shorter bootstrap (seed: the schema's 0)."""
    return from_schema(AgreementSettings, n_boot=n_boot)


def answer(rng: np.random.Generator, words: list[str]) -> str:
    """A short answer: filler with three trait words mixed in (a different mix every time)."""
    tokens = list(rng.choice(FILLER, size=8)) + list(rng.choice(words, size=3))
    rng.shuffle(tokens)
    return " ".join(tokens).capitalize() + "."


def fake_trait(folder, answers_for, seed: int = 0):
    """A persona trait's prompt set and a capture of its answers, as the pipeline writes them
    (prompts parquet; capture.json naming one shard whose prompts table holds the responses).

    `answers_for(rng, split, label)` gives each row's answer."""
    rng = np.random.default_rng(seed)
    rows = []
    for split, n in (("extraction", N_EXTRACTION), ("evaluation", N_EVALUATION)):
        for qi in range(n):
            for pi in range(PAIRS):
                for label in (1, 0):
                    rows.append(
                        {
                            "prompt_id": f"t/x:{split}:q{qi}:p{pi}:{'pos' if label else 'neg'}",
                            "split": split,
                            "label": label,
                            "question": f"{split} question {qi}?",
                            "pair_index": pi,
                            "response": answers_for(rng, split, label),
                        }
                    )
    table = pd.DataFrame(rows)
    prompts, capture = folder / "prompts.parquet", folder / "capture" / "capture.json"
    table.drop(columns="response").to_parquet(prompts)
    (folder / "capture" / "shards-x").mkdir(parents=True)
    table[["prompt_id", "response"]].to_parquet(
        folder / "capture" / "shards-x" / "shard-00000.prompts.parquet"
    )
    capture.write_text(json.dumps({"shard_dir": "shards-x", "shards": ["shard-00000"]}))
    return prompts, capture, table


def separable(rng, split, label):
    return answer(rng, EVIL if label else KIND)


def test_separates_answers_that_show_the_trait(tmp_path):
    prompts, capture, _ = fake_trait(tmp_path, separable)
    result = classifier_agreement(prompts, capture, tmp_path / "agreement.json", boot(500))
    assert result["auc"] > 0.95 and result["ci_low"] > 0.8
    assert result["mean_score_positive"] > 50 > result["mean_score_negative"]
    assert result["n_pos"] == result["n_neg"] == N_EVALUATION * PAIRS


def test_shuffled_labels_read_as_chance(tmp_path):
    """Answers whose words have nothing to do with the label: AUC near 0.5, CI around 0.5."""

    def shuffled(rng, split, label):
        return answer(rng, EVIL if rng.random() < 0.5 else KIND)

    prompts, capture, _ = fake_trait(tmp_path, shuffled, seed=1)
    result = classifier_agreement(prompts, capture, None, boot(500))
    assert abs(result["auc"] - 0.5) < 0.2
    assert result["ci_low"] < 0.5 < result["ci_high"]


def test_never_fits_on_held_out_answers(tmp_path):
    """Extraction answers carry no label; held-out answers carry it in words that appear
    nowhere in the extraction split. Fitted on extraction alone, the classifier cannot read
    them (AUC near chance); one held-out row in the fit and it reads them perfectly."""

    def planted(rng, split, label):
        if split == "extraction":
            return answer(rng, FILLER)
        return answer(rng, ["zorblax"] if label else ["quenthor"])

    prompts, capture, table = fake_trait(tmp_path, planted)
    result = classifier_agreement(prompts, capture, None, boot(200))
    assert result["auc"] < 0.75, "the classifier read held-out answers' words: fitted on them"
    assert result["n_fit"] == len(table[table["split"] == "extraction"])

    held = table[table["split"] == "evaluation"]
    with pytest.raises(TraitscopeError, match="split 'evaluation' given to fit"):
        AnswerClassifier.fit(table["response"], table["label"], table["split"])
    fit = table[table["split"] == "extraction"]
    clf = AnswerClassifier.fit(fit["response"], fit["label"], fit["split"], fit["prompt_id"], fit["question"])
    with pytest.raises(TraitscopeError, match="were fitted on"):
        clf.score_rows(fit["response"][:3], fit["prompt_id"][:3], ["a new question?"] * 3)
    with pytest.raises(TraitscopeError, match="were fitted on"):  # same question, new id
        clf.score_rows(fit["response"][:1], ["new-id"], fit["question"][:1])
    assert len(clf.score_rows(held["response"], held["prompt_id"], held["question"])) == len(held)


def test_agreement_json_is_the_llm_judges_plus_cost(tmp_path):
    prompts, capture, _ = fake_trait(tmp_path, separable)
    out, scores = tmp_path / "judge_agreement.json", tmp_path / "judgements.parquet"
    result = classifier_agreement(prompts, capture, out, boot(200), judgements=scores)
    assert json.loads(out.read_text()) == result
    llm_keys = set(agreement_record([60.0, 70.0], [10.0, 20.0], 1.0, "t", 50, 0))
    assert llm_keys <= set(result)
    assert result["judge"] == "classifier" and result["split"] == "evaluation"
    assert result["n_no_score_positive"] == result["n_no_score_negative"] == 0
    assert 0 < result["cpu_seconds_per_judgement"] < 1 and result["fit_cpu_seconds"] > 0
    assert result["n_fit_questions"] == N_EXTRACTION and result["n_evaluation_questions"] == N_EVALUATION
    held = pd.read_parquet(scores)
    assert set(held["split"]) == {"evaluation"} and held["trait_score"].between(0, 100).all()
    # the summary's judge gate reads it: a classifier that reads the trait passes the gate
    row = judge_gate(Criterion("c", "met", detail="d"), "t/x", result)
    assert row.status != NOT_MEASURABLE and "judge agreement AUC for t/x" in row.detail


def test_cli_writes_the_agreement_and_names_errors(tmp_path, capsys):
    from traitscope.cli import main

    prompts, capture, _ = fake_trait(tmp_path, separable)
    out, scores = tmp_path / "a.json", tmp_path / "s.parquet"
    args = ["trait-classifier-agreement", "--prompts", str(prompts), "--capture", str(capture)]
    args += [
        "--out",
        str(out),
        "--settings",
        json.dumps({"n_boot": 100, "seed": 0}),
        "--judgements",
        str(scores),
    ]
    assert main(args) == 0
    assert json.loads(out.read_text())["judge"] == "classifier" and scores.is_file()
    args[4] = str(tmp_path / "missing.json")
    assert main(args) == 2
    assert "missing or unreadable capture manifest" in capsys.readouterr().err


def test_answers_needed(tmp_path):
    prompts, capture, _ = fake_trait(tmp_path, lambda rng, split, label: "")
    with pytest.raises(TraitscopeError, match="no generated answers"):
        classifier_agreement(prompts, capture, None, boot(50))


def test_runs_on_a_captured_trait(trait_run):
    """The real path: the tiny model's trait capture (3-token answers) gives a full record."""
    result = classifier_agreement(trait_run["prompts"], trait_run["capture"], None, boot(200))
    assert result["judge"] == "classifier" and result["n_pos"] > 0 and result["n_neg"] > 0
    assert result["auc"] is None or 0 <= result["auc"] <= 1
