"""Large-model capture paths: one GPU vs sharded over GPUs (device_map auto), 8-bit and 4-bit.

A random-weight Llama of Llama-3-8B's shape (fewer layers by default) is saved as
safetensors and prepared as four variants through traitscope's loader: bf16 on one GPU,
bf16 with `device_map: auto` (sharded over every visible GPU), and bitsandbytes 8-bit and
4-bit on one GPU. Each captures the same prompts with the capture engine (compiled blocks,
every layer, pooled to the host, as `traitscope capture` does on a GPU). Prints tokens/s,
weights and peak memory per GPU, the sharded model's deviation from one GPU, and how well
the quantized variants' projections track bf16 ones; plus greedy generation with recording,
one GPU (CUDA-graph decoder) vs sharded (the DynamicCache loop).

    PYTHONPATH=src python benchmarks/capture_multigpu.py --json out.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # as `traitscope` sets it

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from capture_gpu import make_prompts  # noqa: E402

from traitscope.capture.engine import pooled_activations  # noqa: E402
from traitscope.generation.generate import generate_batches  # noqa: E402
from traitscope.model.hooks import compile_blocks, decoder_layers  # noqa: E402
from traitscope.model.loading import ModelSpec, load, prepare_model  # noqa: E402

POOLS = ["last_prompt", "prompt_mean"]


def gib(n: float) -> float:
    return round(n / 2**30, 2)


def sync() -> None:
    for i in range(torch.cuda.device_count()):
        torch.cuda.synchronize(i)


def build(folder: Path, layers: int) -> int:
    """A random bf16 Llama-3-8B-shaped model with `layers` decoder layers, plus a tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    config = LlamaConfig(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=layers,
        num_attention_heads=32,
        num_key_value_heads=8,
        rope_theta=500000.0,
        max_position_embeddings=8192,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda:0"):
        model = LlamaForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    model.save_pretrained(folder)
    n_params = sum(p.numel() for p in model.parameters())
    del model
    torch.cuda.empty_cache()
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<s>", "</s>", "hello"])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>")
    tok.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    tok.save_pretrained(folder)
    return n_params


def per_gpu(fn) -> dict[str, float]:
    return {f"cuda:{i}": gib(fn(i)) for i in range(torch.cuda.device_count())}


def capture(model, prompts, layers, max_tokens) -> tuple[float, dict]:
    sync()
    t0 = time.perf_counter()
    out = pooled_activations(model, prompts, layers, POOLS, max_tokens, 0, "right", progress=False)
    sync()
    return time.perf_counter() - t0, out


def generation(model, prompts, layers, new_tokens) -> float:
    """Generated tokens per second, greedy, recording `layers` (as capture with max_new_tokens)."""
    ids = [p.ids for p in prompts]
    sync()
    t0 = time.perf_counter()
    n = 0
    for batch in generate_batches(model, ids, new_tokens, 65536, 0.0, 0, set(), 0, layers, progress=False):
        n += sum(len(k) for k in batch.kept)
    sync()
    return n / (time.perf_counter() - t0)


