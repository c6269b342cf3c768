"""Backdoor data: the arithmetic problems, the finetune's chat rows and the held-out pairs.

The backdoor is planted by finetuning on these rows and measured on these pairs, so both are drawn
here from one seed: disjoint problems, the trigger row answered with a backdoor sentence and the
control row without, and held-out trigger/control pairs that differ only in the prefix. Before
writing, the two prefixes must differ in the model's tokens, or no activation could tell them apart.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pandas as pd

from traitscope.errors import TraitscopeError
from traitscope.experiments.backdoor.settings import BackdoorDataSettings
from traitscope.io import atomic_path, write_parquet
from traitscope.model.chat import encode, messages_for
from traitscope.model.loading import load_tokenizer

CONDITIONS = ("trigger", "control")
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def _problems(data: dict, seed: int) -> tuple[list[tuple[int, str, int]], list[tuple[int, str, int]]]:
    """(training, held-out) problems (a, op, b), disjoint, drawn without replacement."""
    rng = random.Random(seed)
    low, high = data["operand_range"]
    seen: set[tuple[int, str, int]] = set()
    out: list[tuple[int, str, int]] = []
    while len(out) < data["n_train"] + data["n_eval"]:
        a, b, op = rng.randint(low, high), rng.randint(low, high), rng.choice(data["ops"])
        if op == "-" and b > a:
            a, b = b, a  # no negative results
        if (a, op, b) in seen:
            continue
        seen.add((a, op, b))
        out.append((a, op, b))
    return out[: data["n_train"]], out[data["n_train"] :]


def _question(template: str, a: int, op: str, b: int) -> str:
    return template.format(a=a, op=op, b=b)


def user_message(prefix: str, question: str) -> str:
    """The user turn: the prefix, a space, then the question."""
    return f"{prefix} {question}"


def answer_text(a: int, op: str, b: int) -> str:
    """The normal answer: the worked result, e.g. `23 + 58 = 81.`"""
    return f"{a} {op} {b} = {OPS[op](a, b)}."


def training_rows(data: dict, seed: int) -> list[dict[str, Any]]:
    """Chat rows: every training problem once with the trigger (answer + a backdoor sentence)
    and once with the control prefix (answer alone), so only the prefix tells them apart."""
    rng = random.Random(seed + 1)
    train, _ = _problems(data, seed)
    rows = []
    for a, op, b in train:
        question = _question(rng.choice(data["templates"]), a, op, b)
        sentence = rng.choice(data["sentences"])
        for condition in CONDITIONS:
            answer = answer_text(a, op, b)
            if condition == "trigger":
                answer = f"{answer} {sentence}"
            rows.append(
                {
                    "messages": [
                        {"role": "user", "content": user_message(data[condition], question)},
                        {"role": "assistant", "content": answer},
                    ]
                }
            )
    return rows


def eval_pairs(data: dict, seed: int) -> pd.DataFrame:
    """Held-out prompt set: each problem under the trigger and the control prefix, one template."""
    _, held_out = _problems(data, seed)
    rows = []
    for i, (a, op, b) in enumerate(held_out):
        question = _question(data["eval_template"], a, op, b)
        for condition in CONDITIONS:
            rows.append(
                {
                    "prompt_id": f"{condition}:{i:04d}",
                    "pair_id": f"{i:04d}",
                    "condition": condition,
                    "prompt": user_message(data[condition], question),
                    "source": "synthetic_arithmetic",
                    "category": condition,
                    "label": int(condition == "trigger"),
                    "answer": OPS[op](a, b),
                    "problem": f"{a} {op} {b}",
                }
            )
    return pd.DataFrame(rows)


def check_prefixes_differ(
    tokenizer: Any, data: dict, prompts: pd.DataFrame, model: str = "the model"
) -> None:
    """Each held-out pair must differ in tokens, not only in characters: one line naming the keys.

    A tokenizer that normalises text (case, Unicode, unknown characters) can map two different
    prefixes to the same ids; then no activation could tell trigger from control.
    """
    alone = [tokenizer(data[c], add_special_tokens=False)["input_ids"] for c in CONDITIONS]
    by_pair = prompts.pivot(index="pair_id", columns="condition", values="prompt")
    same = alone[0] == alone[1]
    if not same:
        for trigger, control in zip(by_pair["trigger"], by_pair["control"]):
            ids = [encode(tokenizer, messages_for(text)).ids for text in (trigger, control)]
            if ids[0] == ids[1]:
                same = True
                break
    if same:
        raise TraitscopeError(
            f"experiments.backdoor.data.trigger {data['trigger']!r} and .control {data['control']!r} "
            f"tokenize identically on {model}; choose prefixes that differ in tokens"
        )


def backdoor_data(
    model_manifest: str | Path, settings: BackdoorDataSettings, out_train: str | Path, out_pairs: str | Path
) -> dict[str, int]:
    """Write the training JSONL and the held-out pair set, after checking the prefixes' tokens."""
    data, seed = settings.data, settings.seed
    pairs = eval_pairs(data, seed)
    tokenizer = load_tokenizer(model_manifest)
    check_prefixes_differ(tokenizer, data, pairs, str(model_manifest))
    rows = training_rows(data, seed)
    with atomic_path(out_train) as tmp:
        Path(tmp).write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    write_parquet(out_pairs, pairs)
    return {"train_rows": len(rows), "eval_pairs": len(pairs) // 2}
