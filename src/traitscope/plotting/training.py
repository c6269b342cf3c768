"""Figures of what the pipeline trains or optimises: the LoRA finetune, the SAE, CMA-ES.

Each shows its run's progress (loss, variance explained, fitness per generation) from the
record the run writes, so a bad run is seen before its results are read.
"""

from __future__ import annotations

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

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
