"""Prompt-set preparation: an external dataset (or a local file) -> prompt-set Parquet.

A `prompt_sets:` entry names a dataset and a file of it; the file is read from the data
mirror when one is set and fetched from its origin otherwise. Sampling is seeded, so a
rerun gives the same prompts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from traitscope.data import loaders, registry
from traitscope.errors import TraitscopeError
from traitscope.io import write_parquet

LOADERS = ("harmbench", "advbench", "refusal_direction", "beavertails", "emergent_misalignment", "parquet")


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
    if dataset == "advbench" and spec.get("hub"):
        return _advbench_from_hub(spec["hub"], Path(cache_dir))
    if dataset == "beavertails":
        return loaders.load_beavertails(spec.get("path") or spec.get("split", "30k_test"), data_mirror)
    path = source_file(spec, data_mirror, cache_dir)
    if dataset == "harmbench":
        return loaders.load_harmbench(path, spec.get("functional_categories", ["standard"]))
    if dataset == "advbench":
        return loaders.load_advbench(path)
    if dataset == "refusal_direction":
        return loaders.load_instructions(path, int(spec.get("label", path.name.startswith("harmful"))))
    return loaders.load_em_questions(path)


def source_file(spec: dict[str, Any], data_mirror: str | None, cache_dir: str | Path) -> Path:
    """The local file of a file-backed `prompt_sets:` entry: its `path`, else the mirror's or
    a cached download of its dataset file."""
    if spec.get("path"):
        return Path(spec["path"])
    return registry.fetch(spec["dataset"], spec["file"], data_mirror, cache_dir)


def _advbench_from_hub(hub_id: str, cache_dir: Path) -> pd.DataFrame:
    """AdvBench from the hub (e.g. walledai/AdvBench: prompt, target), via the original CSV layout."""
    try:
        import datasets
    except ImportError:
        raise TraitscopeError(
            f"{hub_id}: loading from the hub needs `datasets` (pip install datasets)"
        ) from None
    try:
        rows = datasets.load_dataset(hub_id, split="train").to_pandas()
    except OSError as exc:
        raise TraitscopeError(f"{hub_id}: download failed ({exc}); set data_mirror or use file:") from None
    if "prompt" not in rows.columns:
        raise TraitscopeError(f"{hub_id}: expected a 'prompt' column, found {', '.join(rows.columns)}")
    path = cache_dir / "advbench" / "harmful_behaviors.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows.rename(columns={"prompt": "goal"}).assign(target=rows.get("target", "")).to_csv(path, index=False)
    return loaders.load_advbench(path)


def prep_prompts(
    spec: dict[str, Any],
    out: str | Path,
    data_mirror: str | None,
    cache_dir: str | Path,
) -> pd.DataFrame:
    """Load, sample (seeded) and decorate (system prompt, prefill) one prompt set."""
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
