"""Batched generation that can record the residual stream as it goes.

One loop serves every generating stage: left-padded, length-sorted token-budget batches, a
prefill pass, then one decode pass per new token over the KV cache. Recording layers while
generating gives the activations of the prompt (prefill) and of every kept response token
(the pass that feeds it) without a second forward pass over the conversation. Greedy is the
default so reruns are reproducible; hooks such as steering (`hooks.add_to_layer`) apply inside.

Batches decode over a static cache (`static_decode`: a CUDA graph per step on CUDA; caches and
graphs kept across calls inside `generation_session`). A model the static path cannot run (a
sliding window reached, attention other than sdpa/eager, weights on several devices, or an
error) uses the DynamicCache loop here, with a one-line warning where it was an error.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from tqdm import tqdm

from traitscope.generation.decode_loop import Steps, _cache_keyword, _decode_loop, _joined
from traitscope.generation.prefix import batch_prefixes, layout_mask, left_layout, prefill_prefix
from traitscope.generation.static_decode import (  # noqa: F401  (re-exported: the engine's public face)
    _SESSIONS,
    CACHE_STEP,
    _static_decoder,
    _StaticDecoder,
    generation_session,
    hooks_key,
)
from traitscope.model.batching import token_budget_batches
from traitscope.model.hooks import RowSteering, record


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


def _next_token(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@dataclass
class PerRow:
    """Per-prompt settings of one generation: a steering vector each (`hooks.add_to_rows`), and a
    noise key each. Prompts of one key draw the same sampling noise at each step, in whichever
    batch they fall: candidates answering one question differ by their vectors, not by luck
    (common random numbers), as when each candidate generated alone with the same seed."""

    steering: RowSteering | None = None
    noise_keys: Sequence[int] | None = None

    def select(self, index: list[int], rows: int, device: torch.device) -> torch.Tensor | None:
        """Set up a batch of `rows` rows holding prompts `index` (padding repeats the last): its
        steering vectors, and its rows' noise keys (None: unkeyed)."""
        padded = [index[min(r, len(index) - 1)] for r in range(rows)]
        if self.steering is not None:
            self.steering.select(padded)
        if self.noise_keys is None:
            return None
        return torch.tensor([self.noise_keys[i] for i in padded], device=device)


def _sampler(temperature: float, seed: int, device: torch.device, keys: torch.Tensor | None, n_keys: int):
    """Next-token choice for a batch. Keyed: Gumbel-max over one [n_keys, vocab] noise draw per
    step from a generator seeded alike in every batch, each row reading its key's noise (the
    same distribution as softmax sampling); else multinomial sampling, or greedy at 0."""
    generator = torch.Generator(device=device).manual_seed(seed) if temperature > 0 else None
    if keys is None or temperature <= 0:
        return lambda logits: _next_token(logits, temperature, generator)

    def sample(logits: torch.Tensor) -> torch.Tensor:
        uniform = torch.rand((n_keys, logits.shape[-1]), generator=generator, device=logits.device)
        gumbel = -torch.log(-torch.log(uniform.clamp_min(torch.finfo(uniform.dtype).tiny)))
        return (logits.float() / temperature + gumbel[keys]).argmax(-1)

    return sample


def _left_padded(prompts: Sequence[list[int]], rows: int, pad_id: int):
    """[rows, width] ids and mask; rows past len(prompts) repeat the last one (bucket padding)."""
    width = max(map(len, prompts))
    ids = torch.full((rows, width), pad_id, dtype=torch.long)
    mask = torch.zeros((rows, width), dtype=torch.long)
    for row in range(rows):
        prompt = prompts[min(row, len(prompts) - 1)]
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    return ids, mask


def _eager_batch(model, prefixes, ids, mask, max_new_tokens, sample, stops, finished, layers) -> Steps:
    """The reference loop (a model the static cache cannot run): a DynamicCache, one forward
    pass per new token."""
    from transformers import DynamicCache

    keyword = _cache_keyword(model)
    cache = DynamicCache(config=model.config)
    kw = {keyword: cache, "use_cache": True, "logits_to_keep": 1}
    mask, shared = layout_mask(prefixes, mask)
    position = (mask.cumsum(-1) - 1).clamp_min(0)
    state = {"mask": mask, "position": position[:, -1]}
    with torch.inference_mode(), record(model, layers, stop_early=False) as store:
        head = prefill_prefix(model, prefixes, cache, keyword, store, layers) if shared else {}
        out = model(input_ids=ids, attention_mask=mask, position_ids=position[:, shared:], **kw)
        prefill = {layer: _joined(head.get(layer), store[layer]) for layer in layers}

        def decode(token: torch.Tensor, _step: int):
            state["mask"] = torch.cat([state["mask"], torch.ones_like(mask[:, :1])], dim=1)
            state["position"] = state["position"] + 1
            out = model(
                input_ids=token[:, None],
                attention_mask=state["mask"],
                position_ids=state["position"][:, None],
                **kw,
            )
            return out.logits[:, -1].to(ids.device), {layer: store[layer] for layer in layers}

        # logits come off the LM head's device: a sharded model's last GPU, not the inputs' one
        fed, steps = _decode_loop(
            out.logits[:, -1].to(ids.device), decode, max_new_tokens, sample, stops, finished, bool(layers)
        )
    return fed, prefill, steps


