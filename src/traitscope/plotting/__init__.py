"""The figures the core draws, built from the same numbers its JSON results hold.

Functions return a Figure; the caller saves it with `traitscope.io.save_figure`. Figures sit
on an Agg canvas without pyplot, so no GUI backend is needed and no global figure state leaks
between the many figures one Snakemake job may draw.

The package re-exports its figures, so `from traitscope import plotting` works. The figures
are in its modules: canvas (the Agg figure every figure starts from, and CI error bars),
separation (AUC and Cohen's d of trait projections between labelled sets), distributions (the
scores themselves, per group or variant) and training (the LoRA finetune's loss). Each
experiment draws its own figures in its package (`figures.py`), on the same canvas.
"""

from __future__ import annotations

from traitscope.plotting.distributions import (  # noqa: F401  (re-exported)
    score_distribution_figure,
    variant_distribution_figure,
)
from traitscope.plotting.separation import auc_figure, layer_scores_figure  # noqa: F401  (re-exported)
from traitscope.plotting.training import finetune_loss_figure  # noqa: F401  (re-exported)
