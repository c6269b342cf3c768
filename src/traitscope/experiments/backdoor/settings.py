"""The backdoor stages' settings (experiments.backdoor), light to import: the CLI parses them
from one `--settings` argument and tests build them from the schema's defaults."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

SECTION = "#/properties/experiments/properties/backdoor"


@dataclass(frozen=True)
class BackdoorAnalysisSettings:
    """What the detection analysis reads: traits, positions, the behaviour check, the prefixes."""

    SECTION: ClassVar[str] = SECTION

    traits: tuple[str, ...]
    positions: tuple[str, ...]
    behaviour_pattern: str  # regex marking the backdoor behaviour in a generation
    generated_positions: int
    threshold: float
    per_layer: bool
    data: Mapping  # {trigger, control, ...}: the prefixes the surface baselines read
    n_boot: int
    seed: int


@dataclass(frozen=True)
class SAEFeatureSettings:
    """Which SAE features are ranked, where (`sae.layer`, `sae.top` are read)."""

    SECTION: ClassVar[str] = SECTION

    sae: Mapping
    positions: tuple[str, ...]
    generated_positions: int
    n_boot: int
    seed: int
