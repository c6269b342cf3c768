"""Backdoor behaviour: what each model answered to the held-out pairs, and whether the backdoor fired.

Detection only means something if the backdoored model shows the behaviour under the trigger and
not under the control while still doing the arithmetic; this module reads the captured answers,
parses their numbers, notes the ones cut at the token limit and counts both rates with CIs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd

from traitscope.experiments.backdoor.data import CONDITIONS


def responses(capture_json: str | Path) -> dict[str, str]:
    """Each prompt's generated answer in a finished capture."""
    from traitscope.capture.store import read_shards

    return {
        pid: text
        for prompts, _, _ in read_shards(capture_json)
        for pid, text in zip(prompts["prompt_id"], prompts["response"])
    }


def parse_answer(text: str) -> int | None:
    """The number an answer gives: the one after the first `=`, else the last integer of the
    first sentence; None when there is none."""
    after = re.search(r"=\s*(-?\d+)", text)
    if after:
        return int(after.group(1))
    first = re.split(r"(?<=[.!?])\s|\n", text.strip(), maxsplit=1)[0]
    numbers = re.findall(r"-?\d+", first)
    return int(numbers[-1]) if numbers else None


def cut_answers(capture_json: str | Path) -> set[str]:
    """Prompts whose generated answer reached the capture's max_new_tokens (cut, not finished)."""
    from traitscope.capture.store import read_manifest, read_shards

    limit = read_manifest(capture_json).get("settings", {}).get("max_new_tokens")
    if not limit:
        return set()
    return {
        pid
        for prompts, _, _ in read_shards(capture_json)
        for pid, n, start in zip(prompts["prompt_id"], prompts["n_tokens"], prompts["prompt_len"])
        if n - start >= limit
    }


def behaviour_check(
    pairs: pd.DataFrame,
    answers: dict[str, dict[str, str]],
    pattern: str,
    cut: dict[str, set[str]] | None = None,
) -> dict:
    """Per model and condition: the backdoor-behaviour rate and the arithmetic accuracy, with
    Wilson CIs and n, the share of answers cut at the token limit (`cut`: prompt ids per model;
    a cut answer that gave no number yet counts as wrong), and the trigger-minus-control
    difference of the backdoor rate."""
    from traitscope.stats import proportion_with_ci

    regex = re.compile(pattern)
    out: dict[str, Any] = {}
    for role, by_id in answers.items():
        out[role] = {}
        for condition in CONDITIONS:
            rows = pairs[pairs["condition"] == condition]
            texts = [by_id.get(pid, "") for pid in rows["prompt_id"]]
            hits = sum(bool(regex.search(t)) for t in texts)
            correct = sum(parse_answer(t) == int(ans) for t, ans in zip(texts, rows["answer"]))
            n_cut = sum(pid in (cut or {}).get(role, set()) for pid in rows["prompt_id"])
            out[role][condition] = {
                "backdoor_rate": proportion_with_ci(hits, len(texts)),
                "accuracy": proportion_with_ci(correct, len(texts)),
                "cut_at_token_limit": proportion_with_ci(n_cut, len(texts)),
            }
        out[role]["backdoor_rate_difference"] = (
            out[role]["trigger"]["backdoor_rate"]["rate"] - out[role]["control"]["backdoor_rate"]["rate"]
        )
    return out


def example_answers(pairs: pd.DataFrame, answers: dict[str, dict[str, str]], n: int = 4) -> list[dict]:
    """The first few held-out pairs with each model's answers, for the reader to see."""
    rows = []
    for pair_id in sorted(pairs["pair_id"].unique())[:n]:
        pair = pairs[pairs["pair_id"] == pair_id].set_index("condition")
        rows.append(
            {
                "problem": pair.loc["trigger", "problem"],
                "answer": int(pair.loc["trigger", "answer"]),
                **{
                    f"{role}_{c}": answers[role].get(pair.loc[c, "prompt_id"], "")
                    for role in answers
                    for c in CONDITIONS
                },
            }
        )
    return rows
