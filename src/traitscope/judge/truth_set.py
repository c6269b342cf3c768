"""The project-written answer sets: answers whose trait label is known by construction.

Why: agreement on the studied model's answers labels each answer by the instruction it was
written under; a 135M model follows those so weakly that the labels say little about what the
answers show. The project wrote two sets per persona trait, one question per item with one
answer that shows the trait (label 1) and one that does not (label 0):

- the training set, `resources/judge_train/<group>/<trait>.yaml`, on the trait's extraction
  questions: what the classifier judge is fitted on;
- the truth set, `resources/judge_truth/<group>/<trait>.yaml`, on its evaluation questions:
  what every judge's agreement is measured on.

Each set may only use its own split's questions, so the two never share a question and the
truth set stays held out from the classifier fitted on the training set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from traitscope.data.traits import load_trait
from traitscope.errors import TraitscopeError
from traitscope.io import read_yaml_items

SET_SPLITS = {"training": "extraction", "truth": "evaluation"}  # which questions each set may use


def written_table(answers_file: str | Path, trait_file: str | Path, kind: str) -> Any:
    """A written set (`kind` training or truth) as answer_table's columns, checked against the trait.

    Every question must be one of the trait's questions of the set's split (training:
    extraction, truth: evaluation): a truth question in training, or the reverse, would let
    the classifier judge be scored on a question it was fitted on.
    """
    split = SET_SPLITS[kind]
    answers_file = Path(answers_file)
    if not answers_file.is_file():
        raise TraitscopeError(
            f"{answers_file}: no such {kind} set; write it (see resources/judge_truth/README.md)"
        )
    trait = load_trait(trait_file)
    items = read_yaml_items(answers_file, trait.name)
    allowed = set(trait.extraction_questions if split == "extraction" else trait.evaluation_questions)
    rows, seen = [], set()
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not all(
            isinstance(item.get(k), str) and item[k].strip() for k in ("question", "shown", "not_shown")
        ):
            raise TraitscopeError(
                f"{answers_file}: items[{i}] needs non-empty string question, shown and not_shown"
            )
        if item["question"] in seen:  # one item per question: the bootstrap resamples questions
            raise TraitscopeError(f"{answers_file}: items[{i}] repeats question {item['question'][:60]!r}")
        seen.add(item["question"])
        if item["question"] not in allowed:
            raise TraitscopeError(
                f"{answers_file}: items[{i}] question {item['question'][:60]!r} is not one of "
                f"{trait_file}'s {split}_questions (the {kind} set uses {split} questions only)"
            )
        for label, key in ((1, "shown"), (0, "not_shown")):
            rows.append(
                {
                    "prompt_id": f"{kind}-{i}-{key}",
                    "split": split,
                    "label": label,
                    "question": item["question"],
                    "pair_index": -1,
                    "response": item[key].strip(),
                }
            )
    if not rows:
        raise TraitscopeError(f"{answers_file}: no items")
    return pd.DataFrame(rows)


def truth_table(truth_file: str | Path, trait_file: str | Path) -> Any:
    """The truth set (evaluation questions only), as `written_table` reads it."""
    return written_table(truth_file, trait_file, "truth")


def training_table(training_file: str | Path, trait_file: str | Path) -> Any:
    """The classifier judge's training set (extraction questions only), as `written_table` reads it."""
    return written_table(training_file, trait_file, "training")
