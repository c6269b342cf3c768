"""The SAE's pipeline stages: the training set from a capture's per-token activations at one
layer, `sae_train` (fit, save in SAELens's layout, record, figure) and `sae_evaluate`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from traitscope.experiments.backdoor.sae import (
    SparseAutoencoder,
    check_width,
    load_sae,
    reconstruction_quality,
    save_sae,
    train_sae,
)
from traitscope.experiments.backdoor.sae_data import TokenChunks, capture_chunks, resident
from traitscope.experiments.backdoor.settings import SAELayerSettings, SAETrainSettings
from traitscope.io import save_figure, write_json


def layer_shards(capture_json: str | Path, layer: int) -> Iterator[tuple[Any, torch.Tensor]]:
    """(token index table, float32 `[n, d]`) per shard of a capture's per-token activations at a layer."""
    chunks = capture_chunks(capture_json, layer)
    for i, stem in enumerate(chunks.names):
        yield pd.read_parquet(f"{stem}.tokens.parquet"), chunks.load(i)


def layer_tokens(capture_json: str | Path, layer: int) -> tuple[torch.Tensor, Any]:
    """(float32 `[n_tokens, d]`, token index table) of a capture's per-token activations at a layer."""
    index, parts = zip(*layer_shards(capture_json, layer))
    return torch.cat(parts), pd.concat(index, ignore_index=True)


@torch.no_grad()
def encode_columns(
    sae: SparseAutoencoder, x: torch.Tensor, columns: list[int], batch: int = 4096
) -> np.ndarray:
    """`[n, len(columns)]` activations of the chosen latents, a chunk of tokens at a time on the
    SAE's device: the whole `[n, d_sae]` encoding is never held (16K latents take 64 KB a token)."""
    device = sae.W_enc.device
    parts = [
        sae.encode(x[start : start + batch].to(device))[:, columns].cpu().numpy()
        for start in range(0, len(x), batch)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, len(columns)), dtype=np.float32)


def sae_train(
    capture_json: str | Path,
    settings: SAETrainSettings,
    out_dir: str | Path,
    training_json: str | Path,
    figure_png: str | Path,
    model_name: str = "",
) -> dict[str, Any]:
    """Train on one layer's per-token activations of a capture; write the SAE folder, the
    training record and its figure."""
    from traitscope.capture.store import read_manifest
    from traitscope.experiments.backdoor.figures import sae_training_figure

    layer = settings.layer
    x = capture_chunks(capture_json, layer)  # read a shard at a time where it exceeds buffer_tokens
    if x.n_tokens <= settings.buffer_tokens:
        x = resident(x)
    if settings.tokens < x.n_tokens * (1 - settings.eval_fraction):
        note = "fewer training tokens than the capture holds: not every token is seen"
    else:
        passes = settings.tokens / max(1, x.n_tokens * (1 - settings.eval_fraction))
        note = f"{passes:.1f} passes over the training tokens"
    sae, curve, quality = train_sae(x, settings, device="cuda" if torch.cuda.is_available() else "cpu")
    manifest = read_manifest(capture_json)
    metadata = {
        "model_name": model_name or Path(manifest["model"]).parent.name,
        "hook_name": f"blocks.{layer}.hook_resid_post",
        "hook_layer": layer,
        "traitscope_capture": str(capture_json),
    }
    save_sae(sae, out_dir, metadata)
    record = {
        "layer": layer,
        "capture": str(capture_json),
        "settings": {k: v for k, v in asdict(settings).items() if k != "layer"},  # the fit's
        "n_tokens": x.n_tokens,
        "passes": note,
        "curve": curve,
        **quality,
    }
    save_figure(figure_png, sae_training_figure(record, _firing_rates(sae, x)))
    write_json(training_json, record)  # last: its presence means every output was written
    return record


@torch.no_grad()
def _firing_rates(sae: SparseAutoencoder, chunks: TokenChunks, batch: int = 4096) -> list[float]:
    """Share of tokens each latent fires on (on the SAE's device, a chunk at a time)."""
    counts = torch.zeros(sae.d_sae, device=sae.W_enc.device)
    for x in chunks:
        for start in range(0, len(x), batch):
            counts += (sae.encode(x[start : start + batch].to(counts.device)) > 0).float().sum(0)
    return (counts / max(chunks.n_tokens, 1)).cpu().tolist()


def sae_evaluate(
    sae_folder: str | Path,
    capture_json: str | Path,
    settings: SAELayerSettings,
    training_json: str | Path,
    figure_png: str | Path,
) -> dict[str, Any]:
    """For an SAE loaded from a path: its quality on the capture's tokens, record and figure."""
    from traitscope.capture.store import read_manifest
    from traitscope.experiments.backdoor.figures import sae_training_figure

    sae = load_sae(sae_folder)
    check_width(sae, read_manifest(capture_json)["d_model"], str(sae_folder))
    x = capture_chunks(capture_json, settings.layer)
    record = {
        "layer": settings.layer,
        "capture": str(capture_json),
        "loaded_from": str(sae_folder),
        "architecture": sae.architecture,
        "d_sae": sae.d_sae,
        "k": sae.k,
        "curve": [],
        "held_out": reconstruction_quality(sae, x),
    }
    save_figure(figure_png, sae_training_figure(record, _firing_rates(sae, x)))
    write_json(training_json, record)  # last: its presence means every output was written
    return record
