"""Shared-prefix prefill: the tokens every prompt of a batch starts with run once, not per row.

Where the chat template adds a default system prompt to a prompt set without one (SmolLM2's: 24
tokens with the user header), every batch shares it. Trait sets do not: a length-sorted batch
mixes their instructions, which share ~5 tokens ("You are"), under MIN_SHARED. Grouping batches
by instruction saved deception's prefill but took twice the decode steps, no faster with one CPU
thread (benchmarks/results/precision_avx512bf16_epyc.txt).

The prefix runs at batch size 1; its keys and values are broadcast into every row's cache and
its residual stream into every row's record, then only the rows' own suffixes are prefilled. The
batch is laid out as [prefix | left-padded suffix]: padding sits between the two, masked, with
positions counted over real tokens only, so each row computes what it would alone. `left_layout`
turns recorded states back into the plain left-padded layout the rest of the engine uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

MIN_SHARED = 8  # shorter common prefixes are not worth the extra forward pass


def shared_prefix(prompts: Sequence[list[int]], idx: Sequence[int]) -> int:
    """Length of the prefix common to the batch's prompts, leaving every prompt at least one
    token of its own (its last token's logits start generation); 0 below MIN_SHARED."""
    first = prompts[idx[0]]
    n = min(len(prompts[i]) for i in idx) - 1
    for i in idx[1:]:
        other = prompts[i]
        n = next((k for k in range(n) if other[k] != first[k]), n)
    return n if n >= MIN_SHARED else 0


def _layer_states(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) per layer of a DynamicCache, in recent and older transformers layouts."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache))


def prefill_prefix(
    model: Any,
    prefix: torch.Tensor,
    cache: Any,
    rows: int,
    cache_keyword: str,
    store: dict[int, torch.Tensor],
    layers: Sequence[int],
) -> dict[int, torch.Tensor]:
    """Run `prefix` ([P] ids) once and write its keys/values into every row of `cache` (empty,
    Dynamic or Static); returns {layer: [rows, P, d]} of the residual stream (broadcast views).
    `store` is the dict an active `hooks.record` fills."""
    from transformers import DynamicCache

    scratch = DynamicCache(config=model.config)
    position = torch.arange(len(prefix), device=prefix.device)
    model(
        input_ids=prefix[None],
        position_ids=position[None],
        use_cache=True,
        logits_to_keep=1,
        **{cache_keyword: scratch},
    )
    hidden = {layer: store[layer].expand(rows, -1, -1) for layer in layers}
    for i, (keys, values) in enumerate(_layer_states(scratch)):
        shape = (rows, *keys.shape[1:])
        cache.update(keys.expand(shape), values.expand(shape), i, {"cache_position": position})
    return hidden


def left_layout(hidden: torch.Tensor, shared: int, suffix_lengths: torch.Tensor) -> torch.Tensor:
    """[rows, P + S, d] states laid out [prefix | left-padded suffix] -> plain left padding,
    each prompt in its last P + s_i columns (padding columns hold arbitrary rows' values)."""
    rows, width, d = hidden.shape
    cols = torch.arange(width, device=hidden.device)[None, :]
    gap = (width - shared - suffix_lengths.to(hidden.device))[:, None]  # padding between the parts
    source = torch.where(cols < width - suffix_lengths.to(hidden.device)[:, None], cols - gap, cols)
    index = source.clamp_min(0)[:, :, None].expand(rows, width, d)
    return torch.gather(hidden, 1, index)
