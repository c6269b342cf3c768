"""The external-datasets analysis's settings (experiments.external), light to import: the CLI
parses them from one `--settings` argument and tests build them from the schema's defaults."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class BeaverTailsSampleSettings:
    """Which BeaverTails rows are captured: a seeded sample per category (beavertails-sample)."""

    SECTION: ClassVar[str] = "#/properties/experiments/properties/external/properties/beavertails"

    categories: tuple[str, ...]  # a harmful row is sampled in its first category in this order
    n_per_category: int | None  # seeded sample per category; None: every row
    seed: int


@dataclass(frozen=True)
class ExternalSettings:
    """Which traits are scored, at which positions, and the bootstrap."""

    SECTION: ClassVar[str] = "#/properties/experiments/properties/external"

    traits: tuple[str, ...]
    position_harmbench: str
    position_beavertails: str
    n_boot: int
    seed: int
