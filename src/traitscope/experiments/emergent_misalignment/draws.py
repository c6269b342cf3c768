"""EM comparisons' CIs over the trait vector's refits as well as the questions (`stats.draws`):
a finetune's shift along one fitted vector is not its shift along the trait."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from traitscope.experiments.emergent_misalignment.design import COMPARISONS


def draw_comparisons(
    captures: dict[str, str | Path],
    draws_paths: dict[str, str | Path],
    prompts: pd.DataFrame,
    positions: tuple[str, ...],
    seed: int,
) -> dict[str, dict[str, dict[str, dict]]]:
    """{comparison: {position: {trait: {ci_low, ci_high, n_draws, layer}}}}: d_z of a minus b,
    each replicate resampling questions and scoring on one vector draw."""
    from traitscope.stats import cohens_dz
    from traitscope.stats.draws import ci_over_draws
    from traitscope.vectors.draws import draw_projections, read_draws

    question = prompts.set_index("prompt_id")["question_id"]
    out: dict[str, dict[str, dict[str, dict]]] = {c: {p: {} for p in positions} for c in COMPARISONS}
    for trait, path in draws_paths.items():
        draws, meta = read_draws(path, trait)
        wide = {}
        for role, capture in captures.items():
            table = draw_projections(capture, draws, meta["layer"])
            table = table[(table["token_index"] == -1) & table["position"].isin(positions)]
            wide[role] = table.pivot_table(index=["position", "prompt_id"], columns="draw", values="score")
        for name, (a, b) in COMPARISONS.items():
            for position in positions:
                common = wide[a].loc[position].index.intersection(wide[b].loc[position].index)
                diff = (
                    wide[a].loc[position].loc[common].to_numpy()
                    - wide[b].loc[position].loc[common].to_numpy()
                )
                low, high = ci_over_draws(cohens_dz, [diff], question.loc[common].to_numpy(), seed=seed)
                entry = {"ci_low": low, "ci_high": high, "n_draws": meta["n_draws"], "layer": meta["layer"]}
                out[name][position][trait] = entry
    return out
