"""Generation throughput: HF eager `generate` vs traitscope's CUDA-graph engine, and the decode limit.

One run prints, per model (random weights, bf16, greedy, every prompt generating exactly
`--new-tokens` tokens): tok/s of (a) Hugging Face `model.generate` on the same token-budget
batches (the old path), (b) `generate_batches` plain, steered (a CPU steering vector, as the
steering check passes it) and recording three layers, each as a first call (graphs captured
in it, as a lone `generate` call) and as a later call in a `generation_session` (graphs
replayed, as CMA-ES's candidates and the steering check's coefficients run; steered with
another vector than the first call's), and (c) the decode limit of the
machine, batch x HBM bandwidth / bytes of weights (weights read once per step; measured
bandwidth from a large device copy), at the run's mean batch, and the same limit with each
row's KV cache read every step too. Then the ratio new/eager and the % of the decode limit,
end to end (prefill and graph captures included) and decode only (a prefill-only run
subtracted).

    PYTHONPATH=src python benchmarks/generate_gpu.py [--compile gemma-2-2b ...]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # as `traitscope` sets it

import numpy as np  # noqa: E402
import torch  # noqa: E402

from traitscope.generation.generate import generate_batches, generation_session  # noqa: E402
from traitscope.model.batching import token_budget_batches  # noqa: E402
from traitscope.model.hooks import add_to_layer, compile_blocks, decoder_layers  # noqa: E402


def build(name: str) -> torch.nn.Module:
    """A random-weight model of the named shape, bf16, on the GPU."""
    from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

    if name == "gemma-2-2b":
        config, cls = Gemma2Config(attn_implementation="sdpa"), Gemma2ForCausalLM  # defaults: the 2B shape
    else:  # Llama-3.1-8B
        config = LlamaConfig(
            hidden_size=4096,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            intermediate_size=14336,
            vocab_size=128256,
            rope_theta=500000.0,
            max_position_embeddings=8192,
            attn_implementation="sdpa",
        )
        cls = LlamaForCausalLM
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            model = cls(config)
    except ValueError:  # no "sdpa" for this model in this transformers version: its default
        config._attn_implementation = None
        with torch.device("cuda"):
            model = cls(config)
    finally:
        torch.set_default_dtype(torch.float32)
    model.generation_config.eos_token_id = None
    print(f"{name}: {model.config._attn_implementation} attention", flush=True)
    return model.eval()


def hbm_bandwidth() -> float:
    """Bytes/s of a large device-to-device copy, counting bytes read plus bytes written."""
    src = torch.empty(2**30, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(20):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * src.numel() / float(np.median(times))


def timed(fn) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def hf_generate(model, prompts, new_tokens, max_tokens) -> None:
    """The old path: HF eager `generate` (DynamicCache) over the same left-padded batches."""
    for idx in token_budget_batches([len(p) + new_tokens for p in prompts], max_tokens):
        width = max(len(prompts[i]) for i in idx)
        ids = torch.zeros((len(idx), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(idx):
            ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
            mask[row, width - len(prompts[i]) :] = 1
        with torch.inference_mode():
            model.generate(
                input_ids=ids.cuda(),
                attention_mask=mask.cuda(),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=0,
                top_p=None,
                top_k=None,
            )


def engine(model, prompts, new_tokens, max_tokens, layers=()) -> None:
    for _ in generate_batches(
        model, prompts, new_tokens, max_tokens, 0.0, 0, set(), 0, layers, progress=False
    ):
        pass


def bench(name: str, args, bandwidth: float) -> None:
    model = build(name)
    vocab = model.config.vocab_size
    rng = np.random.default_rng(0)
    prompts = [
        rng.integers(10, vocab, size=int(n)).tolist()
        for n in rng.integers(args.min_len, args.max_len + 1, size=args.n_prompts)
    ]
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    rows = [
        len(b) for b in token_budget_batches([len(p) + args.new_tokens for p in prompts], args.max_tokens)
    ]
    mean_rows = sum(r * r for r in rows) / sum(rows)  # per generated token
    limit = mean_rows * bandwidth / weights
    limit_kv = len(prompts) * args.new_tokens / kv_floor_seconds(model, prompts, args, weights, bandwidth)
    n_new = len(prompts) * args.new_tokens
    vector = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    vector *= 4.0 / vector.norm() * model.model.embed_tokens.weight.float().norm(dim=-1).mean().item()
    print(
        f"== {name}: {weights / 1e9:.2f} GB of bf16 weights, {len(prompts)} prompts of {args.min_len}-"
        f"{args.max_len} tokens, {args.new_tokens} new tokens, budget {args.max_tokens}, batches {rows}",
        flush=True,
    )

    results = engine_runs(model, prompts, vector, args, compiled=name in args.compile)
    torch.cuda.empty_cache()
    if name in args.compile:  # the eager baseline below runs on a fresh, uncompiled copy
        model = build(name)
    hf_generate(model, prompts[:8], 4, args.max_tokens)  # warm-up
    # best of two: the first full-size eager run pays one-time costs (allocator growth, kernel
    # choice for new shapes); on an H100, Gemma-2-2B: 1.6-2.3K tok/s single runs, 4.2K the best of two
    eager = min(timed(lambda: hf_generate(model, prompts, args.new_tokens, args.max_tokens)) for _ in "ab")
    print(f"hf_eager_generate_tok_s: {n_new / eager:.0f}")
    print(f"decode_limit_tok_s_at_mean_batch_{mean_rows:.0f}: {limit:.0f}")
    print(f"decode_limit_tok_s_at_batch_128: {128 * bandwidth / weights:.0f}")
    print(f"decode_limit_with_kv_cache_tok_s: {limit_kv:.0f}")
    for label, (seconds, prefill) in results.items():
        decode = (len(prompts) * (args.new_tokens - 1)) / max(seconds - prefill, 1e-9)
        print(
            f"{label}: {n_new / seconds:.0f} tok/s, {eager / seconds:.1f}x eager, "
            f"{100 * n_new / seconds / limit:.0f}% of decode limit end to end, "
            f"{100 * decode / limit:.0f}% decode only ({decode:.0f} tok/s), "
            f"{100 * decode / limit_kv:.0f}% of the limit with KV cache decode only"
        )


def kv_floor_seconds(model, prompts, args, weights: float, bandwidth: float) -> float:
    """Seconds to read, every decode step of every batch, the weights once and each real row's
    KV cache so far (prompt and tokens fed, no padding): the decode limit where the cache read
    is not small against the weights (Gemma-2-2B: 4 KV heads of 256 dims, ~106 KB a token)."""
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    per_token = config.num_hidden_layers * 2 * config.num_key_value_heads * head_dim * 2  # bf16 K and V
    new = args.new_tokens
    lengths = [len(p) + new for p in prompts]
    total = 0.0
    for idx in token_budget_batches(lengths, args.max_tokens):
        cache = sum(new * len(prompts[i]) + new * (new + 1) / 2 for i in idx) * per_token
        total += new * weights + cache
    return total / bandwidth


def engine_runs(model, prompts, vector, args, compiled: bool) -> dict[str, tuple[float, float]]:
    """Seconds of the engine plain, steered, recording (and with compiled blocks), as a first
    call and as a later call of a session, each with the seconds of a prefill-only run."""
    n_layers = len(decoder_layers(model))
    new, budget = args.new_tokens, args.max_tokens
    other = vector.roll(1)  # a later call steers with another vector of the same norm

    def steered(v: torch.Tensor):
        def run() -> None:
            with add_to_layer(model, n_layers // 2, v):
                engine(model, prompts, new, budget)

        return run

    def run_all(runs: dict) -> dict[str, tuple[float, float]]:
        engine(model, prompts, 2, budget)  # warm-up: cuBLAS, allocator, compilation
        seconds = {}
        with generation_session(model):
            for label, (first, later) in runs.items():
                seconds[f"{label}_first_call"] = timed(first)
                seconds[label] = timed(later)
                for key in (f"{label}_first_call", label):
                    print(f"{key}_tok_s: {len(prompts) * new / seconds[key]:.0f}", flush=True)
        prefill = timed(lambda: engine(model, prompts, 1, budget))
        print(f"prefill_only_s: {prefill:.2f}", flush=True)
        return {label: (s, prefill) for label, s in seconds.items()}

    def plain() -> None:
        engine(model, prompts, new, budget)

    def recording() -> None:
        engine(model, prompts, new, budget, [n_layers // 3, n_layers // 2, 2 * n_layers // 3])

    results = run_all(
        {
            "engine": (plain, plain),
            "engine_steered": (steered(vector), steered(other)),
            "engine_recording_3_layers": (recording, recording),
        }
    )
    if compiled:  # what `traitscope capture` does on a GPU: hooks.compile_blocks
        compile_blocks(model)
        t0 = time.perf_counter()
        engine(model, prompts, new, budget)
        print(f"compiled_blocks_first_run_s: {time.perf_counter() - t0:.1f}", flush=True)
        results |= run_all(
            {
                "engine_compiled_blocks": (plain, plain),
                "engine_compiled_blocks_steered": (steered(vector), steered(other)),
            }
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["gemma-2-2b", "llama-3.1-8b"])
    parser.add_argument("--n-prompts", type=int, default=512)
    parser.add_argument("--min-len", type=int, default=50)
    parser.add_argument("--max-len", type=int, default=150)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=32768, help="token budget per batch")
    parser.add_argument("--compile", nargs="*", default=[], help="models also timed with compiled blocks")
    args = parser.parse_args()
    import transformers

    bandwidth = hbm_bandwidth()
    print(
        f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}"
    )
    print(f"hbm_copy_bandwidth_tb_s: {bandwidth / 1e12:.2f}")
    for name in args.models:
        bench(name, args, bandwidth)


if __name__ == "__main__":
    main()
