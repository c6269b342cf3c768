"""The one trait-vector record: a trait's vectors, chosen method and layer, and provenance.

`TraitVector.load` is the only reader of `vectors.safetensors` + `evaluation.json`;
projection, steering and the summary all go through it, so the on-disk layout has one
owner.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from traitscope.errors import TraitscopeError, require_trait
from traitscope.vectors.methods import unit


def read_vectors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """({method: [n_layers, d_model]}, metadata) of a vectors file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["meta"])
            vectors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types
        raise TraitscopeError(f"{path}: cannot read trait vectors ({exc}); rerun trait-vectors") from None
    missing = [k for k in ("trait", "model", "layers") if k not in meta]
    if missing or "mean_diff" not in vectors:
        raise TraitscopeError(
            f"{path}: not a traitscope vectors file (no {missing or 'mean_diff'}); rerun trait-vectors"
        )
    return vectors, meta


def require_width(source: str, width: int, d_model: int, where: str) -> None:
    """Vectors `width` wide read only activations that wide: another model's (another hidden
    size) stop here in one line, not in a matrix product's traceback."""
    if width != d_model:
        raise TraitscopeError(
            f"{source}: trait vectors are {width} wide, {where} has {d_model}-wide activations (another "
            "model); use the vectors of the model that made it"
        )


def read_evaluation(path: str | Path) -> dict[str, Any]:
    """A trait's evaluation.json, checked for the chosen (method, layer)."""
    try:
        result = json.loads(Path(path).read_text())
        result["chosen"]["method"], result["chosen"]["layer"]  # noqa: B018 (presence check)
    except (OSError, KeyError, TypeError, json.JSONDecodeError):
        raise TraitscopeError(f"{path}: missing or malformed evaluation; rerun trait-evaluation") from None
    return result


@dataclass(frozen=True)
class TraitVector:
    """A trait's vectors on one model with the (method, layer) its held-out evaluation chose."""

    name: str
    model: str
    vectors: dict[str, torch.Tensor]  # method -> [n_layers, d_model]
    layers: list[int]  # decoder layer of each vector row
    method: str  # chosen method
    layer: int  # chosen layer
    evaluation: dict[str, Any] = field(repr=False)
    provenance: dict[str, Any] = field(repr=False)

    @classmethod
    def load(
        cls, vectors_path: str | Path, evaluation_path: str | Path, name: str | None = None
    ) -> TraitVector:
        vectors, meta = read_vectors(vectors_path)
        evaluation = read_evaluation(evaluation_path)
        chosen = evaluation["chosen"]
        # another trait's (or model's) file would silently pick its layer or vector
        for key in ("trait", "model"):
            if evaluation.get(key, meta[key]) != meta[key]:
                raise TraitscopeError(
                    f"{evaluation_path} is for {key} {evaluation[key]}, {vectors_path} for {meta[key]}; "
                    "pass the vectors and evaluation.json of one trait and model"
                )
        if name is not None:
            require_trait(vectors_path, meta["trait"], name, f"pass {name}'s vectors")
        if chosen["method"] not in vectors:
            raise TraitscopeError(
                f"{evaluation_path}: chosen method {chosen['method']!r} is not in {vectors_path}; "
                "rerun trait-evaluation"
            )
        return cls(
            name=name or meta["trait"],
            model=meta["model"],
            vectors=vectors,
            layers=list(meta["layers"]),
            method=chosen["method"],
            layer=int(chosen["layer"]),
            evaluation=evaluation,
            provenance={k: meta.get(k) for k in ("position", "n_positive", "n_negative", "dataset_sha256")},
        )

    def require_width(self, d_model: int, where: str) -> None:
        """These vectors fit `where`'s `d_model`-wide activations."""
        require_width(
            f"trait {self.name} ({self.model})", self.vectors["mean_diff"].shape[-1], d_model, where
        )

    def row(self, layer: int) -> int:
        """Row of `layer` in the vector tensors."""
        if layer not in self.layers:
            raise TraitscopeError(
                f"trait {self.name}: no vector at layer {layer}; vectors cover {self.layers}"
            )
        return self.layers.index(layer)

    def directions(self, method: str | None = None) -> torch.Tensor:
        """Unit vectors of a method (default: the chosen one), `[n_layers, d_model]`."""
        return unit(self.vectors[method or self.method])

    def direction(self, layer: int | None = None) -> torch.Tensor:
        """The chosen method's unit vector at a layer (default: the chosen layer)."""
        return self.directions()[self.row(self.layer if layer is None else layer)]

    def steering_vector(self, coefficient: float, layer: int | None = None) -> torch.Tensor:
        """`coefficient` x the mean difference: its norm is the trait's natural scale there."""
        return (
            coefficient * self.vectors["mean_diff"][self.row(self.layer if layer is None else layer)].float()
        )
