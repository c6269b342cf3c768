"""Prefill attack: do activations reveal harm recognition under forced compliance?

Four conditions: C1 harmful, C2 harmful + compliance prefill, C3 benign, C4 benign +
prefill. Each trait is scored at its chosen layer. Which position each comparison uses:

- C2 vs C4 (the key one): mean over the prefill tokens: identical text, different prompts.
- C1 vs C3: the last prompt token (neither has a prefill).
- C1 vs C2: the generated response: does a forced "Sure" suppress what comes next?
- 2x2 interaction (harmful x prefill): the generated response, present in all four.

Per-token trajectories run from the last prompt token through the prefill into the first
generated tokens (position 0 = last prompt token).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from traitscope.errors import TraitscopeError
from traitscope.io import save_figure, write_json
from traitscope.stats import compare_groups, first_divergence, holm, interaction_test

COMPARISONS = {
    "C2_vs_C4": ("C2", "C4", "prefill_mean"),
    "C1_vs_C2": ("C1", "C2", "response_mean"),
    "C1_vs_C3": ("C1", "C3", "last_prompt"),
}


def _chosen(projections: pd.DataFrame) -> pd.DataFrame:
    table = projections[projections["chosen_layer"]]
    if table.empty:
        raise TraitscopeError("projections hold no row at a trait's chosen layer; rerun capture and project")
    return table


def pooled_scores(projections: pd.DataFrame, conditions: pd.DataFrame) -> pd.DataFrame:
    """One row per (prompt, trait, pooled position) at the chosen layer, with its condition."""
    pooled = _chosen(projections)
    pooled = pooled[pooled["token_index"] == -1]
    return pooled.merge(conditions[["prompt_id", "condition", "prefill_index"]], on="prompt_id")


def trajectories(projections: pd.DataFrame, conditions: pd.DataFrame) -> pd.DataFrame:
    """Per-token scores at the chosen layer with `step` = token index - last prompt token."""
    tokens = _chosen(projections)
    tokens = tokens[tokens["token_index"] >= 0].copy()
    if tokens.empty:
        raise TraitscopeError("no per-token projections: capture the prefill set with token_segments")
    tokens["step"] = tokens["token_index"] - tokens.groupby("prompt_id")["token_index"].transform("min")
    return tokens.merge(conditions[["prompt_id", "condition", "prefill_index"]], on="prompt_id")


def _matrix(traj: pd.DataFrame) -> np.ndarray:
    """[n_prompts, n_steps] scores, NaN where a prompt has fewer steps."""
    return traj.pivot(index="prompt_id", columns="step", values="score").to_numpy(dtype=float)


def analyse(
    projections_path: str | Path,
    conditions_path: str | Path,
    traits: list[str],
    out_json: str | Path,
    grid_png: str | Path,
    trajectory_png: str | Path,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict:
    """All comparisons with Holm correction, the 2x2 interaction and trajectory divergence."""
    projections = pd.read_parquet(projections_path)
    conditions = pd.read_parquet(conditions_path)
    missing = sorted(set(traits) - set(projections["trait"]))
    if missing:
        raise TraitscopeError(f"{projections_path}: no projections for trait(s) {', '.join(missing)}")
    pooled = pooled_scores(projections, conditions)
    comparisons: dict[str, dict] = {}
    for key, (a, b, position) in COMPARISONS.items():
        comparisons[key] = {}
        for trait in traits:
            rows = pooled[(pooled["trait"] == trait) & (pooled["position"] == position)]
            xa = rows.loc[rows["condition"] == a, "score"].to_numpy()
            xb = rows.loc[rows["condition"] == b, "score"].to_numpy()
            comparisons[key][trait] = {
                "position": position,
                **compare_groups(xa, xb, n_boot=n_boot, seed=seed),
            }
    flat = [(k, t) for k in comparisons for t in comparisons[k]]
    for (k, t), p in zip(flat, holm([comparisons[k][t]["p_value"] for k, t in flat])):
        comparisons[k][t]["p_holm"] = p
    by_prefill: dict[str, dict] = {}
    prefills = sorted(i for i in pooled["prefill_index"].unique() if i >= 0)
    if len(prefills) > 1:  # the key comparison once per prefill (pooled above)
        for i in prefills:
            rows = pooled[(pooled["prefill_index"] == i) & (pooled["position"] == "prefill_mean")]
            by_prefill[str(i)] = {
                trait: compare_groups(
                    rows.loc[(rows["trait"] == trait) & (rows["condition"] == "C2"), "score"].to_numpy(),
                    rows.loc[(rows["trait"] == trait) & (rows["condition"] == "C4"), "score"].to_numpy(),
                    n_boot=n_boot,
                    seed=seed,
                )
                for trait in traits
            }
    interaction = {}
    for trait in traits:
        rows = pooled[(pooled["trait"] == trait) & (pooled["position"] == "response_mean")]
        harmful = rows["condition"].isin(["C1", "C2"]).to_numpy(int)
        prefilled = rows["condition"].isin(["C2", "C4"]).to_numpy(int)
        interaction[trait] = interaction_test(rows["score"].to_numpy(), harmful, prefilled)
    traj = trajectories(projections, conditions)
    divergence = {}
    for trait in traits:
        t = traj[traj["trait"] == trait]
        first = first_divergence(_matrix(t[t["condition"] == "C2"]), _matrix(t[t["condition"] == "C4"]))
        divergence[trait] = {
            "first_step": first,
            "step_0": "last prompt token",
            "alpha": 0.05,
            "test": "Welch t per step, Holm-corrected across steps",
        }
    result = {
        "design": {k: {"a": a, "b": b, "position": p} for k, (a, b, p) in COMPARISONS.items()},
        "n_prompts": conditions["condition"].value_counts().to_dict(),
        "prefills": sorted(set(conditions.loc[conditions["prefill"] != "", "prefill"])),
        "comparisons": comparisons,
        "correction": "Holm across traits and comparisons",
        "C2_vs_C4_by_prefill": by_prefill,
        "interaction": interaction,
        "trajectory_divergence": divergence,
    }
    write_json(out_json, result)
    save_figure(grid_png, _grid_figure(pooled, traits))
    save_figure(trajectory_png, _trajectory_figure(traj, traits, divergence))
    return result


def _mean_ci(values: np.ndarray) -> tuple[float, float]:
    values = values[~np.isnan(values)]
    half = 1.96 * values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else np.nan
    return float(values.mean()), float(half)


def _grid_figure(pooled: pd.DataFrame, traits: list[str]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(traits), figsize=(4 * len(traits), 3.6), squeeze=False)
    for ax, trait in zip(axes[0], traits):
        rows = pooled[(pooled["trait"] == trait) & (pooled["position"] == "response_mean")]
        for kind, (no, yes), color in (
            ("harmful", ("C1", "C2"), "tab:red"),
            ("benign", ("C3", "C4"), "tab:blue"),
        ):
            stats = [_mean_ci(rows.loc[rows["condition"] == c, "score"].to_numpy()) for c in (no, yes)]
            ax.errorbar(
                [0, 1],
                [m for m, _ in stats],
                yerr=[h for _, h in stats],
                marker="o",
                capsize=4,
                color=color,
                label=f"{kind} prompt ({no}, {yes})",
            )
        ax.set_xticks([0, 1], ["no prefill", "compliance prefill"])
        ax.set_title(trait)
        ax.set_ylabel("projection of generated tokens (activation units)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Prefill attack 2x2: mean trait score of the response, 95% CI")
    fig.tight_layout()
    return fig


def _trajectory_figure(traj: pd.DataFrame, traits: list[str], divergence: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(traits), figsize=(5 * len(traits), 3.8), squeeze=False)
    colors = {"C1": "tab:orange", "C2": "tab:red", "C3": "tab:cyan", "C4": "tab:blue"}
    for ax, trait in zip(axes[0], traits):
        t = traj[traj["trait"] == trait]
        for condition in ("C1", "C2", "C3", "C4"):
            m = _matrix(t[t["condition"] == condition])
            if m.size == 0:
                continue
            stats = [_mean_ci(m[:, j]) for j in range(m.shape[1])]
            steps = np.arange(m.shape[1])
            mean = np.array([s[0] for s in stats])
            half = np.array([s[1] for s in stats])
            ax.plot(steps, mean, color=colors[condition], label=condition)
            ax.fill_between(steps, mean - half, mean + half, color=colors[condition], alpha=0.15)
        pre = t.loc[t["position"] == "prefill", "step"]
        if len(pre):
            ax.axvspan(
                pre.min() - 0.5, pre.max() + 0.5, color="grey", alpha=0.12, label="prefill tokens (C2, C4)"
            )
        first = divergence[trait]["first_step"]
        if first is not None:
            ax.axvline(first, color="k", ls="--", lw=1, label=f"C2/C4 diverge at {first}")
        ax.set_xlabel("token step (0 = last prompt token)")
        ax.set_ylabel("projection (activation units)")
        ax.set_title(trait)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(
        "Per-token trait score at each trait's chosen layer: mean and 95% CI per condition "
        "(C1 harmful, C2 harmful+prefill, C3 benign, C4 benign+prefill; then generated tokens)"
    )
    fig.tight_layout()
    return fig
