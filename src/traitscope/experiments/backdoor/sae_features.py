"""Backdoor SAE features: which features of the base model's SAE separate trigger from control.

Trait vectors can only find the directions someone named; the SAE's features are found without
labels. This stage scores every feature at the named positions on both models, ranks them by the
backdoored model's separation beyond the base's, and shows where the top ones fire, in the pairs
and in the SAE's own training data (sae_features.json).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from traitscope.data.prompts import read_prompt_set
from traitscope.errors import TraitscopeError
from traitscope.experiments.backdoor.data import CONDITIONS
from traitscope.experiments.backdoor.positions import token_positions, varying_prompt_tokens
from traitscope.experiments.backdoor.settings import SAEFeatureSettings
from traitscope.io import read_json, write_json


def _position_groups(
    index: pd.DataFrame, positions: pd.DataFrame, name: str
) -> tuple[pd.DataFrame, np.ndarray]:
    """The prompts scored at a named position, one row each (prompt_id, pair_id, condition), and
    each token row's group among them (-1: a token outside the position); a prompt's score is the
    mean of its group's tokens (one token at last_prompt)."""
    keys = ["prompt_id", "pair_id", "condition"]
    index = index.reset_index(drop=True).assign(row=np.arange(len(index)))
    merged = index.merge(
        positions[["prompt_id", "token_index", "position", "pair_id", "condition"]],
        on=["prompt_id", "token_index"],
    )
    if name == "last_prompt":
        at = merged[merged["position"] == "last_prompt"]
    elif name == "after_prefix_mean":
        at = merged.merge(varying_prompt_tokens(positions), on=["prompt_id", "token_index"])
    else:
        raise TraitscopeError(f"experiments.backdoor.positions: unknown position {name!r}")
    grouped = at.groupby(keys, sort=True)
    group = np.full(len(index), -1, dtype=np.int64)
    group[at["row"].to_numpy()] = grouped.ngroup().to_numpy()
    return grouped.size().index.to_frame(index=False), group


def _feature_scores(
    sae: Any, x: Any, groups: dict[str, np.ndarray], batch: int = 4096
) -> dict[str, np.ndarray]:
    """`[n_prompts, d_sae]` feature scores per named position (`_position_groups`), from the
    tokens' activations `x` encoded a chunk at a time on the SAE's device: the pairs'
    `[n_tokens, d_sae]` encoding (~1.8 GB per model at full scale) is never held."""
    import torch

    device = sae.W_enc.device
    sums = {
        name: torch.zeros(int(g.max(initial=-1)) + 1, sae.d_sae, dtype=torch.float64, device=device)
        for name, g in groups.items()
    }
    with torch.no_grad():
        for start in range(0, len(x), batch):
            f = sae.encode(x[start : start + batch].to(device)).double()
            for name, g in groups.items():
                chunk = torch.from_numpy(g[start : start + batch]).to(device)
                inside = chunk >= 0
                sums[name].index_add_(0, chunk[inside], f[inside])
    counts = {name: np.bincount(g[g >= 0], minlength=len(sums[name])) for name, g in groups.items()}
    return {name: (sums[name].cpu().numpy() / counts[name][:, None]).astype(np.float32) for name in groups}


def top_contexts(
    index: pd.DataFrame, acts: np.ndarray, feature: int, n: int = 5, width: int = 4
) -> list[dict]:
    """The tokens where a feature fires most, each with the few tokens before it."""
    column = acts[:, feature]
    best = np.argsort(-column)[:n]
    out = []
    for row in best:
        if column[row] <= 0:
            break
        r = index.iloc[row]
        same = index[(index["prompt_id"] == r["prompt_id"]) & (index["token_index"] < r["token_index"])]
        before = "".join(same.sort_values("token_index")["token"].tail(width))
        out.append(
            {
                "token": r["token"],
                "before": before,
                "activation": float(column[row]),
                "prompt_id": r["prompt_id"],
            }
        )
    return out


def streamed_top_contexts(
    sae: Any, capture_json: str | Path, layer: int, columns: list[int], n: int = 5
) -> list[list[dict]]:
    """Per chosen latent, `top_contexts` over a whole capture read a shard at a time (a prompt's
    tokens share a shard): the SAE's own data is ~800K tokens at full scale, whose token table
    alone would otherwise be held whole."""
    from traitscope.experiments.backdoor.sae_stages import encode_columns, layer_shards

    best: list[list[dict]] = [[] for _ in columns]
    for tokens, x in layer_shards(capture_json, layer):
        acts = encode_columns(sae, x, columns)
        for j in range(len(columns)):
            found = best[j] + top_contexts(tokens, acts, j, n)
            best[j] = sorted(found, key=lambda c: -c["activation"])[:n]
    return best


