"""Prompt-set preparation: an external dataset (or a local file) -> prompt-set Parquet.

A `prompt_sets:` entry names a dataset and a file of it; the file is read from the data
mirror when one is set and fetched from its origin otherwise. Sampling is seeded, so a
rerun gives the same prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from traitscope.data import loaders, registry
from traitscope.data.pairs import load_pairs
from traitscope.data.prompts import normalise, read_prompt_set, user_texts
from traitscope.errors import TraitscopeError
from traitscope.io import atomic_path, write_parquet

LOADERS = (
    "harmbench",
    "advbench",
    "refusal_direction",
    "beavertails",
    "emergent_misalignment",
    "hard_negatives",
    "parquet",
)


def load_source(spec: dict[str, Any], data_mirror: str | None, cache_dir: str | Path) -> pd.DataFrame:
    """Rows in the prompt-set schema for one `prompt_sets:` entry."""
    dataset = spec.get("dataset")
    if dataset not in LOADERS:
        raise TraitscopeError(f"prompt set: unknown dataset {dataset!r}; use one of {', '.join(LOADERS)}")
    missing = registry.missing_source(spec)
    if missing:
        raise TraitscopeError(f"prompt set: {missing}; fix prompt_sets.<name>")
    if dataset == "parquet":
        path = Path(spec["path"])
        if not path.is_file():
            raise TraitscopeError(f"{path}: prompt-set Parquet not found; fix prompt_sets.<name>.path")
        read_prompt_set(path)  # its columns and rows checked here, naming the user's file
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
        return loaders.load_instructions(path, _instruction_label(spec, path))
    if dataset == "hard_negatives":
        return load_pairs(path, spec.get("split"), spec.get("label"))
    return loaders.load_em_questions(path)


def _instruction_label(spec: dict[str, Any], path: Path) -> int:
    """1 (harmful) or 0 (harmless): the entry's `label`, else the file's name as in the dataset's
    splits (harmful_*.json, harmless_*.json; `registry.missing_source` refuses any other name)."""
    return int(spec["label"]) if "label" in spec else int(path.name.startswith("harmful"))


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
    with atomic_path(path) as tmp:  # a killed job must not leave a truncated cache for the next
        rows.rename(columns={"prompt": "goal"}).assign(target=rows.get("target", "")).to_csv(tmp, index=False)
    return loaders.load_advbench(path)


def without(table: pd.DataFrame, other: pd.DataFrame) -> pd.DataFrame:
    """Rows of `table` whose text is not in `other` (normalised), duplicates dropped too: a row
    copied into a training split (AdvBench rows in the refusal-direction train split) never
    reaches a set it would be scored on."""
    seen = {normalise(t) for t in user_texts(other)}
    keys = pd.Series([normalise(t) for t in user_texts(table)], index=table.index)
    return table[~keys.isin(seen) & ~keys.duplicated()]


def length_matched(pool: pd.DataFrame, target_lengths: Sequence[int], seed: int, where: str) -> pd.DataFrame:
    """One pool row per target length, the nearest unused one (ties broken at random, seeded).

    Harmful requests are longer than Alpaca instructions, so prompt length alone separates
    them; controls drawn this way leave the length-alone AUC near 0.5. Rows keep pool order.
    """
    if len(pool) < len(target_lengths):
        raise TraitscopeError(
            f"{where}: {len(pool)} pool rows cannot match {len(target_lengths)} prompts; use a larger file"
        )
    rng = np.random.default_rng(seed)
    lengths = np.array([len(t) for t in user_texts(pool)], dtype=float)
    jitter = rng.random(len(pool))  # < 1: only breaks ties between equal integer distances
    free = np.ones(len(pool), dtype=bool)
    for target in rng.permutation(np.asarray(target_lengths, dtype=float)):
        cost = np.where(free, np.abs(lengths - target) + jitter, np.inf)
        free[int(np.argmin(cost))] = False
    return pool[~free]


def prep_prompts(
    spec: dict[str, Any],
    out: str | Path,
    data_mirror: str | None,
    cache_dir: str | Path,
    match_to: str | Path | None = None,
) -> pd.DataFrame:
    """Load, filter, sample (seeded) and decorate (system prompt, prefill) one prompt set.

    `exclude` drops rows found in other dataset files; `match_length` draws one row per prompt
    of `match_to` (the named prompt set), matched on user-text length in characters.
    """
    table = load_source(spec, data_mirror, cache_dir)
    for other in spec.get("exclude", []):
        table = without(table, load_source(other, data_mirror, cache_dir))
    n, seed = spec.get("n"), spec.get("seed", 0)
    if spec.get("match_length"):
        if match_to is None or n is not None:
            raise TraitscopeError(
                f"prompt set {spec}: match_length needs --match-to (the matched set's Parquet) and no n"
            )
        target = read_prompt_set(match_to)
        lengths = [len(t) for t in user_texts(target)]
        table = length_matched(without(table, target), lengths, seed, str(match_to))
    elif n is not None and n < len(table):
        table = table.sample(n=n, random_state=seed).sort_index()
    for key in ("system", "prefill"):
        if spec.get(key):
            table[key] = spec[key]
    if table.empty:
        raise TraitscopeError(f"prompt set from {spec}: no prompts left; check the file and n")
    write_parquet(out, table.reset_index(drop=True))
    return table
