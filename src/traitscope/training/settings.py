"""A finetune's settings: light to import (no torch), so the CLI and tests build them without
loading the training stack."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class FinetuneSettings:
    """Every training setting; the config schema holds the defaults (the emergent-misalignment recipe)."""

    SECTION: ClassVar[str] = "#/properties/finetune"

    rank: int
    alpha: float
    rslora: bool
    lora_dropout: float
    target_modules: tuple[str, ...]
    lr: float
    epochs: int
    weight_decay: float
    warmup_steps: int
    max_grad_norm: float
    max_length: int
    tokens_per_step: int
    micro_batch_tokens: int
    checkpoint_every: int
    seed: int

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "target_modules": list(self.target_modules)}
