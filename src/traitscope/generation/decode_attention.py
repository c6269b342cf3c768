"""Decode attention, one new token per row: on CUDA one Triton kernel over a static KV cache, on
a CPU two matmuls.

PyTorch's kernels read every column of the cache at each decode step, written or not, and its
memory-efficient kernel (the fastest of them here) reads it at ~70% of the copy bandwidth
(Gemma-2-2B on an H100, benchmarks/profile_generate.py). This kernel reads the columns written
so far only (a device count the CUDA graph reads at each replay) and keeps a KV head's query
heads together, so each KV head is read once. Greedy tokens stay those of PyTorch's attention
within bf16 rounding (tests/test_gpu.py). On a CPU, SDPA at one query a row costs about twice
the two matmuls (`matmul_decode`; benchmarks/decode_kernels_cpu.py).
"""

from __future__ import annotations

import functools
from typing import Any

import torch

HEAD_DIMS = (64, 128, 256)  # head sizes the kernel is built for (powers of two)


@functools.cache
def _kernel() -> Any:
    import triton
    import triton.language as tl

    @triton.jit
    def decode_attention(
        q_ptr, k_ptr, v_ptr, mask_ptr, written_ptr, out_ptr, scale,
        sq_b, sq_h, sk_b, sk_h, sk_t, sv_b, sv_h, sv_t, sm_b, so_b, so_h,
        GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0)
        kv_head = tl.program_id(1)
        heads = kv_head * GROUP + tl.arange(0, GROUP_PAD)
        real = tl.arange(0, GROUP_PAD) < GROUP
        dims = tl.arange(0, D)
        q = tl.load(q_ptr + row * sq_b + heads[:, None] * sq_h + dims[None, :], mask=real[:, None], other=0.0)
        written = tl.load(written_ptr)
        best = tl.full([GROUP_PAD], float("-inf"), tl.float32)
        total = tl.zeros([GROUP_PAD], tl.float32)
        acc = tl.zeros([GROUP_PAD, D], tl.float32)
        k_row = k_ptr + row * sk_b + kv_head * sk_h
        v_row = v_ptr + row * sv_b + kv_head * sv_h
        for start in range(0, written, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            inside = cols < written
            k = tl.load(k_row + cols[:, None] * sk_t + dims[None, :], mask=inside[:, None], other=0.0)
            scores = tl.dot(q, tl.trans(k)) * scale
            bias = tl.load(mask_ptr + row * sm_b + cols, mask=inside, other=float("-inf")).to(tl.float32)
            scores = scores + bias[None, :]
            new_best = tl.maximum(best, tl.max(scores, 1))
            weights = tl.exp(scores - new_best[:, None])
            shrink = tl.exp(best - new_best)
            total = total * shrink + tl.sum(weights, 1)
            v = tl.load(v_row + cols[:, None] * sv_t + dims[None, :], mask=inside[:, None], other=0.0)
            acc = acc * shrink[:, None] + tl.dot(weights.to(v.dtype), v)
            best = new_best
        out = acc / total[:, None]
        tl.store(
            out_ptr + row * so_b + heads[:, None] * so_h + dims[None, :],
            out.to(out_ptr.dtype.element_ty),
            mask=real[:, None],
        )

    return decode_attention


def supported(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None) -> bool:
    """Whether `decode_attention` takes these: CUDA, half precision, one query per row, a head
    size it is built for, an additive [rows, 1, 1, >= columns] mask, and Triton installed."""
    if not (query.is_cuda and query.dtype in (torch.bfloat16, torch.float16) and key.dtype == query.dtype):
        return False
    if query.shape[2] != 1 or query.shape[-1] not in HEAD_DIMS or query.shape[1] % key.shape[1]:
        return False
    if (
        mask is None
        or mask.dim() != 4
        or mask.shape[:3] != (query.shape[0], 1, 1)
        or not mask.is_floating_point()
    ):
        return False  # the kernel reads one additive mask row per query row
    if mask.shape[-1] < key.shape[-2]:
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def decode_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor,
    written: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Attention of query [rows, heads, 1, d] over the first `written` (a one-element device
    tensor) columns of key/value [rows, kv_heads, columns, d], plus the additive mask
    [rows, 1, 1, >= columns]; returns [rows, 1, heads, d], as HF's attention functions do."""
    rows, heads, _, d = query.shape
    kv_heads = key.shape[1]
    group = heads // kv_heads
    query, key, value, mask = (t if t.stride(-1) == 1 else t.contiguous() for t in (query, key, value, mask))
    out = torch.empty((rows, 1, heads, d), dtype=query.dtype, device=query.device)
    # block 64, 4 warps, 2 stages: the best or within 1% of it of 8 launch configurations at
    # Gemma-2-2B's and Llama-3.1-8B's shapes on an H100 (profile_generate.py --attention)
    _kernel()[(rows, kv_heads)](
        query, key, value, mask, written, out, scale,
        query.stride(0), query.stride(1), key.stride(0), key.stride(1), key.stride(2),
        value.stride(0), value.stride(1), value.stride(2), mask.stride(0), out.stride(0), out.stride(2),
        GROUP=group, GROUP_PAD=max(16, 1 << (group - 1).bit_length()), D=d, BLOCK=64,
        num_warps=4, num_stages=2,
    )  # fmt: skip
    return out


def matmul_decode(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor, scale: float
) -> torch.Tensor:
    """Attention of query [rows, kv_heads, group, d] over key/value [rows, kv_heads, columns, d]
    under an additive mask [rows, 1, 1, columns] (the static decoder's), as two matmuls: float32
    scores and softmax as SDPA keeps them, the weights rounded to the values' dtype for the
    second matmul as flash kernels round them. Returns [rows, kv_heads, group, d]."""
    scores = (query.float() @ key.float().transpose(-1, -2)) * scale + mask.float()
    return torch.softmax(scores, dim=-1).to(value.dtype) @ value
