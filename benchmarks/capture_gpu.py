"""Capture throughput: traitscope vs the naive `output_hidden_states=True` baseline.

One run prints tokens/s of both, their ratio, the fraction of the bf16 matmul roofline
reached for the layers actually run, and peak GPU memory at N and 10N prompts.

GPU (random-weight Gemma-2-2B architecture; weights do not change throughput):
    PYTHONPATH=src python benchmarks/capture_gpu.py --device cuda
CPU (the real SmolLM2, prepared by `snakemake results/models/smollm2/manifest.json`):
    PYTHONPATH=src python benchmarks/capture_gpu.py --device cpu --model results/models/smollm2/manifest.json
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # as `traitscope` sets it

import numpy as np  # noqa: E402
import torch  # noqa: E402

from traitscope.capture.engine import forward_batches, pool_batch  # noqa: E402
from traitscope.model.chat import SEGMENT_CODE, Encoded  # noqa: E402
from traitscope.model.hooks import compile_blocks, decoder_layers  # noqa: E402


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def make_prompts(n: int, vocab: int, lo: int, hi: int, seed: int = 0) -> list[Encoded]:
    """Random token prompts whose lengths follow a long-tailed spread in [lo, hi]."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(90), 0.7, size=n), lo, hi).astype(int)
    user = SEGMENT_CODE["user"]
    return [
        Encoded(ids=rng.integers(10, vocab, size=n_tok).tolist(), segments=[user] * n_tok, prompt_len=n_tok)
        for n_tok in lengths
    ]


def traitscope_capture(model, prompts, layers, max_tokens, device) -> float:
    """Seconds for traitscope's capture: sorted token-budget batches, early stop, pooled to host."""
    synchronize(device)
    t0 = time.perf_counter()
    for batch in forward_batches(model, prompts, layers, max_tokens, 0, "right", progress=False):
        pool_batch(batch, layers, ["last_prompt", "prompt_mean"])
    synchronize(device)
    return time.perf_counter() - t0


def naive_capture(model, prompts, batch_size, device) -> float:
    """Seconds for the naive way: fixed batches in input order, every layer, all to host."""
    synchronize(device)
    t0 = time.perf_counter()
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        width = max(len(p.ids) for p in chunk)
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, p in enumerate(chunk):
            ids[row, : len(p.ids)] = torch.tensor(p.ids)
            mask[row, : len(p.ids)] = 1
        with torch.inference_mode():
            out = model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True)
        _ = [h.cpu() for h in out.hidden_states]
    synchronize(device)
    return time.perf_counter() - t0


def matmul_tflops(device: str, dtype: torch.dtype) -> float:
    """Measured dense matmul throughput on this device (the roofline's denominator)."""
    n = 8192 if device.startswith("cuda") else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(device)
    reps = 10 if device.startswith("cuda") else 3
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    synchronize(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def load_model(args) -> tuple[torch.nn.Module, int]:
    dtype = torch.bfloat16
    if args.model == "gemma2-random":
        from transformers import Gemma2Config, Gemma2ForCausalLM

        config = Gemma2Config(attn_implementation="sdpa")  # defaults are Gemma-2-2B's shape
        torch.manual_seed(0)
        with torch.device(args.device):
            model = Gemma2ForCausalLM(config).to(dtype)
        return model.eval(), config.vocab_size
    from traitscope.model.loading import load

    model, tokenizer = load(args.model, device=args.device, dtype="bfloat16")
    return model, len(tokenizer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default="gemma2-random", help="gemma2-random or a prepared manifest.json")
    parser.add_argument("--n-prompts", type=int, default=2000)
    parser.add_argument("--min-len", type=int, default=20)
    parser.add_argument("--max-len", type=int, default=400)
    parser.add_argument("--max-tokens", type=int, default=32768, help="traitscope's token budget per batch")
    parser.add_argument("--no-compile", action="store_true", help="skip compiling the decoder blocks")
    parser.add_argument("--baseline-batch", type=int, default=32)
    parser.add_argument("--memory-scale", type=int, default=10, help="also run N x this many prompts")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    model, vocab = load_model(args)
    n_layers = len(decoder_layers(model))
    layers = [n_layers // 3, n_layers // 2, 2 * n_layers // 3]  # three mid-depth layers
    prompts = make_prompts(args.n_prompts, vocab, args.min_len, args.max_len)
    n_tokens = sum(len(p.ids) for p in prompts)
    run_params = sum(
        p.numel() for block in decoder_layers(model)[: max(layers) + 1] for p in block.parameters()
    )

    compiled = args.device.startswith("cuda") and not args.no_compile
    if compiled:  # what `traitscope capture` does on a GPU (--compile auto)
        compile_blocks(model)
    t0 = time.perf_counter()
    for seed in (2, 3):  # warm-up: compilation settles after a few distinct shapes
        warm = make_prompts(args.n_prompts // 2, vocab, args.min_len, args.max_len, seed=seed)
        traitscope_capture(model, warm, layers, args.max_tokens, args.device)
    warmup_s = time.perf_counter() - t0
    tflops = matmul_tflops(args.device, torch.bfloat16)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    first_pass_s = traitscope_capture(model, prompts, layers, args.max_tokens, args.device)
    # steady state: a long capture reuses the allocator's blocks and compiled graphs shard after shard
    ours_s = traitscope_capture(model, prompts, layers, args.max_tokens, args.device)
    peak_n = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else None
    peak_10n = None
    if args.device.startswith("cuda") and args.memory_scale > 1:
        many = make_prompts(args.n_prompts * args.memory_scale, vocab, args.min_len, args.max_len, seed=1)
        torch.cuda.reset_peak_memory_stats()
        traitscope_capture(model, many, layers, args.max_tokens, args.device)
        peak_10n = torch.cuda.max_memory_allocated() / 2**30
    del model
    plain, _ = load_model(args)  # same seed, same weights, never compiled
    naive_capture(plain, prompts[:64], args.baseline_batch, args.device)  # warm-up
    naive_s = naive_capture(plain, prompts, args.baseline_batch, args.device)
    ours_tps, naive_tps = n_tokens / ours_s, n_tokens / naive_s
    achieved = 2 * run_params * ours_tps / 1e12
    result = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "model": args.model,
        "n_prompts": args.n_prompts,
        "n_tokens": n_tokens,
        "layers_captured": layers,
        "layers_run": max(layers) + 1,
        "layers_total": n_layers,
        "compiled": compiled,
        "warmup_s_including_compilation": round(warmup_s, 1),
        "max_tokens": args.max_tokens,
        "traitscope_first_pass_tokens_per_s": round(n_tokens / first_pass_s),
        "traitscope_tokens_per_s": round(ours_tps),
        "naive_tokens_per_s": round(naive_tps),
        "ratio_vs_naive": round(ours_tps / naive_tps, 2),
        "matmul_bf16_tflops": round(tflops, 1),
        "achieved_tflops": round(achieved, 1),
        "roofline_fraction": round(achieved / tflops, 3),
        "peak_gib_n": None if peak_n is None else round(peak_n, 2),
        "peak_gib_scaled": None if peak_10n is None else round(peak_10n, 2),
        "memory_scale": args.memory_scale,
    }
    for key, value in result.items():
        print(f"{key}: {value}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
