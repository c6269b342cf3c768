"""Batched generation that can record the residual stream as it goes.

One loop serves every generating stage: left-padded, length-sorted token-budget batches, a
prefill pass, then one decode pass per new token over the KV cache. Recording layers while
generating gives the activations of the prompt (prefill) and of every kept response token
(the pass that feeds it) without a second forward pass over the conversation. Greedy is the
default so reruns are reproducible; hooks such as steering (`hooks.add_to_layer`) apply inside.

Decoding writes into a `transformers.StaticCache` sized from the batch, so no step copies the
cache (DynamicCache's cat was 12% of a CPU decode step). On CUDA the decode step is also a CUDA
graph (rows padded to a multiple of 8, cache length to a multiple of 32, so batches of one
shape share a graph): the first step of a shape runs eagerly and is captured, every later step is a
replay, without the per-step Python and launch overhead. Hooks active at capture are part of
the graph; what they record is copied out after each replay. Inside `generation_session`
caches and graphs outlive the call, so a stage that generates again and again for the same
prompts (CMA-ES candidates, steering coefficients) captures once: hooks that say what they do
(`graph_key`: steering reads a per-layer device slot, recording copies out) let a later call
replay a graph; a graph made under any other hook serves only its own call. The host learns
that every row has stopped only after queueing the next step, so the GPU never waits on it. A model the static
path cannot run (a sliding window reached, attention other than sdpa/eager, weights on several
devices, or an error) uses the DynamicCache loop, with a one-line warning where it was an error.
"""

from __future__ import annotations

import inspect
import sys
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm import tqdm

from traitscope.model.batching import token_budget_batches
from traitscope.model.cuda_graphs import OnceToDevice, additive_mask, grouped_attention
from traitscope.model.hooks import record
from traitscope.model.prefix import left_layout, prefill_prefix, shared_prefix

# static KV caches are sized in multiples of CACHE_STEP tokens and ROWS_STEP rows: coarser steps let
# more batches share a graph, but every padded row and column is read each step
CACHE_STEP = 32
ROWS_STEP = 8
KEPT_SHAPES = 4  # cache shapes a session keeps (each holds one batch's KV cache)
Steps = tuple[list[torch.Tensor], dict[int, torch.Tensor], list[dict[int, torch.Tensor]]]


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


def _forward_accepts(model: Any, name: str) -> bool:
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return name in inspect.signature(type(inner).forward).parameters


def _cache_keyword(model: Any) -> str:
    """`cache` in recent transformers, `past_key_values` before it (now deprecated)."""
    return "cache" if _forward_accepts(model, "cache") else "past_key_values"


