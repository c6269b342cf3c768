"""The judge agreement stages' settings (judge:), light to import: the CLI parses them from one
`--settings` argument and tests build them from the schema's defaults."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class AgreementSettings:
    """The bootstrap of a judge's held-out AUC (trait-agreement, trait-classifier-agreement);
    the seed also fixes the answer classifier's fit."""

    SECTION: ClassVar[str] = "#/properties/judge"

    n_boot: int
    seed: int


@dataclass(frozen=True)
class JudgementSettings:
    """Which answers trait-judgements scores: held-out ones on the trait (the agreement reads
    them; each question's first `agreement_pairs_per_question` instruction pairs), and with the
    judge filter on, every extraction one and coherence too (the filter reads them)."""

    SECTION: ClassVar[str] = "#/properties/extraction"

    agreement_pairs_per_question: int | None
    filter: Mapping  # the judge filter: {enabled, trait_min, coherence_min}

    @property
    def splits(self) -> tuple[str, ...]:
        return ("extraction", "evaluation") if self.filter["enabled"] else ("evaluation",)

    @property
    def rubrics(self) -> tuple[str, ...]:
        return ("trait", "coherence") if self.filter["enabled"] else ("trait",)
