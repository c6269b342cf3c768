"""A captured trait prompt set joined to its pooled activations, and its labelled groups.

Extraction, evaluation and judge filtering all read the prompt set this way.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from traitscope.capture.store import load_pooled
from traitscope.errors import TraitscopeError
from traitscope.io import read_table

REQUIRED_COLUMNS = ("prompt_id", "split", "label", "question", "pair_index")


def labelled_activations(
    capture_json: str | Path, prompts: str | Path, position: str
) -> tuple[pd.DataFrame, torch.Tensor, list[int]]:
    """The trait prompt set joined to its pooled activations, rows ordered so pairs align.

    Rows sort by (split, question, pair, polarity): positive row i and negative row i of a
    split answer the same question under the same instruction pair.
    """
    table = read_table(prompts, "trait-prompts", REQUIRED_COLUMNS)
    ids, x, layers = load_pooled(capture_json, position)
    row = {pid: i for i, pid in enumerate(ids)}
    absent = [pid for pid in table["prompt_id"] if pid not in row]
    if absent:
        raise TraitscopeError(f"{capture_json}: prompt {absent[0]!r} was not captured; rerun capture")
    table = table.sort_values(["split", "question", "pair_index", "label"]).reset_index(drop=True)
    return table, x[[row[pid] for pid in table["prompt_id"]]], layers


def split_groups(table: pd.DataFrame, x: torch.Tensor, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(positives, negatives) of one split, row-paired."""
    rows = table["split"] == split
    pos = x[torch.tensor((rows & (table["label"] == 1)).to_numpy())]
    neg = x[torch.tensor((rows & (table["label"] == 0)).to_numpy())]
    return pos, neg
