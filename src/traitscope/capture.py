"""Activation capture: padded, length-bucketed forward passes over encoded conversations.

Pools are named so stages can ask for what they need: `<segment>_mean` (mean over a
segment's tokens: `response_mean`, `prefill_mean`, `user_mean`, ...), `prompt_mean`
(every token before the assistant writes) and `last_prompt` (the last token before
it writes). A pool whose segment is absent from a conversation is NaN there.

Right padding keeps positions as in the unpadded sequence; left padding passes explicit
position ids, so one prompt captured inside a padded batch equals that prompt alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from traitscope.batching import token_budget_batches
from traitscope.chat import SEGMENT_CODE, Encoded
from traitscope.hooks import run_recorded

POOLS = ("last_prompt", "prompt_mean") + tuple(f"{s}_mean" for s in SEGMENT_CODE)


@dataclass
class Batch:
    """One padded forward pass: which conversations, where each sits, and the hidden states."""

    index: list[int]  # positions in the input list
    offsets: list[int]  # column of each conversation's first token (non-zero under left padding)
    hidden: dict[int, torch.Tensor]  # layer -> [batch, width, d_model]
    segments: torch.Tensor  # [batch, width] segment codes, -1 on padding (on the model's device)
    prompt_len: torch.Tensor  # [batch] tokens before prefill/response


def forward_batches(
    model: Any,
    encoded: Sequence[Encoded],
    layers: Sequence[int],
    max_tokens: int = 8192,
    pad_id: int = 0,
    padding_side: str = "right",
    progress: bool = True,
    desc: str = "capture",
) -> Iterator[Batch]:
    """Run length-sorted token-budget batches, stopping each pass after the deepest layer."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', not {padding_side!r}")
    device = next(model.parameters()).device
    lengths = [len(e.ids) for e in encoded]
    bar = tqdm(total=sum(lengths), unit="tok", unit_scale=True, disable=not progress, desc=desc)
    for idx in token_budget_batches(lengths, max_tokens):
        width = max(lengths[i] for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        segments = torch.full((len(idx), width), -1, dtype=torch.long)
        offsets = []
        for row, i in enumerate(idx):
            start = width - lengths[i] if padding_side == "left" else 0
            ids[row, start : start + lengths[i]] = torch.tensor(encoded[i].ids)
            segments[row, start : start + lengths[i]] = torch.tensor(encoded[i].segments)
            offsets.append(start)
        mask = (segments >= 0).long()
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        hidden = run_recorded(
            model,
            layers,
            input_ids=ids.to(device, non_blocking=True),
            attention_mask=mask.to(device, non_blocking=True),
            position_ids=positions.to(device, non_blocking=True),
        )
        prompt_len = torch.tensor([encoded[i].prompt_len for i in idx])
        yield Batch(list(idx), offsets, hidden, segments.to(device), prompt_len.to(device))
        bar.update(sum(lengths[i] for i in idx))
    bar.close()


def pool_weights(batch: Batch, pool: str) -> torch.Tensor:
    """[batch, width] float32 weights summing to 1 over the pooled tokens (NaN row if none)."""
    seg = batch.segments
    cols = torch.arange(seg.shape[1], device=seg.device)
    first = torch.tensor(batch.offsets, device=seg.device)
    if pool == "last_prompt":
        mask = cols[None, :] == (first + batch.prompt_len - 1)[:, None]
    elif pool == "prompt_mean":
        mask = (cols[None, :] >= first[:, None]) & (cols[None, :] < (first + batch.prompt_len)[:, None])
    elif pool.endswith("_mean") and pool.removesuffix("_mean") in SEGMENT_CODE:
        mask = seg == SEGMENT_CODE[pool.removesuffix("_mean")]
    else:
        raise ValueError(f"unknown pool {pool!r}; known: {', '.join(POOLS)}")
    w = mask.float()
    return w / w.sum(-1, keepdim=True)  # 0/0 -> NaN marks a conversation without that segment


def pool_batch(batch: Batch, layers: Sequence[int], pools: Sequence[str]) -> dict[str, torch.Tensor]:
    """{pool: float32 [batch, n_layers, d]} on the host, for one forward batch."""
    weights = torch.stack([pool_weights(batch, pool) for pool in pools], dim=1)  # [b, P, t]
    missing = weights.isnan().any(-1)  # [b, P]
    weights = weights.nan_to_num(0.0)
    # one batched matmul per layer, accumulated in float32
    pooled = torch.stack([torch.bmm(weights, batch.hidden[layer].float()) for layer in layers], dim=2)
    pooled[missing] = float("nan")  # [b, P, L, d]
    pooled = pooled.cpu()
    return {pool: pooled[:, j] for j, pool in enumerate(pools)}


def pooled_activations(
    model: Any,
    encoded: Sequence[Encoded],
    layers: Sequence[int],
    pools: Sequence[str] = ("response_mean", "last_prompt"),
    max_tokens: int = 4096,
    pad_id: int = 0,
    progress: bool = True,
    padding_side: str = "right",
) -> dict[str, torch.Tensor]:
    """{pool: float32 [n, len(layers), d_model]} for each conversation, in input order."""
    out: dict[str, torch.Tensor] = {}
    for batch in forward_batches(model, encoded, layers, max_tokens, pad_id, padding_side, progress):
        for pool, pooled in pool_batch(batch, layers, pools).items():
            if pool not in out:
                out[pool] = torch.empty(len(encoded), len(layers), pooled.shape[-1])
            out[pool][batch.index] = pooled
    return out
