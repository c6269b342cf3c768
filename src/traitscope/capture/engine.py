"""Activation capture: padded, length-bucketed forward passes over encoded conversations.

Pools are named so stages can ask for what they need: `<segment>_mean` (mean over a
segment's tokens: `response_mean`, `prefill_mean`, `user_mean`, ...), `prompt_mean`
(every token before the assistant writes), `last_prompt` (the last token before it writes)
and `post_instruction_mean` (the chat-template tokens from the end of the user's text to the
start of the assistant's answer, where Arditi et al. read the refusal direction). A pool whose
segment is absent from a conversation is NaN there.

Right padding keeps positions as in the unpadded sequence; left padding passes explicit
position ids, so one prompt captured inside a padded batch equals that prompt alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from traitscope.model.batching import token_budget_batches
from traitscope.model.chat import SEGMENT_CODE, Encoded
from traitscope.model.hooks import run_recorded

POOLS = ("last_prompt", "prompt_mean", "post_instruction_mean") + tuple(f"{s}_mean" for s in SEGMENT_CODE)


@dataclass
class Batch:
    """One padded forward pass: which conversations, where each sits, and the hidden states."""

    index: list[int]  # positions in the input list
    offsets: list[int]  # column of each conversation's first token (non-zero under left padding)
    hidden: dict[int, torch.Tensor]  # layer -> [batch, width, d_model]
    segments: torch.Tensor  # [batch, width] segment codes, -1 on padding (on the model's device)
    prompt_len: torch.Tensor  # [batch] tokens before prefill/response (on the model's device)
    first: torch.Tensor  # [batch] the offsets, on the model's device


def _host_batch(
    encoded: Sequence[Encoded], idx: list[int], pad_id: int, padding_side: str, pin: bool
) -> dict:
    """CPU tensors of one padded batch (pinned on GPU runs so the copy overlaps compute)."""
    lengths = [len(encoded[i].ids) for i in idx]
    width = max(lengths)
    ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    segments = torch.full((len(idx), width), -1, dtype=torch.long)
    offsets = [width - n if padding_side == "left" else 0 for n in lengths]
    for row, (i, start, n) in enumerate(zip(idx, offsets, lengths)):
        ids[row, start : start + n] = torch.tensor(encoded[i].ids)
        segments[row, start : start + n] = torch.tensor(encoded[i].segments)
    mask = (segments >= 0).long()
    tensors = {
        "input_ids": ids,
        "attention_mask": mask,
        "position_ids": (mask.cumsum(-1) - 1).clamp_min(0),
        "segments": segments,
        "prompt_len": torch.tensor([encoded[i].prompt_len for i in idx]),
        "first": torch.tensor(offsets),
    }
    if pin:
        tensors = {k: v.pin_memory() for k, v in tensors.items()}
    return {"tensors": tensors, "offsets": offsets, "n_tokens": sum(lengths)}


def forward_batches(
    model: Any,
    encoded: Sequence[Encoded],
    layers: Sequence[int],
    max_tokens: int,
    pad_id: int,
    padding_side: str,
    progress: bool = True,
    desc: str = "capture",
) -> Iterator[Batch]:
    """Run length-sorted token-budget batches, stopping each pass after the deepest layer.

    The next batch is assembled on the host while the device runs the current one.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', not {padding_side!r}")
    device = next(model.parameters()).device
    pin = device.type == "cuda"
    lengths = [len(e.ids) for e in encoded]
    plan = list(token_budget_batches(lengths, max_tokens))
    bar = tqdm(total=sum(lengths), unit="tok", unit_scale=True, disable=not progress, desc=desc)
    upcoming = _host_batch(encoded, plan[0], pad_id, padding_side, pin) if plan else None
    for k, idx in enumerate(plan):
        host = upcoming
        t = {key: value.to(device, non_blocking=True) for key, value in host["tensors"].items()}
        hidden = run_recorded(
            model,
            layers,
            input_ids=t["input_ids"],
            attention_mask=t["attention_mask"],
            position_ids=t["position_ids"],
        )
        if k + 1 < len(plan):  # host work for the next batch overlaps this batch's kernels
            upcoming = _host_batch(encoded, plan[k + 1], pad_id, padding_side, pin)
        yield Batch(list(idx), host["offsets"], hidden, t["segments"], t["prompt_len"], t["first"])
        bar.update(host["n_tokens"])
    bar.close()


def pool_weights(batch: Batch, pool: str) -> torch.Tensor:
    """[batch, width] float32 weights summing to 1 over the pooled tokens (NaN row if none)."""
    seg = batch.segments
    cols = torch.arange(seg.shape[1], device=seg.device)
    first = batch.first
    if pool == "last_prompt":
        mask = cols[None, :] == (first + batch.prompt_len - 1)[:, None]
    elif pool == "prompt_mean":
        mask = (cols[None, :] >= first[:, None]) & (cols[None, :] < (first + batch.prompt_len)[:, None])
    elif pool == "post_instruction_mean":  # after the last user token, before the answer
        last_user = torch.where(seg == SEGMENT_CODE["user"], cols[None, :], -1).amax(-1)
        after = (cols[None, :] > last_user[:, None]) & (last_user >= 0)[:, None]
        mask = after & (cols[None, :] < (first + batch.prompt_len)[:, None])
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
    # a model sharded over GPUs (device_map) leaves later layers' states on later devices
    pooled = torch.stack(
        [torch.bmm(weights, batch.hidden[layer].to(weights.device).float()) for layer in layers], dim=2
    )
    pooled[missing] = float("nan")  # [b, P, L, d]
    pooled = pooled.cpu()
    return {pool: pooled[:, j] for j, pool in enumerate(pools)}


def pooled_activations(
    model: Any,
    encoded: Sequence[Encoded],
    layers: Sequence[int],
    pools: Sequence[str],
    max_tokens: int,
    pad_id: int,
    padding_side: str,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """{pool: float32 [n, len(layers), d_model]} for each conversation, in input order."""
    out: dict[str, torch.Tensor] = {}
    for batch in forward_batches(model, encoded, layers, max_tokens, pad_id, padding_side, progress):
        for pool, pooled in pool_batch(batch, layers, pools).items():
            if pool not in out:
                out[pool] = torch.empty(len(encoded), len(layers), pooled.shape[-1])
            out[pool][batch.index] = pooled
    return out
