"""The experiment's settings: one object the optimisation and held-out stages share.

Its own module because every stage and the CLI read it, and its `search_digest` decides
whether a saved CMA-ES state may be resumed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class OptimisationSettings:
    """experiments.steering_optimisation, less the keys the DAG uses (every default in the schema)."""

    SECTION: ClassVar[str] = "#/properties/experiments/properties/steering_optimisation"

    components: int
    popsize: int
    generations: int
    restarts: int
    sigma0: float
    coefficient: float
    coherence_floor: float | None
    n_train: int
    n_heldout: int
    max_new_tokens: int
    temperature: float
    seed: int
    max_tokens: int
    n_boot: int

    def search_digest(self, *parts: Any) -> str:
        """What a saved CMA-ES state must match to be resumed (generations may grow)."""
        content = {k: v for k, v in asdict(self).items() if k not in ("generations", "n_heldout", "n_boot")}
        text = json.dumps([content, *parts], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]
