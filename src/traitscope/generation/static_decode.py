"""Decoding over a `transformers.StaticCache`, each decode step a CUDA graph on CUDA.

No step copies the cache (DynamicCache's cat was 12% of a CPU decode step). On CUDA the first
step of a batch shape (rows padded to a multiple of 8, cache length to a multiple of 32) runs
eagerly and is captured; every later step is a replay, without the per-step Python and launch
overhead. Hooks active at capture are part of the graph; what they record is copied out after
each replay. Inside `generation_session` caches and graphs outlive a `generate` call, so a stage
that generates again and again for the same prompts (CMA-ES candidates, steering coefficients)
captures once: hooks that say what they do (`graph_key`: steering reads a per-layer device
slot, recording copies out) let a later call replay a graph; a graph made under any other hook
serves only its own call.
"""

from __future__ import annotations

import sys
import weakref
from collections import OrderedDict
from collections.abc import Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn.modules import module as nn_module

from traitscope.generation.cuda_graphs import OnceToDevice, additive_mask, grouped_attention
from traitscope.generation.decode_loop import Steps, _cache_keyword, _decode_loop, _forward_accepts, _joined
from traitscope.generation.prefix import layout_mask, prefill_prefix
from traitscope.model.hooks import record

# static KV caches are sized in multiples of CACHE_STEP tokens and ROWS_STEP rows: coarser steps let
# more batches share a graph, but every padded row and column is read each step
CACHE_STEP = 32
ROWS_STEP = 8
KEPT_SHAPES = 4  # cache shapes a session keeps (each holds one batch's KV cache)


