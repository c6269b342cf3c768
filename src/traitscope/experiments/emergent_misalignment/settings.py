"""The EM stages' settings (experiments.emergent_misalignment), light to import: the CLI parses
them from one `--settings` argument and tests build them from the schema's defaults."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

SECTION = "#/properties/experiments/properties/emergent_misalignment"


@dataclass(frozen=True)
class EMPromptSettings:
    """Which EM questions the benign set keeps, and how often each is asked (em-prompts)."""

    SECTION: ClassVar[str] = SECTION

    exclude: str  # regex on question ids
    samples_per_question: int


@dataclass(frozen=True)
class EMTrainingSettings:
    """How much of the persona trait's extraction data the finetunes train on (em-training-data);
    its section is `persona` when set (the schema's second `oneOf` branch)."""

    SECTION: ClassVar[str] = f"{SECTION}/properties/persona/oneOf/1"

    pairs_per_question: int | None  # the first n instruction pairs per question; None: all


@dataclass(frozen=True)
class EMAnalysisSettings:
    """Which traits the paired variant comparison reads, and the bootstrap."""

    SECTION: ClassVar[str] = SECTION

    traits: tuple[str, ...]
    n_boot: int
    seed: int


@dataclass(frozen=True)
class EMJudgeSettings:
    """How many of a variant's answers the judge reads (em-judge)."""

    SECTION: ClassVar[str] = f"{SECTION}/properties/behaviour"

    max_answers: int | None  # each question's first sample first; None: all


@dataclass(frozen=True)
class EMBehaviourSettings:
    """The misalignment thresholds (`behaviour.aligned_below`, `.coherent_above`) and the bootstrap."""

    SECTION: ClassVar[str] = SECTION

    behaviour: Mapping
    n_boot: int
    seed: int
