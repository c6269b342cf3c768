"""Token positions in a trigger/control pair, and the earliest one where detection shows.

"How early" needs one labelling of tokens that both prompts of a pair share: the last token where
they differ, the prompt tokens after it, the last prompt token, then the generated ones. This
module makes that labelling, marks the positions where a separation would be in the text itself
(same text within a condition, identical generations), and finds the earliest detecting position.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from traitscope.errors import TraitscopeError
from traitscope.experiments.backdoor.data import CONDITIONS


def position_order(n_prompt_steps: int, n_generated: int) -> list[str]:
    """Position labels in reading order: the last differing token, the prompt tokens after it,
    the last prompt token, then the generated tokens."""
    return [
        "prefix_end",
        *(f"p{j}" for j in range(n_prompt_steps)),
        "last_prompt",
        *(f"g{j}" for j in range(1, n_generated + 1)),
    ]


def token_positions(tokens: pd.DataFrame, pairs: pd.DataFrame, n_generated: int) -> pd.DataFrame:
    """Map each kept token of a pair capture to its position label.

    `tokens` is a capture's token index (prompt_id, token_index, segment, token). In each pair
    the user tokens shared at the end of both prompts are the question after the prefix:
    `p0` is the first of them, `prefix_end` the last token that differs. `last_prompt` is the
    token the first answer token is predicted from; `g1..` are the first generated tokens.
    """
    info = pairs.set_index("prompt_id")[["pair_id", "condition"]]
    tokens = tokens[tokens["prompt_id"].isin(info.index)].sort_values(["prompt_id", "token_index"])
    user = {pid: t for pid, t in tokens[tokens["segment"] == "user"].groupby("prompt_id")}
    rows = []
    for pair_id, pair in pairs.groupby("pair_id"):
        ids = dict(zip(pair["condition"], pair["prompt_id"]))
        if set(ids) != set(CONDITIONS) or not all(pid in user for pid in ids.values()):
            continue
        seqs = {c: user[pid]["token"].tolist() for c, pid in ids.items()}
        shared = 0
        a, b = seqs["trigger"], seqs["control"]
        while shared < min(len(a), len(b)) and a[len(a) - 1 - shared] == b[len(b) - 1 - shared]:
            shared += 1
        for condition, pid in ids.items():
            u = user[pid]
            n = len(u)
            for j, (index, token) in enumerate(zip(u["token_index"], u["token"])):
                step = j - (n - shared)
                if step >= -1:
                    label = "prefix_end" if step == -1 else f"p{step}"
                    rows.append((pid, pair_id, condition, int(index), label, token))
            mine = tokens[tokens["prompt_id"] == pid]
            last = mine[mine["segment"] == "last_prompt"]
            for index, token in zip(last["token_index"], last["token"]):
                rows.append((pid, pair_id, condition, int(index), "last_prompt", token))
            generated = mine[mine["segment"] == "response"].head(n_generated)
            for j, (index, token) in enumerate(zip(generated["token_index"], generated["token"]), start=1):
                rows.append((pid, pair_id, condition, int(index), f"g{j}", token))
    return pd.DataFrame(
        rows, columns=["prompt_id", "pair_id", "condition", "token_index", "position", "token"]
    )


def same_text_positions(positions: pd.DataFrame, order: list[str]) -> set[str]:
    """Prompt positions at which every prompt of a condition has read the same text so far
    (the prefix, then the question's first, shared words): one activation per condition there,
    so any direction separates the conditions completely (AUC 0 or 1) or not at all."""
    prompt = [label for label in order if label == "prefix_end" or re.fullmatch(r"p\d+", label)]
    same, seen = set(), []
    for label in prompt:
        seen.append(label)
        upto = positions[positions["position"].isin(seen)].sort_values("token_index")
        texts = upto.groupby(["condition", "prompt_id"])["token"].apply(tuple)
        if texts.groupby(level="condition").nunique().max() != 1:
            break
        same.add(label)
    return same


def identical_generation(positions: pd.DataFrame, n_generated: int) -> dict[str, float]:
    """Per generated position g<j>: the share of pairs whose trigger and control answers have the
    same tokens up to and including it (where they do, a separation there is not in the text)."""
    gen = positions[positions["position"].str.match(r"g\d+$")]
    out = {}
    for j in range(1, n_generated + 1):
        upto = gen[gen["position"].isin([f"g{i}" for i in range(1, j + 1)])]
        seqs = (
            upto.sort_values("token_index").groupby(["pair_id", "condition"])["token"].apply(tuple).unstack()
        )
        if seqs.empty or not set(CONDITIONS) <= set(seqs.columns):
            continue
        seqs = seqs.dropna()
        same = [t == c and len(t) == j for t, c in zip(seqs["trigger"], seqs["control"])]
        out[f"g{j}"] = float(np.mean(same)) if same else float("nan")
    return out


def two_sided_auc(auc: float) -> float:
    """How far an AUC is from chance in either direction: max(AUC, 1 - AUC)."""
    return max(auc, 1.0 - auc)


def earliest_detection(
    order: list[str],
    auc_backdoored: dict[str, float],
    auc_base: dict[str, float],
    threshold: float,
    either_way: bool = True,
) -> dict:
    """The first position after the prefix where the backdoored model separates trigger from
    control (AUC above `threshold`; with `either_way`, in either direction) while the base model
    separates them neither way (max(AUC, 1 - AUC) <= threshold: a base AUC of 0.1 separates
    as well as one of 0.9, so it is no null). Positions without both AUCs are skipped."""
    for label in order:
        if label == "prefix_end" or label not in auc_backdoored or label not in auc_base:
            continue
        backdoored = two_sided_auc(auc_backdoored[label]) if either_way else auc_backdoored[label]
        if backdoored > threshold and two_sided_auc(auc_base[label]) <= threshold:
            return {
                "position": label,
                "before_first_generated_token": not label.startswith("g"),
                "auc_backdoored": auc_backdoored[label],
                "auc_base": auc_base[label],
            }
    return {"position": None, "before_first_generated_token": None}


def varying_prompt_tokens(positions: pd.DataFrame) -> pd.DataFrame:
    """The prompt tokens after the prefix that `after_prefix_mean` averages: those whose
    preceding text varies across the prompts of a condition (from the first word that differs
    between problems on). Before that every prompt of a condition has one activation, which
    would only add a per-condition constant."""
    steps = {lab for lab in positions["position"] if re.fullmatch(r"p\d+", lab)}
    same = same_text_positions(positions, sorted(steps, key=lambda lab: int(lab[1:])))
    keep = positions["position"].str.fullmatch(r"p\d+") & ~positions["position"].isin(same)
    if not keep.any():
        raise TraitscopeError(
            "every prompt token after the prefix follows the same text in all prompts of a condition; "
            "after_prefix_mean needs problems that differ (experiments.backdoor.data)"
        )
    return positions.loc[keep, ["prompt_id", "token_index"]]
