"""Profile GPU generation: where a decode step's time goes.

One batch of random-weight prompts (bf16). Prints the decode step time in a generate call
(32-token run minus a prefill-only run, over 31 steps: the graph's capture included), the
replay of the captured graph alone, the CUDA kernels of one decode step (a 32-token run's
kernel times minus a 2-token run's, per step), and decode attention done several ways.

    PYTHONPATH=src python benchmarks/profile_generate.py [--rows 192] [--model gemma-2-2b] [--compile]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile

from traitscope.model import cuda_graphs
from traitscope.model import generate as engine
from traitscope.model.hooks import compile_blocks

sys.path.insert(0, "benchmarks")
from generate_gpu import build  # noqa: E402


def run(model, prompts, new_tokens) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in engine.generate_batches(model, prompts, new_tokens, 10**9, 0.0, 0, set(), 0, (), progress=False):
        pass
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def kernels(model, prompts, new_tokens) -> Counter:
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run(model, prompts, new_tokens)
    times: Counter = Counter()
    for event in prof.key_averages():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            times[event.key] += event.self_device_time_total
    return times


def decode_kernels(model, prompts, top: int) -> None:
    """Per decode step: kernel microseconds of a 32-token run minus a 2-token run, / 30."""
    long, short = kernels(model, prompts, 32), kernels(model, prompts, 2)
    per_step = {k: (long[k] - short.get(k, 0)) / 30 for k in long}
    print(f"decode step kernels: {sum(per_step.values()) / 1e3:.2f} ms in all")
    for key, us in sorted(per_step.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {us:8.1f} us  {key[:110]}")


def bench(fn, n=50) -> float:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        fn()
    end.record()
    end.synchronize()
    return 1e3 * start.elapsed_time(end) / n


def attention_variants(rows: int, groups: int, per_group: int, d: int, length: int) -> None:
    """Microseconds of one layer's decode attention, grouped query heads, additive mask."""
    dtype = torch.bfloat16
    q = torch.randn(rows, groups, per_group, d, device="cuda", dtype=dtype)
    k = torch.randn(rows, groups, length, d, device="cuda", dtype=dtype)
    v = torch.randn_like(k)
    allowed = torch.rand(rows, 1, 1, length, device="cuda") < 0.8
    mask = torch.zeros(allowed.shape, dtype=dtype, device="cuda").masked_fill_(
        ~allowed, torch.finfo(dtype).min
    )
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def manual():
        scores = torch.matmul(q, k.transpose(-1, -2)).float() * d**-0.5 + mask
        return torch.matmul(scores.softmax(-1).to(dtype), v)

    ref = sdpa(q, k, v, attn_mask=mask)
    results = {"matmuls_fp32_softmax": manual}
    for name, backend in [
        ("cudnn", SDPBackend.CUDNN_ATTENTION),
        ("efficient", SDPBackend.EFFICIENT_ATTENTION),
        ("math", SDPBackend.MATH),
    ]:

        def f(backend=backend):
            with sdpa_kernel(backend):
                return sdpa(q, k, v, attn_mask=mask)

        results[name] = f
    kv_bytes = 2 * k.numel() * k.element_size()
    print(
        f"attention rows={rows} groups={groups}x{per_group} d={d} length={length}: "
        f"K+V {kv_bytes / 1e6:.0f} MB"
    )
    for name, fn in results.items():
        try:
            err = (fn().float() - ref.float()).abs().max().item()
            us = bench(fn)
            print(f"  {name:22s} {us:8.1f} us  {kv_bytes / us / 1e6:5.2f} TB/s  max|diff| {err:.3g}")
        except RuntimeError as error:
            print(f"  {name:22s} failed: {str(error).splitlines()[0][:100]}")


def replay_ms(decoder) -> float:
    """GPU milliseconds of one replay of the captured decode graph; the cache is reset first,
    as each replay moves its write position on."""
    with torch.inference_mode():
        decoder.cache.reset()
        return bench(decoder.captured.graph.replay, 20) / 1e3


def step(model, prompts, label: str) -> None:
    """Decode step ms (runs of 32 and 1 tokens), and the graph's replay alone."""
    decoders = []
    original = engine._static_decoder
    engine._static_decoder = lambda *a: decoders.append(original(*a)) or decoders[-1]
    try:
        run(model, prompts, 32)  # warm-up, compilation and capture
        full = min(run(model, prompts, 32) for _ in range(2))
        replay = replay_ms(decoders[-1])
        prefill = min(run(model, prompts, 1) for _ in range(2))
    finally:
        engine._static_decoder = original
    print(
        f"{label}: decode step {1e3 * (full - prefill) / 31:.2f} ms; graph replay alone {replay:.2f} ms",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["gemma-2-2b", "llama-3.1-8b"])
    parser.add_argument("--rows", type=int, default=192)
    parser.add_argument("--compile", action="store_true", help="also with compile_blocks")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    attention_variants(args.rows, 4, 2, 256, 256)
    attention_variants(args.rows, 8, 4, 128, 256)
    for name in args.models:
        model = build(name)
        rng = np.random.default_rng(0)
        vocab = model.config.vocab_size
        prompts = [
            rng.integers(10, vocab, size=int(n)).tolist() for n in rng.integers(100, 151, size=args.rows)
        ]
        for label, wide in [("pytorch's attention kernel", 10**9), ("memory-efficient attention", 0)]:
            cuda_graphs.WIDE_HEAD = wide
            step(model, prompts, f"{name} {args.rows} rows, {label}")
        cuda_graphs.WIDE_HEAD = 256
        step(model, prompts, f"{name} {args.rows} rows, default")
        decode_kernels(model, prompts, args.top)
        if args.compile and name == "gemma-2-2b":
            compile_blocks(model)
            step(model, prompts, f"{name} {args.rows} rows, default, compiled blocks")
            decode_kernels(model, prompts, args.top)
        del model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
