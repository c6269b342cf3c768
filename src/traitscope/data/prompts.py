"""Prompt sets: the Parquet every capture reads, one row per prompt.

Columns: `prompt_id`, `messages` (list of {role, content}, or its JSON) or `prompt`
(a user turn), optional `system`, `prefill`, `source`, `category`, `label`, `meta`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd

from traitscope.errors import TraitscopeError


def read_prompt_set(path: str | Path, columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read and check a prompt set; the returned table always has `messages` and `prefill`.
    `columns`: what a derived set (an experiment's) carries beyond a prompt set's own."""
    try:
        table = pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise TraitscopeError(f"{path}: cannot read prompt-set Parquet ({exc})") from None
    missing = [c for c in ("prompt_id", *columns) if c not in table.columns]
    if missing:
        raise TraitscopeError(
            f"{path}: missing column(s) {', '.join(missing)}; pass the set prep-prompts (or, for an "
            "experiment's own set, the experiment's stage) wrote"
        )
    if "messages" not in table.columns and "prompt" not in table.columns:
        raise TraitscopeError(f"{path}: needs a 'messages' or a 'prompt' column")
    if table.empty:
        raise TraitscopeError(f"{path}: the prompt set is empty")
    if table["prompt_id"].duplicated().any():
        dup = table.loc[table["prompt_id"].duplicated(), "prompt_id"].iloc[0]
        raise TraitscopeError(f"{path}: duplicate prompt_id {dup!r}; ids must be unique")
    table = table.copy()
    if "messages" in table.columns:
        table["messages"] = [_messages(path, pid, m) for pid, m in zip(table["prompt_id"], table["messages"])]
    else:
        missing = [pid for pid, p in zip(table["prompt_id"], table["prompt"]) if not isinstance(p, str)]
        if missing:
            raise TraitscopeError(f"{path}: prompt {missing[0]!r} has no prompt text")
        systems = table["system"] if "system" in table.columns else [None] * len(table)
        table["messages"] = [
            ([{"role": "system", "content": s}] if isinstance(s, str) and s else [])
            + [{"role": "user", "content": p}]
            for p, s in zip(table["prompt"], systems)
        ]
    if "prefill" not in table.columns:
        table["prefill"] = ""
    table["prefill"] = table["prefill"].fillna("").astype(str)
    return table.reset_index(drop=True)


def _messages(path: str | Path, prompt_id: str, value: object) -> list[dict[str, str]]:
    try:
        msgs = json.loads(value) if isinstance(value, str) else list(value)
    except (ValueError, TypeError):  # not JSON, or a null / scalar cell
        msgs = None
    if (
        not isinstance(msgs, list)
        or not msgs
        or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in msgs
        )
    ):
        raise TraitscopeError(
            f"{path}: prompt {prompt_id!r} has malformed messages; use [{{role, content}}, ...]"
        )
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in msgs]


def user_texts(table: pd.DataFrame) -> list[str]:
    """Each row's user text: the `prompt` column, else its user turns joined.

    The surface baselines (length, bag of words) and the split bookkeeping read this, so a
    trait set (messages) and a dataset set (prompt) are compared on the same text.
    """
    if "prompt" in table.columns:
        return [str(p) for p in table["prompt"]]
    return [
        "\n".join(m["content"] for m in _messages("<table>", pid, msgs) if m["role"] == "user")
        for pid, msgs in zip(table["prompt_id"], table["messages"])
    ]


def normalise(text: str) -> str:
    """Case- and whitespace-insensitive key of a prompt: the same request copied between datasets
    (AdvBench rows in the refusal-direction train split) compares equal."""
    return " ".join(text.lower().split())


def text_key(text: str) -> str:
    """sha256 of the normalised text: what a vector's metadata records of its training rows."""
    return hashlib.sha256(normalise(text).encode()).hexdigest()


def require_side(path: str | Path, table: pd.DataFrame, harmful: bool) -> None:
    """Refuse a prompt set whose rows are labelled for the other side: harmful requests passed
    as the harmless controls (or the reverse) invert every AUC and effect without an error.
    Rows without a label (a set that carries none) pass."""
    if "label" not in table.columns:
        return
    wrong = table["label"].notna() & (table["label"] != int(harmful))
    if wrong.any():
        side, other = ("harmful", "harmless") if harmful else ("harmless", "harmful")
        raise TraitscopeError(
            f"{path}: {int(wrong.sum())} of {len(table)} rows are labelled {other}, passed as the "
            f"{side} side; swap the harmful and harmless sets (in the config or the command's arguments)"
        )
