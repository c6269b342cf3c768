"""Reference facts (traitscope.judge.references): features counted by hand, the deception truth
set read through the classifier judge only with facts, and bad fact files named."""

from __future__ import annotations

import re

import numpy as np
import pytest
import yaml
from conftest import classifier_judge_settings

from traitscope.errors import TraitscopeError
from traitscope.judge import Judge
from traitscope.judge.references import features, load_references
from traitscope.judge.truth_set import truth_table
from traitscope.stats import auc

DECEPTION = "alignment/deception"


def test_features_by_hand():
    # key terms of the fact: ottawa, since, 1857 (the is a stop word; capital is in the question)
    assert features("What is the capital of Canada?", "It is Ottawa.", "Ottawa, the capital since 1857.") == [
        pytest.approx(1 / 3),
        0.0,
        0.0,
    ]
    # key terms: burns (no and it are stop words); the answer opens with the other polarity
    assert features("Is it safe?", "Yes, totally.", "No. It burns.") == [0.0, 0.0, 1.0]
    assert features("Is it safe?", "No, it burns you.", "No. It burns.") == [1.0, 1.0, 0.0]
    # thousands separators dropped: 30,000 and 30000 are one number
    assert features("How hot is lightning?", "About 30000 degrees.", "30,000 degrees.")[0] == 1.0
    # a sentence's full stop is not part of its number: 1945. is 1945, and 2.5 stays one number
    assert features("When did the war end?", "In 1945, in Europe.", "1945.")[0] == 1.0
    assert features("How far?", "2.5 km, or 2 km.", "2.5 km.")[0] == 1.0
    assert features("How far?", "5 km.", "2.5 km.")[0] == 0.5
    # single letters are not terms: the c of °C, the s of a possessive (key terms: 100, earth, sea, level)
    assert features("Boiling point?", "100 degrees.", "100 °C at Earth's sea level.")[0] == pytest.approx(
        1 / 4
    )


def truth_auc(root, tmp_path, references) -> tuple[float, dict]:
    files = [root / "resources" / d / f"{DECEPTION}.yaml" for d in ("judge_truth", "traits")]
    truth = truth_table(*files)
    rubric = yaml.safe_load(files[1].read_text())["judge_rubric"]
    judge = Judge(classifier_judge_settings(tmp_path, references=references))
    scores = np.array(judge.scores(rubric, list(zip(truth["question"], truth["response"]))))
    described = judge.describe()["classifier"]
    judge.close()
    y = truth["label"].to_numpy()
    assert ((scores >= 0) & (scores <= 100)).all()
    return auc(scores[y == 1], scores[y == 0]), described


def test_facts_let_the_judge_read_deception(root, tmp_path):
    """TF-IDF alone reads the deception truth set at 0.845 (docs/judge.md); with the facts the
    same judge clears 0.9, and what results record names the trait that has facts."""
    without, described = truth_auc(root, tmp_path, None)
    assert described["references"] == []
    with_facts, described = truth_auc(root, tmp_path, str(root / "resources" / "judge_references"))
    assert described["references"] == [DECEPTION]
    assert without < 0.9 <= with_facts


def write_facts(tmp_path, root, edit) -> tuple:
    facts = tmp_path / "deception.yaml"
    data = yaml.safe_load((root / "resources" / "judge_references" / f"{DECEPTION}.yaml").read_text())
    edit(data["items"])
    facts.write_text(yaml.safe_dump(data))
    return facts, root / "resources" / "traits" / f"{DECEPTION}.yaml"


def test_bad_fact_files_are_named(root, tmp_path):
    def refused(edit, message: str) -> None:
        facts, trait = write_facts(tmp_path, root, edit)
        with pytest.raises(TraitscopeError, match=re.escape(f"{facts}: ") + message):
            load_references(facts, trait)

    def bare_sun(items) -> None:  # a fact that only repeats its question's words and a yes
        (item,) = [i for i in items if i["question"] == "Is the Sun a star?"]
        item["fact"] = "Yes, the Sun is a star."

    refused(lambda items: items.pop(3), r"no fact for 1 of .* add one per question")
    refused(
        lambda items: items.append({"question": "Why?", "fact": "No."}),
        r"items\[80\] question 'Why\?' is not one of",
    )
    refused(lambda items: items[0].pop("fact"), r"items\[0\] needs string question and fact")
    refused(
        lambda items: items.append(dict(items[0])),
        r"items\[80\] repeats question .* keep one fact per question",
    )
    refused(bare_sun, r"items\[\d+\] fact 'Yes, the Sun is a star.' adds no word or number to its question")
    facts, trait = write_facts(tmp_path, root, lambda items: None)
    facts.write_text("items: [unclosed\n")
    with pytest.raises(TraitscopeError, match=re.escape(f"{facts}: malformed YAML (line 2)")):
        load_references(facts, trait)
    facts.write_text("- question: Is the Sun a star?\n  fact: a star\n")
    with pytest.raises(TraitscopeError, match=re.escape(f"{facts}: expected a mapping with an items: list")):
        load_references(facts, trait)


def test_scoring_a_question_without_a_fact_names_the_file(root, tmp_path):
    rubric = yaml.safe_load((root / "resources" / "traits" / f"{DECEPTION}.yaml").read_text())["judge_rubric"]
    judge = Judge(
        classifier_judge_settings(tmp_path, references=str(root / "resources" / "judge_references"))
    )
    with pytest.raises(
        TraitscopeError, match=r"deception.yaml: no fact for question 'Why is the sky blue\?'"
    ):
        judge.scores(rubric, [("Why is the sky blue?", "Because of scattering.")])
    judge.close()


def test_a_references_folder_that_is_not_there_is_an_error(root, tmp_path):
    """A misspelt folder would silently drop every trait's facts."""
    with pytest.raises(TraitscopeError, match=r"judge.classifier.references .*nowhere.* is not a folder"):
        Judge(classifier_judge_settings(tmp_path, references=str(tmp_path / "nowhere")))
