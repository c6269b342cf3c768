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
from traitscope.prompts import read_prompt_set

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


def prepare_prompt_set(
    spec: dict[str, Any],
    out: str | Path,
    data_mirror: str | None = None,
    cache_dir: str | Path = "results/cache",
) -> pd.DataFrame:
    """Load, sample (seeded) and decorate (system prompt, prefill) one prompt set."""
    if spec["dataset"] == "conditions":
        parts = [read_prompt_set(p) for p in (spec["harmful_path"], spec["harmless_path"])]
        for path, part in zip((spec["harmful_path"], spec["harmless_path"]), parts):
            if "prompt" not in part.columns:
                raise TraitscopeError(f"{path}: the conditions need a 'prompt' column")
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
