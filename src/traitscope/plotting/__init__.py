"""Every figure the pipeline draws, built from the same numbers its JSON results hold.

Functions return a Figure; the caller saves it with `traitscope.io.save_figure`. Figures sit
on an Agg canvas without pyplot, so no GUI backend is needed and no global figure state leaks
between the many figures one Snakemake job may draw.

The package re-exports every figure, so `from traitscope import plotting` and
`from traitscope.plotting import X` work unchanged. The figures are in its modules: canvas
(the Agg figure every figure starts from, and CI error bars), separation (AUC and Cohen's d of trait
projections between labelled sets), distributions (the scores themselves, per group or
variant), prefill (the prefill attack's 2x2 design and per-token trajectories), backdoor
(trigger vs control by layer and by token) and training (the LoRA finetune's loss, the SAE's
training and the CMA-ES run).
"""

from __future__ import annotations

from traitscope.plotting.backdoor import backdoor_trait_figure, early_detection_figure  # noqa: F401  (re-exported)
from traitscope.plotting.distributions import (  # noqa: F401  (re-exported)
    score_distribution_figure,
    variant_distribution_figure,
)
from traitscope.plotting.prefill import prefill_grid_figure, trajectory_figure  # noqa: F401  (re-exported)
from traitscope.plotting.separation import (  # noqa: F401  (re-exported)
    auc_figure,
    category_auc_figure,
    layer_scores_figure,
    transfer_heatmap,
)
from traitscope.plotting.training import (  # noqa: F401  (re-exported)
    finetune_loss_figure,
    optimisation_curves_figure,
    sae_training_figure,
)
