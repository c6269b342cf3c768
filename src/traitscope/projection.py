"""Projection of captured activations onto trait vectors, as long-format Parquet.

One matmul per layer projects every pooled and per-token activation onto every trait
at once: `[n, d] @ [d, n_traits]`. Rows: prompt_id, variant, trait, layer, position
(a pool name, or the token's segment), token_index (-1 for pooled rows), score (scalar
projection on the unit vector), cosine, and whether the layer is the trait's chosen one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from traitscope.capture_set import read_shards
from traitscope.errors import TraitscopeError
from traitscope.extraction import load_vectors
from traitscope.io import write_parquet
from traitscope.vectors import unit

COLUMNS = [
    "prompt_id",
    "variant",
    "trait",
    "layer",
    "position",
    "token_index",
    "score",
    "cosine",
    "chosen_layer",
]


@dataclass(frozen=True)
class TraitVector:
    """A trait's vectors (its chosen method, every layer) and its chosen layer."""

    name: str
    vectors: torch.Tensor  # [n_layers, d_model], unit rows
    layer: int


def load_trait_vector(name: str, vectors_path: str | Path, evaluation_path: str | Path) -> TraitVector:
    """The chosen method's vectors of one trait, with the layer its evaluation chose."""
    try:
        chosen = json.loads(Path(evaluation_path).read_text())["chosen"]
    except (OSError, KeyError, json.JSONDecodeError):
        raise TraitscopeError(
            f"{evaluation_path}: missing or malformed evaluation; rerun trait-evaluate"
        ) from None
    return TraitVector(name, unit(load_vectors(vectors_path)[chosen["method"]]), chosen["layer"])


def project_rows(acts: torch.Tensor, traits: list[TraitVector], layer: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, cosines), each `[n, n_traits]`, of `acts` `[n, d]` at one layer."""
    basis = torch.stack([t.vectors[layer] for t in traits], dim=1)  # [d, n_traits]
    x = acts.float()
    scores = x @ basis
    cos = scores / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return scores.numpy(), cos.numpy()


def _long(
    ids: np.ndarray,
    positions: np.ndarray,
    token_index: np.ndarray,
    scores: np.ndarray,
    cos: np.ndarray,
    traits: list[TraitVector],
    layer: int,
    variant: str,
) -> pd.DataFrame:
    n, k = scores.shape
    names = np.array([t.name for t in traits])
    return pd.DataFrame(
        {
            "prompt_id": np.repeat(ids, k),
            "variant": variant,
            "trait": np.tile(names, n),
            "layer": layer,
            "position": np.repeat(positions, k),
            "token_index": np.repeat(token_index, k),
            "score": scores.reshape(-1),
            "cosine": cos.reshape(-1),
            "chosen_layer": np.tile(np.array([t.layer == layer for t in traits]), n),
        }
    )


def project_capture(
    capture_json: str | Path, traits: list[TraitVector], variant: str, out: str | Path
) -> pd.DataFrame:
    """Project one capture onto every trait at every captured layer; write Parquet."""
    manifest = json.loads(Path(capture_json).read_text())
    pools = manifest["pools"]
    frames = []
    for prompts, tokens, tensors in read_shards(capture_json):
        ids = prompts["prompt_id"].to_numpy()
        for layer in manifest["layers"]:
            pooled = tensors[f"pooled.layer.{layer}"]  # [n, n_pools, d]
            scores, cos = project_rows(pooled.reshape(-1, pooled.shape[-1]), traits, layer)
            keep = ~np.isnan(scores[:, 0])  # pools absent from a prompt (no prefill, say)
            frames.append(
                _long(
                    np.repeat(ids, len(pools))[keep],
                    np.tile(np.array(pools), len(ids))[keep],
                    np.full(keep.sum(), -1),
                    scores[keep],
                    cos[keep],
                    traits,
                    layer,
                    variant,
                )
            )
            if f"tokens.layer.{layer}" in tensors:
                scores, cos = project_rows(tensors[f"tokens.layer.{layer}"], traits, layer)
                frames.append(
                    _long(
                        tokens["prompt_id"].to_numpy(),
                        tokens["segment"].to_numpy(),
                        tokens["token_index"].to_numpy(),
                        scores,
                        cos,
                        traits,
                        layer,
                        variant,
                    )
                )
    table = pd.concat(frames, ignore_index=True)[COLUMNS] if frames else pd.DataFrame(columns=COLUMNS)
    write_parquet(out, table)
    return table
