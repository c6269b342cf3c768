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
