"""A trait prompt set's settings, light to import (no pandas): the CLI parses them from one
`--settings` argument and tests build them from the schema's defaults."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class TraitPromptSettings:
    """How many questions and instruction pairs a persona trait's prompt set takes."""

    SECTION: ClassVar[str] = "#/properties/extraction"

    pairs_per_question: int
    n_extraction: int | None  # the first N extraction questions; None: all
    n_evaluation: int | None
