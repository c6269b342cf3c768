"""The prefill attack's figures: the 2x2 design's condition means and per-token trajectories.

Both colour the four conditions (C1-C4) alike, so the grid and the trajectories read
together.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from traitscope.plotting.canvas import _ci_errors, _figure
from traitscope.stats import mean_with_ci

CONDITION_COLORS = {"C1": "tab:orange", "C2": "tab:red", "C3": "tab:cyan", "C4": "tab:blue"}


def prefill_grid_figure(condition_means: dict, traits: list[str]) -> Figure:
    """The 2x2 prefill design per trait: response-mean score per condition with its JSON CI."""
    fig, axes = _figure(len(traits), (4.5 * len(traits), 4))
    for ax, trait in zip(axes[0], traits):
        for kind, pair in (("harmful", ("C1", "C2")), ("benign", ("C3", "C4"))):
            entries = [condition_means[trait][c] for c in pair]
            ax.errorbar(
                [0, 1],
                [e["mean"] for e in entries],
                yerr=_ci_errors(entries, "mean"),
                marker="o",
                capsize=4,
                color=CONDITION_COLORS[pair[1]],
                label=f"{kind} prompt ({pair[0]} n={entries[0]['n']}, {pair[1]} n={entries[1]['n']})",
            )
        ax.set_xticks([0, 1], ["no prefill", "compliance prefill"])
        ax.set_xlim(-0.3, 1.3)
        ax.set_title(trait)
        ax.set_ylabel("mean projection of response\n(activation units)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Prefill attack 2x2: mean trait score of the response, 95% percentile-bootstrap CI")
    return fig


def trajectory_figure(
    traj: pd.DataFrame, traits: list[str], divergence: dict, n_boot: int = 2000, seed: int = 0
) -> Figure:
    """Per-token score per condition: mean and 95% percentile-bootstrap CI of the mean at each step."""
    fig, axes = _figure(len(traits), (5.5 * len(traits), 4.2))
    for ax, trait in zip(axes[0], traits):
        t = traj[traj["trait"] == trait]
        for condition, color in CONDITION_COLORS.items():
            by_step = t[t["condition"] == condition].groupby("step")["score"]
            if not len(by_step):
                continue
            rows = []
            for step, scores in by_step:
                if len(scores) >= 2:
                    rows.append({"step": step, **mean_with_ci(scores.to_numpy(), n_boot=n_boot, seed=seed)})
                else:  # a single prompt reaches this step: a mean without a band
                    rows.append(
                        {"step": step, "mean": float(scores.iloc[0]), "ci_low": np.nan, "ci_high": np.nan}
                    )
            band = pd.DataFrame(rows)
            ax.plot(band["step"], band["mean"], color=color, label=condition)
            ax.fill_between(band["step"], band["ci_low"], band["ci_high"], color=color, alpha=0.15)
        pre = t.loc[t["position"] == "prefill", "step"]
        if len(pre):
            ax.axvspan(
                pre.min() - 0.5, pre.max() + 0.5, color="grey", alpha=0.12, label="prefill tokens (C2, C4)"
            )
        first = divergence[trait]["first_step"]
        if first is not None:
            ax.axvline(first, color="k", ls="--", lw=1, label=f"C2/C4 diverge at {first}")
        ax.set_xlabel("token step (0 = last prompt token)")
        ax.set_ylabel("mean projection over prompts\n(activation units)")
        ax.set_title(trait)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(
        "Per-token trait score at each trait's chosen layer: mean and 95% percentile-bootstrap CI per step\n"
        "(C1 harmful, C2 harmful+prefill, C3 benign, C4 benign+prefill; then generated tokens)"
    )
    return fig
