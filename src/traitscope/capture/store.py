"""Capture a prompt set into resumable shards.

Prompts are sorted by length and cut into shards of at most `shard_size` prompts and at most
`shard_mb` of per-token activations (a shard is held in memory until it is written, so a
prompt count alone would let long answers captured per token grow a shard without bound);
each shard is written atomically and skipped on rerun, so a killed job resumes from its last
complete shard.
Shards live in a folder named by a hash of the settings, the model manifest and the
prompts, so a changed setting or prompt set never resumes stale shards. `capture.json`,
written last, is what marks the capture done.

Per shard: pooled activations (`pooled.layer.<l>`: `[n, n_pools, d]`) and, for the
token segments asked for, per-token activations (`tokens.layer.<l>`: `[n_tokens, d]`)
with a Parquet index of prompt_id, token_index, segment and token string.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors.torch import load_file

from traitscope.capture.engine import Batch, forward_batches, pool_batch
from traitscope.capture.settings import CaptureSettings
from traitscope.data.prompts import read_prompt_set
from traitscope.errors import TraitscopeError
from traitscope.generation.generate import generate_batches
from traitscope.io import save_safetensors, write_json, write_parquet
from traitscope.model import chat
from traitscope.model import loading as models
from traitscope.model.chat import SEGMENT_CODE, SEGMENTS
from traitscope.model.depth import manifest_depth
from traitscope.model.hooks import compile_blocks, decoder_layers

STORAGE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _token_mask(enc: chat.Encoded, settings: CaptureSettings) -> torch.Tensor:
    """Which tokens of one conversation keep per-token activations."""
    n = len(enc.ids)
    if settings.keep_all_tokens:
        return torch.ones(n, dtype=torch.bool)
    codes = [SEGMENT_CODE[s] for s in settings.token_segments if s in SEGMENT_CODE]
    mask = torch.isin(torch.tensor(enc.segments), torch.tensor(codes, dtype=torch.long))
    if "last_prompt" in settings.token_segments:
        mask[enc.last_prompt_index] = True
    return mask


def _token_label(enc: chat.Encoded, t: int, settings: CaptureSettings) -> str:
    """A kept token's segment, or "last_prompt" for that token when it was asked for by name."""
    if t == enc.last_prompt_index and "last_prompt" in settings.token_segments:
        return "last_prompt"
    return SEGMENTS[enc.segments[t]]


