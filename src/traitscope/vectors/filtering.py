"""Judge-filtered extraction, as persona-vector extraction does it.

An extraction pair (one question under one instruction pair, answered with the positive and
with the negative system prompt) is kept for the vector only if the judge scores the
positive answer at least `trait_min` on the trait, the negative one below it, and both at
least `coherence_min` on coherence. An answer the judge cannot score fails. `trait_filter`
reports how many pairs survive and the held-out and split-half AUCs of vectors built with
and without the filter, both scored on the same unfiltered held-out answers.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from traitscope.errors import TraitscopeError
from traitscope.io import read_table, write_json
from traitscope.vectors.labelled import labelled_activations, split_groups
from traitscope.vectors.layer_choice import choose, layer_scores, split_half_auc
from traitscope.vectors.methods import METHODS
from traitscope.vectors.settings import ExtractionSettings


def surviving_pairs(
    judgements: str | Path, trait_min: float, coherence_min: float, set_ids: pd.Series
) -> tuple[set[str], dict]:
    """Prompt ids of the extraction pairs that pass the filter, and the counts. The judgements
    must be of the trait set whose prompt ids are `set_ids`: another set's would keep no pair
    while reporting its own survivors."""
    table = read_table(judgements, "trait-judgements")
    needed = {"prompt_id", "trait_score", "coherence_score", "split", "label", "question", "pair_index"}
    if not needed <= set(table.columns):
        raise TraitscopeError(
            f"{judgements}: needs trait and coherence scores of the extraction split; "
            "rerun trait-judgements with the judge filter on (extraction.filter.enabled: true)"
        )
    foreign = table.loc[~table["prompt_id"].isin(set_ids), "prompt_id"]
    if len(foreign):
        raise TraitscopeError(
            f"{judgements}: judges prompt {foreign.iloc[0]!r}, not of this trait set; "
            "pass the judgements of the same trait's answers"
        )
    rows = table[table["split"] == "extraction"]
    if rows.empty:
        raise TraitscopeError(
            f"{judgements}: no extraction rows judged; rerun trait-judgements with the judge filter on "
            "(extraction.filter.enabled: true)"
        )
    kept: set[str] = set()
    reasons = {
        "positive_below_trait_min": 0,
        "negative_at_or_above_trait_min": 0,
        "incoherent": 0,
        "no_score": 0,
    }
    n_pairs = 0
    for _, pair in rows.groupby(["question", "pair_index"]):
        pos, neg = pair[pair["label"] == 1], pair[pair["label"] == 0]
        if len(pos) != 1 or len(neg) != 1:
            continue
        n_pairs += 1
        p, n = pos.iloc[0], neg.iloc[0]
        scores = [p["trait_score"], n["trait_score"], p["coherence_score"], n["coherence_score"]]
        if any(np.isnan(s) for s in scores):
            reasons["no_score"] += 1
        elif p["trait_score"] < trait_min:
            reasons["positive_below_trait_min"] += 1
        elif n["trait_score"] >= trait_min:
            reasons["negative_at_or_above_trait_min"] += 1
        elif min(p["coherence_score"], n["coherence_score"]) < coherence_min:
            reasons["incoherent"] += 1
        else:
            kept.update([p["prompt_id"], n["prompt_id"]])
    summary = {
        "n_pairs": n_pairs,
        "n_kept": len(kept) // 2,
        "fraction_kept": len(kept) / 2 / n_pairs if n_pairs else None,
        "trait_min": trait_min,
        "coherence_min": coherence_min,
        "dropped": reasons,
        "dropped_reasons_in_order": "no score, then positive below trait_min, then negative at or "
        "above it, then either below coherence_min",
    }
    return kept, summary


def keep_rows(table: pd.DataFrame, kept: set[str]) -> np.ndarray:
    """Rows to use: every held-out row, and the extraction rows of surviving pairs."""
    return ((table["split"] != "extraction") | table["prompt_id"].isin(kept)).to_numpy()


def fitting_rows(
    capture_json: str | Path,
    prompts: str | Path,
    position: str,
    thresholds: Mapping,
    filter_judgements: str | Path | None = None,
) -> tuple[pd.DataFrame, torch.Tensor, list[int], dict | None]:
    """(table, activations, layers, filter counts) of the rows vectors are fitted on: every row,
    or with `filter_judgements` the held-out rows and the extraction pairs the judge passes at
    `thresholds` (trait_min, coherence_min). trait-vectors and trait-draws fit on the same rows."""
    table, x, layers = labelled_activations(capture_json, prompts, position)
    if filter_judgements is None:
        return table, x, layers, None
    kept, filtered = surviving_pairs(
        filter_judgements, thresholds["trait_min"], thresholds["coherence_min"], table["prompt_id"]
    )
    rows = keep_rows(table, kept)
    return table[rows].reset_index(drop=True), x[torch.tensor(rows)], layers, filtered


def trait_filter(
    capture_json: str | Path,
    prompts: str | Path,
    judgements: str | Path,
    out: str | Path,
    position: str,
    settings: ExtractionSettings,
) -> dict[str, Any]:
    """Pairs surviving per the judge, and AUCs of vectors with and without the filter."""
    methods = settings.methods
    table, x, layers = labelled_activations(capture_json, prompts, position)
    kept, summary = surviving_pairs(
        judgements, settings.filter["trait_min"], settings.filter["coherence_min"], table["prompt_id"]
    )
    held_pos, held_neg = split_groups(table, x, "evaluation")
    result: dict[str, Any] = {"position": position, **summary}
    options = {"probe": {"c": settings.probe_c}}
    for name, rows in (
        ("without_filter", np.ones(len(table), bool)),
        ("with_filter", keep_rows(table, kept)),
    ):
        sub, xs = table[rows].reset_index(drop=True), x[torch.tensor(rows)]
        pos, neg = split_groups(sub, xs, "extraction")
        if len(pos) < 2:
            result[name] = {"n_pairs": len(pos), "auc": None, "reason": "fewer than 2 extraction pairs"}
            continue
        vectors = {
            m: partial(METHODS[m], **options.get(m, {}))(pos, neg)
            for m in dict.fromkeys(["mean_diff", *methods])
        }
        scores = {m: layer_scores(held_pos, held_neg, v, layers) for m, v in vectors.items()}
        chosen = choose(scores)
        result[name] = {
            "n_pairs": len(pos),
            "chosen": chosen,
            "auc": chosen["auc"],
            "split_half_auc": split_half_auc(x, table, vectors, layers)["auc"],
            "chosen_by_method": {m: choose({m: s}) for m, s in scores.items()},
        }
    write_json(out, result)
    return result
