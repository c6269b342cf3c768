"""The transfer table as a heatmap: every trait and surface baseline on every labelled set."""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from traitscope.plotting.canvas import _figure


def transfer_heatmap(result: dict) -> Figure:
    """ROC-AUC of every trait and surface baseline (rows) on every labelled set (columns), one
    panel per pool; a trait's cell is starred where its AUC beats every baseline (paired CI > 0)."""
    pools, sets = result["pools"], list(result["sets"])
    base_names = list(next(iter(result["sets"].values()))["baselines"])
    rows = [*result["traits"], *(f"baseline: {b}" for b in base_names)]
    fig, axes = _figure(len(pools), (3 + 1.6 * len(sets) * len(pools), 2.4 + 0.45 * len(rows)))
    for ax, pool in zip(axes[0], pools):
        values = np.array(
            [[result["sets"][s]["pools"][pool][t]["auc"]["auc"] for s in sets] for t in result["traits"]]
            + [[result["sets"][s]["baselines"][b]["auc"] for s in sets] for b in base_names]
        )
        stars = [
            ["*" if result["sets"][s]["pools"][pool][t]["beats_baselines"] else "" for s in sets]
            for t in result["traits"]
        ] + [[""] * len(sets) for _ in base_names]
        labels = np.array(
            [[f"{v:.2f}{star}" for v, star in zip(vals, marks)] for vals, marks in zip(values, stars)]
        )
        sns.heatmap(
            pd.DataFrame(values, index=rows, columns=sets),
            ax=ax,
            vmin=0,
            vmax=1,
            center=0.5,
            cmap="RdBu_r",
            annot=labels,
            fmt="",
            cbar=ax is axes[0, -1],
            cbar_kws={"label": "ROC-AUC, harmful vs length-matched harmless"},
        )
        ax.set_title(f"pool: {pool}")
        ax.tick_params(axis="x", rotation=30)
        ax.set_xlabel("harmful prompt set (vs its length-matched harmless controls)")
        if ax is not axes[0, 0]:
            ax.set_yticklabels([])
    fig.suptitle("Transfer: trait projections (chosen layer) and surface baselines; * beats every baseline")
    return fig