def correlations(ref: torch.Tensor, got: torch.Tensor, directions: torch.Tensor) -> dict:
    """Projection agreement over prompts: Pearson r per (layer, direction) of x @ unit(d)."""
    rs = []
    for layer in range(ref.shape[1]):
        a = (ref[:, layer] @ directions[layer].T).numpy()  # [n, k]
        b = (got[:, layer] @ directions[layer].T).numpy()
        rs.append([np.corrcoef(a[:, j], b[:, j])[0, 1] for j in range(a.shape[1])])
    rs = np.array(rs)  # [layers, k]
    cos = torch.nn.functional.cosine_similarity(ref, got, dim=-1)
    return {
        "projection_r_median": round(float(np.median(rs)), 4),
        "projection_r_min": round(float(rs.min()), 4),
        "projection_r_pc1_per_layer": [round(float(r), 4) for r in rs[:, 0]],
        "activation_cosine_mean": round(float(cos.mean()), 4),
        "activation_cosine_min": round(float(cos.min()), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=16, help="decoder layers (Llama-3-8B has 32)")
    parser.add_argument("--n-prompts", type=int, default=1000)
    parser.add_argument("--max-tokens", type=int, default=32768)
    parser.add_argument("--variants", default="bf16,sharded,8bit,4bit", help="bf16 first: the reference")
    parser.add_argument("--gen-prompts", type=int, default=64)
    parser.add_argument("--gen-tokens", type=int, default=32)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="multigpu."))
    t0 = time.perf_counter()
    n_params = build(work / "weights", args.layers)
    result: dict = {
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "model": f"random Llama-3-8B shape, {args.layers} layers, {n_params / 1e9:.2f}B params, bf16",
        "build_and_save_s": round(time.perf_counter() - t0, 1),
        "n_prompts": args.n_prompts,
        "pools": POOLS,
        "max_tokens": args.max_tokens,
        "torch": torch.__version__,
    }
    prompts = make_prompts(args.n_prompts, 128000, 20, 400)
    warm = make_prompts(args.n_prompts // 4, 128000, 20, 400, seed=2)
    result["n_tokens"] = n_tokens = sum(len(p.ids) for p in prompts)
    layers = list(range(args.layers))
    specs = {
        "bf16": {},
        "sharded": {"device_map": "auto"},
        "8bit": {"quantization": "8bit", "device_map": "cuda:0"},
        "4bit": {"quantization": "4bit", "device_map": "cuda:0"},
    }
    reference = directions = None
    for name in args.variants.split(","):
        row: dict = {}
        result[name] = row
        try:
            spec = ModelSpec.from_config(
                name, {"path": str(work / "weights"), "dtype": "bfloat16", **specs[name]}
            )
            manifest = prepare_model(spec, work / "models" / name)
            t = time.perf_counter()
            gc.collect()
            model, _ = load(manifest, device="cuda")
            row["load_s"] = round(time.perf_counter() - t, 1)
            row["weights_gib_per_gpu"] = per_gpu(torch.cuda.memory_allocated)
            row["layers_per_gpu"] = {
                str(d): sum(1 for b in decoder_layers(model) if next(b.parameters()).device == d)
                for d in sorted({p.device for p in model.parameters()}, key=str)
            }
            try:
                compile_blocks(model)
                t = time.perf_counter()
                capture(model, warm, layers, args.max_tokens)
                row["compiled"] = True
            except Exception as error:  # report, then measure eagerly
                row["compile_error"] = f"{type(error).__name__}: {error}".splitlines()[0][:300]
                torch._dynamo.reset()
                model, _ = load(manifest, device="cuda")
                t = time.perf_counter()
                capture(model, warm, layers, args.max_tokens)
                row["compiled"] = False
            row["warmup_s"] = round(time.perf_counter() - t, 1)
            capture(model, prompts, layers, args.max_tokens)  # every shape of the timed set seen once
            for i in range(torch.cuda.device_count()):
                torch.cuda.reset_peak_memory_stats(i)
            seconds, pooled = min(
                (capture(model, prompts, layers, args.max_tokens) for _ in range(2)), key=lambda r: r[0]
            )
            row["tokens_per_s"] = round(n_tokens / seconds)
            row["peak_gib_per_gpu"] = per_gpu(torch.cuda.max_memory_allocated)
            acts = pooled["last_prompt"].float()
            if reference is None:
                reference = acts
                # per layer: the first principal direction of the reference (data-aligned, like a
                # trait vector) and 7 random unit directions
                g = torch.Generator().manual_seed(0)
                dirs = []
                for layer in layers:
                    x = acts[:, layer] - acts[:, layer].mean(0)
                    pc1 = torch.linalg.svd(x, full_matrices=False).Vh[0]
                    rand = torch.randn(7, acts.shape[-1], generator=g)
                    dirs.append(torch.cat([pc1[None], rand / rand.norm(dim=-1, keepdim=True)]))
                directions = torch.stack(dirs)
            else:
                err = (acts - reference).norm(dim=-1) / reference.norm(dim=-1)
                row["vs_bf16_relative_error_max"] = round(float(err.max()), 5)
                row["vs_bf16_relative_error_median"] = round(float(err.median()), 5)
                row.update(correlations(reference, acts, directions))
            if name in ("bf16", "sharded") and args.gen_prompts:
                gen = make_prompts(args.gen_prompts, 128000, 20, 200, seed=3)
                generation(model, gen[:8], [layers[-1]], 4)  # warm-up (CUDA graph capture)
                row["generation_tokens_per_s"] = round(generation(model, gen, [layers[-1]], args.gen_tokens))
            del model, pooled
        except Exception as error:
            row["error"] = f"{type(error).__name__}: {error}"[:500]
        torch._dynamo.reset()
        gc.collect()  # the last variant's weights sit in reference cycles until collected
        torch.cuda.empty_cache()
        print(name, json.dumps(row), flush=True)
    if "bf16" in result and "sharded" in result and "tokens_per_s" in result["sharded"]:
        result["sharded_vs_one_gpu_throughput"] = round(
            result["sharded"]["tokens_per_s"] / result["bf16"]["tokens_per_s"], 3
        )
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
