"""The decode loop both caches share: feed sampled tokens until every row has stopped.

The host learns that every row has stopped only after queueing the next step, so a GPU never
waits on it (`_StopFlags`). Used by the DynamicCache loop (`generate`) and the static-cache
decoder (`static_decode`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

Steps = tuple[list[torch.Tensor], dict[int, torch.Tensor], list[dict[int, torch.Tensor]]]


def _forward_accepts(model: Any, name: str) -> bool:
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return name in inspect.signature(type(inner).forward).parameters


def _cache_keyword(model: Any) -> str:
    """`cache` in recent transformers, `past_key_values` before it (now deprecated)."""
    return "cache" if _forward_accepts(model, "cache") else "past_key_values"


class _StopFlags:
    """Each step's all-stopped flag, copied to the host without stalling the GPU: the loop reads
    a step's flag only after queueing the next decode step, so the GPU always has work queued
    while the host waits (a sync per step left a CUDA-graph decode step's GPU idle for the host's
    launches, 20-30% of the step)."""

    def __init__(self, device: torch.device, n: int) -> None:
        self.cuda = device.type == "cuda"
        self.host = torch.zeros(n, dtype=torch.bool, pin_memory=self.cuda)
        self.events: list[Any] = [None] * n

    def record(self, step: int, done: torch.Tensor) -> None:
        self.host[step].copy_(done, non_blocking=self.cuda)
        if self.cuda:
            self.events[step] = torch.cuda.Event()
            self.events[step].record()

    def read(self, step: int) -> bool:
        if self.cuda:
            self.events[step].synchronize()
        return bool(self.host[step])


def _decode_loop(
    logits: torch.Tensor,
    decode: Callable[[torch.Tensor, int], tuple[torch.Tensor, dict[int, torch.Tensor]]],
    max_new_tokens: int,
    sample: Callable[[torch.Tensor], torch.Tensor],
    stops: torch.Tensor,
    finished: torch.Tensor,
    recording: bool,
) -> tuple[list[torch.Tensor], list[dict[int, torch.Tensor]]]:
    """Feed sampled tokens until every row has stopped; when recording, the last kept token is
    fed too so its activation exists. decode(token, step) -> (next logits, {layer: [b, 1, d]}).
    Whether all rows stopped at a step is read after that step's token is fed (`_StopFlags`);
    without recording that feed was not needed, and what it returned is dropped."""
    fed: list[torch.Tensor] = []
    steps: list[dict[int, torch.Tensor]] = []
    flags = _StopFlags(finished.device, max_new_tokens)
    token = sample(logits)
    for step in range(max_new_tokens):
        finished |= torch.isin(token, stops)
        flags.record(step, finished.all())
        fed.append(token)
        last = step == max_new_tokens - 1
        if last and not recording:
            break
        logits, hidden = decode(token, step)
        steps.append(hidden)
        if flags.read(step):
            return fed, steps if recording else steps[:-1]
        if last:
            break  # every row's kept tokens have been fed
        token = sample(logits)
    return fed, steps


def _joined(head: torch.Tensor | None, rest: torch.Tensor) -> torch.Tensor:
    return rest if head is None else torch.cat([head, rest], dim=1)
