"""Prompt-set preparation: an external dataset (or a local file) -> prompt-set Parquet.

A `prompt_sets:` entry names a dataset and a file of it; the file is read from the data
mirror when one is set and fetched from its origin otherwise. Sampling is seeded, so a
rerun gives the same prompts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from traitscope import loaders, sources
from traitscope.errors import TraitscopeError
from traitscope.io import write_parquet

LOADERS = ("harmbench", "advbench", "refusal_direction", "beavertails", "emergent_misalignment", "parquet")


def read_prompt_table(path: str | Path) -> pd.DataFrame:
    """A prepared prompt set with a `prompt` column (the input of derived sets)."""
    try:
        table = pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise TraitscopeError(f"{path}: cannot read prompt set ({exc}); rerun prep") from None
    if "prompt" not in table.columns:
        raise TraitscopeError(f"{path}: needs a 'prompt' column")
    return table


def load_source(spec: dict[str, Any], data_mirror: str | None, cache_dir: str | Path) -> pd.DataFrame:
    """Rows in the prompt-set schema for one `prompt_sets:` entry."""
    dataset = spec.get("dataset")
    if dataset not in LOADERS:
        raise TraitscopeError(f"prompt set: unknown dataset {dataset!r}; use one of {', '.join(LOADERS)}")
    if dataset == "parquet":
        path = Path(spec["path"])
        if not path.is_file():
            raise TraitscopeError(f"{path}: prompt-set Parquet not found; fix prompt_sets.<name>.path")
        return pd.read_parquet(path)
    if dataset == "beavertails":
        return loaders.load_beavertails(spec.get("path") or spec.get("split", "30k_test"), data_mirror)
    path = (
        Path(spec["path"])
        if spec.get("path")
        else sources.fetch(dataset, spec["file"], data_mirror, cache_dir)
    )
    if dataset == "harmbench":
        return loaders.load_harmbench(path, spec.get("functional_categories", ["standard"]))
    if dataset == "advbench":
        return loaders.load_advbench(path)
    if dataset == "refusal_direction":
        return loaders.load_instructions(path, int(spec.get("label", path.name.startswith("harmful"))))
    return loaders.load_em_questions(path)


def conditions_2x2(harmful: pd.DataFrame, harmless: pd.DataFrame, prefills: list[str]) -> pd.DataFrame:
    """The prefill attack's conditions: harmful / benign prompts, without and with each prefill.

    C1 harmful, C2 harmful + prefill, C3 benign, C4 benign + prefill; the benign set is
    matched in count to the harmful one. With several prefills, C2 and C4 repeat per prefill.
    """
    if not prefills:
        raise TraitscopeError("prefill conditions: give at least one prefill")
    n = min(len(harmful), len(harmless))
    if n < 2:
        raise TraitscopeError(f"prefill conditions: need >= 2 harmful and harmless prompts, have {n}")
    rows = []
    for kind, table in (("harmful", harmful.head(n)), ("benign", harmless.head(n))):
        none, with_prefill = ("C1", "C2") if kind == "harmful" else ("C3", "C4")
        for r in table.itertuples():
            base = {
                "prompt": r.prompt,
                "source": r.source,
                "category": r.category,
                "label": int(kind == "harmful"),
            }
            rows.append(
                {
                    **base,
                    "prompt_id": f"{none}:{r.prompt_id}",
                    "condition": none,
                    "prefill": "",
                    "prefill_index": -1,
                }
            )
            for i, prefill in enumerate(prefills):
                rows.append(
                    {
                        **base,
                        "prompt_id": f"{with_prefill}:p{i}:{r.prompt_id}",
                        "condition": with_prefill,
                        "prefill": prefill,
                        "prefill_index": i,
                    }
                )
    return pd.DataFrame(rows)


def prepare_prompt_set(
    spec: dict[str, Any],
    out: str | Path,
    data_mirror: str | None = None,
    cache_dir: str | Path = "results/cache",
) -> pd.DataFrame:
    """Load, sample (seeded) and decorate (system prompt, prefill) one prompt set."""
    if spec["dataset"] == "conditions":
        parts = [read_prompt_table(p) for p in (spec["harmful_path"], spec["harmless_path"])]
        table = conditions_2x2(*parts, spec.get("prefills") or [])
        write_parquet(out, table)
        return table
    table = load_source(spec, data_mirror, cache_dir)
    n = spec.get("n")
    if n is not None and n < len(table):
        table = table.sample(n=n, random_state=spec.get("seed", 0)).sort_index()
    for key in ("system", "prefill"):
        if spec.get(key):
            table[key] = spec[key]
    if table.empty:
        raise TraitscopeError(f"prompt set from {spec}: no prompts left; check the file and n")
    write_parquet(out, table.reset_index(drop=True))
    return table
