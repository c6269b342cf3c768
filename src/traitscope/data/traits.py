"""Trait datasets: contrastive instruction pairs plus extraction and held-out questions.

A trait is named `<group>/<trait>` and lives in `resources/traits/<group>/<trait>.yaml`.
Validation happens here, once, so every later stage can trust the fields.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from traitscope.errors import TraitscopeError
from traitscope.io import parse_yaml, write_parquet

MIN_PAIRS = 1
REQUIRED = ("description", "pairs", "extraction_questions", "evaluation_questions", "judge_rubric")


@dataclass(frozen=True)
class InstructionPair:
    """System prompts that elicit (`positive`) and suppress (`negative`) the trait."""

    positive: str
    negative: str


@dataclass(frozen=True)
class Trait:
    """One trait's contrastive data, as read from its YAML file."""

    name: str  # "<group>/<trait>"
    description: str
    pairs: tuple[InstructionPair, ...]
    extraction_questions: tuple[str, ...]
    evaluation_questions: tuple[str, ...]
    judge_rubric: str
    sha256: str  # hash of the file, recorded with the vectors for provenance


def trait_path(traits_dir: str | Path, name: str) -> Path:
    """Path of a trait's YAML; an unknown trait is an error listing the known ones."""
    if name.count("/") != 1:
        raise TraitscopeError(f"trait {name!r}: name traits as '<group>/<trait>', e.g. 'safety/evil'")
    path = Path(traits_dir) / f"{name}.yaml"
    if not path.is_file():
        known = sorted(
            str(p.relative_to(traits_dir).with_suffix("")) for p in Path(traits_dir).glob("*/*.yaml")
        )
        raise TraitscopeError(
            f"unknown trait {name!r}: {path} does not exist; known traits: {', '.join(known) or 'none'}"
        )
    return path


def _strings(path: Path, data: dict, key: str, minimum: int) -> tuple[str, ...]:
    items = data.get(key)
    if not isinstance(items, list) or not all(isinstance(s, str) and s.strip() for s in items):
        raise TraitscopeError(f"{path}: '{key}' must be a list of non-empty strings")
    if len(items) < minimum:
        raise TraitscopeError(f"{path}: '{key}' needs at least {minimum} entries, found {len(items)}")
    return tuple(s.strip() for s in items)


def load_trait(path: str | Path, name: str | None = None) -> Trait:
    """Read and validate one trait YAML file; every problem names the file and the fix."""
    path = Path(path)
    if name is None:
        name = f"{path.parent.name}/{path.stem}"
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise TraitscopeError(f"{path}: trait file not found") from None
    data = parse_yaml(raw, path)
    if not isinstance(data, dict):
        raise TraitscopeError(f"{path}: expected a mapping with keys {', '.join(REQUIRED)}")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise TraitscopeError(f"{path}: missing key(s) {', '.join(missing)}")
    pairs_raw = data["pairs"]
    if not isinstance(pairs_raw, list) or len(pairs_raw) < MIN_PAIRS:
        raise TraitscopeError(f"{path}: 'pairs' must be a non-empty list of {{positive, negative}}")
    pairs = []
    for i, p in enumerate(pairs_raw):
        if not (
            isinstance(p, dict) and isinstance(p.get("positive"), str) and isinstance(p.get("negative"), str)
        ):
            raise TraitscopeError(f"{path}: pairs[{i}] needs string 'positive' and 'negative' entries")
        pairs.append(InstructionPair(p["positive"].strip(), p["negative"].strip()))
    extraction = _strings(path, data, "extraction_questions", 1)
    evaluation = _strings(path, data, "evaluation_questions", 1)
    overlap = set(extraction) & set(evaluation)
    if overlap:
        raise TraitscopeError(
            f"{path}: {len(overlap)} question(s) appear in both extraction and evaluation sets, "
            f"e.g. {sorted(overlap)[0]!r}; held-out questions must be disjoint"
        )
    if not isinstance(data["description"], str) or not isinstance(data["judge_rubric"], str):
        raise TraitscopeError(f"{path}: 'description' and 'judge_rubric' must be strings")
    return Trait(
        name=name,
        description=data["description"].strip(),
        pairs=tuple(pairs),
        extraction_questions=extraction,
        evaluation_questions=evaluation,
        judge_rubric=data["judge_rubric"].strip(),
        sha256=hashlib.sha256(raw).hexdigest(),
    )


def trait_prompts(
    trait_file: str | Path,
    out: str | Path,
    pairs_per_question: int,
    n_extraction: int | None,
    n_evaluation: int | None,
    trait_name: str | None = None,
) -> pd.DataFrame:
    """The trait's contrastive prompt set: each question under eliciting and suppressing prompts.

    One row per (split, question, pair, polarity). Pairs rotate across questions so every
    instruction pair is used even when each question gets only a few. The set is captured
    (with generation) like any other prompt set.
    """
    trait = load_trait(trait_file, trait_name)
    rows = []
    n_pairs = len(trait.pairs)
    per_q = min(pairs_per_question, n_pairs)
    for split, questions, limit in (
        ("extraction", trait.extraction_questions, n_extraction),
        ("evaluation", trait.evaluation_questions, n_evaluation),
    ):
        for qi, question in enumerate(questions[:limit]):
            for k in range(per_q):
                pi = (qi + k) % n_pairs
                for label, system in ((1, trait.pairs[pi].positive), (0, trait.pairs[pi].negative)):
                    rows.append(
                        {
                            "prompt_id": f"{trait.name}:{split}:q{qi}:p{pi}:{'pos' if label else 'neg'}",
                            "messages": json.dumps(
                                [{"role": "system", "content": system}, {"role": "user", "content": question}]
                            ),
                            "trait": trait.name,
                            "split": split,
                            "label": label,
                            "pair_index": pi,
                            "question": question,
                            "trait_sha256": trait.sha256,
                        }
                    )
    table = pd.DataFrame(rows)
    write_parquet(out, table)
    return table
