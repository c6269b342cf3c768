"""The external datasets' own figure: BeaverTails' AUC per harm category."""

from __future__ import annotations

from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

from traitscope.plotting.canvas import _ci_errors, _figure


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
