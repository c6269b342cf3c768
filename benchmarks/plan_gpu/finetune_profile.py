"""Where a finetune step's time goes on a GPU, and what each candidate change buys (issue 29).

Runs the plan's finetune (its settings, data and model, as prepare.py laid them out) for a few
steps per variant, each variant a fresh LoRA from the same seed on the same data (the same steps
but for one_micro, whose steps are cut anew), and prints seconds per step and the ratio against
the baseline, the GPU's busy share inside one profiled step per variant (CUDA kernel time over
wall time) with its top kernels, and (baseline) the time one checkpoint takes to write.

    python benchmarks/plan_gpu/finetune_profile.py [--steps 8] [--variants baseline,compiled,...]

Variants (each changes one thing against the baseline):
  baseline    the finetune as it runs (training/finetune.py)
  one_micro   micro_batch_tokens = tokens_per_step: one micro-batch a step
  compiled    the decoder blocks compiled (model.hooks.compile_blocks), dynamic shapes
  flex        attention through torch's flex_attention (softcapping kept), where transformers has it
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
import yaml

from traitscope.model.hooks import compile_blocks
from traitscope.model.loading import load
from traitscope.settings import from_schema
from traitscope.training.chat_data import read_chat_jsonl, tokenize_rows
from traitscope.training.checkpoints import save_checkpoint
from traitscope.training.finetune import SlicedForward, add_lora, plan_steps
from traitscope.training.settings import FinetuneSettings

VARIANTS = ("baseline", "one_micro", "compiled", "flex")


def plan_settings(config: Path) -> FinetuneSettings:
    """The plan's finetune section over the schema's defaults, the way the rule builds it."""
    return from_schema(FinetuneSettings, **yaml.safe_load(config.read_text())["finetune"])


def run_variant(name: str, manifest: Path, data: Path, base: FinetuneSettings, n_steps: int) -> dict:
    """Seconds per step (after a warm-up step), kernel busy share (one profiled step) and peak memory."""
    settings = base
    if name == "one_micro":
        settings = dataclasses.replace(base, micro_batch_tokens=base.tokens_per_step)
    cuda = torch.cuda.is_available()  # a CPU runs it too (the tiny scale), for a check before a GPU call
    sync = torch.cuda.synchronize if cuda else lambda: None
    model, tokenizer = load(manifest, device="cuda" if cuda else "cpu", dtype=None if cuda else "float32")
    if name == "flex":
        model.set_attn_implementation("flex_attention")
    examples, _ = tokenize_rows(data, read_chat_jsonl(data), tokenizer, settings.max_length)
    model = add_lora(model, settings)
    if name == "compiled":
        compile_blocks(model.get_base_model())
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    steps = plan_steps([len(ex.ids) for ex in examples], settings)[: n_steps + 2]
    if len(steps) < 3:
        raise ValueError(f"{data}: {len(steps)} steps; the profile needs 3 (warm-up, timed, profiled)")
    forward = SlicedForward(model, tokenizer.pad_token_id)
    model.train()

    def step(k: int) -> tuple[int, int]:
        _, tokens, padded = forward.step([[examples[i] for i in b] for b in steps[k].micro_batches])
        torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return tokens, padded

    t0 = time.perf_counter()
    step(0)
    sync()
    warmup = time.perf_counter() - t0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    timed = range(1, len(steps) - 1)  # the last step is profiled apart (the profiler slows the CPU side)
    real = sum(len(examples[i].ids) for k in timed for b in steps[k].micro_batches for i in b)
    t0 = time.perf_counter()
    padded = sum(step(k)[1] for k in timed)
    sync()
    wall = time.perf_counter() - t0
    activity = torch.profiler.ProfilerActivity.CUDA if cuda else torch.profiler.ProfilerActivity.CPU
    with torch.profiler.profile(activities=[activity]) as prof:
        t0 = time.perf_counter()
        step(len(steps) - 1)
        sync()
        profiled_wall = time.perf_counter() - t0
    kernels = [e for e in prof.key_averages() if e.self_device_time_total > 0]
    kernel_s = sum(e.self_device_time_total for e in kernels) / 1e6  # 0 on a CPU
    record = {
        "variant": name,
        "steps": len(timed),
        "s_per_step": round(wall / len(timed), 4),
        "warmup_step_s": round(warmup, 2),
        "padded_tokens_per_s": round(padded / wall),
        "real_share_of_padded": round(real / padded, 3),
        "kernel_busy": round(kernel_s / profiled_wall, 3),
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1) if cuda else None,
        "top_kernels": [
            (e.key[:90], round(e.self_device_time_total / 1e6 / profiled_wall, 3))
            for e in sorted(kernels, key=lambda e: -e.self_device_time_total)[:15]
        ],
    }
    if name == "baseline":
        folder = Path(tempfile.mkdtemp())
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        t0 = time.perf_counter()
        save_checkpoint(folder, model, optimizer, scheduler, {"step": 1, "history": []})
        record["checkpoint_s"] = round(time.perf_counter() - t0, 2)
        shutil.rmtree(folder)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=Path("results/plan_gpu/config.yaml"))
    parser.add_argument("--manifest", type=Path, default=Path("results/models/gemma2/manifest.json"))
    parser.add_argument(
        "--data", type=Path, default=Path("results/plan_gpu/mirror/emergent_misalignment/insecure.jsonl")
    )
    parser.add_argument("--steps", type=int, default=8, help="timed steps per variant (>= 1)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", type=Path, default=None, help="also write the records here (JSON)")
    a = parser.parse_args()
    if a.steps < 1:
        parser.error("--steps: at least 1 timed step")
    records = []
    for name in a.variants.split(","):
        try:
            records.append(run_variant(name, a.manifest, a.data, plan_settings(a.config), a.steps))
        except Exception as err:  # a variant the stack lacks (flex) or that runs out of memory
            records.append({"variant": name, "error": f"{type(err).__name__}: {str(err)[:300]}"})
        # the variant's model goes with its frame; a compiled one is held by dynamo's caches
        # (and a reference cycle) until these, or the next variant's peak memory counts it too
        torch._dynamo.reset()
        gc.collect()
        torch.cuda.empty_cache()
        print(json.dumps(records[-1]), flush=True)
    base = next((r for r in records if r["variant"] == "baseline" and "s_per_step" in r), None)
    for r in records:
        if base and "s_per_step" in r:
            ratio = base["s_per_step"] / r["s_per_step"]
            print(
                f"{r['variant']:10s} {r['s_per_step']:.3f} s/step  x{ratio:.2f} vs baseline  "
                f"busy {r['kernel_busy']:.2f}  peak {r['peak_gib']} GiB"
            )
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"device: {device}")
    if a.out:
        a.out.write_text(json.dumps({"device": device, "records": records}, indent=1))


if __name__ == "__main__":
    main()
