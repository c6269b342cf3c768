"""The backdoor experiment's figures: trigger vs control on the base and the backdoored model,
and the SAE's training.

By layer at each position (with the surface baselines), and by token position at each
trait's chosen layer (how early the trigger shows); both colour the two models alike.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from traitscope.plotting.canvas import _ci_errors, _figure

MODEL_COLORS = {"base": "tab:blue", "backdoored": "tab:red"}


def backdoor_trait_figure(result: dict, traits: list[str], positions: list[str]) -> Figure:
    """Per trait (columns) and position (rows): trigger-vs-control AUC by layer on the base and
    the backdoored model, 95% bootstrap bands, the trait's chosen layer dashed, the surface
    baselines' AUCs in green."""
    fig, axes = _figure(len(traits), (4.6 * len(traits), 3.6 * len(positions)), nrows=len(positions))
    for row, position in enumerate(positions):
        for ax, trait in zip(axes[row], traits):
            entry = result["traits"][trait]
            at = entry["positions"][position]
            layers = at["by_layer"] or [{"layer": entry["chosen_layer"], **at["chosen_layer"]}]
            xs = [e["layer"] for e in layers]
            for role, color in MODEL_COLORS.items():
                ys = [e[role]["auc"] for e in layers]
                ax.plot(xs, ys, marker="o", ms=3, color=color, label=f"{result['variants'][role]} ({role})")
                ax.fill_between(
                    xs,
                    [e[role]["ci_low"] for e in layers],
                    [e[role]["ci_high"] for e in layers],
                    color=color,
                    alpha=0.15,
                )
            ax.axhline(0.5, color="grey", lw=1)
            for (name, base), style in zip(result.get("baselines", {}).items(), (":", "-.")):
                ax.axhline(base["auc"], color="tab:green", ls=style, lw=1, label=f"{name} baseline")
            ax.axvline(entry["chosen_layer"], color="k", ls="--", lw=1)
            diff = at["chosen_layer"]["difference"]
            ax.set_title(
                f"{trait}, {position}\nchosen layer {entry['chosen_layer']} (dashed): backdoored - base = "
                f"{diff['difference']:+.2f} [{diff['ci_low']:+.2f}, {diff['ci_high']:+.2f}]",
                fontsize=9,
            )
            ax.set_xlabel("layer (decoder block output)")
            ax.set_ylabel("ROC-AUC, trigger vs control\n(95% bootstrap band)")
            ax.set_ylim(0, 1.02)  # a baseline at 1 stays visible
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(
        f"Trigger vs control on {result['n_pairs']} held-out pairs: "
        "trait projections (base-model vectors) on each model"
    )
    return fig


