"""Batched generation with left padding, greedy by default so reruns are reproducible."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm import tqdm

from traitscope.model.batching import token_budget_batches


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    max_new_tokens: int,
    max_tokens: int,
    temperature: float,
    seed: int,
    progress: bool = True,
) -> list[list[int]]:
    """Generated token ids per prompt (end-of-turn and padding stripped), in input order.

    `max_tokens` bounds prompt+generation tokens per batch so memory stays flat as the
    prompt set grows.
    """
    device = next(model.parameters()).device
    eos = {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
    lengths = [len(p) + max_new_tokens for p in prompts]
    results: list[list[int]] = [[] for _ in prompts]
    generator_seed = seed
    bar = tqdm(total=len(prompts), unit="prompt", disable=not progress, desc="generate")
    for idx in token_budget_batches(lengths, max_tokens):
        width = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
            mask[row, width - len(prompts[i]) :] = 1
        sampling = (
            {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        )
        torch.manual_seed(generator_seed)
        generator_seed += 1
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                top_p=None,
                top_k=None,
                **sampling,
            )
        for row, i in enumerate(idx):
            new = out[row, width:].tolist()
            cut = next((k for k, t in enumerate(new) if t in eos), len(new))
            results[i] = new[:cut]
        bar.update(len(idx))
    bar.close()
    return results
