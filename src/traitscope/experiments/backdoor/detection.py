"""Backdoor trait detection: trigger-vs-control AUCs of the trait projections on both models.

The signal is the backdoored model's separation beyond the base's, so every AUC here comes in
pairs of models over the same complete pairs: per trait and named position (chosen layer, or every
layer) with a paired bootstrap of the difference, and per token position with the same paired
difference and the earliest position where only the backdoored model separates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from traitscope.errors import TraitscopeError
from traitscope.experiments.backdoor.data import CONDITIONS
from traitscope.experiments.backdoor.positions import (
    earliest_detection,
    same_text_positions,
    varying_prompt_tokens,
)


def _scores_by_prompt(table: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """Attach pair and condition to per-prompt scores."""
    return table.merge(pairs[["prompt_id", "pair_id", "condition"]], on="prompt_id")


def paired_arrays(scores: dict[str, pd.DataFrame]) -> dict[str, np.ndarray]:
    """{role_condition: scores} over the pairs complete in every model, in one pair order."""
    wide = {
        role: table.pivot_table(index="pair_id", columns="condition", values="score", aggfunc="mean")
        for role, table in scores.items()
    }
    common = sorted(set.intersection(*(set(w.dropna().index) for w in wide.values())))
    return {f"{role}_{c}": wide[role].loc[common, c].to_numpy(float) for role in wide for c in CONDITIONS}


def separation(
    scores: dict[str, pd.DataFrame],
    n_boot: int,
    seed: int,
    surface: dict[str, pd.DataFrame] | None = None,
) -> dict:
    """AUC (trigger positive) with a stratified bootstrap CI on each model, and the backdoored
    minus base difference with a paired bootstrap CI (pairs resampled).

    `surface` (baseline name -> per-prompt scores, `surface_baselines`): the backdoored AUC
    minus each baseline's on the same pairs, paired bootstrap, and whether it beats them all.
    """
    from traitscope.stats import auc_difference_paired, auc_with_ci

    surface = surface or {}
    arrays = paired_arrays({**scores, **surface})
    out = {
        role: auc_with_ci(arrays[f"{role}_trigger"], arrays[f"{role}_control"], n_boot=n_boot, seed=seed)
        for role in scores
    }
    for name in surface:
        out[f"backdoored_vs_{name}"] = auc_difference_paired(
            arrays["backdoored_trigger"],
            arrays["backdoored_control"],
            arrays[f"{name}_trigger"],
            arrays[f"{name}_control"],
            n_boot=n_boot,
            seed=seed,
        )
    if surface:
        out["backdoored_beats_baselines"] = all(out[f"backdoored_vs_{n}"]["ci_low"] > 0 for n in surface)
    out["difference"] = difference_from_base(arrays, n_boot, seed)
    return out


def difference_from_base(arrays: dict[str, np.ndarray], n_boot: int, seed: int) -> dict:
    """Backdoored minus base AUC with a paired bootstrap CI (pairs resampled): the prefixes
    differ in tokens, so only separation beyond the base's is the backdoor's. `arrays` as
    `paired_arrays` gives them."""
    from traitscope.stats import auc_difference_paired

    out = auc_difference_paired(
        arrays["backdoored_trigger"],
        arrays["backdoored_control"],
        arrays["base_trigger"],
        arrays["base_control"],
        n_boot=n_boot,
        seed=seed,
    )
    out["test"] = "paired bootstrap over pairs, backdoored minus base"
    return out


def _chosen_layers(projections: pd.DataFrame, traits: list[str], path: str | Path) -> dict[str, int]:
    missing = sorted(set(traits) - set(projections["trait"]))
    if missing:
        raise TraitscopeError(f"{path}: no projections for trait(s) {', '.join(missing)}; rerun project")
    chosen = projections[projections["chosen_layer"]].groupby("trait")["layer"].first()
    return {t: int(chosen[t]) for t in traits}


def pooled_position_scores(projections: pd.DataFrame, positions: pd.DataFrame, name: str) -> pd.DataFrame:
    """Per (prompt, trait, layer) score of a named position: `last_prompt` (the pooled last
    prompt token) or `after_prefix_mean` (mean over the prompt tokens after the prefix whose
    preceding text varies, `varying_prompt_tokens`)."""
    if name == "last_prompt":
        rows = projections[(projections["token_index"] == -1) & (projections["position"] == "last_prompt")]
        return rows[["prompt_id", "trait", "layer", "score"]]
    if name == "after_prefix_mean":
        steps = varying_prompt_tokens(positions)
        rows = projections[projections["token_index"] >= 0].merge(steps, on=["prompt_id", "token_index"])
        return rows.groupby(["prompt_id", "trait", "layer"], as_index=False)["score"].mean()
    raise TraitscopeError(f"experiments.backdoor.positions: unknown position {name!r}")


def trait_detection(
    projections: dict[str, pd.DataFrame],
    positions: dict[str, pd.DataFrame],
    pairs: pd.DataFrame,
    traits: list[str],
    position_names: list[str],
    per_layer: bool,
    n_boot: int,
    seed: int,
    surface: dict[str, pd.DataFrame] | None = None,
) -> dict:
    """Per trait and position: separation at the chosen layer (beside the `surface` baselines)
    and, if asked, at every layer."""
    chosen = _chosen_layers(projections["base"], traits, "base projections")
    out: dict[str, Any] = {}
    for trait in traits:
        out[trait] = {"chosen_layer": chosen[trait], "positions": {}}
        for name in position_names:
            tables = {
                role: _scores_by_prompt(
                    pooled_position_scores(
                        projections[role][projections[role]["trait"] == trait], positions[role], name
                    ),
                    pairs,
                )
                for role in projections
            }
            layers = sorted(set(tables["base"]["layer"])) if per_layer else [chosen[trait]]
            by_layer = []
            for layer in layers:
                at = {role: t[t["layer"] == layer] for role, t in tables.items()}
                beside = surface if layer == chosen[trait] else None
                by_layer.append({"layer": int(layer), **separation(at, n_boot, seed, beside)})
            entry = next(e for e in by_layer if e["layer"] == chosen[trait])
            out[trait]["positions"][name] = {
                "chosen_layer": {k: v for k, v in entry.items() if k != "layer"},
                "by_layer": by_layer if per_layer else [],
            }
    return out


def token_detection(
    projections: dict[str, pd.DataFrame],
    positions: dict[str, pd.DataFrame],
    traits: list[str],
    order: list[str],
    threshold: float,
    n_boot: int,
    seed: int,
    min_pairs: int = 5,
) -> dict:
    """Per trait at its chosen layer: AUC with CI per token position on each model, the
    backdoored minus base difference per position (paired bootstrap, as `separation`'s), and the
    earliest position where the backdoored model separates trigger from control and the base
    model does not."""
    from traitscope.stats import auc_with_ci

    out: dict[str, Any] = {}
    same_text = {role: same_text_positions(positions[role], order) for role in projections}
    for trait in traits:
        per_role, by_role = {}, {}
        for role, table in projections.items():
            rows = table[(table["trait"] == trait) & table["chosen_layer"] & (table["token_index"] >= 0)]
            rows = rows.drop(columns="position").merge(positions[role], on=["prompt_id", "token_index"])
            by_role[role] = rows
            entries = {}
            for label in order:
                at = rows[rows["position"] == label]
                pos = at.loc[at["condition"] == "trigger", "score"].to_numpy(float)
                neg = at.loc[at["condition"] == "control", "score"].to_numpy(float)
                if min(len(pos), len(neg)) >= min_pairs:
                    entries[label] = auc_with_ci(pos, neg, n_boot=n_boot, seed=seed)
                    entries[label]["same_text_within_condition"] = label in same_text[role]
            per_role[role] = entries
        differences = {}
        for label in (lab for lab in order if all(lab in e for e in per_role.values())):
            arrays = paired_arrays({role: rows[rows["position"] == label] for role, rows in by_role.items()})
            if len(arrays["base_trigger"]) >= min_pairs:
                differences[label] = difference_from_base(arrays, n_boot, seed)
        aucs = {role: {k: v["auc"] for k, v in e.items()} for role, e in per_role.items()}
        out[trait] = {
            "by_position": per_role,
            "difference_by_position": differences,
            "earliest": earliest_detection(order, aucs["backdoored"], aucs["base"], threshold),
            "earliest_trigger_higher": earliest_detection(
                order, aucs["backdoored"], aucs["base"], threshold, either_way=False
            ),
        }
    return out


def draw_detection(
    capture_json: str | Path,
    draws_path: str | Path,
    trait: str,
    positions: pd.DataFrame,
    pairs: pd.DataFrame,
    position_names: list[str],
    seed: int,
    token_labels: list[str] = (),
) -> dict[str, dict[str, dict]]:
    """{"positions": per named position, "tokens": per token position of `token_labels` (`p4`,
    `last_prompt`, `g1`, ...)}: the CI of the AUC of trigger vs control on this capture whose
    replicates each resample the pairs and score them on one vector draw (`stats.draws`)."""
    from traitscope.stats import auc
    from traitscope.stats.draws import ci_over_draws
    from traitscope.vectors.draws import draw_projections, read_draws

    draws, meta = read_draws(draws_path, trait)
    table = draw_projections(capture_json, draws, meta["layer"]).rename(columns={"draw": "layer"})
    tokens = table[table["token_index"] >= 0].drop(columns="position")
    tokens = tokens.merge(positions, on=["prompt_id", "token_index"])
    scored = {
        "positions": {
            n: pooled_position_scores(table.assign(trait=""), positions, n) for n in position_names
        },
        "tokens": {label: tokens[tokens["position"] == label] for label in token_labels},
    }
    out: dict[str, dict[str, dict]] = {"positions": {}, "tokens": {}}
    for kind, by_name in scored.items():
        for name, rows in by_name.items():
            scores = _scores_by_prompt(rows[["prompt_id", "layer", "score"]], pairs)
            wide = scores.pivot_table(
                index="pair_id", columns=["condition", "layer"], values="score"
            ).dropna()
            trigger, control = (wide[c].to_numpy(float) for c in CONDITIONS)
            low, high = ci_over_draws(auc, [trigger, control], wide.index.to_numpy(), seed=seed)
            out[kind][name] = {
                "ci_low": low,
                "ci_high": high,
                "n_draws": meta["n_draws"],
                "layer": meta["layer"],
            }
    return out