def backdoor_sae_features(
    sae_folder: str | Path,
    pairs_path: str | Path,
    capture_paths: dict[str, str | Path],
    sae_capture: str | Path,
    sae_record: str | Path,
    out_json: str | Path,
    settings: SAEFeatureSettings,
) -> dict:
    """sae_features.json: per feature, AUC of trigger vs control on both models; the `top`
    features that separate them most on the backdoored model beyond the base, with CIs and
    the tokens where each fires most."""
    layer, top = settings.sae["layer"], settings.sae["top"]
    position_names, n_generated = list(settings.positions), settings.generated_positions
    n_boot, seed = settings.n_boot, settings.seed
    # read before the compute, not after it
    record = read_json(sae_record, "sae-train (sae-evaluate for a pretrained SAE)", ("held_out",))
    import torch

    from traitscope.capture.store import read_manifest
    from traitscope.experiments.backdoor.sae import check_width, load_sae, reconstruction_quality
    from traitscope.experiments.backdoor.sae_stages import encode_columns, layer_tokens
    from traitscope.stats import auc_columns, auc_difference_paired, auc_with_ci

    # a GPU where there is one: the SAE's own data alone, ~800K tokens x 16K latents at full scale
    # (6e13 FLOPs), took ~14 min to encode on one CPU core (AMD EPYC), seconds on a GPU
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sae = load_sae(sae_folder).to(device)
    for path in capture_paths.values():
        check_width(sae, read_manifest(path)["d_model"], f"experiments.backdoor.sae ({sae_folder})")
    pairs = read_prompt_set(pairs_path, ("pair_id", "condition"))
    per_role: dict[str, dict] = {}
    for role, path in capture_paths.items():
        x, index = layer_tokens(path, layer)
        positions = token_positions(index, pairs, n_generated)
        groups = {name: _position_groups(index, positions, name) for name in position_names}
        scores = _feature_scores(sae, x, {name: g for name, (_, g) in groups.items()})
        per_role[role] = {name: (groups[name][0], scores[name]) for name in position_names}
        per_role[role]["quality"] = reconstruction_quality(sae, x)
        if role == "backdoored":  # where the top features fire in the pairs: encoded again once chosen
            per_role[role]["x"], per_role[role]["tokens"] = x, index

    def arrays(role: str, name: str, common: list[str]) -> dict[str, np.ndarray]:
        rows, scores = per_role[role][name]
        key = rows.set_index(["pair_id", "condition"]).index
        where = {k: i for i, k in enumerate(key)}
        return {c: scores[[where[(p, c)] for p in common]] for c in CONDITIONS}

    results: dict[str, Any] = {}
    for name in position_names:
        sets = [
            set(per_role[r][name][0]["pair_id"].value_counts().loc[lambda s: s == 2].index) for r in per_role
        ]
        common = sorted(set.intersection(*sets))
        if len(common) < 5:
            raise TraitscopeError(
                f"{', '.join(map(str, capture_paths.values()))}: fewer than 5 complete pairs at {name}"
            )
        data = {role: arrays(role, name, common) for role in per_role}
        aucs = {role: auc_columns(d["trigger"], d["control"]) for role, d in data.items()}
        gain = np.abs(aucs["backdoored"] - 0.5) - np.abs(aucs["base"] - 0.5)
        # ties (common: features silent on the base) go to the larger trigger-control gap in
        # mean activation on the backdoored model
        gap = np.abs(data["backdoored"]["trigger"].mean(0) - data["backdoored"]["control"].mean(0))
        ranked = np.lexsort((-gap, -gain))[:top]
        features = []
        for feature in ranked:
            col = {role: {c: data[role][c][:, feature] for c in CONDITIONS} for role in data}
            entry = {"feature": int(feature), "separation_gain": float(gain[feature])}
            for role in data:
                entry[role] = auc_with_ci(
                    col[role]["trigger"], col[role]["control"], n_boot=n_boot, seed=seed
                )
                entry[role]["fires_on_share"] = {c: float((col[role][c] > 0).mean()) for c in CONDITIONS}
                entry[role]["mean_activation"] = {c: float(col[role][c].mean()) for c in CONDITIONS}
            entry["difference"] = auc_difference_paired(
                col["backdoored"]["trigger"],
                col["backdoored"]["control"],
                col["base"]["trigger"],
                col["base"]["control"],
                n_boot=n_boot,
                seed=seed,
            )
            entry["direction"] = (
                "higher on trigger" if aucs["backdoored"][feature] >= 0.5 else "higher on control"
            )
            features.append(entry)
        results[name] = {
            "n_pairs": len(common),
            "n_features_auc_above_0.7_or_below_0.3": {
                role: int(((a > 0.7) | (a < 0.3)).sum()) for role, a in aucs.items()
            },
            "top_features": features,
        }
    # the contexts each top feature fires most on: in the backdoored model's pairs, and in the
    # SAE's own training data (base model)
    wanted = sorted({f["feature"] for r in results.values() for f in r["top_features"]})
    backdoored = per_role["backdoored"]
    pair_acts = encode_columns(sae, backdoored["x"], wanted)
    sae_contexts = streamed_top_contexts(sae, sae_capture, layer, wanted)
    for r in results.values():
        for f in r["top_features"]:
            column = wanted.index(f["feature"])
            f["top_tokens_pairs_backdoored"] = top_contexts(backdoored["tokens"], pair_acts, column)
            f["top_tokens_sae_data"] = sae_contexts[column]
    result = {
        "sae": {
            "folder": str(sae_folder),
            "layer": layer,
            "architecture": sae.architecture,
            "d_in": sae.d_in,
            "d_sae": sae.d_sae,
            "k": sae.k,
            "device": device,
            "quality_on_its_data": record["held_out"]
            | (
                {"dead_fraction_all_tokens": record["all_tokens"]["dead_fraction"]}
                if "all_tokens" in record
                else {}
            ),
            "quality_on_pairs": {role: per_role[role]["quality"] for role in per_role},
        },
        "ranking": "|AUC_backdoored - 0.5| - |AUC_base - 0.5| at the position, largest first; ties by the "
        "trigger-control gap in mean activation on the backdoored model",
        "auc": "ROC-AUC of trigger (positive) vs control of the feature's activation",
        "positions": results,
        "variants": {role: str(path) for role, path in capture_paths.items()},
    }
    write_json(out_json, result)
    return result
