"""Activation capture: padded batched forward passes pooled per conversation.

Pools are named so stages can ask for what they need: `response_mean` (mean over
response tokens), `prefill_mean`, `last_prompt` (the last token before the assistant
writes). Right padding keeps positions identical to the unpadded sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm import tqdm

from traitscope.batching import token_budget_batches
from traitscope.chat import SEGMENT_CODE, Encoded
from traitscope.hooks import run_recorded

POOLS = ("response_mean", "prefill_mean", "last_prompt")


def _pool_weights(batch: list[Encoded], pool: str, width: int) -> torch.Tensor:
    """[batch, width] weights whose row-sum is 1 over the pooled tokens."""
    w = torch.zeros(len(batch), width)
    for row, enc in enumerate(batch):
        if pool == "last_prompt":
            w[row, enc.last_prompt_index] = 1.0
            continue
        code = SEGMENT_CODE[pool.removesuffix("_mean")]
        mask = torch.tensor([s == code for s in enc.segments], dtype=torch.float32)
        if mask.sum() == 0:
            raise ValueError(f"pool {pool!r}: a conversation has no {pool.removesuffix('_mean')} tokens")
        w[row, : len(mask)] = mask / mask.sum()
    return w


def pooled_activations(
    model: Any,
    encoded: Sequence[Encoded],
    layers: Sequence[int],
    pools: Sequence[str] = ("response_mean", "last_prompt"),
    max_tokens: int = 4096,
    pad_id: int = 0,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """{pool: float32 [n, len(layers), d_model]} for each conversation, in input order."""
    device = next(model.parameters()).device
    lengths = [len(e.ids) for e in encoded]
    out: dict[str, torch.Tensor] = {}
    bar = tqdm(total=sum(lengths), unit="tok", disable=not progress, desc="capture")
    for idx in token_budget_batches(lengths, max_tokens):
        batch = [encoded[i] for i in idx]
        width = max(lengths[i] for i in idx)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, enc in enumerate(batch):
            ids[row, : len(enc.ids)] = torch.tensor(enc.ids)
            mask[row, : len(enc.ids)] = 1
        hidden = run_recorded(model, layers, input_ids=ids.to(device), attention_mask=mask.to(device))
        stacked = torch.stack([hidden[layer].float() for layer in layers], dim=1)  # [b, L, t, d]
        for pool in pools:
            w = _pool_weights(batch, pool, width).to(device)
            pooled = torch.einsum("bt,bltd->bld", w, stacked).cpu()
            if pool not in out:
                out[pool] = torch.empty(len(encoded), len(layers), pooled.shape[-1])
            out[pool][idx] = pooled
        bar.update(sum(lengths[i] for i in idx))
    bar.close()
    return out
