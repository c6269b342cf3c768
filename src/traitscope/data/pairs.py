"""The project's paired prompt files (resources/prompts/hard_negatives/pairs.yaml): a harmful and
a harmless request sharing a key word, read into the loaders' prompt-table shape. Its own module
because these are bundled project data, not an external dataset's format."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from traitscope.data.loaders import _frame, _meta, _read_text
from traitscope.errors import TraitscopeError
from traitscope.io import parse_yaml

PAIR_FIELDS = ("id", "category", "keyword", "split", "harmful", "harmless")
PAIR_SPLITS = ("extraction", "heldout")


def load_pairs(path: str | Path, split: str | None = None, label: int | None = None) -> pd.DataFrame:
    """A paired prompt file (resources/prompts/hard_negatives/pairs.yaml): one harmful and one
    harmless request per pair, sharing a key word; two rows per pair (label 1 and 0).

    `split` keeps one of the file's fixed splits (extraction, heldout), `label` one side; the
    row's `category` is its pair's, and `meta` keeps the pair id, key word and split, so a
    per-category AUC and a pair's two sides can be found again.
    """
    path = Path(path)
    if split is not None and split not in PAIR_SPLITS:
        raise TraitscopeError(f"{path}: split must be one of {', '.join(PAIR_SPLITS)}, got {split!r}")
    data = parse_yaml(_read_text(path), path)
    pairs = data.get("pairs") if isinstance(data, dict) else None
    if not isinstance(pairs, list):
        raise TraitscopeError(f"{path}: expected a mapping with 'pairs', a list of {', '.join(PAIR_FIELDS)}")
    rows = []
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, dict) and all(isinstance(pair.get(k), str) for k in PAIR_FIELDS)):
            raise TraitscopeError(f"{path}: pair {i} needs string fields {', '.join(PAIR_FIELDS)}")
        if pair["split"] not in PAIR_SPLITS:
            raise TraitscopeError(
                f"{path}: pair {pair['id']} has split {pair['split']!r}; use {' or '.join(PAIR_SPLITS)}"
            )
        if split is not None and pair["split"] != split:
            continue
        meta = _meta({"pair_id": pair["id"], "keyword": pair["keyword"], "split": pair["split"]})
        for side, side_label in (("harmful", 1), ("harmless", 0)):
            if label is None or label == side_label:
                rows.append(
                    {
                        "prompt_id": f"{path.parent.name}-{pair['id']}-{side}",
                        "prompt": pair[side],
                        "source": path.parent.name,
                        "category": pair["category"],
                        "label": side_label,
                        "meta": meta,
                    }
                )
    return _frame(path, rows)
