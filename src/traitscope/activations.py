"""Activation files: safetensors, one tensor per layer `[n_prompts, n_positions, d_model]`.

Metadata records which layers and positions (pool names) the tensors hold, so a reader
never has to guess the axis order. The row order matches the companion Parquet index.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from traitscope.errors import TraitscopeError
from traitscope.io import save_safetensors


@dataclass
class Activations:
    """Pooled activations of n prompts: `data[pos]` is `[n, n_layers, d_model]`."""

    layers: list[int]
    data: dict[str, torch.Tensor]

    def save(self, path: str | Path, dtype: torch.dtype = torch.float32) -> None:
        positions = list(self.data)
        tensors = {
            f"layer.{layer}": torch.stack([self.data[p][:, i] for p in positions], dim=1).to(dtype)
            for i, layer in enumerate(self.layers)
        }
        meta = {"layers": json.dumps(self.layers), "positions": json.dumps(positions)}
        save_safetensors(path, tensors, meta)

    @classmethod
    def load(cls, path: str | Path) -> Activations:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata()
                layers = json.loads(meta["layers"])
                positions = json.loads(meta["positions"])
                per_layer = [f.get_tensor(f"layer.{layer}").float() for layer in layers]
        except (OSError, KeyError, json.JSONDecodeError) as exc:
            raise TraitscopeError(
                f"{path}: not a traitscope activation file ({exc}); rerun its capture"
            ) from None
        data = {p: torch.stack([t[:, j] for t in per_layer], dim=1) for j, p in enumerate(positions)}
        return cls(layers=layers, data=data)
