"""Bootstrap draws of a trait's chosen vector: the extraction questions resampled, the chosen
(method, layer) refitted on each draw.

An experiment's CI over its own prompts holds the trait vector fixed, yet the vector is itself an
estimate from a few dozen extraction questions. Two runs that differed only in the number format
(so in the sampled answers the vectors were fitted on) read one experiment's AUC at 0.980 and 0.949
at the same layer, each outside the other's CI over that experiment's prompts; refitting the vector
on resampled questions widened that CI to about [0.69, 1.00]. Experiments that score a trait
project onto these draws and resample their own units alongside (`stats.draws`), so their CI
covers both sources.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from traitscope.errors import TraitscopeError, require_trait
from traitscope.io import save_safetensors
from traitscope.vectors.filtering import fitting_rows
from traitscope.vectors.methods import METHODS
from traitscope.vectors.settings import DrawSettings
from traitscope.vectors.trait_vector import read_evaluation


def resampled_rows(table, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(positive rows, negative rows) of the extraction split, its questions drawn with
    replacement; a question's answers go together, in the table's pair order (PCA pairs them)."""
    rows = table["split"].to_numpy() == "extraction"
    unit = table["question"].to_numpy() if "question" in table else np.arange(len(table))
    units = sorted(set(unit[rows]))
    label = table["label"].to_numpy()
    drawn = [units[i] for i in rng.integers(0, len(units), len(units))]
    pos = np.concatenate([np.flatnonzero(rows & (unit == u) & (label == 1)) for u in drawn])
    neg = np.concatenate([np.flatnonzero(rows & (unit == u) & (label == 0)) for u in drawn])
    return pos, neg


def refits(table, x: torch.Tensor, method: str, probe_c: float, n_draws: int, seed: int) -> torch.Tensor:
    """`[n_draws, d_model]` fits of `method` on x `[n, 1, d]` (one layer), each on the extraction
    questions resampled (`resampled_rows`) from one generator seeded `seed`: every method drawn
    with one seed sees the same resampled questions."""
    options = {"c": probe_c} if method == "probe" else {}
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_draws):
        pos, neg = resampled_rows(table, rng)
        draws.append(METHODS[method](x[torch.tensor(pos)], x[torch.tensor(neg)], **options)[0])
    return torch.stack(draws)


def vector_draws(
    capture_json: str | Path,
    prompts: str | Path,
    evaluation_json: str | Path,
    out: str | Path,
    position: str,
    settings: DrawSettings,
    filter_judgements: str | Path | None = None,
) -> torch.Tensor:
    """Refits of the chosen (method, layer) (`settings.vector_draws`: how many, the seed),
    `[n_draws, d_model]` unnormalised like the vectors file, on the rows trait-vectors used (the
    judge filter's survivors)."""
    evaluation = read_evaluation(evaluation_json)
    method, layer = evaluation["chosen"]["method"], int(evaluation["chosen"]["layer"])
    table, x, layers, _ = fitting_rows(capture_json, prompts, position, settings.filter, filter_judgements)
    if layer not in layers:
        raise TraitscopeError(
            f"{capture_json}: chosen layer {layer} was not captured; rerun trait-evaluation"
        )
    x = x[:, layers.index(layer) : layers.index(layer) + 1]  # [n, 1, d]: the methods fit per layer
    n_draws, seed = settings.vector_draws["n_draws"], settings.vector_draws["seed"]
    result = refits(table, x, method, settings.probe_c, n_draws, seed)
    meta = {
        "method": method,
        "layer": layer,
        "position": position,
        "n_draws": n_draws,
        "seed": seed,
        "trait": evaluation.get("trait"),  # read_draws checks it: another trait's draws read silently
    }
    save_safetensors(out, {"draws": result}, {"meta": json.dumps(meta)})
    return result


def read_draws(path: str | Path, trait: str) -> tuple[torch.Tensor, dict]:
    """(`[n_draws, d_model]` draws, their meta: trait, method, layer, position, n_draws, seed),
    checked to be `trait`'s."""
    from safetensors import safe_open

    if not Path(path).is_file():
        raise TraitscopeError(f"{path}: no such vector draws; run trait-draws for {trait}")
    try:
        with safe_open(str(path), "pt") as f:
            draws, meta = f.get_tensor("draws"), json.loads(f.metadata()["meta"])
    except Exception as exc:  # safetensors raises its own error types
        raise TraitscopeError(f"{path}: cannot read vector draws ({exc}); rerun trait-draws") from None
    # a draw file without a trait (written before it was recorded) passes
    require_trait(path, meta.get("trait"), trait, f"pass {trait}'s draws")
    return draws, meta


def draw_projections(capture_json: str | Path, draws: torch.Tensor, layer: int) -> pd.DataFrame:
    """A capture's activations at `layer` projected onto each unit draw, in projections.parquet's
    long form (prompt_id, position, token_index: -1 for a pool, score) with `draw` for the layer:
    an experiment reads them with the same code it reads its projections with."""
    from traitscope.capture.store import read_manifest, read_shards

    manifest = read_manifest(capture_json)
    if layer not in manifest["layers"]:
        raise TraitscopeError(
            f"{capture_json}: layer {layer} was not captured; add it to the capture's layers"
        )
    units = (draws.float() / draws.float().norm(dim=1, keepdim=True).clamp_min(1e-12)).T  # [d, n_draws]
    pools, frames = manifest["pools"], []
    for prompts, tokens, tensors in read_shards(capture_json):
        ids = prompts["prompt_id"].to_numpy()
        pooled = tensors[f"pooled.layer.{layer}"].float()  # [n, n_pools, d]: NaN where a pool is absent
        parts = [(np.repeat(ids, len(pools)), np.tile(np.array(pools), len(ids)), -1, pooled.flatten(0, 1))]
        if f"tokens.layer.{layer}" in tensors:
            rows = (
                tokens["prompt_id"].to_numpy(),
                tokens["segment"].to_numpy(),
                tokens["token_index"].to_numpy(),
            )
            parts.append((*rows, tensors[f"tokens.layer.{layer}"].float()))
        for pid, position, token_index, acts in parts:
            scores = (acts @ units).numpy()  # [rows, n_draws]
            keep = ~np.isnan(scores[:, 0])
            n, k = int(keep.sum()), scores.shape[1]
            frames.append(
                pd.DataFrame(
                    {
                        "prompt_id": np.repeat(pid[keep], k),
                        "position": np.repeat(position[keep], k),
                        "token_index": np.repeat(np.broadcast_to(token_index, len(keep))[keep], k),
                        "draw": np.tile(np.arange(k), n),
                        "score": scores[keep].reshape(-1),
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)
