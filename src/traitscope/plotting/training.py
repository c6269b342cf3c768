"""Figures of what the pipeline trains or optimises: the LoRA finetune, the SAE, CMA-ES.

Each shows its run's progress (loss, variance explained, fitness per generation) from the
record the run writes, so a bad run is seen before its results are read.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from traitscope.plotting.canvas import _figure


def finetune_loss_figure(record: dict) -> Figure:
    """Training loss per optimizer step (finetune's loss.json), the learning rate on a second axis."""
    fig, axes = _figure(1, (7, 3.8))
    ax = axes[0, 0]
    steps = pd.DataFrame(record["steps"])
    sns.lineplot(steps, x="step", y="loss", marker="o", ms=3, color="tab:blue", label="training loss", ax=ax)
    lr_ax = ax.twinx()
    lr_ax.plot(steps["step"], steps["lr"], color="grey", ls="--", lw=1, label="learning rate")
    lr_ax.set_ylabel("learning rate (AdamW)")
    starts = steps.groupby("epoch")["step"].min().iloc[1:]
    for first in starts:
        ax.axvline(first - 0.5, color="k", ls=":", lw=1)
    handles = ax.get_legend_handles_labels()
    lr_handles = lr_ax.get_legend_handles_labels()
    ax.legend(handles[0] + lr_handles[0], handles[1] + lr_handles[1], fontsize=8)
    ax.set_xlabel("optimizer step" + (" (dotted: epoch boundary)" if len(starts) else ""))
    ax.set_ylabel("training loss\n(mean cross-entropy per assistant token, nats)")
    ax.grid(alpha=0.3)
    settings = record["settings"]
    ax.set_title(
        f"LoRA finetune of {record['base_model']} (rank {settings['rank']}, lr {settings['lr']:g}): "
        f"{record['n_examples']} examples, {settings['epochs']} epoch(s), {record['n_steps']} steps",
        fontsize=9,
    )
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


def optimisation_curves_figure(histories: dict[str, list[dict]], start: dict[str, float]) -> Figure:
    """Per trait: CMA-ES best and mean fitness per generation (the extracted start dashed), and
    the judge calls each generation made (computed vs answered by the cache)."""
    fig, axes = _figure(2, (10, 3.4 * len(histories)), nrows=len(histories))
    for row, (trait, history) in enumerate(histories.items()):
        ax_fit, ax_calls = axes[row]
        gens = [e["generation"] for e in history]
        ax_fit.plot(gens, [e["best_fitness"] for e in history], marker="o", ms=4, label="best of generation")
        ax_fit.plot(gens, [e["mean_fitness"] for e in history], marker="s", ms=3, label="mean of generation")
        ax_fit.plot(gens, [e["best_so_far"] for e in history], color="k", lw=1, label="best so far")
        ax_fit.axhline(start[trait], color="grey", ls="--", lw=1, label="start (extracted, in basis)")
        ax_fit.set_xlabel("CMA-ES generation")
        ax_fit.set_ylabel("fitness: mean judge trait score\n(0-100; incoherent answers count 0)")
        ax_fit.set_title(f"{trait}: fitness on training questions", fontsize=9)
        ax_fit.grid(alpha=0.3)
        ax_fit.legend(fontsize=7)
        computed = [(e["judge"] or {}).get("computed", 0) for e in history]
        cached = [(e["judge"] or {}).get("cache_hits", 0) for e in history]
        ax_calls.bar(gens, computed, color="tab:red", label="judged (backend calls)")
        ax_calls.bar(gens, cached, bottom=computed, color="tab:gray", label="answered by the cache")
        ax_calls.set_xlabel("CMA-ES generation")
        ax_calls.set_ylabel("judgements per generation (count)")
        ax_calls.set_title(f"{trait}: judge calls", fontsize=9)
        ax_calls.grid(alpha=0.3, axis="y")
        ax_calls.legend(fontsize=7)
        for ax in (ax_fit, ax_calls):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig
