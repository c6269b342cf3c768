"""CIs that cover a trait vector's estimation error as well as the experiment's own sampling.

Each bootstrap replicate scores the experiment's units (pairs, questions) resampled with
replacement on one refit of the vector (`vectors.draws`: the extraction questions resampled),
so the percentile CI spans both. Holding the vector fixed, as a CI over the units alone does,
answers "for this one vector", while the question is about the trait.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def ci_over_draws(
    statistic: Callable[..., float],
    columns: list[np.ndarray],
    units: np.ndarray,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile CI of `statistic(*[c[rows, b] for c in columns])`: replicate b takes draw b's
    scores (column b of each `[n, n_draws]` array) at the rows of a resample of `units` (one
    label per row; a unit's rows go together)."""
    n, n_draws = columns[0].shape
    if any(c.shape != (n, n_draws) for c in columns) or len(units) != n:
        raise ValueError("every column needs the shape [n rows, n draws] and units one label per row")
    labels, index = np.unique(np.asarray(units), return_inverse=True)
    if len(labels) < 2:
        raise ValueError(f"a bootstrap needs at least 2 units, got {len(labels)}")
    rows_of = [np.flatnonzero(index == k) for k in range(len(labels))]
    rng = np.random.default_rng(seed)
    boot = np.empty(n_draws)
    for b in range(n_draws):
        rows = np.concatenate([rows_of[k] for k in rng.integers(0, len(labels), len(labels))])
        boot[b] = statistic(*(c[rows, b] for c in columns))
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(boot, [tail, 100 - tail])
    return float(low), float(high)
