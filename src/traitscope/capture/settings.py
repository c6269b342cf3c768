"""What a capture stores: one settings dataclass, light to import (no torch), so the CLI and
tests build it without loading the model stack."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import ClassVar

from traitscope.model.depth import expand_layers

SPEED_ONLY = ("max_tokens", "compile", "compile_min_tokens")  # how fast, not what is stored


@dataclass(frozen=True)
class CaptureSettings:
    """What to capture: a capture section (global, experiment and prompt-set levels merged)."""

    SECTION: ClassVar[str] = "#/definitions/capture"

    layers: tuple[int, ...] | str  # decoder layers, or "all" (a config range is expanded)
    pools: tuple[str, ...]
    token_segments: tuple[str, ...]  # per-token activations kept for these segments
    keep_all_tokens: bool  # keep every token's activations (large)
    max_new_tokens: int  # > 0: generate a response and capture it too
    temperature: float
    seed: int
    max_tokens: int  # token budget of one padded batch
    padding_side: str
    shard_size: int  # most prompts in one resumable shard
    shard_mb: float  # most per-token activations one shard holds (MB, in storage_dtype)
    storage_dtype: str
    compile: str  # torch.compile the decoder blocks: "auto" = on a GPU, for a big enough job
    compile_min_tokens: int  # "auto" compiles from this many tokens (prompt + generated)

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", expand_layers(self.layers))

    def digest(self) -> str:
        """Hash of the settings that change what is stored (not how fast it is computed)."""
        content = {k: v for k, v in asdict(self).items() if k not in SPEED_ONLY}
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:12]

    def compiles(self, tokens: int, on_gpu: bool) -> bool:
        """Whether a job of `tokens` (prompt + generated) compiles its decoder blocks. On an H100
        compiling cost 15-80 s a job and a compiled forward saved ~40% per prompt token, so it
        repays only on large jobs; a CPU gains nothing from it."""
        if self.compile != "auto":
            return self.compile == "yes"
        return on_gpu and tokens >= self.compile_min_tokens
