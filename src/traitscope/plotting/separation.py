"""Figures of separation: how well trait projections tell labelled sets apart.

Held-out AUC and Cohen's d per layer (trait extraction), ROC-AUC per trait and per
BeaverTails category (external datasets), and the transfer table of every trait and
surface baseline on every labelled set.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import to_rgba
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


def category_auc_figure(result: dict, traits: list[str]) -> Figure:
    """Per BeaverTails category and trait: AUC vs safe pairs with its CI, categories sorted by AUC.

    A category too small for a CI shows its point estimate as a hollow bar without error bars;
    where no category has even that, the panel says why instead of standing empty."""
    fig, axes = _figure(len(traits), (4.5 * len(traits), 5))
    for ax, trait in zip(axes[0], traits):
        with_ci = {c: e[trait]["auc"] for c, e in result["categories"].items() if "auc" in e[trait]}
        point = {  # no CI: an error bar of zero length
            c: {
                "auc": e[trait]["auc_point"],
                "ci_low": e[trait]["auc_point"],
                "ci_high": e[trait]["auc_point"],
            }
            for c, e in result["categories"].items()
            if "auc" not in e[trait] and e[trait].get("auc_point") is not None
        }
        entries = {**with_ci, **point}
        cats = sorted(entries, key=lambda c: entries[c]["auc"])
        ax.barh(
            [c.replace(",", ", ") for c in cats],
            [entries[c]["auc"] for c in cats],
            xerr=_ci_errors([entries[c] for c in cats], "auc"),
            capsize=3,
            color=[to_rgba("tab:blue", 0.75 if c in with_ci else 0.0) for c in cats],
            edgecolor="tab:blue",
        )
        if point:
            ax.plot(
                [], [], "s", mfc="none", mec="tab:blue", label="point estimate only: n too small for a CI"
            )
            ax.legend(fontsize=7, loc="lower right")
        if not cats:
            reasons = {e[trait].get("skipped", "") for e in result["categories"].values()}
            ax.text(
                0.5,
                0.5,
                "no category AUC computed:\n" + "\n".join(sorted(reasons))[:300],
                ha="center",
                va="center",
                fontsize=7,
                wrap=True,
                transform=ax.transAxes,
            )
        ax.axvline(0.5, color="grey", ls="--", lw=1)
        ax.set_xlim(0, 1)
        ax.set_xlabel("ROC-AUC vs safe pairs, 95% bootstrap CI")
        ax.set_title(trait)
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle("BeaverTails: does each trait separate a harm category from safe responses?")
    return fig


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
