"""Trait vectors per layer from a captured contrastive prompt set (the extraction split)."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pandas as pd
import torch

from traitscope.data.prompts import text_key, user_texts
from traitscope.errors import TraitscopeError
from traitscope.io import save_safetensors, write_json
from traitscope.vectors.filtering import fitting_rows
from traitscope.vectors.labelled import split_groups
from traitscope.vectors.methods import METHODS
from traitscope.vectors.settings import ExtractionSettings


def trait_vectors(
    capture_json: str | Path,
    prompts: str | Path,
    out_vectors: str | Path,
    out_meta: str | Path,
    position: str,
    settings: ExtractionSettings,
    variant: str,
    trait: str,
    filter_judgements: str | Path | None = None,
) -> dict[str, torch.Tensor]:
    """One vector per layer and method from the extraction split.

    `mean_diff` is always built: it is the steering scale whatever method is chosen. With
    `filter_judgements`, only the extraction pairs the judge passes are used
    (`vectors.filtering`, at `settings.filter`'s thresholds).
    """
    methods = settings.methods
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise TraitscopeError(f"unknown vector method(s) {', '.join(unknown)}; known: {', '.join(METHODS)}")
    table, x, layers, filtered = fitting_rows(
        capture_json, prompts, position, settings.filter, filter_judgements
    )
    pos, neg = split_groups(table, x, "extraction")
    if filtered is not None and len(pos) < 2:
        raise TraitscopeError(
            f"{filter_judgements}: {len(pos)} extraction pair(s) survive the judge filter, 2 needed; "
            "lower extraction.filter thresholds, use a stronger judge, or disable extraction.filter"
        )
    if len(pos) < 2 or len(neg) < 2:
        raise TraitscopeError(f"{prompts}: need at least 2 positive and 2 negative extraction rows")
    not_fitted = {}
    if "pca" in methods and not _shares_questions(table):
        # a prompt-contrast set: its positives and negatives are different prompts, so a row-paired
        # difference would pair prompts by their sort order and mean nothing
        not_fitted["pca"] = "positives and negatives are different prompts, not pairs; pca reads pairs"
    elif "pca" in methods and len(pos) != len(neg):
        raise TraitscopeError(
            f"{prompts}: {len(pos)} positive and {len(neg)} negative extraction rows, and pca reads "
            "row-paired differences; rerun trait-prompts for whole pairs, or drop pca from extraction.methods"
        )
    options = {"probe": {"c": settings.probe_c}}
    vectors = {
        m: partial(METHODS[m], **options.get(m, {}))(pos, neg)
        for m in dict.fromkeys(["mean_diff", *methods])
        if m not in not_fitted
    }
    meta = {
        "model": variant,
        "trait": trait,
        "position": position,
        "layers": layers,
        "methods": list(vectors),
        "n_positive": len(pos),
        "n_negative": len(neg),
        "dataset_sha256": sorted(set(table["trait_sha256"].astype(str))) if "trait_sha256" in table else [],
        "shape": list(vectors["mean_diff"].shape),
        "judge_filter": filtered,
        "not_fitted": not_fitted,
        # what no later score may be computed on (`traitscope.baselines.check_unseen`)
        "training_prompts": sorted({text_key(t) for t in user_texts(table[table["split"] == "extraction"])}),
    }
    save_safetensors(out_vectors, vectors, {"meta": json.dumps(meta)})
    write_json(out_meta, meta)
    return vectors


def _shares_questions(table: pd.DataFrame) -> bool:
    """Whether the extraction positives and negatives answer the same questions (a persona set's
    instruction pairs), rather than being different prompts (a prompt-contrast set)."""
    rows = table[table["split"] == "extraction"]
    positive = set(rows.loc[rows["label"] == 1, "question"])
    return bool(positive & set(rows.loc[rows["label"] == 0, "question"]))
