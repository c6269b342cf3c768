"""The trait stages' settings, light to import (no torch): the CLI parses them from one
`--settings` argument and tests build them from the schema's defaults."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class ExtractionSettings:
    """How vectors are fitted from a captured trait set (trait-vectors, trait-filter)."""

    SECTION: ClassVar[str] = "#/properties/extraction"

    methods: tuple[str, ...]
    probe_c: float
    filter: Mapping  # {enabled, trait_min, coherence_min}: read when judgements are given


@dataclass(frozen=True)
class DrawSettings:
    """Refits of the chosen vector that experiments' CIs resample (trait-draws): how many, and
    the fit's own settings (the probe's C, the judge filter's thresholds)."""

    SECTION: ClassVar[str] = "#/properties/extraction"

    vector_draws: Mapping  # {n_draws, seed}
    probe_c: float
    filter: Mapping


@dataclass(frozen=True)
class TraitSummarySettings:
    """The AUC the run's summary counts traits against (trait-summary): its own class, so a
    changed threshold reruns only the summary, not every trait's vectors."""

    SECTION: ClassVar[str] = "#/properties/extraction"

    auc_threshold: float


@dataclass(frozen=True)
class SteeringCheckSettings:
    """Does adding the vector raise the projection (steering-check)."""

    SECTION: ClassVar[str] = "#/properties/steering_check"

    coefficient: float
    max_new_tokens: int
    max_tokens: int