def _rows_bucket(n: int) -> int:
    """Batch rows padded to 1, 2, 4, then a multiple of ROWS_STEP."""
    return 1 << (n - 1).bit_length() if n <= 4 else -(-n // ROWS_STEP) * ROWS_STEP


@dataclass
class _Captured:
    """One captured decode step: its graph and the tensors every replay rewrites."""

    graph: Any
    logits: torch.Tensor
    hidden: dict[int, torch.Tensor]
    constants: dict  # device copies the graph reads (`OnceToDevice`), kept alive with it


@dataclass
class _Buffers:
    """A StaticCache of one (rows, length) and the step inputs its graphs read."""

    cache: Any
    token: torch.Tensor
    position: torch.Tensor
    slot: torch.Tensor  # cache column of the fed token
    allowed: torch.Tensor
    graphs: dict[Hashable, _Captured] = field(default_factory=dict)


def hooks_key(model: Any) -> Hashable | None:
    """What the model's active forward hooks do, for reusing a graph captured under them in a
    later call: each hook's `graph_key` (its module's position included); None when a hook has
    none (its closure may hold anything, so its graph serves only the call that made it)."""
    if nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks:
        return None
    key = []
    for position, module in enumerate(model.modules()):
        for kind, hooks in (("pre", module._forward_pre_hooks), ("post", module._forward_hooks)):
            for hook in hooks.values():
                tag = getattr(hook, "graph_key", None)
                if tag is None:
                    return None
                key.append((position, kind, tag))
    return tuple(key)


class _StaticDecoder:
    """Decoding over a StaticCache with the decode step captured as a CUDA graph; one cache per
    (rows, cache length), and per cache one graph per (recorded layers, hooks). keep=False
    holds one shape (a lone call); keep=True (`generation_session`) holds up to KEPT_SHAPES.
    capture=False runs the same static step eagerly (the CPU path) over the whole cache."""

    def __init__(self, model: Any, capture: bool = True, keep: bool = False) -> None:
        self.model, self.capture, self.keep = model, capture, keep
        self.cache_kw = _cache_keyword(model)
        self.slot_kw = _forward_accepts(model, "cache_position")  # transformers before 5.x
        self.dtype = model.dtype
        self.window = getattr(model.config, "sliding_window", None)
        self.shapes: OrderedDict[tuple[int, int], _Buffers] = OrderedDict()
        self.captures = 0  # graphs captured so far (tests, benchmarks)

    def fits(self, length: int) -> bool:
        """One mask serves every layer: only where no sliding window is reached."""
        return not self.window or -(-length // CACHE_STEP) * CACHE_STEP <= self.window

    def _prepare(self, rows: int, length: int, device: torch.device) -> _Buffers:
        buffers = self.shapes.get((rows, length))
        if buffers is not None:
            self.shapes.move_to_end((rows, length))
            buffers.cache.reset()
            return buffers
        from transformers import StaticCache

        while self.shapes and (not self.keep or len(self.shapes) >= KEPT_SHAPES):
            self.shapes.popitem(last=False)  # the least recently used shape's cache and graphs
        token = torch.zeros((rows, 1), dtype=torch.long, device=device)
        buffers = _Buffers(
            StaticCache(config=self.model.config, max_cache_len=length),
            token,
            torch.zeros_like(token),
            torch.zeros(1, dtype=torch.long, device=device),
            torch.zeros((rows, length), dtype=torch.bool, device=device),
        )
        self.shapes[(rows, length)] = buffers
        return buffers

    def forget(self, call: object) -> None:
        """Drop the graphs only `call` may replay (made under hooks without a `graph_key`)."""
        for buffers in self.shapes.values():
            for key in [k for k in buffers.graphs if k[1] is call]:
                del buffers.graphs[key]

    def _forward(self, cache, ids, position, mask, slots) -> torch.Tensor:
        extra = {"cache_position": slots} if self.slot_kw else {}
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position,
            **{self.cache_kw: cache},
            use_cache=True,
            logits_to_keep=1,
            **extra,
        )
        return out.logits[:, -1]

    def _step(self, b: _Buffers) -> torch.Tensor:
        """One decode step over the static buffers (what the graph holds)."""
        b.allowed.index_fill_(1, b.slot, True)
        mask = additive_mask(b.allowed[:, None, None, :], self.dtype)
        with grouped_attention(self.model, b.slot + 1):  # the columns written, fed token's included
            return self._forward(b.cache, b.token, b.position, mask, b.slot)

    def _run(self, b: _Buffers, key: Hashable, store: dict[int, torch.Tensor], layers: Sequence[int]):
        captured = b.graphs.get(key)
        if captured is not None:
            captured.graph.replay()
            return captured.logits, {layer: captured.hidden[layer].clone() for layer in layers}
        if not self.capture:  # eager steps: nothing to serve from one copy
            return self._step(b), {layer: store[layer] for layer in layers}
        constants = OnceToDevice()
        with constants:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                logits = self._step(b)  # the real step, and the warm-up that capture needs
            hidden = {layer: store[layer] for layer in layers}
            graph = torch.cuda.CUDAGraph()  # captured without torch.cuda.graph's gc and empty_cache
            with torch.cuda.stream(stream):
                graph.capture_begin()
                try:
                    captured_logits = self._step(b)
                finally:
                    graph.capture_end()
            torch.cuda.current_stream().wait_stream(stream)
        # the hidden states every replay writes
        b.graphs[key] = _Captured(graph, captured_logits, dict(store), constants.copies)
        self.captures += 1
        return logits, hidden

    def rows(self, n: int) -> int:
        """Rows of a batch of n prompts: padded to a few sizes only where graphs are reused."""
        return _rows_bucket(n) if self.capture else n

    def batch(self, prefixes, ids, mask, max_new_tokens, sample, stops, finished, layers, call) -> Steps:
        mask, shared = layout_mask(prefixes, mask)
        width = mask.shape[1]
        length = width + max_new_tokens
        if self.capture:
            length = -(-length // CACHE_STEP) * CACHE_STEP
        device = ids.device
        with torch.inference_mode(), record(self.model, layers, stop_early=False) as store:
            b = self._prepare(ids.shape[0], length, device)
            hooks = hooks_key(self.model)
            key = (tuple(layers), call if hooks is None else hooks)
            head = {}
            if prefixes is not None:
                head = prefill_prefix(self.model, prefixes, b.cache, self.cache_kw, store, layers)
            keys = torch.nn.functional.pad(mask.bool(), (0, length - width))
            b.allowed.copy_(keys)
            slots = torch.arange(shared, width, device=device)
            causal = torch.arange(length, device=device) <= slots[:, None]
            position = (mask.cumsum(-1) - 1).clamp_min(0)[:, shared:]
            prefill_mask = additive_mask((keys[:, None] & causal)[:, None], self.dtype)
            logits = self._forward(b.cache, ids, position, prefill_mask, slots)
            prefill = {layer: _joined(head.get(layer), store[layer]) for layer in layers}
            last = position[:, -1:]

            def decode(token: torch.Tensor, step: int):
                b.token.copy_(token[:, None])
                b.position.copy_(last + step + 1)
                b.slot.fill_(width + step)
                return self._run(b, key, store, layers)

            fed, steps = _decode_loop(logits, decode, max_new_tokens, sample, stops, finished, bool(layers))
        return fed, prefill, steps


_SESSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its kept decoder


@contextmanager
def generation_session(model: Any) -> Iterator[None]:
    """Keep the model's KV caches and captured decode graphs across `generate` calls inside,
    so repeated generation for the same prompts (one call per steering vector) captures once.
    Holds up to KEPT_SHAPES batch caches on the GPU until it ends; a no-op on the CPU. A graph
    replays the code path it captured: weights changed in place are read anew, but a model
    changed otherwise inside the session (another LoRA adapter set active) is not seen."""
    device = next(model.parameters()).device
    decoder = _static_decoder(model, device, keep=True) if model not in _SESSIONS else None
    if decoder is None or not decoder.capture:
        yield
        return
    _SESSIONS[model] = decoder
    try:
        yield
    finally:
        del _SESSIONS[model]


def _static_decoder(model: Any, device: torch.device, keep: bool = False) -> _StaticDecoder | None:
    """The static-cache decoder (a CUDA graph on CUDA) where the model allows one, else None
    (the DynamicCache loop)."""
    if device.type not in ("cuda", "cpu") or len({p.device for p in model.parameters()}) > 1:
        return None
    attention = getattr(model.config, "_attn_implementation", None)
    if attention not in ("sdpa", "eager"):
        print(f"traitscope: no static-cache decoding with {attention} attention; eager loop", file=sys.stderr)
        return None
    return _StaticDecoder(model, capture=device.type == "cuda", keep=keep)
