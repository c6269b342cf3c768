"""The CMA-ES run's figure: fitness per generation and the judge calls each made."""

from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from traitscope.plotting.canvas import _figure


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