def _run_batch(model, decoder, call, prefixes, ids, mask, n, max_new_tokens, sampler, stops, layers) -> Steps:
    """One batch; `sampler()` makes its token sampler afresh, so a retry draws the same noise."""
    finished = torch.arange(ids.shape[0], device=ids.device) >= n  # bucket padding never holds a stop
    args = (prefixes, ids, mask, max_new_tokens, sampler(), stops, finished, layers)
    if decoder is None:
        return _eager_batch(model, *args)
    return decoder.batch(*args, call)


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
    per_row: PerRow | None = None,
) -> Iterator[GeneratedBatch]:
    """Generate for every prompt, batch by batch; record `layers` when given.

    `max_tokens` bounds prompt + generated tokens per batch, so memory stays flat as the
    prompt set grows. When layers are recorded, each kept token is fed once more so its
    own activation exists (one decode pass beyond plain generation). A prefix that several
    prompts of a batch share (a system prompt) runs once (`prefix.batch_prefixes`), unless rows
    are steered apart (`per_row`), which makes every row's prefix its own.
    """
    device = next(model.parameters()).device
    decoder = _SESSIONS.get(model) or _static_decoder(model, device)
    call = object()  # keys the graphs that only this call may replay
    window = getattr(model.config, "sliding_window", None)
    stops = torch.tensor(sorted(stop_ids), dtype=torch.long, device=device)
    lengths = [len(p) + max_new_tokens for p in prompts]
    per_row = per_row or PerRow()
    n_keys = max(per_row.noise_keys or [-1]) + 1
    bar = tqdm(total=len(prompts), unit="prompt", disable=not progress, desc="generate")
    try:
        for k, idx in enumerate(token_budget_batches(lengths, max_tokens)):
            width = max(len(prompts[i]) for i in idx)
            static = decoder if decoder is not None and decoder.fits(width + max_new_tokens) else None
            rows = static.rows(len(idx)) if static is not None else len(idx)
            prefixes, heads = None, [0] * len(idx)
            if per_row.steering is None:  # the [prefix | suffix] layout may widen the cache by half
                widest = (3 * (width + max_new_tokens)) // 2
                if window:  # no column past the window: the layout's gaps then change no mask
                    widest = min(widest, window // CACHE_STEP * CACHE_STEP)
                prefixes, heads = batch_prefixes(prompts, idx, rows, device, widest - max_new_tokens)
            suffixes = [prompts[i][head:] for i, head in zip(idx, heads)]
            ids, mask = (t.to(device) for t in _left_padded(suffixes, rows, pad_id))
            row_keys = per_row.select(idx, rows, device)
            batch_seed = seed if row_keys is not None else seed + k  # keyed: every batch's noise alike
            sampler = partial(_sampler, temperature, batch_seed, device, row_keys, n_keys)
            args = (prefixes, ids, mask, len(idx), max_new_tokens, sampler, stops, layers)
            try:
                fed, prefill, steps = _run_batch(model, static, call, *args)
            except Exception as error:  # this model or transformers version cannot be captured
                if static is None:
                    raise
                reason = f"{type(error).__name__}: {error}".splitlines()[0][:200]
                print(f"traitscope: static-cache decoding failed ({reason}); eager loop", file=sys.stderr)
                decoder = None
                fed, prefill, steps = _run_batch(model, None, call, *args)
            n = len(idx)
            if prefixes is not None:  # each prompt in its last columns; the first columns only pad
                suffix_lengths = mask[:n].sum(-1)
                prefill = {
                    layer: left_layout(h[:n], prefixes.width, suffix_lengths)[:, -width:]
                    for layer, h in prefill.items()
                }
            generated = torch.stack(fed, dim=1)[:n].tolist()
            hidden = {  # the real rows: a padded batch's extra rows (graph buckets) hold nothing
                layer: torch.cat([prefill[layer][:n], *(s[layer][:n] for s in steps)], dim=1)
                for layer in layers
            }
            yield GeneratedBatch(list(idx), width, [_kept(g, stop_ids) for g in generated], hidden)
            bar.update(n)
    finally:
        bar.close()
        if decoder is not None:
            decoder.forget(call)


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    max_new_tokens: int,
    max_tokens: int,
    temperature: float,
    seed: int,
    progress: bool = True,
    per_row: PerRow | None = None,
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
        per_row=per_row,
    ):
        for i, kept in zip(batch.index, batch.kept):
            results[i] = [] if kept and kept[0] in stops else kept
    return results
