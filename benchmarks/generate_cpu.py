"""Generation with recording on CPU, as a capture job runs it: shared-prefix prefill on vs off.

Generates `--new-tokens` greedy tokens for the first `--n` prompts of a prompt set, recording
every layer, with the engine's length-sorted token-budget batches; prefixes that groups of a
batch's prompts share (a trait set's instructions, SmolLM2's default system prompt) run once
(`prefix.batch_prefixes`), or, for the baseline, in every row. Prints prompts/s of each and the
ratio, measured back to back in one process after a warm-up. Usage (after the main job has
prepared the model and prompt sets):

    python benchmarks/generate_cpu.py --model results/models/smollm2/manifest.json \
        --prompts results/prompts/traits/alignment/deception.parquet
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import time
from collections.abc import Iterator

import torch

from traitscope.data.prompts import read_prompt_set
from traitscope.generation import prefix
from traitscope.generation.generate import generate_batches
from traitscope.model import chat
from traitscope.model.batching import token_budget_batches
from traitscope.model.loading import load


@contextlib.contextmanager
def no_shared_prefix() -> Iterator[None]:
    saved, prefix.MIN_SHARED = prefix.MIN_SHARED, 10**9
    try:
        yield
    finally:
        prefix.MIN_SHARED = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompts", required=True)
    parser.add_argument("--n", type=int, default=96, help="first N prompts")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=1, help="as a capture job gets (threads: 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load(args.model, device="cpu")
    rows = read_prompt_set(args.prompts).head(args.n)
    prompts = [chat.encode(tokenizer, list(m)).ids for m in rows["messages"]]
    layers = list(range(model.config.num_hidden_layers))
    stops = {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
    lengths = [len(p) + args.new_tokens for p in prompts]
    cpu_device = torch.device("cpu")
    shared = sum(
        sum(prefix.batch_prefixes(prompts, idx, len(idx), cpu_device, 10**9)[1])
        for idx in token_budget_batches(lengths, args.max_tokens)
    )

    def run() -> float:
        t0 = time.perf_counter()
        for _ in generate_batches(
            model,
            prompts,
            args.new_tokens,
            args.max_tokens,
            0.0,
            0,
            stops,
            tokenizer.pad_token_id,
            layers,
            progress=False,
        ):
            pass
        return time.perf_counter() - t0

    variants = {"no shared prefix (baseline)": no_shared_prefix, "shared prefix": contextlib.nullcontext}
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    name = next(
        (line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")), "?"
    )
    print(
        f"cpu: {name}; torch capability: {torch.backends.cpu.get_cpu_capability()}; threads: {args.threads}"
    )
    print(
        f"{args.prompts}: {len(prompts)} prompts, {shared / sum(map(len, prompts)):.0%} of prompt tokens "
        f"in their batch's prefix pass, {args.new_tokens} new tokens, {len(layers)} layers recorded, "
        f"dtype {model.dtype}"
    )
    run()  # warm-up
    times: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(2):  # alternating rounds, so load from elsewhere hits both alike
        for label, context in variants.items():
            with context():
                times[label].append(run())
    base = min(times["no shared prefix (baseline)"])
    for label, values in times.items():
        best = min(values)
        print(f"{label}: {best:.1f} s, {len(prompts) / best:.2f} prompts/s, {base / best:.2f}x baseline")


if __name__ == "__main__":
    main()
