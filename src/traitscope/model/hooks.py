"""Forward hooks on decoder layers that always remove themselves.

Recording stops the forward pass right after the deepest requested layer (no later
layers, no LM head): on a 30-layer model capturing layer 10 that is a 3x saving.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch


class StopForward(Exception):
    """Raised inside the deepest hook to end a forward pass early."""


def decoder_layers(model: Any) -> Any:
    """The model's list of decoder blocks, for the common HF layouts (peft-wrapped too)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
    for path in (
        "model.layers",
        "model.language_model.layers",
        "transformer.h",
        "gpt_neox.layers",
        "model.decoder.layers",
    ):
        obj = inner
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if obj is not None:
            return obj
    raise ValueError(f"cannot find decoder layers in {type(model).__name__}")


def _hidden(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


@contextmanager
def record(model: Any, layers: Sequence[int], stop_early: bool = True) -> Iterator[dict[int, torch.Tensor]]:
    """Collect the residual stream after each layer in `layers` into the yielded dict."""
    blocks = decoder_layers(model)
    store: dict[int, torch.Tensor] = {}
    deepest = max(layers, default=-1)
    handles = []

    def make(idx: int):
        def hook(_module: Any, _inputs: Any, output: Any) -> None:
            store[idx] = _hidden(output).detach()
            if stop_early and idx == deepest:
                raise StopForward

        hook.graph_key = ("record", idx, stop_early and idx == deepest)  # launches no kernel
        return hook

    for idx in sorted(set(layers)):
        handles.append(blocks[idx].register_forward_hook(make(idx)))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def _steering_slot(block: Any, vector: torch.Tensor) -> tuple[torch.Tensor, int]:
    """A device tensor of the block that holds `vector` while it steers, and its index: the
    same tensor for every steering vector of this shape and dtype, so a decode step captured
    as a CUDA graph with one vector replays with the next (`generation_session`)."""
    device = next(iter(block.parameters())).device
    slots = block.__dict__.setdefault("_traitscope_steering", {})
    busy = block.__dict__.setdefault("_traitscope_steering_busy", set())
    index = 0
    while (vector.dtype, vector.shape, index) in busy:  # nested steering of one layer
        index += 1
    key = (vector.dtype, vector.shape, index)
    with torch.inference_mode(False), torch.no_grad():  # a normal tensor: writable in and out of it
        if key not in slots:
            slots[key] = torch.empty(vector.shape, dtype=vector.dtype, device=device)
        slots[key].copy_(vector)
    busy.add(key)
    return slots[key], index


@contextmanager
def add_to_layer(model: Any, layer: int, vector: torch.Tensor) -> Iterator[None]:
    """Add `vector` to the residual stream output of `layer` at every position (steering)."""
    block = decoder_layers(model)[layer]
    slot, index = _steering_slot(block, vector.detach())

    def hook(_module: Any, _inputs: Any, output: Any) -> Any:
        hidden = _hidden(output)
        steered = hidden + slot.to(hidden.device, hidden.dtype)
        return (steered, *output[1:]) if isinstance(output, tuple) else steered

    hook.graph_key = ("add_to_layer", layer, slot.dtype, tuple(slot.shape), index)
    handle = block.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
        block.__dict__["_traitscope_steering_busy"].discard((slot.dtype, slot.shape, index))


class RowSteering:
    """Which vector each row of the batch being generated gets (`add_to_rows`): the engine
    calls `select` before each batch with the prompts it holds and its row count."""

    def __init__(self, block: Any, layer: int, vectors: torch.Tensor) -> None:
        self.block, self.layer, self.vectors = block, layer, vectors
        self.slot: torch.Tensor | None = None
        self.key: tuple | None = None
        self.hook: Any = None

    def select(self, prompts: Sequence[int]) -> None:
        """The batch's rows are those of `prompts` (one prompt index per row, padding included)."""
        picked = self.vectors[list(prompts)].unsqueeze(1)
        self.release()
        self.slot, slot_index = _steering_slot(self.block, picked)
        self.key = (picked.dtype, picked.shape, slot_index)
        self.hook.graph_key = ("add_to_rows", self.layer, *self.key)

    def release(self) -> None:
        if self.key is not None:
            self.block.__dict__["_traitscope_steering_busy"].discard(self.key)
            self.key = None


@contextmanager
def add_to_rows(model: Any, layer: int, vectors: torch.Tensor) -> Iterator[RowSteering]:
    """Add `vectors[i]` ([prompts, d]) to the residual stream output of `layer` at every position
    of prompt i's row: a population of candidate vectors, or several steering vectors, in one
    generation.
    The yielded object must reach the engine (`generate(per_row=PerRow(steering))`), which
    selects each batch's rows."""
    block = decoder_layers(model)[layer]
    steering = RowSteering(block, layer, vectors.detach())

    def hook(_module: Any, _inputs: Any, output: Any) -> Any:
        hidden = _hidden(output)
        steered = hidden + steering.slot.to(hidden.device, hidden.dtype)
        return (steered, *output[1:]) if isinstance(output, tuple) else steered

    steering.hook = hook
    hook.graph_key = ("add_to_rows", layer, None)
    handle = block.register_forward_hook(hook)
    try:
        yield steering
    finally:
        handle.remove()
        steering.release()


def project_out(hidden: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    """`hidden - (hidden . unit) unit` over the last axis: no component along `unit` remains."""
    unit = unit.to(hidden.device, hidden.dtype)
    return hidden - (hidden @ unit).unsqueeze(-1) * unit


@contextmanager
def ablate_direction(model: Any, direction: torch.Tensor) -> Iterator[None]:
    """Project `direction` out of the residual stream at every layer and position (Arditi et al.'s
    directional ablation): of the token embeddings and of every decoder block's output, the stream
    the capture records. Inside a block (between attention and MLP) it is not ablated, so the
    hook works for every layout `decoder_layers` knows, including blocks that normalise their
    sublayers' outputs before adding them (Gemma 2)."""
    unit = direction.float() / direction.float().norm()

    def hook(_module: Any, _inputs: Any, output: Any) -> Any:
        ablated = project_out(_hidden(output), unit)
        return (ablated, *output[1:]) if isinstance(output, tuple) else ablated

    modules = [model.get_input_embeddings(), *decoder_layers(model)]
    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def run_recorded(model: Any, layers: Sequence[int], **inputs: Any) -> dict[int, torch.Tensor]:
    """One forward pass returning {layer: hidden [batch, seq, d]}, stopped after the deepest."""
    with torch.inference_mode(), record(model, layers) as store:
        try:
            model(**inputs, use_cache=False)
        except StopForward:
            pass
    return store


def compile_blocks(model: Any) -> None:
    """Compile each decoder block's submodules with dynamic shapes.

    This fuses the memory-bound elementwise work (norms, activations, rotary) that
    otherwise dominates a forward pass on a GPU. Hooks stay on the uncompiled blocks,
    so recording and early stopping work unchanged.
    """
    for block in decoder_layers(model):
        for child in block.children():
            child.compile(dynamic=True)
    _compile_rotary(model)


def _compile_rotary(model: Any) -> None:
    """The model family's `apply_rotary_pos_emb` as one fused kernel. An attention module whose
    forward reaches a StaticCache is recompiled per layer (a guard on its cache index), so past
    dynamo's recompile limit it runs eagerly, its rotary as six elementwise kernels a decode step;
    one compiled function serves every layer instead (Gemma-2-2B on an H100, a lone call with
    compiled blocks: 14.9K tok/s before, 16.3K with it; raising the recompile limit instead
    tripled the compile time and gained nothing). Inside an attention forward that dynamo is
    tracing, the plain function is traced inline instead: calling a compiled function there
    failed to compile the block (torch 2.13, transformers 5.25, an AssertionError in dynamo)."""
    attention = getattr(decoder_layers(model)[0], "self_attn", None)
    family = sys.modules.get(type(attention).__module__)
    rotary = getattr(family, "apply_rotary_pos_emb", None)
    if rotary is None or getattr(rotary, "_traitscope_compiled", False):
        return
    compiled = torch.compile(rotary, dynamic=True)

    def apply_rotary_pos_emb(*args: Any, **kwargs: Any) -> Any:
        return (rotary if torch.compiler.is_compiling() else compiled)(*args, **kwargs)

    apply_rotary_pos_emb._traitscope_compiled = True
    family.apply_rotary_pos_emb = apply_rotary_pos_emb
