"""Shared-prefix prefill: the tokens several prompts of a batch start with run once, not per row.

A persona trait set asks every question under twelve system prompts (~35 of its ~54 prompt
tokens), and a length-sorted batch mixes all twelve; a chat template's default system prompt
(SmolLM2's: 24 tokens with the user header) opens every prompt of a set without one. Rows are
grouped by their opening tokens (`batch_prefixes`); each group's common prefix runs once, all
groups' prefixes in one left-padded forward pass, and its keys, values and residual stream are
copied into its rows. Only the rows' own suffixes are then prefilled; the batch plan stays that
of length-sorted batches (a prefix computed apart rounds differently in bf16, not in fp32).

A batch is laid out as [left-padded prefix | left-padded suffix]: padding sits before and between
the two parts, masked, with positions counted over real tokens only, so each row computes what
it would alone. `left_layout` turns recorded states back into the plain left-padded layout the
rest of the engine uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from traitscope.generation.cuda_graphs import additive_mask

MIN_SHARED = 8  # shorter common prefixes are not worth the extra forward pass


@dataclass
class Prefixes:
    """The prefixes of one batch: `ids` and `mask` [groups, width], each group's prefix
    left-padded; `group` [rows] the group each row copies; `row_mask` [rows, width] the columns
    each row attends to (none for a row without a prefix)."""

    ids: torch.Tensor
    mask: torch.Tensor
    group: torch.Tensor
    row_mask: torch.Tensor

    @property
    def width(self) -> int:
        return self.ids.shape[1]

    @classmethod
    def single(cls, prefix: Sequence[int], rows: int, device: torch.device) -> Prefixes:
        """One prefix that every row of the batch starts with."""
        ids = torch.tensor([list(prefix)], dtype=torch.long, device=device)
        mask = torch.ones_like(ids)
        return cls(ids, mask, torch.zeros(rows, dtype=torch.long, device=device), mask.expand(rows, -1))


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    return next((k for k in range(n) if a[k] != b[k]), n)


def shared_prefix(prompts: Sequence[list[int]], idx: Sequence[int]) -> int:
    """Length of the prefix common to the prompts `idx`, leaving every prompt at least one
    token of its own (its last token's logits start generation); 0 below MIN_SHARED."""
    first = prompts[idx[0]]
    n = min(min(len(prompts[i]) - 1, _common(first, prompts[i])) for i in idx)
    return n if n >= MIN_SHARED else 0


def _runs(order: list[int], adjacent: list[int], threshold: int) -> list[list[int]]:
    """Positions in `order` cut wherever two neighbours share fewer than `threshold` tokens."""
    runs = [[0]]
    for k, common in enumerate(adjacent, start=1):
        if common < threshold:
            runs.append([])
        runs[-1].append(k)
    return runs


def batch_prefixes(
    prompts: Sequence[list[int]], idx: Sequence[int], rows: int, device: torch.device, max_width: int
) -> tuple[Prefixes | None, list[int]]:
    """Group a batch's prompts by their opening tokens, each group sharing its common prefix.

    Sorted, neighbours share their opening tokens; the batch is cut wherever two share fewer
    than a threshold, at the threshold that prefills the fewest tokens: groups x the longest
    prefix (the prefix pass) plus rows x the longest suffix. A group of one runs all but its
    last token in the prefix pass, so it never widens the suffixes; a group whose common prefix
    is under MIN_SHARED tokens shares none. A layout is at most `max_width` columns (longest
    prefix + longest suffix). Returns the prefixes (None where sharing saves nothing) and each
    prompt's prefix length (0: all its own). Rows past len(idx) (bucket padding) repeat the
    last prompt, as `_left_padded` lays them out."""
    batch = [prompts[i] for i in idx]
    order = sorted(range(len(batch)), key=lambda r: batch[r])
    size = [len(batch[r]) for r in order]
    adjacent = [_common(batch[a], batch[b]) for a, b in zip(order, order[1:])]
    best_cost, best = rows * max(size), None
    for threshold in sorted({n for n in adjacent if n >= MIN_SHARED} | {max(size)}):
        lengths = [0] * len(batch)
        groups = []
        for run in _runs(order, adjacent, threshold):
            # sorted, a run's common prefix is the least two neighbours in it share
            n = min([size[k] - 1 for k in run] + [adjacent[k - 1] for k in run[1:]])
            if n >= MIN_SHARED:
                groups.append(([order[k] for k in run], n))
                for k in run:
                    lengths[order[k]] = n
        if not groups:
            continue
        longest = max(n for _, n in groups)
        suffix = max(len(p) - n for p, n in zip(batch, lengths))
        cost = len(groups) * longest + rows * suffix
        if cost < best_cost and longest + suffix <= max_width:
            best_cost, best = cost, (groups, lengths)
    if best is None:
        return None, [0] * len(batch)
    groups, lengths = best
    groups.sort(key=lambda group: min(group[0]))  # in batch order
    width = max(n for _, n in groups)
    ids = torch.zeros((len(groups), width), dtype=torch.long)
    mask = torch.zeros((len(groups), width), dtype=torch.long)
    group = [0] * len(batch)
    for g, (members, n) in enumerate(groups):
        ids[g, width - n :] = torch.tensor(batch[members[0]][:n])
        mask[g, width - n :] = 1
        for row in members:
            group[row] = g
    padded = [min(row, len(batch) - 1) for row in range(rows)]
    group_rows = torch.tensor([group[r] for r in padded])
    shares = torch.tensor([lengths[r] > 0 for r in padded])[:, None]
    row_mask = mask[group_rows] * shares
    prefixes = Prefixes(ids.to(device), mask.to(device), group_rows.to(device), row_mask.to(device))
    return prefixes, lengths


def layout_mask(prefixes: Prefixes | None, mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The batch's attention mask over [prefix | suffix] columns, and its prefix columns."""
    if prefixes is None:
        return mask, 0
    return torch.cat([prefixes.row_mask, mask], dim=1), prefixes.width


def _layer_states(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) per layer of a DynamicCache, in recent and older transformers layouts."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache))


def prefill_prefix(
    model: Any,
    prefixes: Prefixes,
    cache: Any,
    cache_keyword: str,
    store: dict[int, torch.Tensor],
    layers: Sequence[int],
) -> dict[int, torch.Tensor]:
    """Run the prefixes once, in one forward pass, and write each group's keys/values into its
    rows' columns [0, width) of `cache` (empty, Dynamic or Static); returns {layer: [rows,
    width, d]} of the residual stream. `store` is the dict an active `hooks.record` fills."""
    from transformers import DynamicCache

    scratch = DynamicCache(config=model.config)
    keys = prefixes.mask.bool()
    causal = torch.ones(prefixes.width, prefixes.width, dtype=torch.bool, device=keys.device).tril()
    model(
        input_ids=prefixes.ids,  # padding columns masked; the finite mask keeps their states finite
        attention_mask=additive_mask((keys[:, None, :] & causal)[:, None], model.dtype),
        position_ids=(prefixes.mask.cumsum(-1) - 1).clamp_min(0),
        use_cache=True,
        logits_to_keep=1,
        **{cache_keyword: scratch},
    )
    group = prefixes.group  # moved to each layer's device: a sharded model spreads them
    hidden = {layer: store[layer].index_select(0, group.to(store[layer].device)) for layer in layers}
    position = torch.arange(prefixes.width, device=prefixes.ids.device)
    for i, (keys, values) in enumerate(_layer_states(scratch)):
        rows = group.to(keys.device)
        keys, values = keys.index_select(0, rows), values.index_select(0, rows)
        cache.update(keys, values, i, {"cache_position": position})
    return hidden


def left_layout(hidden: torch.Tensor, shared: int, suffix_lengths: torch.Tensor) -> torch.Tensor:
    """[rows, P + S, d] states laid out [left-padded prefix | left-padded suffix] (P = `shared`
    columns) -> plain left padding, each prompt in its last p_i + s_i columns (padding columns
    hold arbitrary rows' values)."""
    rows, width, d = hidden.shape
    cols = torch.arange(width, device=hidden.device)[None, :]
    gap = (width - shared - suffix_lengths.to(hidden.device))[:, None]  # padding between the parts
    source = torch.where(cols < width - suffix_lengths.to(hidden.device)[:, None], cols - gap, cols)
    # whole d-vectors picked by one flat index: a gather's index as large as the states was
    # several times slower on a CPU
    flat = (source.clamp_min(0) + width * torch.arange(rows, device=hidden.device)[:, None]).flatten()
    return hidden.reshape(rows * width, d).index_select(0, flat).view(rows, width, d)
