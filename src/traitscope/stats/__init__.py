"""Separation statistics used to score a trait vector on held-out data.

Library implementations (scipy, scikit-learn, statsmodels) do the arithmetic; this module adds
the input checks that turn a degenerate sample into a clear error instead of a NaN in a report.
"""

from __future__ import annotations

# the package's face: `from traitscope.stats import X` for every statistic, whichever module holds it
from traitscope.stats.bootstrap import _percentile_bootstrap, _sample, bootstrap_ci, mean_with_ci  # noqa: F401
from traitscope.stats.crossfit import cross_fitted_auc  # noqa: F401
from traitscope.stats.effects import (  # noqa: F401
    clustered_dz_ci,
    cohens_d,
    cohens_dz,
    compare_groups,
    compare_paired,
    first_divergence,
    relative_gain_paired,
    within_interaction,
)
from traitscope.stats.rates import (  # noqa: F401
    clustered_rates,
    holm,
    mean_with_t_ci,
    proportion_with_ci,
    rate_difference_with_ci,
    spearman,
    spearman_ci,
)
from traitscope.stats.roc import (  # noqa: F401
    HISTOGRAM_MAX,
    _auc_along,
    auc,
    auc_columns,
    auc_difference_paired,
    auc_difference_same_rows,
    auc_of_codes,
    auc_with_ci,
    column_codes,
    rank_codes,
    youden_threshold,
)
