"""Profile GPU generation: where a decode step's time goes.

One batch of random-weight prompts (bf16), inside a `generation_session` (graphs captured once,
then replayed, as CMA-ES candidates run). Prints per way of compiling the model: the decode
step time (a 32-token run minus a 1-token run, over 31 steps), the replay of the captured graph
alone, its share of the weights-only decode limit, and the CUDA kernels of one decode step (a
32-token run's kernels minus a 2-token run's, per step; their count is the launches a graph
replays, each with a fixed cost however small its work).

    PYTHONPATH=src python benchmarks/profile_generate.py [--rows 176] [--ways eager blocks]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from traitscope.generation import cuda_graphs, decode_attention
from traitscope.generation import generate as engine
from traitscope.model.batching import token_budget_batches
from traitscope.model.hooks import compile_blocks

sys.path.insert(0, "benchmarks")
from generate_gpu import build, hbm_bandwidth  # noqa: E402


def run(model, prompts, new_tokens) -> float:
    return run_budget(model, prompts, new_tokens, 10**9)


def run_budget(model, prompts, new_tokens, budget) -> float:
    """Seconds of one `generate_batches` over prompts in batches of at most `budget` tokens."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in engine.generate_batches(
        model, prompts, new_tokens, budget, 0.0, 0, set(), 0, (), progress=False
    ):
        pass
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def kernels(model, prompts, new_tokens) -> tuple[Counter, Counter]:
    """Device microseconds and launches per kernel name over one run."""
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run(model, prompts, new_tokens)
    times: Counter = Counter()
    counts: Counter = Counter()
    for event in prof.key_averages():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            times[event.key] += event.self_device_time_total
            counts[event.key] += event.count
    return times, counts


def decode_kernels(model, prompts, top: int) -> None:
    """Per decode step: kernel microseconds and launches of a 32-token run minus a 2-token run, / 30."""
    (long, n_long), (short, n_short) = kernels(model, prompts, 32), kernels(model, prompts, 2)
    per_step = {k: (long[k] - short.get(k, 0)) / 30 for k in long}
    launches = sum(n_long.values()) - sum(n_short.values())
    print(f"decode step kernels: {sum(per_step.values()) / 1e3:.2f} ms in all, {launches / 30:.0f} launches")
    for key, us in sorted(per_step.items(), key=lambda kv: -kv[1])[:top]:
        calls = (n_long[key] - n_short.get(key, 0)) / 30
        print(f"  {us:8.1f} us {calls:5.0f}x  {key[:100]}")


def replay_ms(model) -> float:
    """GPU milliseconds of one replay of the session's captured decode graph (the 32-token one);
    the cache is reset first, as each replay moves its write position on."""
    buffers = max(
        (b for b in engine._SESSIONS[model].shapes.values() if b.graphs), key=lambda b: b.allowed.shape[1]
    )
    buffers.cache.reset()
    return gpu_ms(next(iter(buffers.graphs.values())).graph.replay, 20)


def gpu_ms(fn, n: int) -> float:
    """GPU milliseconds of one call of `fn`, over n back-to-back calls after one warm-up call."""
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / n


def step(model, prompts, label: str, limit_ms: float, top: int) -> None:
    """Decode step ms (runs of 32 and 1 tokens), the graph's replay alone, and its kernels."""
    with engine.generation_session(model):
        t0 = time.perf_counter()
        run(model, prompts, 32)  # warm-up, compilation and capture
        first = time.perf_counter() - t0
        run(model, prompts, 1)
        full = min(run(model, prompts, 32) for _ in range(2))
        prefill = min(run(model, prompts, 1) for _ in range(2))
        with torch.inference_mode():
            replay = replay_ms(model)
        print(
            f"{label}: first run {first:.1f} s; decode step {1e3 * (full - prefill) / 31:.2f} ms; "
            f"graph replay alone {replay:.2f} ms = {100 * limit_ms / replay:.0f}% of the weights-only limit",
            flush=True,
        )
        decode_kernels(model, prompts, top)


