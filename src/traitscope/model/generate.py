"""Batched generation that can record the residual stream as it goes.

One loop serves every generating stage: left-padded, length-sorted token-budget batches,
a prefill pass, then one decode pass per new token over the KV cache. Recording layers
while generating gives the activations of the prompt (from the prefill) and of every
kept response token (from the pass that feeds it) without a second forward pass over
the whole conversation, which on a CPU costs about as much as the generation itself.
Greedy decoding is the default so reruns are reproducible; hooks such as steering
(`hooks.add_to_layer`) apply inside the loop like in any forward pass.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from traitscope.model.batching import token_budget_batches
from traitscope.model.hooks import record


@dataclass
class GeneratedBatch:
    """One generated batch: which prompts, what was kept, and (if asked) the residual stream."""

    index: list[int]  # positions in the input list
    width: int  # prompt columns; prompt i sits left-padded in the last len(prompt_i) of them
    kept: list[list[int]]  # generated ids per row: stop token and after removed, a lone stop kept
    hidden: dict[int, torch.Tensor]  # layer -> [b, width + n_fed, d]: prompt, then fed tokens


def _kept(tokens: list[int], stops: set[int]) -> list[int]:
    """Tokens before the first stop token; a response that starts with one keeps it, so its
    mean over response tokens is defined."""
    cut = next((k for k, t in enumerate(tokens) if t in stops), len(tokens))
    return tokens[:cut] if cut else tokens[:1]


def _cache_keyword(model: Any) -> str:
    """`cache` in recent transformers, `past_key_values` before it (now deprecated)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(type(inner).forward).parameters else "past_key_values"


def _next_token(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def generate_batches(
    model: Any,
    prompts: Sequence[list[int]],
    max_new_tokens: int,
    max_tokens: int,
    temperature: float,
    seed: int,
    stop_ids: set[int],
    pad_id: int,
    layers: Sequence[int] = (),
    progress: bool = True,
) -> Iterator[GeneratedBatch]:
    """Generate for every prompt, batch by batch; record `layers` when given.

    `max_tokens` bounds prompt + generated tokens per batch, so memory stays flat as the
    prompt set grows. When layers are recorded, each kept token is fed once more so its
    own activation exists (one decode pass beyond plain generation).
    """
    from transformers import DynamicCache

    device = next(model.parameters()).device
    cache_kw = _cache_keyword(model)
    lengths = [len(p) + max_new_tokens for p in prompts]
    bar = tqdm(total=len(prompts), unit="prompt", disable=not progress, desc="generate")
    for k, idx in enumerate(token_budget_batches(lengths, max_tokens)):
        generator = None
        if temperature > 0:
            generator = torch.Generator(device=device).manual_seed(seed + k)
        width = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
            mask[row, width - len(prompts[i]) :] = 1
        ids, mask = ids.to(device), mask.to(device)
        position = (mask.cumsum(-1) - 1).clamp_min(0)
        stops = torch.tensor(sorted(stop_ids), device=device)
        cache = DynamicCache(config=model.config)
        fed: list[torch.Tensor] = []
        steps: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
        with torch.inference_mode(), record(model, layers, stop_early=False) as store:
            out = model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=position,
                **{cache_kw: cache},
                use_cache=True,
                logits_to_keep=1,
            )
            prefill = {layer: store[layer] for layer in layers}
            token = _next_token(out.logits[:, -1], temperature, generator)
            finished = torch.zeros(len(idx), dtype=torch.bool, device=device)
            position = position[:, -1]
            for step in range(max_new_tokens):
                finished |= torch.isin(token, stops)
                last = step == max_new_tokens - 1
                if not layers and (last or bool(finished.all())):
                    fed.append(token)
                    break
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                position = position + 1
                out = model(
                    input_ids=token[:, None],
                    attention_mask=mask,
                    position_ids=position[:, None],
                    **{cache_kw: cache},
                    use_cache=True,
                    logits_to_keep=1,
                )
                fed.append(token)
                for layer in layers:
                    steps[layer].append(store[layer])
                if last or bool(finished.all()):
                    break  # every row's kept tokens have been fed
                token = _next_token(out.logits[:, -1], temperature, generator)
        generated = torch.stack(fed, dim=1).tolist()
        hidden = {layer: torch.cat([prefill[layer], *steps[layer]], dim=1) for layer in layers}
        yield GeneratedBatch(list(idx), width, [_kept(g, stop_ids) for g in generated], hidden)
        bar.update(len(idx))
    bar.close()


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
    """Generated token ids per prompt (stop token and after removed), in input order."""
    stops = {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
    results: list[list[int]] = [[] for _ in prompts]
    for batch in generate_batches(
        model,
        prompts,
        max_new_tokens,
        max_tokens,
        temperature,
        seed,
        stops,
        tokenizer.pad_token_id,
        progress=progress,
    ):
        for i, kept in zip(batch.index, batch.kept):
            results[i] = [] if kept and kept[0] in stops else kept
    return results