def _next_token(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _rows_bucket(n: int) -> int:
    """Batch rows padded to 1, 2, 4, then a multiple of ROWS_STEP."""
    return 1 << (n - 1).bit_length() if n <= 4 else -(-n // ROWS_STEP) * ROWS_STEP


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


class _StopFlags:
    """Each step's all-stopped flag, copied to the host without stalling the GPU: the loop reads
    a step's flag only after queueing the next decode step, so the GPU always has work queued
    while the host waits (a sync per step left a CUDA-graph decode step's GPU idle for the host's
    launches, 20-30% of the step)."""

    def __init__(self, device: torch.device, n: int) -> None:
        self.cuda = device.type == "cuda"
        self.host = torch.zeros(n, dtype=torch.bool, pin_memory=self.cuda)
        self.events: list[Any] = [None] * n

    def record(self, step: int, done: torch.Tensor) -> None:
        self.host[step].copy_(done, non_blocking=self.cuda)
        if self.cuda:
            self.events[step] = torch.cuda.Event()
            self.events[step].record()

    def read(self, step: int) -> bool:
        if self.cuda:
            self.events[step].synchronize()
        return bool(self.host[step])


def _decode_loop(
    logits: torch.Tensor,
    decode: Callable[[torch.Tensor, int], tuple[torch.Tensor, dict[int, torch.Tensor]]],
    max_new_tokens: int,
    sample: Callable[[torch.Tensor], torch.Tensor],
    stops: torch.Tensor,
    finished: torch.Tensor,
    recording: bool,
) -> tuple[list[torch.Tensor], list[dict[int, torch.Tensor]]]:
    """Feed sampled tokens until every row has stopped; when recording, the last kept token is
    fed too so its activation exists. decode(token, step) -> (next logits, {layer: [b, 1, d]}).
    Whether all rows stopped at a step is read after that step's token is fed (`_StopFlags`);
    without recording that feed was not needed, and what it returned is dropped."""
    fed: list[torch.Tensor] = []
    steps: list[dict[int, torch.Tensor]] = []
    flags = _StopFlags(finished.device, max_new_tokens)
    token = sample(logits)
    for step in range(max_new_tokens):
        finished |= torch.isin(token, stops)
        flags.record(step, finished.all())
        fed.append(token)
        last = step == max_new_tokens - 1
        if last and not recording:
            break
        logits, hidden = decode(token, step)
        steps.append(hidden)
        if flags.read(step):
            return fed, steps if recording else steps[:-1]
        if last:
            break  # every row's kept tokens have been fed
        token = sample(logits)
    return fed, steps


def _eager_batch(model, prefix, ids, mask, max_new_tokens, sample, stops, finished, layers) -> Steps:
    """The reference loop (CPU, or a model that cannot be captured): a DynamicCache, one
    forward pass per new token."""
    from transformers import DynamicCache

    keyword = _cache_keyword(model)
    cache = DynamicCache(config=model.config)
    kw = {keyword: cache, "use_cache": True, "logits_to_keep": 1}
    rows, shared = ids.shape[0], len(prefix)
    mask = torch.cat([torch.ones_like(mask[:, :1]).expand(rows, shared), mask], dim=1)
    position = (mask.cumsum(-1) - 1).clamp_min(0)
    state = {"mask": mask, "position": position[:, -1]}
    with torch.inference_mode(), record(model, layers, stop_early=False) as store:
        head = prefill_prefix(model, prefix, cache, rows, keyword, store, layers) if shared else {}
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


def _joined(head: torch.Tensor | None, rest: torch.Tensor) -> torch.Tensor:
    return rest if head is None else torch.cat([head, rest], dim=1)


@dataclass
class _Captured:
    """One captured decode step: its graph and the tensors every replay rewrites."""

    graph: Any
    logits: torch.Tensor
    hidden: dict[int, torch.Tensor]
    constants: dict  # device copies the graph reads (`OnceToDevice`), kept alive with it


@dataclass
class _Buffers:
    """A StaticCache of one (rows, length) and the step inputs its graphs read."""

    cache: Any
    token: torch.Tensor
    position: torch.Tensor
    slot: torch.Tensor  # cache column of the fed token
    allowed: torch.Tensor
    graphs: dict[Hashable, _Captured] = field(default_factory=dict)


def hooks_key(model: Any) -> Hashable | None:
    """What the model's active forward hooks do, for reusing a graph captured under them in a
    later call: each hook's `graph_key` (its module's position included); None when a hook has
    none (its closure may hold anything, so its graph serves only the call that made it)."""
    from torch.nn.modules import module as nn_module

    if nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks:
        return None
    key = []
    for position, module in enumerate(model.modules()):
        for kind, hooks in (("pre", module._forward_pre_hooks), ("post", module._forward_hooks)):
            for hook in hooks.values():
                tag = getattr(hook, "graph_key", None)
                if tag is None:
                    return None
                key.append((position, kind, tag))
    return tuple(key)


class _StaticDecoder:
    """Decoding over a StaticCache with the decode step captured as a CUDA graph; one cache per
    (rows, cache length), and per cache one graph per (recorded layers, hooks). keep=False
    holds one shape (a lone call); keep=True (`generation_session`) holds up to KEPT_SHAPES.
    capture=False runs the same static step eagerly (the CPU path) over the whole cache."""

    def __init__(self, model: Any, capture: bool = True, keep: bool = False) -> None:
        self.model, self.capture, self.keep = model, capture, keep
        self.cache_kw = _cache_keyword(model)
        self.slot_kw = _forward_accepts(model, "cache_position")  # transformers before 5.x
        self.dtype = model.dtype
        self.window = getattr(model.config, "sliding_window", None)
        self.shapes: OrderedDict[tuple[int, int], _Buffers] = OrderedDict()
        self.captures = 0  # graphs captured so far (tests, benchmarks)

    def fits(self, length: int) -> bool:
        """One mask serves every layer: only where no sliding window is reached."""
        return not self.window or -(-length // CACHE_STEP) * CACHE_STEP <= self.window

    def _prepare(self, rows: int, length: int, device: torch.device) -> _Buffers:
        buffers = self.shapes.get((rows, length))
        if buffers is not None:
            self.shapes.move_to_end((rows, length))
            buffers.cache.reset()
            return buffers
        from transformers import StaticCache

        while self.shapes and (not self.keep or len(self.shapes) >= KEPT_SHAPES):
            self.shapes.popitem(last=False)  # the least recently used shape's cache and graphs
        token = torch.zeros((rows, 1), dtype=torch.long, device=device)
        buffers = _Buffers(
            StaticCache(config=self.model.config, max_cache_len=length),
            token,
            torch.zeros_like(token),
            torch.zeros(1, dtype=torch.long, device=device),
            torch.zeros((rows, length), dtype=torch.bool, device=device),
        )
        self.shapes[(rows, length)] = buffers
        return buffers

    def forget(self, call: object) -> None:
        """Drop the graphs only `call` may replay (made under hooks without a `graph_key`)."""
        for buffers in self.shapes.values():
            for key in [k for k in buffers.graphs if k[1] is call]:
                del buffers.graphs[key]

    def _forward(self, cache, ids, position, mask, slots) -> torch.Tensor:
        extra = {"cache_position": slots} if self.slot_kw else {}
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position,
            **{self.cache_kw: cache},
            use_cache=True,
            logits_to_keep=1,
            **extra,
        )
        return out.logits[:, -1]

    def _step(self, b: _Buffers) -> torch.Tensor:
        """One decode step over the static buffers (what the graph holds)."""
        b.allowed.index_fill_(1, b.slot, True)
        mask = additive_mask(b.allowed[:, None, None, :], self.dtype)
        return self._forward(b.cache, b.token, b.position, mask, b.slot)

    def _run(self, b: _Buffers, key: Hashable, store: dict[int, torch.Tensor], layers: Sequence[int]):
        captured = b.graphs.get(key)
        if captured is not None:
            captured.graph.replay()
            return captured.logits, {layer: captured.hidden[layer].clone() for layer in layers}
        constants = OnceToDevice()
        with grouped_attention(self.model), constants:
            if not self.capture:
                return self._step(b), {layer: store[layer] for layer in layers}
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                logits = self._step(b)  # the real step, and the warm-up that capture needs
            hidden = {layer: store[layer] for layer in layers}
            graph = torch.cuda.CUDAGraph()  # captured without torch.cuda.graph's gc and empty_cache
            with torch.cuda.stream(stream):
                graph.capture_begin()
                try:
                    captured_logits = self._step(b)
                finally:
                    graph.capture_end()
            torch.cuda.current_stream().wait_stream(stream)
        # the hidden states every replay writes
        b.graphs[key] = _Captured(graph, captured_logits, dict(store), constants.copies)
        self.captures += 1
        return logits, hidden

    def rows(self, n: int) -> int:
        """Rows of a batch of n prompts: padded to a few sizes only where graphs are reused."""
        return _rows_bucket(n) if self.capture else n

    def batch(self, prefix, ids, mask, max_new_tokens, sample, stops, finished, layers, call) -> Steps:
        rows, shared = ids.shape[0], len(prefix)
        mask = torch.cat([torch.ones_like(mask[:, :1]).expand(rows, shared), mask], dim=1)
        width = mask.shape[1]
        length = width + max_new_tokens
        if self.capture:
            length = -(-length // CACHE_STEP) * CACHE_STEP
        device = ids.device
        with torch.inference_mode(), record(self.model, layers, stop_early=False) as store:
            b = self._prepare(rows, length, device)
            hooks = hooks_key(self.model)
            key = (tuple(layers), call if hooks is None else hooks)
            head = {}
            if shared:
                head = prefill_prefix(self.model, prefix, b.cache, rows, self.cache_kw, store, layers)
            keys = torch.nn.functional.pad(mask.bool(), (0, length - width))
            b.allowed.copy_(keys)
            slots = torch.arange(shared, width, device=device)
            causal = torch.arange(length, device=device) <= slots[:, None]
            position = (mask.cumsum(-1) - 1).clamp_min(0)[:, shared:]
            prefill_mask = additive_mask((keys[:, None] & causal)[:, None], self.dtype)
            logits = self._forward(b.cache, ids, position, prefill_mask, slots)
            prefill = {layer: _joined(head.get(layer), store[layer]) for layer in layers}
            last = position[:, -1:]

            def decode(token: torch.Tensor, step: int):
                b.token.copy_(token[:, None])
                b.position.copy_(last + step + 1)
                b.slot.fill_(width + step)
                return self._run(b, key, store, layers)

            fed, steps = _decode_loop(logits, decode, max_new_tokens, sample, stops, finished, bool(layers))
        return fed, prefill, steps


_SESSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its kept decoder


@contextmanager
def generation_session(model: Any) -> Iterator[None]:
    """Keep the model's KV caches and captured decode graphs across `generate` calls inside,
    so repeated generation for the same prompts (one call per steering vector) captures once.
    Holds up to KEPT_SHAPES batch caches on the GPU until it ends; a no-op on the CPU. A graph
    replays the code path it captured: weights changed in place are read anew, but a model
    changed otherwise inside the session (another LoRA adapter set active) is not seen."""
    device = next(model.parameters()).device
    decoder = _static_decoder(model, device, keep=True) if model not in _SESSIONS else None
    if decoder is None or not decoder.capture:
        yield
        return
    _SESSIONS[model] = decoder
    try:
        yield
    finally:
        del _SESSIONS[model]


def _static_decoder(model: Any, device: torch.device, keep: bool = False) -> _StaticDecoder | None:
    """The static-cache decoder (a CUDA graph on CUDA) where the model allows one, else None
    (the DynamicCache loop)."""
    if device.type not in ("cuda", "cpu") or len({p.device for p in model.parameters()}) > 1:
        return None
    attention = getattr(model.config, "_attn_implementation", None)
    if attention not in ("sdpa", "eager"):
        print(f"traitscope: no static-cache decoding with {attention} attention; eager loop", file=sys.stderr)
        return None
    return _StaticDecoder(model, capture=device.type == "cuda", keep=keep)


def _run_batch(
    model, decoder, call, prefix, ids, mask, n, max_new_tokens, temperature, seed, stops, layers
) -> Steps:
    generator = None
    if temperature > 0:
        generator = torch.Generator(device=ids.device).manual_seed(seed)
    finished = torch.arange(ids.shape[0], device=ids.device) >= n  # bucket padding never holds a stop

    def sample(logits: torch.Tensor) -> torch.Tensor:
        return _next_token(logits, temperature, generator)

    args = (prefix, ids, mask, max_new_tokens, sample, stops, finished, layers)
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
) -> Iterator[GeneratedBatch]:
    """Generate for every prompt, batch by batch; record `layers` when given.

    `max_tokens` bounds prompt + generated tokens per batch, so memory stays flat as the
    prompt set grows. When layers are recorded, each kept token is fed once more so its
    own activation exists (one decode pass beyond plain generation). A prefix that every
    prompt of a batch shares (a system prompt) runs once (`prefix.shared_prefix`).
    """
    device = next(model.parameters()).device
    decoder = _SESSIONS.get(model) or _static_decoder(model, device)
    call = object()  # keys the graphs that only this call may replay
    stops = torch.tensor(sorted(stop_ids), dtype=torch.long, device=device)
    lengths = [len(p) + max_new_tokens for p in prompts]
    bar = tqdm(total=len(prompts), unit="prompt", disable=not progress, desc="generate")
    try:
        for k, idx in enumerate(token_budget_batches(lengths, max_tokens)):
            width = max(len(prompts[i]) for i in idx)
            static = decoder if decoder is not None and decoder.fits(width + max_new_tokens) else None
            rows = static.rows(len(idx)) if static is not None else len(idx)
            shared = shared_prefix(prompts, idx)
            prefix = torch.tensor(prompts[idx[0]][:shared], dtype=torch.long, device=device)
            suffixes = [prompts[i][shared:] for i in idx]
            ids, mask = (t.to(device) for t in _left_padded(suffixes, rows, pad_id))
            args = (prefix, ids, mask, len(idx), max_new_tokens, temperature, seed + k, stops, layers)
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
            if shared:
                suffix_lengths = mask[:n].sum(-1)
                prefill = {layer: left_layout(h[:n], shared, suffix_lengths) for layer, h in prefill.items()}
            generated = torch.stack(fed, dim=1)[:n].tolist()
            hidden = {
                layer: torch.cat([prefill[layer], *(s[layer] for s in steps)], dim=1)[:n] for layer in layers
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
