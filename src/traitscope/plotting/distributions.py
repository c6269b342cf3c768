"""Figures of the scores themselves: their distributions per group or per model variant.

Harmful vs harmless scores with the Youden threshold (labelled prompt sets) and each
variant's scores on the same prompts (a finetune against its base) show what the summary
statistics hide: the overlap and the spread.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from traitscope.plotting.canvas import _figure

GROUP_COLORS = {"harmful": "tab:red", "harmless": "tab:blue"}


def score_distribution_figure(dists: dict, failures: dict, traits: list[str]) -> Figure:
    """Harmful vs harmless score distributions per dataset and trait, with the Youden threshold.

    Each group is normalised on its own (density, not counts): the groups differ in size,
    and it is the overlap of their shapes that the threshold has to cut.
    """
    fig, axes = _figure(len(traits), (4.5 * len(traits), 3.4 * len(dists)), nrows=len(dists))
    for row, name in enumerate(dists):
        for ax, trait in zip(axes[row], traits):
            frame = pd.concat(
                pd.DataFrame({"score": np.asarray(dists[name][trait][g], float), "group": g})
                for g in GROUP_COLORS
            )
            sns.histplot(
                frame,
                x="score",
                hue="group",
                hue_order=list(GROUP_COLORS),
                palette=GROUP_COLORS,
                bins=20,
                stat="density",
                common_norm=False,
                element="step",
                kde=True,
                ax=ax,
            )
            cut = failures[name][trait]
            ax.axvline(cut["threshold"], color="k", ls="--", lw=1)
            sns.move_legend(ax, "best", title=None, fontsize=7)
            ax.set_title(
                f"{name}: {trait}\nYouden threshold (dashed) {cut['threshold']:.2f}, J={cut['j']:.2f}"
            )
            ax.set_xlabel("projection at chosen layer (activation units)")
            ax.set_ylabel("density (area 1 per group)")
    return fig


def variant_distribution_figure(
    scores: pd.DataFrame, traits: list[str], variants: list[str], positions: tuple[str, ...]
) -> Figure:
    """Per trait (columns) and position (rows): each variant's scores on the same prompts,
    as violins with the prompts drawn over them; `scores` has one column per variant."""
    fig, axes = _figure(len(traits), (3.6 * len(traits), 3.4 * len(positions)), nrows=len(positions))
    for row, position in enumerate(positions):
        for ax, trait in zip(axes[row], traits):
            at = scores[(scores["position"] == position) & (scores["trait"] == trait)]
            long = at.melt(value_vars=variants, var_name="variant", value_name="score")
            sns.violinplot(
                long, x="variant", y="score", order=variants, inner=None, cut=0, color="0.85", ax=ax
            )
            sns.stripplot(long, x="variant", y="score", order=variants, size=2.5, alpha=0.6, ax=ax)
            ax.set_title(f"{trait}\n{position} (n={len(at)} prompts)", fontsize=9)
            ax.set_xlabel("")
            ax.set_ylabel("projection at chosen layer (activation units)")
    return fig
