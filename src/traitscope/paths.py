"""Where the pipeline keeps each stage's files, shared by the workflow and the experiments.

One owner for the layout under `results/`, so an experiment plug-in names its inputs
without repeating the core's conventions.
"""

from __future__ import annotations


def prompts_path(prompt_set: str) -> str:
    return f"results/prompts/{prompt_set}.parquet"


def capture_path(variant: str, prompt_set: str) -> str:
    """A capture's manifest (capture.json); its shards sit beside it."""
    return f"results/capture/{variant}/{prompt_set}/capture.json"


def projections_path(variant: str, prompt_set: str) -> str:
    return f"results/projections/{variant}/{prompt_set}.parquet"


def trait_dir(variant: str, trait: str) -> str:
    """results/traits/<variant>/<group>/<trait>: one folder per trait and variant."""
    return f"results/traits/{variant}/{trait}"