def early_detection_figure(result: dict, traits: list[str]) -> Figure:
    """Per trait at its chosen layer: trigger-vs-control AUC at each token position on both
    models with 95% bootstrap CIs; the threshold, generated tokens shaded, the earliest
    position where only the backdoored model exceeds the threshold marked."""
    info = result["token_positions"]
    order = info["order"]
    fig, axes = _figure(1, (max(8.0, 0.45 * len(order)) + 3, 3.2 * len(traits)), nrows=len(traits))
    x = {label: i for i, label in enumerate(order)}
    for row, trait in enumerate(traits):
        ax = axes[row, 0]
        entry = info["by_trait"][trait]
        for k, (role, color) in enumerate(MODEL_COLORS.items()):
            points = entry["by_position"][role]
            labels = [lab for lab in order if lab in points]
            es = [points[lab] for lab in labels]
            ax.errorbar(
                [x[lab] + (k - 0.5) * 0.2 for lab in labels],
                [e["auc"] for e in es],
                yerr=_ci_errors(es, "auc"),
                marker="o",
                ms=3,
                capsize=2,
                color=color,
                label=f"{result['variants'][role]} ({role})",
            )
        generated = [x[lab] for lab in order if lab.startswith("g")]
        if generated:
            ax.axvspan(
                min(generated) - 0.5, max(generated) + 0.5, color="grey", alpha=0.12, label="generated tokens"
            )
        constant = [
            x[lab]
            for lab in order
            if all(
                entry["by_position"][role].get(lab, {}).get("same_text_within_condition")
                for role in MODEL_COLORS
            )
        ]
        for k, pos in enumerate(constant):
            ax.axvspan(
                pos - 0.5,
                pos + 0.5,
                facecolor="none",
                edgecolor="0.6",
                hatch="//",
                lw=0,
                label="every prompt of a condition has read\nthe same text here (AUC 0, 0.5 or 1)"
                if k == 0
                else None,
            )
        ax.axhline(info["threshold"], color="k", ls=":", lw=1, label=f"threshold {info['threshold']}")
        ax.axhline(0.5, color="grey", lw=1)
        first = entry["earliest"]["position"]
        if first is not None:
            ax.axvline(
                x[first], color="tab:red", ls="--", lw=1, label=f"earliest (base within threshold): {first}"
            )
        ax.set_xticks(range(len(order)), order, rotation=90, fontsize=7)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("ROC-AUC, trigger vs control\n(95% bootstrap CI)")
        ax.set_title(f"{trait} at its chosen layer {result['traits'][trait]['chosen_layer']}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    axes[-1, 0].set_xlabel(
        "token position: prefix_end = last token where the pair differs, p<j> = j-th prompt token after it, "
        "g<j> = j-th generated token"
    )
    fig.suptitle("How early does the trigger show? Per-token trait projections on held-out pairs")
    return fig


def sae_training_figure(record: dict, firing_rates: list[float]) -> Figure:
    """Left: fraction of variance explained and dead-latent share during training. Right: how
    often each latent fires, log scale, dead latents counted."""
    fig, axes = _figure(2, (11, 3.8))
    ax, ax_rate = axes[0]
    curve = pd.DataFrame(record["curve"])
    held = record["held_out"]
    if len(curve):
        ax.plot(
            curve["tokens"],
            curve["fraction_variance_explained"],
            color="tab:blue",
            label="FVE (training batch)",
        )
        twin = ax.twinx()
        twin.plot(
            curve["tokens"],
            curve["dead_fraction"],
            color="grey",
            ls="--",
            label="dead share (training window)",
        )
        twin.set_ylabel("share of latents dead in training")
        twin.set_ylim(0, 1)
        ax.set_xlabel("training tokens seen (thousands)")
        ax.xaxis.set_major_formatter(lambda value, _: f"{value / 1000:g}")
        ax.legend(loc="lower left", fontsize=8)
        twin.legend(loc="lower right", fontsize=8)
        title = "TopK SAE training"
    else:
        ax.text(
            0.5,
            0.5,
            f"loaded from {record.get('loaded_from')}\n(no training curve)",
            ha="center",
            va="center",
        )
        ax.set_xlabel("(no training here)")
        title = "SAE loaded from a path"
    ax.axhline(held["fraction_variance_explained"], color="tab:green", ls=":", label="held-out FVE")
    ax.set_ylabel("fraction of variance explained")
    ax.set_ylim(min(0.0, held["fraction_variance_explained"]), 1)
    ax.set_title(
        f"{title}, layer {record['layer']}: held-out FVE {held['fraction_variance_explained']:.3f}, "
        f"L0 {held['mean_l0']:.1f} (n={held['n_tokens']} tokens)",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    rates = np.asarray(firing_rates, float)
    dead = int((rates == 0).sum())
    alive = rates[rates > 0]
    if len(alive):
        sns.histplot(x=np.log10(alive), bins=40, color="tab:purple", ax=ax_rate)
    ax_rate.set_xlabel("firing frequency, log10 of the share of tokens the latent fires on")
    ax_rate.set_ylabel("latents (count)")
    ax_rate.set_title(
        f"latent firing frequency: {dead} of {len(rates)} never fire ({dead / len(rates):.1%} dead)",
        fontsize=9,
    )
    ax_rate.grid(alpha=0.3)
    return fig
