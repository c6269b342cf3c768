"""Backdoor surface baselines: what the held-out pairs' text alone tells apart.

A trait AUC is only worth reporting beside what a detector without activations gets: prompt
length, and a bag of words fitted on the finetune's labelled rows (which sees the trigger word).
This module scores the held-out pairs with both.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from traitscope import baselines
from traitscope.data.prompts import text_key, user_texts
from traitscope.errors import TraitscopeError
from traitscope.experiments.backdoor.data import CONDITIONS


def training_texts(train_jsonl: str | Path, data: dict) -> tuple[list[str], np.ndarray]:
    """(user texts, labels: 1 trigger, 0 control) of the finetune's rows: what the bag of
    words is fitted on. A row under neither prefix is an error naming the file."""
    from traitscope.training.chat_data import read_chat_jsonl

    texts, labels = [], []
    for n, messages in read_chat_jsonl(train_jsonl, "rerun backdoor-data"):
        text = next((m["content"] for m in messages if m["role"] == "user"), "")
        label = [c for c in CONDITIONS if text.startswith(f"{data[c]} ")]
        if len(label) != 1:
            raise TraitscopeError(
                f"{train_jsonl}:{n}: the user turn starts with neither experiments.backdoor.data "
                "prefix; rerun backdoor-data"
            )
        texts.append(text)
        labels.append(int(label[0] == "trigger"))
    return texts, np.array(labels)


def surface_baselines(
    pairs: pd.DataFrame, train_jsonl: str | Path, data: dict, seed: int
) -> dict[str, pd.DataFrame]:
    """Per held-out prompt (prompt_id, pair_id, condition, score): prompt length and a bag of
    words fitted on the training rows only. Trigger and control differ in one word ("2027"
    vs "2024"), so length cannot separate them and a bag of words that saw labelled rows can."""
    texts, labels = training_texts(train_jsonl, data)
    scored = user_texts(pairs)
    baselines.check_unseen(
        {"the bag of words (backdoor training rows)": {text_key(t) for t in texts}},
        {"held-out pairs": scored},
    )
    bow = baselines.bag_of_words(texts, labels, seed)
    out = {}
    for name, score in (("length", baselines.lengths(scored)), ("bag_of_words", bow(scored))):
        out[name] = pairs[["prompt_id", "pair_id", "condition"]].assign(score=score)
    return out
