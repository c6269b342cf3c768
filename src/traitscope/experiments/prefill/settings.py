"""The prefill analysis's settings (experiments.prefill), light to import: the CLI parses them
from one `--settings` argument and tests build them from the schema's defaults."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class PrefillConditionsSettings:
    """The compliance prefills C2 and C4 are written with (prefill-conditions)."""

    SECTION: ClassVar[str] = "#/properties/experiments/properties/prefill"

    prefills: tuple[str, ...]


@dataclass(frozen=True)
class PrefillAnalysisSettings:
    """Which traits the 2x2 reads, and the bootstrap."""

    SECTION: ClassVar[str] = "#/properties/experiments/properties/prefill"

    traits: tuple[str, ...]
    n_boot: int
    seed: int
