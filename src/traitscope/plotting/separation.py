"""Figures of separation: how well trait projections tell labelled sets apart.

Held-out AUC and Cohen's d per layer (trait extraction), and ROC-AUC per trait between two
labelled sets.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from traitscope.plotting.canvas import _ci_errors, _figure


def layer_scores_figure(result: dict) -> Figure:
    """Held-out AUC and Cohen's d per layer for each extraction method, chosen layer marked."""
    fig, axes = _figure(2, (10, 3.8))
    ax_auc, ax_d = axes[0]
    for method, rows in result["methods"].items():
        layers = [r["layer"] for r in rows]
        d = [r["cohens_d"] if np.isfinite(r["cohens_d"]) else np.nan for r in rows]
        ax_auc.plot(layers, [r["auc"] for r in rows], marker="o", ms=3, label=method)
        ax_d.plot(layers, d, marker="o", ms=3, label=method)
    chosen = result["chosen"]
    for ax in (ax_auc, ax_d):
        ax.axvline(chosen["layer"], color="grey", ls="--", lw=1, label=f"chosen ({chosen['method']})")
        ax.set_xlabel("layer (decoder block output)")
        ax.grid(alpha=0.3)
    ax_auc.set_ylabel("held-out ROC-AUC (positive vs negative)")
    ax_d.set_ylabel("held-out Cohen's d of projection (SD units)")
    ax_auc.legend(fontsize=8)
    fig.suptitle(
        f"{result['trait']} on {result['model']}: separation by layer "
        f"(n={result['n_positive']}+{result['n_negative']})"
    )
    return fig


def auc_figure(aucs: dict, title: str) -> Figure:
    """One bar per trait: ROC-AUC of harmful vs harmless with its bootstrap CI (auc_with_ci entries)."""
    fig, axes = _figure(1, (6, 3.5))
    ax = axes[0, 0]
    names = list(aucs)
    entries = [aucs[n] for n in names]
    ax.barh(names, [e["auc"] for e in entries], xerr=_ci_errors(entries, "auc"), capsize=4, color="tab:red")
    ax.axvline(0.5, color="grey", ls="--", lw=1)
    ax.set_xlim(0, 1)
    ax.set_xlabel("ROC-AUC (harmful vs harmless), 95% stratified bootstrap CI")
    ax.set_ylabel("trait")
    ax.set_title(title)
    return fig