def attention_configs(rows: int, heads: int, kv_heads: int, d: int, columns: int, written: int) -> None:
    """Microseconds and TB/s (of the K and V columns written) of one layer's decode attention:
    PyTorch's memory-efficient kernel over the whole cache, and `decode_attention` launched with
    several block sizes, warps and pipeline stages."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(rows, heads, 1, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(rows, kv_heads, columns, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    mask = torch.zeros(rows, 1, 1, columns, device="cuda", dtype=torch.bfloat16)
    mask[..., written:] = torch.finfo(torch.bfloat16).min
    count = torch.tensor([written], device="cuda")
    nbytes = 2 * rows * kv_heads * written * d * 2
    group = heads // kv_heads

    def efficient():
        with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
            q4 = q.reshape(rows, kv_heads, group, d)
            return torch.nn.functional.scaled_dot_product_attention(q4, k, v, attn_mask=mask)

    def triton_config(block: int, warps: int, stages: int):
        out = torch.empty(rows, 1, heads, d, device="cuda", dtype=torch.bfloat16)

        def launch():
            decode_attention._kernel()[(rows, kv_heads)](
                q, k, v, mask, count, out, d**-0.5,
                q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2),
                v.stride(0), v.stride(1), v.stride(2), mask.stride(0), out.stride(0), out.stride(2),
                GROUP=group, GROUP_PAD=max(16, group), D=d, BLOCK=block, num_warps=warps, num_stages=stages,
            )  # fmt: skip

        return launch

    variants = {"efficient (all columns)": efficient}
    for block in (32, 64):
        for warps in (4, 8):
            for stages in (2, 3):
                variants[f"triton block {block} warps {warps} stages {stages}"] = triton_config(
                    block, warps, stages
                )
    print(f"attention rows={rows} heads={heads}/{kv_heads} d={d} columns {written} of {columns}")
    for name, fn in variants.items():
        try:
            us = 1e3 * gpu_ms(fn, 50)
            print(f"  {name:40s} {us:8.1f} us  {nbytes / us / 1e6:5.2f} TB/s", flush=True)
        except Exception as error:  # a config that does not fit the card
            print(f"  {name:40s} failed: {str(error).splitlines()[0][:90]}")


def prefill(model, top: int) -> None:
    """The prefill of generate_gpu.py's prompts (512 of 50-150 tokens, budget 32768): seconds,
    TFLOP/s of its GEMMs (2 x non-embedding parameters per padded token) and its top kernels."""
    rng = np.random.default_rng(0)
    vocab = model.config.vocab_size
    prompts = [rng.integers(10, vocab, size=int(n)).tolist() for n in rng.integers(50, 151, size=512)]

    def once() -> float:
        return run_budget(model, prompts, 1, 32768)

    once()
    seconds = min(once() for _ in range(2))
    padded = sum(
        -(-len(idx) // 8) * 8 * max(len(prompts[i]) for i in idx)
        for idx in token_budget_batches([len(p) + 64 for p in prompts], 32768)
    )
    flops = (
        2
        * (sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel())
        * padded
    )
    print(
        f"prefill: {seconds:.3f} s, {padded} padded tokens, {flops / seconds / 1e12:.0f} TFLOP/s", flush=True
    )
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        once()
    events = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    print(f"prefill kernels: {sum(e.self_device_time_total for e in events) / 1e3:.1f} ms in all")
    for event in sorted(events, key=lambda e: -e.self_device_time_total)[:top]:
        print(f"  {event.self_device_time_total / 1e3:8.2f} ms {event.count:6d}x  {event.key[:100]}")


def compile_forwards(model) -> None:
    """Each decoder block's whole forward compiled (hooks stay outside it); every block its own
    graph, so dynamo's recompile limit must cover them all."""
    from traitscope.model.hooks import decoder_layers

    blocks = decoder_layers(model)
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 2 * len(blocks) + 8)
    for block in blocks:
        block.forward = torch.compile(block.forward, dynamic=True)


def pytorch_attention(model) -> None:
    """Compiled blocks, decode attention by PyTorch's SDPA kernels instead of `decode_attention`."""
    cuda_graphs.supported = lambda *args: False
    compile_blocks(model)


WAYS = {
    "eager": lambda model: None,
    "blocks": compile_blocks,
    "forwards": compile_forwards,
    "blocks_pytorch_attention": pytorch_attention,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-2-2b")
    parser.add_argument("--rows", type=int, default=176)
    parser.add_argument("--ways", nargs="+", default=["eager", "blocks"], choices=sorted(WAYS))
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--attention", action="store_true", help="decode attention configurations only")
    parser.add_argument(
        "--prefill", action="store_true", help="also the prefill of generate_gpu.py's prompts"
    )
    args = parser.parse_args()
    if args.attention:
        attention_configs(176, 8, 4, 256, 224, 182)  # Gemma-2-2B
        attention_configs(176, 32, 8, 128, 224, 182)  # Llama-3.1-8B
        attention_configs(16, 8, 4, 256, 1024, 1000)  # few rows, a long cache
        return
    bandwidth = hbm_bandwidth()
    print(
        f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}; copy {bandwidth / 1e12:.2f} TB/s"
    )
    for way in args.ways:
        model = build(args.model)
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        rng = np.random.default_rng(0)
        vocab = model.config.vocab_size
        prompts = [
            rng.integers(10, vocab, size=int(n)).tolist() for n in rng.integers(100, 151, size=args.rows)
        ]
        cuda_graphs.supported = decode_attention.supported
        WAYS[way](model)
        step(model, prompts, f"{args.model} {args.rows} rows, {way}", 1e3 * weights / bandwidth, args.top)
        if args.prefill:
            prefill(model, args.top)
        del model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
