"""What capturing a decode step as a CUDA graph needs from the model around it.

Kept apart from the generation loop: attention that never copies KV heads, masks the
graph can read without a host sync, and one device copy of host tensors that hooks
(steering vectors) move to the GPU, since a host-to-device copy cannot be captured.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode

from traitscope.generation.decode_attention import decode_attention, matmul_decode, supported


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean attention mask as an additive one (0 where allowed), as both "sdpa" and "eager"
    attention take it; a fully masked row stays finite."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)


# decode attention kernels in order of preference: for one query row per KV head group the
# memory-efficient kernel reads the cache at about twice the rate of cuDNN's at head_dim 256
# (benchmarks/profile_generate.py); other shapes keep PyTorch's own choice
DECODE_BACKENDS = [
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.CUDNN_ATTENTION,
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.MATH,
]
WIDE_HEAD = 256


def grouped_sdpa(fallback: Callable, written: torch.Tensor | None = None) -> Callable:
    """Attention for one new token per row that never repeats the KV heads: on CUDA in half
    precision `decode_attention` over the first `written` cache columns (a device count), on a
    CPU `matmul_decode`, else SDPA with the query heads sharing a KV head as that head's queries
    (same result; HF's "sdpa" copies each KV head once per query head when a mask is given,
    several times the KV cache's bytes per step). Dynamo leaves it alone: a compiled attention
    module calls it as it is."""

    @torch.compiler.disable
    def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        b, heads, q, d = query.shape
        groups = key.shape[1]
        if attention_mask is not None:
            span = min(attention_mask.shape[-1], key.shape[-2])
            key, value, attention_mask = key[:, :, :span], value[:, :, :span], attention_mask[..., :span]
        if written is not None and supported(query, key, attention_mask):
            return decode_attention(query, key, value, attention_mask, written, scaling or d**-0.5), None
        if q != 1 or heads % groups or attention_mask is None:
            return fallback(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
        grouped = query.reshape(b, groups, heads // groups, d)
        if not query.is_cuda:  # reading the count costs a CPU no sync: only written columns
            span = int(written) if written is not None else key.shape[-2]
            key, value, attention_mask = key[:, :, :span], value[:, :, :span], attention_mask[..., :span]
            out = matmul_decode(grouped, key, value, attention_mask, scaling or d**-0.5)
            return out.reshape(b, heads, 1, -1).transpose(1, 2).contiguous(), None
        wide = d >= WIDE_HEAD
        with sdpa_kernel(DECODE_BACKENDS, set_priority=True) if wide else nullcontext():
            out = torch.nn.functional.scaled_dot_product_attention(
                grouped, key, value, attn_mask=attention_mask, scale=scaling
            )
        return out.reshape(b, heads, 1, -1).transpose(1, 2).contiguous(), None

    return attention


@contextmanager
def grouped_attention(model: Any, written: torch.Tensor | None = None) -> Iterator[None]:
    """While a decode step runs, "sdpa" attention is `grouped_sdpa` (reading `written` columns)."""
    try:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    except ImportError:
        ALL_ATTENTION_FUNCTIONS = None
    if ALL_ATTENTION_FUNCTIONS is None or getattr(model.config, "_attn_implementation", None) != "sdpa":
        yield
        return
    previous = ALL_ATTENTION_FUNCTIONS["sdpa"]
    ALL_ATTENTION_FUNCTIONS["sdpa"] = grouped_sdpa(previous, written)
    try:
        yield
    finally:
        ALL_ATTENTION_FUNCTIONS["sdpa"] = previous


class OnceToDevice(TorchFunctionMode):
    """Serves repeated `.to(<gpu>)` of one CPU tensor (a steering vector in a hook) from one
    copy: a host-to-device copy cannot be captured, so the graph reads the copy instead."""

    def __init__(self) -> None:
        super().__init__()
        self.copies: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        source = args[0] if args else None
        if func is not torch.Tensor.to or not isinstance(source, torch.Tensor) or source.device.type != "cpu":
            return func(*args, **kwargs)
        described = [(a.device, a.dtype) if isinstance(a, torch.Tensor) else a for a in args[1:]]
        version = source._version if not source.is_inference() else None  # those never change
        key = (id(source), version, repr(described), repr(sorted(kwargs.items())))
        if key not in self.copies:
            copy = func(*args, **kwargs)
            if copy.device.type == "cpu":
                return copy
            self.copies[key] = (source, copy)  # the source stays alive, so its id stays its own
        return self.copies[key][1]
