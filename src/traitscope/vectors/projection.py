"""Projection of captured activations onto trait vectors, as long-format Parquet.

One matmul per layer projects every pooled and per-token activation onto every trait
at once: `[n, d] @ [d, n_traits]`. The rows' layout is `projection_table`'s.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from traitscope.capture.store import read_manifest, read_shards
from traitscope.errors import TraitscopeError
from traitscope.io import atomic_path
from traitscope.vectors.projection_table import COLUMNS, SCHEMA
from traitscope.vectors.trait_vector import TraitVector


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
) -> pa.Table:
    """The long rows of `n` activations' `[n, n_traits]` scores, straight into Arrow."""
    n, k = scores.shape
    names = np.array([t.name for t in traits], dtype=object)
    columns = {
        "prompt_id": np.repeat(ids.astype(object), k),
        "variant": pa.repeat(variant, n * k),
        "trait": np.tile(names, n),
        "layer": np.full(n * k, layer, dtype=np.int64),
        "position": np.repeat(positions.astype(object), k),
        "token_index": np.repeat(token_index.astype(np.int64), k),
        "score": scores.reshape(-1),
        "cosine": cos.reshape(-1),
        "chosen_layer": np.tile(np.array([t.layer == layer for t in traits]), n),
    }
    return pa.Table.from_arrays(
        [pa.array(columns[c], type=SCHEMA.field(c).type) for c in COLUMNS], schema=SCHEMA
    )


def _frames(capture_json: str | Path, traits: list[TraitVector], variant: str) -> Iterator[pa.Table]:
    """The long rows of one shard and layer at a time (pooled, then per-token)."""
    manifest = read_manifest(capture_json)
    pools = manifest["pools"]
    for prompts, tokens, tensors in read_shards(capture_json):
        ids = prompts["prompt_id"].to_numpy()
        for layer in manifest["layers"]:
            pooled = tensors[f"pooled.layer.{layer}"]  # [n, n_pools, d]
            scores, cos = project_rows(pooled.reshape(-1, pooled.shape[-1]), traits, layer)
            keep = ~np.isnan(scores[:, 0])  # pools absent from a prompt (no prefill, say)
            yield _long(
                np.repeat(ids, len(pools))[keep],
                np.tile(np.array(pools), len(ids))[keep],
                np.full(keep.sum(), -1),
                scores[keep],
                cos[keep],
                traits,
                layer,
                variant,
            )
            if f"tokens.layer.{layer}" in tensors:
                scores, cos = project_rows(tensors[f"tokens.layer.{layer}"], traits, layer)
                yield _long(
                    tokens["prompt_id"].to_numpy(),
                    tokens["segment"].to_numpy(),
                    tokens["token_index"].to_numpy(),
                    scores,
                    cos,
                    traits,
                    layer,
                    variant,
                )


def project(
    capture_json: str | Path, traits: list[TraitVector], variant: str, prompt_set: str, out: str | Path
) -> int:
    """Project one capture onto every trait at every captured layer; write Parquet a row group
    per shard and layer (memory holds one shard's rows, not the set's); the rows written.

    Each trait's chosen layer must be among the captured ones: analyses score there.
    """
    manifest = read_manifest(capture_json)
    for t in traits:
        t.require_width(manifest["d_model"], f"{capture_json}")
        if t.layer not in manifest["layers"]:
            raise TraitscopeError(
                f"trait {t.name}: chosen layer {t.layer} was not captured for prompt set {prompt_set} "
                f"(layers {manifest['layers']}); add it to that set's capture.layers"
            )
    rows = 0
    with atomic_path(out) as tmp, pq.ParquetWriter(tmp, SCHEMA) as writer:
        for frame in _frames(capture_json, traits, variant):
            writer.write_table(frame)
            rows += frame.num_rows
    return rows
