"""Projection of captured activations onto trait vectors, as long-format Parquet.

One matmul per layer projects every pooled and per-token activation onto every trait
at once: `[n, d] @ [d, n_traits]`. Rows: prompt_id, variant, trait, layer, position
(a pool name, or the token's segment), token_index (-1 for pooled rows), score (scalar
projection on the unit vector), cosine, and whether the layer is the trait's chosen one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from traitscope.capture.store import read_manifest, read_shards
from traitscope.errors import TraitscopeError
from traitscope.io import write_parquet
from traitscope.vectors.trait_vector import TraitVector

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


def project_rows(acts: torch.Tensor, traits: list[TraitVector], layer: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, cosines), each `[n, n_traits]`, of `acts` `[n, d]` at one layer."""
    basis = torch.stack([t.direction(layer) for t in traits], dim=1).float()  # [d, n_traits]
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


def project(
    capture_json: str | Path, traits: list[TraitVector], variant: str, prompt_set: str, out: str | Path
) -> pd.DataFrame:
    """Project one capture onto every trait at every captured layer; write Parquet.

    Each trait's chosen layer must be among the captured ones: analyses score there.
    """
    manifest = read_manifest(capture_json)
    for t in traits:
        if t.layer not in manifest["layers"]:
            raise TraitscopeError(
                f"trait {t.name}: chosen layer {t.layer} was not captured for prompt set {prompt_set} "
                f"(layers {manifest['layers']}); add it to that set's capture.layers"
            )
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


def chosen_scores(projections: pd.DataFrame, position: str, traits: list[str]) -> pd.DataFrame:
    """prompt_id x trait table of scores at each trait's chosen layer and one pooled position."""
    rows = projections[projections["chosen_layer"] & (projections["position"] == position)]
    if rows.empty:
        raise TraitscopeError(
            f"no projections at position {position!r} on a chosen layer; check the position"
        )
    missing = sorted(set(traits) - set(rows["trait"]))
    if missing:
        raise TraitscopeError(
            f"no projections for trait(s) {', '.join(missing)}; add them to traits: and rerun"
        )
    return rows.pivot_table(index="prompt_id", columns="trait", values="score")
