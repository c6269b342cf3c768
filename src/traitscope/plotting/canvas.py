"""The one place figures are made: a Figure on an Agg canvas, and CI error bars.

Every figure starts from `_figure`, so none goes through pyplot (no GUI backend, no global
figure state between the figures one job draws); `_ci_errors` turns the results' ci_low /
ci_high into the asymmetric error bars several figures draw.
"""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _figure(ncols: int, figsize: tuple[float, float], nrows: int = 1) -> tuple[Figure, np.ndarray]:
    """A Figure on an Agg canvas and its axes as a 2-D array; constrained layout leaves room for titles."""
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _ci_errors(entries: list[dict], estimate: str) -> np.ndarray:
    """Asymmetric error-bar lengths [below, above] from the entries' ci_low / ci_high."""
    return np.array(
        [[e[estimate] - e["ci_low"] for e in entries], [e["ci_high"] - e[estimate] for e in entries]]
    )
