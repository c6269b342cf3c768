"""The judge agreement stages' settings (judge:), light to import: the CLI parses them from one
`--settings` argument and tests build them from the schema's defaults."""

from __future__ import annotations

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
    """Which answers trait-judgements scores: the held-out ones on the trait (the agreement reads
    them), and with the judge filter on, the extraction ones and coherence too (the filter reads
    them)."""

    SECTION: ClassVar[str] = "#/properties/extraction/properties/filter"

    enabled: bool  # the judge filter

    @property
    def splits(self) -> tuple[str, ...]:
        return ("extraction", "evaluation") if self.enabled else ("evaluation",)

    @property
    def rubrics(self) -> tuple[str, ...]:
        return ("trait", "coherence") if self.enabled else ("trait",)
