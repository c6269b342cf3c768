"""The projections file's layout and its reading, without torch (analyses import it while
Snakemake parses the workflow).

Rows: prompt_id, variant, trait, layer, position (a pool name, or the token's segment),
token_index (-1 for pooled rows), score (scalar projection on the unit vector), cosine, and
whether the layer is the trait's chosen one. `project` writes a row group per shard and layer;
an analysis reads only the rows it scores (`read_projections`), so neither holds a whole set's
table: 30K prompts are 18M rows at Gemma-2-2B's 26 layers, 3 pools and 7 traits.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa

from traitscope.errors import TraitscopeError

SCHEMA = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("variant", pa.string()),
        ("trait", pa.string()),
        ("layer", pa.int64()),
        ("position", pa.string()),
        ("token_index", pa.int64()),
        ("score", pa.float32()),
        ("cosine", pa.float32()),
        ("chosen_layer", pa.bool_()),
    ]
)
COLUMNS = SCHEMA.names


def read_projections(path: str | Path, chosen: bool = False, pooled: bool = False) -> pd.DataFrame:
    """A projections file's rows at the traits' chosen layers (`chosen`) and pooled (`pooled`)
    only, where asked: the others are dropped a row group at a time as the file is read."""
    filters = [("chosen_layer", "==", True)] if chosen else []
    filters += [("token_index", "==", -1)] if pooled else []
    try:
        table = pd.read_parquet(path, filters=filters or None)
    except Exception as exc:  # pyarrow raises its own error types
        raise TraitscopeError(
            f"{path}: cannot read projections ({type(exc).__name__}); rerun project"
        ) from None
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise TraitscopeError(
            f"{path}: no column {missing[0]!r}, not a projections file; pass project's output"
        )
    return table


def chosen_scores(projections: pd.DataFrame, position: str, traits: list[str]) -> pd.DataFrame:
    """prompt_id x trait table of scores at each trait's chosen layer and one pooled position."""
    pooled = projections["token_index"] == -1  # a token's segment may share a pool's name
    rows = projections[projections["chosen_layer"] & pooled & (projections["position"] == position)]
    if rows.empty:
        raise TraitscopeError(
            f"no projections at position {position!r} on a chosen layer; check the position"
        )
    missing = sorted(set(traits) - set(rows["trait"]))
    if missing:
        raise TraitscopeError(
            f"no projections for trait(s) {', '.join(missing)}; add them to traits: and rerun"
        )
    return rows.pivot_table(index="prompt_id", columns="trait", values="score")
