"""Trait extraction stages: activations of contrastive responses, then vectors per layer."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from traitscope import chat, models
from traitscope.activations import Activations
from traitscope.capture import pooled_activations
from traitscope.errors import TraitscopeError
from traitscope.hooks import decoder_layers
from traitscope.io import save_safetensors, write_json
from traitscope.vectors import mean_diff, probe

REQUIRED_COLUMNS = ("prompt_id", "split", "label", "question", "system", "response")


def read_responses(path: str | Path) -> pd.DataFrame:
    """Responses table with its columns checked, so a stale or foreign file fails clearly."""
    try:
        table = pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise TraitscopeError(
            f"{path}: cannot read responses Parquet ({exc}); rerun trait-responses"
        ) from None
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise TraitscopeError(f"{path}: missing column(s) {', '.join(missing)}; rerun trait-responses")
    return table


def capture(
    model_manifest: str | Path,
    responses: str | Path,
    out: str | Path,
    pools: Sequence[str] = ("response_mean", "last_prompt"),
    max_tokens: int = 8192,
) -> Activations:
    """Residual stream at every layer for each response, pooled as asked, rows in table order."""
    table = read_responses(responses)
    model, tokenizer = models.load(model_manifest)
    eos = [tokenizer.eos_token_id]
    encoded = []
    for r in table.itertuples():
        msgs = chat.messages_for(r.question, r.system)
        # an empty response still gets one token (end of turn) so its mean is defined
        encoded.append(chat.encode(tokenizer, msgs, response=r.response or eos))
    layers = list(range(len(decoder_layers(model))))
    data = pooled_activations(model, encoded, layers, pools, max_tokens, pad_id=tokenizer.pad_token_id)
    acts = Activations(layers=layers, data=data)
    acts.save(out)
    return acts


def build_vectors(
    activations: str | Path,
    responses: str | Path,
    out_vectors: str | Path,
    out_meta: str | Path,
    position: str = "response_mean",
    probe_c: float = 1.0,
    model_name: str = "",
    trait: str = "",
) -> dict[str, torch.Tensor]:
    """Mean-difference and probe vectors per layer from the extraction split."""
    table = read_responses(responses)
    acts = Activations.load(activations)
    if position not in acts.data:
        raise TraitscopeError(f"{activations}: no position {position!r}; captured: {', '.join(acts.data)}")
    x = acts.data[position]
    train = (table["split"] == "extraction").to_numpy()
    pos = x[torch.from_numpy(train & (table["label"] == 1).to_numpy())]
    neg = x[torch.from_numpy(train & (table["label"] == 0).to_numpy())]
    if len(pos) < 2 or len(neg) < 2:
        raise TraitscopeError(f"{responses}: need at least 2 positive and 2 negative extraction rows")
    vectors = {"mean_diff": mean_diff(pos, neg), "probe": probe(pos, neg, c=probe_c)}
    meta = {
        "model": model_name,
        "trait": trait,
        "position": position,
        "layers": acts.layers,
        "methods": list(vectors),
        "n_positive": len(pos),
        "n_negative": len(neg),
        "dataset_sha256": sorted(set(table.get("trait_sha256", pd.Series([""])).astype(str))),
        "shape": list(vectors["mean_diff"].shape),
    }
    save_safetensors(out_vectors, vectors, {"meta": json.dumps(meta)})
    write_json(out_meta, meta)
    return vectors


def load_vectors(path: str | Path) -> dict[str, torch.Tensor]:
    """Trait vectors by method, `[n_layers, d_model]` each."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (OSError, Exception) as exc:  # safetensors raises its own error types
        raise TraitscopeError(f"{path}: cannot read trait vectors ({exc}); rerun trait-vectors") from None