def _generated_batches(
    model: Any, tokenizer: Any, encoded: list[chat.Encoded], settings: CaptureSettings, responses: list[str]
) -> Iterator[Batch]:
    """Generate and record in one pass: batches over prompt + kept response tokens.

    `encoded` and `responses` are completed in place as each batch finishes, so the
    capture keeps the generated token ids themselves (no decode and re-encode).
    """
    layers = list(settings.layers)
    stops = {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
    response = SEGMENT_CODE["response"]
    for g in generate_batches(
        model,
        [e.ids for e in encoded],
        settings.max_new_tokens,
        settings.max_tokens,
        settings.temperature,
        settings.seed,
        stops,
        tokenizer.pad_token_id,
        layers,
    ):
        device = g.hidden[layers[0]].device
        segments = torch.full((len(g.index), g.hidden[layers[0]].shape[1]), -1, dtype=torch.long)
        offsets = []
        for row, (i, kept) in enumerate(zip(g.index, g.kept)):
            e = encoded[i]
            start = g.width - len(e.ids)
            segments[row, start : g.width] = torch.tensor(e.segments)
            segments[row, g.width : g.width + len(kept)] = response
            offsets.append(start)
            encoded[i] = chat.Encoded(e.ids + kept, e.segments + [response] * len(kept), e.prompt_len)
            responses[i] = tokenizer.decode(kept, skip_special_tokens=True)
        prompt_len = torch.tensor([encoded[i].prompt_len for i in g.index], device=device)
        yield Batch(
            g.index, offsets, g.hidden, segments.to(device), prompt_len, torch.tensor(offsets, device=device)
        )


def _capture_shard(
    model: Any, tokenizer: Any, rows: pd.DataFrame, settings: CaptureSettings, stem: Path
) -> None:
    encoded = [chat.encode(tokenizer, r.messages, r.prefill) for r in rows.itertuples()]
    responses = [""] * len(encoded)
    layers = list(settings.layers)
    if settings.max_new_tokens > 0:
        batches = _generated_batches(model, tokenizer, encoded, settings, responses)
    else:
        batches = forward_batches(
            model, encoded, layers, settings.max_tokens, tokenizer.pad_token_id, settings.padding_side
        )
    dtype = STORAGE_DTYPES[settings.storage_dtype]
    pooled = {p: torch.empty(len(rows), len(layers), model.config.hidden_size) for p in settings.pools}
    masks: list[torch.Tensor] = [torch.zeros(0, dtype=torch.bool)] * len(encoded)
    token_rows: list[list[torch.Tensor]] = [[] for _ in encoded]  # per conversation: [n_sel, L, d]
    for batch in batches:
        for pool, values in pool_batch(batch, layers, settings.pools).items():
            pooled[pool][batch.index] = values
        for i in batch.index:  # the conversation is complete (response included) by now
            masks[i] = _token_mask(encoded[i], settings)
        if any(masks[i].any() for i in batch.index):
            # one device: a sharded model's later layers sit on later GPUs
            stacked = torch.stack([batch.hidden[layer].to(batch.segments.device) for layer in layers], dim=1)
            for row, (i, start) in enumerate(zip(batch.index, batch.offsets)):
                sel = masks[i].nonzero().squeeze(-1) + start
                # held in the storage dtype: the shard's tokens are its memory (shard_mb)
                token_rows[i] = stacked[row][:, sel.to(stacked.device)].transpose(0, 1).to("cpu", dtype)
    tensors = {
        f"pooled.layer.{layer}": torch.stack([pooled[p][:, j] for p in settings.pools], dim=1).to(dtype)
        for j, layer in enumerate(layers)
    }
    tokens = []
    kept = [t for t in token_rows if len(t)]
    if kept:  # one layer joined at a time: at most the rows and their copy are resident
        tensors.update(
            {f"tokens.layer.{layer}": torch.cat([t[:, j] for t in kept]) for j, layer in enumerate(layers)}
        )
        for pid, enc, mask in zip(rows["prompt_id"], encoded, masks):
            for t in mask.nonzero().squeeze(-1).tolist():
                tokens.append(
                    (pid, t, _token_label(enc, t, settings), tokenizer.convert_ids_to_tokens(enc.ids[t]))
                )
    del kept, token_rows  # the rows are in `tensors` now: not held through the write
    meta = {"layers": json.dumps(layers), "pools": json.dumps(list(settings.pools))}
    write_parquet(
        f"{stem}.tokens.parquet",
        pd.DataFrame(tokens, columns=["prompt_id", "token_index", "segment", "token"]),
    )
    save_safetensors(f"{stem}.safetensors", tensors, meta)
    # written last: its presence is what marks the shard complete
    write_parquet(
        f"{stem}.prompts.parquet",
        pd.DataFrame(
            {
                "prompt_id": rows["prompt_id"].to_numpy(),
                "n_tokens": [len(e.ids) for e in encoded],
                "prompt_len": [e.prompt_len for e in encoded],
                "response": responses,
            }
        ),
    )


def resolve_layers(layers: tuple[int, ...] | str, n_layers: int) -> tuple[int, ...]:
    """`all` -> every decoder layer; a list is checked against the model's depth."""
    if layers == "all":
        return tuple(range(n_layers))
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad or not layers:
        raise TraitscopeError(
            f"layers {list(layers)}: the model has {n_layers} layers (0..{n_layers - 1}); "
            "fix capture.layers (or the prompt set's or experiment's capture.layers, or the "
            "experiment setting that picks this set's layer)"
        )
    return tuple(sorted(set(layers)))


def kept_token_bound(enc: chat.Encoded, settings: CaptureSettings) -> int:
    """The most tokens of one conversation whose per-token activations are kept: its prompt's
    kept tokens, plus every new token where the response is kept (answers are not yet known)."""
    if not settings.keep_all_tokens and not settings.token_segments:
        return 0
    response = settings.keep_all_tokens or "response" in settings.token_segments
    return int(_token_mask(enc, settings).sum()) + (settings.max_new_tokens if response else 0)


def shard_bounds(kept: list[int], max_prompts: int, max_tokens: int) -> list[tuple[int, int]]:
    """[start, end) of each shard over prompts in capture order: at most `max_prompts` prompts
    and `max_tokens` kept tokens each; a prompt over `max_tokens` alone is a shard of its own."""
    bounds, start, held = [], 0, 0
    for i, n in enumerate(kept):
        if i > start and (i - start == max_prompts or held + n > max_tokens):
            bounds.append((start, i))
            start, held = i, 0
        held += n
    return bounds + [(start, len(kept))] if kept else []


def capture(
    model_manifest: str | Path,
    prompts: str | Path,
    out: str | Path,
    settings: CaptureSettings,
    device: str | None = None,
) -> dict:
    """Capture every prompt of a set; returns and writes the `capture.json` manifest."""
    table = read_prompt_set(prompts)
    depth = manifest_depth(model_manifest)
    if depth is not None:  # before the model loads: a bad layer list is the job's first line
        resolve_layers(settings.layers, depth)
    model, tokenizer = models.load(model_manifest, device=device)
    settings = replace(settings, layers=resolve_layers(settings.layers, len(decoder_layers(model))))
    out = Path(out)
    # the folder names the inputs too: a changed prompt set or model must never resume old shards
    inputs = [settings.digest(), Path(model_manifest).read_text()]
    inputs += table[["prompt_id", "messages", "prefill"]].values.tolist()
    key = hashlib.sha256(json.dumps(inputs, default=str).encode()).hexdigest()[:12]
    shard_dir = out.parent / f"shards-{key}"
    try:
        encoded = [chat.encode(tokenizer, m, p) for m, p in zip(table["messages"], table["prefill"])]
    except TraitscopeError as exc:
        raise TraitscopeError(f"{prompts}: {exc}") from None
    shard_dir.mkdir(parents=True, exist_ok=True)  # only once every prompt renders
    tokens = sum(len(e.ids) for e in encoded) + len(table) * settings.max_new_tokens
    if settings.compiles(tokens, next(model.parameters()).is_cuda):
        compile_blocks(model)
    order = sorted(range(len(table)), key=lambda i: len(encoded[i].ids))
    per_token = (
        len(settings.layers) * model.config.hidden_size * STORAGE_DTYPES[settings.storage_dtype].itemsize
    )
    bounds = shard_bounds(
        [kept_token_bound(encoded[i], settings) for i in order],
        settings.shard_size,
        int(settings.shard_mb * 2**20 // per_token),
    )
    shards = []
    for k, (start, end) in enumerate(bounds):
        stem = shard_dir / f"shard-{k:05d}"
        shards.append(stem.name)
        if Path(f"{stem}.prompts.parquet").exists():
            continue  # complete from an earlier, interrupted run
        _capture_shard(model, tokenizer, table.iloc[order[start:end]], settings, stem)
    manifest = {
        "model": str(model_manifest),
        "prompts": str(prompts),
        "n_prompts": len(table),
        "layers": list(settings.layers),
        "pools": list(settings.pools),
        "d_model": model.config.hidden_size,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "dtype_reason": getattr(model, "traitscope_dtype", {}).get("reason"),
        # the template has no system turn: system prompts opened the first user turn (chat.apply_template)
        "system_in_user_turn": bool(getattr(tokenizer, "traitscope_folds_system", False)),
        "shard_dir": shard_dir.name,
        "shards": shards,
        "settings": asdict(settings),
    }
    write_json(out, manifest)
    return manifest


MANIFEST_KEYS = ("shard_dir", "shards")  # what every reader of the shards needs


def read_manifest(capture_json: str | Path) -> dict:
    """A finished capture's `capture.json`; missing, unreadable or another stage's JSON is a
    one-line error."""
    try:
        manifest = json.loads(Path(capture_json).read_text())
    except (OSError, ValueError):  # ValueError: malformed JSON, or a binary file
        raise TraitscopeError(
            f"{capture_json}: missing or unreadable capture manifest; rerun capture"
        ) from None
    missing = [k for k in MANIFEST_KEYS if not isinstance(manifest, dict) or k not in manifest]
    if missing:
        raise TraitscopeError(
            f"{capture_json}: not a capture manifest (no {missing[0]!r}); pass the capture.json capture wrote"
        )
    return manifest


def _shard_part(capture_json: str | Path, path: Path, read: Any) -> Any:
    """One file of a shard; a deleted or truncated one names the file, not a reader's traceback."""
    try:
        return read(path)
    except Exception as exc:  # pyarrow and safetensors raise their own error types
        raise TraitscopeError(
            f"{path}: a shard file of {capture_json} is missing or unreadable ({type(exc).__name__}); "
            "delete the capture's folder and rerun capture"
        ) from None


def read_shards(
    capture_json: str | Path,
) -> Iterator[tuple[pd.DataFrame, pd.DataFrame, dict[str, torch.Tensor]]]:
    """(prompts, tokens, tensors) per shard of a finished capture."""
    path = Path(capture_json)
    manifest = read_manifest(path)
    folder = path.parent / manifest["shard_dir"]
    for name in manifest["shards"]:
        stem = folder / name
        yield (
            _shard_part(path, Path(f"{stem}.prompts.parquet"), pd.read_parquet),
            _shard_part(path, Path(f"{stem}.tokens.parquet"), pd.read_parquet),
            _shard_part(path, Path(f"{stem}.safetensors"), lambda p: load_file(str(p))),
        )


def read_responses(capture_json: str | Path) -> dict[str, str]:
    """{prompt_id: generated response} of a finished capture (its prompt tables only)."""
    path = Path(capture_json)
    manifest = read_manifest(path)
    folder = path.parent / manifest["shard_dir"]
    out: dict[str, str] = {}
    for name in manifest["shards"]:
        read = partial(pd.read_parquet, columns=["prompt_id", "response"])
        table = _shard_part(path, folder / f"{name}.prompts.parquet", read)
        out.update(zip(table["prompt_id"], table["response"].fillna("")))
    return out


def load_pooled(capture_json: str | Path, pool: str) -> tuple[list[str], torch.Tensor, list[int]]:
    """(prompt ids, float32 `[n, n_layers, d]`, layers) of one pool, over every shard."""
    manifest = read_manifest(capture_json)
    if pool not in manifest["pools"]:
        raise TraitscopeError(
            f"{capture_json}: no pool {pool!r}; captured: {', '.join(manifest['pools'])}; recapture with it"
        )
    j = manifest["pools"].index(pool)
    ids: list[str] = []
    parts = []
    for prompts, _, tensors in read_shards(capture_json):
        ids += prompts["prompt_id"].tolist()
        parts.append(torch.stack([tensors[f"pooled.layer.{layer}"][:, j] for layer in manifest["layers"]], 1))
    return ids, torch.cat(parts).float(), list(manifest["layers"])
