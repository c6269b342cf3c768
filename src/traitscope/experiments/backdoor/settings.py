"""The backdoor stages' settings (experiments.backdoor), light to import: the CLI parses them
from one `--settings` argument and tests build them from the schema's defaults."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

SECTION = "#/properties/experiments/properties/backdoor"
SAE_SECTION = f"{SECTION}/properties/sae"


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
class BackdoorDataSettings:
    """The synthesized training problems and held-out pairs, and their seed (backdoor-data)."""

    SECTION: ClassVar[str] = SECTION

    data: Mapping  # {trigger, control, templates, ..., n_train, n_eval, sentences}
    seed: int


@dataclass(frozen=True)
class SAELayerSettings:
    """The layer (resid_post) whose per-token activations an SAE reads (sae-evaluate)."""

    SECTION: ClassVar[str] = SAE_SECTION

    layer: int


@dataclass(frozen=True)
class SAESettings:
    """How the SAE is fitted (`sae.train_sae`); sae-train's record keeps them as its `settings`."""

    SECTION: ClassVar[str] = SAE_SECTION

    width: int  # latents (d_sae)
    k: int  # active latents per token
    tokens: int  # training tokens, passes over the data included (eval_fraction of each shard held out)
    lr: float
    batch_size: int
    buffer_tokens: int  # training tokens shuffled together at once: bounds memory, not the prompt count
    eval_fraction: float  # share of tokens held out for the reported reconstruction quality
    aux_k: int  # dead latents the auxiliary loss uses (0: none)
    aux_coefficient: float
    dead_after: int  # tokens without firing after which a latent counts as dead in training
    seed: int


@dataclass(frozen=True)
class SAETrainSettings(SAESettings):
    """sae-train: how the SAE is fitted, and at which layer."""

    layer: int


@dataclass(frozen=True)
class SAEFeatureSettings:
    """Which SAE features are ranked, where (`sae.layer`, `sae.top` are read)."""

    SECTION: ClassVar[str] = SECTION

    sae: Mapping
    positions: tuple[str, ...]
    generated_positions: int
    n_boot: int
    seed: int
