"""The project-written truth set: answers whose trait label is known by construction.

Why: agreement on the studied model's answers labels each answer by the instruction it was
written under; a 135M model follows those so weakly that the labels say little about what the
answers show. `resources/judge_truth/<group>/<trait>.yaml` holds, per evaluation question of a
persona trait, one answer that shows the trait (label 1) and one that does not (label 0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from traitscope.data.traits import load_trait
from traitscope.errors import TraitscopeError


def truth_table(truth_file: str | Path, trait_file: str | Path) -> Any:
    """The truth set as answer_table's columns (split `evaluation`), checked against the trait.

    Every question must be one of the trait's evaluation questions: a question the trait
    extracts from would let a classifier fitted on extraction answers score what it saw.
    """
    import pandas as pd

    truth_file = Path(truth_file)
    data = yaml.safe_load(truth_file.read_text()) or {}
    trait = load_trait(trait_file)
    allowed = set(trait.evaluation_questions)
    rows = []
    for i, item in enumerate(data.get("items") or []):
        if not isinstance(item, dict) or not all(
            isinstance(item.get(k), str) for k in ("question", "shown", "not_shown")
        ):
            raise TraitscopeError(f"{truth_file}: items[{i}] needs string question, shown and not_shown")
        if item["question"] not in allowed:
            raise TraitscopeError(
                f"{truth_file}: items[{i}] question {item['question'][:60]!r} is not one of "
                f"{trait_file}'s evaluation_questions (the truth set is held-out questions only)"
            )
        for label, key in ((1, "shown"), (0, "not_shown")):
            rows.append(
                {
                    "prompt_id": f"truth-{i}-{key}",
                    "split": "evaluation",
                    "label": label,
                    "question": item["question"],
                    "pair_index": -1,
                    "response": item[key].strip(),
                }
            )
    if not rows:
        raise TraitscopeError(f"{truth_file}: no items")
    return pd.DataFrame(rows)
