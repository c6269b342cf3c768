"""Surface baselines every detection AUC stands beside, and the split bookkeeping they need.

Harmful prompt sets differ from harmless ones on the surface: they are longer and use other
words. A trait projection that separates them is only evidence of a harm representation if
it beats what the surface alone achieves, so each detection AUC is reported next to

- `length`: the prompt's user text length in characters, no fitting;
- `bag_of_words`: TF-IDF + logistic regression fitted on a prompt-contrast trait's
  extraction rows (the rows its vector was built from), never on the rows it scores;

and the trait-minus-baseline AUC difference with a paired bootstrap CI over the same rows.
`check_unseen` makes scoring a training row an error.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from traitscope.data.prompts import text_key, user_texts
from traitscope.errors import TraitscopeError
from traitscope.stats import auc_difference_same_rows, auc_with_ci

Scorer = Callable[[Sequence[str]], np.ndarray]


def training_keys(vectors_meta: str | Path) -> set[str]:
    """Keys of the prompts a trait's vectors were built from (vectors.json `training_prompts`)."""
    try:
        keys = json.loads(Path(vectors_meta).read_text())["training_prompts"]
    except (OSError, KeyError, TypeError, json.JSONDecodeError):
        raise TraitscopeError(f"{vectors_meta}: no training_prompts record; rerun trait-vectors") from None
    return set(keys)


def check_unseen(training: Mapping[str, set[str]], scored: Mapping[str, Sequence[str]]) -> None:
    """Refuse to score a row that built a vector or fitted a baseline.

    `training` maps what was fitted (a trait, the bag of words) to its training keys;
    `scored` maps a prompt set to the texts about to be scored.
    """
    for set_name, texts in scored.items():
        keys = {text_key(t): t for t in texts}
        for fitted, seen in training.items():
            overlap = sorted(set(keys) & seen)
            if overlap:
                raise TraitscopeError(
                    f"prompt set {set_name}: {len(overlap)} prompt(s) were training rows of {fitted} "
                    f"(e.g. {keys[overlap[0]][:60]!r}); exclude them from the set "
                    "(prompt_sets.<name>.exclude) or from the trait's sources"
                )


def fitting_rows(trait_prompts: str | Path) -> tuple[list[str], np.ndarray]:
    """(texts, labels) of a trait prompt set's extraction split: what the bag of words is fitted on."""
    table = pd.read_parquet(trait_prompts)
    if not {"split", "label"} <= set(table.columns):
        raise TraitscopeError(
            f"{trait_prompts}: not a trait prompt set (no split, label); rerun trait-prompts"
        )
    rows = table[table["split"] == "extraction"]
    labels = rows["label"].to_numpy()
    if len(set(labels)) != 2:
        raise TraitscopeError(f"{trait_prompts}: the extraction split needs both labels to fit a baseline")
    return user_texts(rows), labels


def bag_of_words(texts: Sequence[str], labels: np.ndarray, seed: int) -> Scorer:
    """TF-IDF (words and word pairs) + logistic regression; scores are its decision values."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    model = LogisticRegression(max_iter=2000, random_state=seed)
    model.fit(vectorizer.fit_transform(list(texts)), labels)
    return lambda scored: model.decision_function(vectorizer.transform(list(scored)))


def lengths(texts: Sequence[str]) -> np.ndarray:
    return np.array([len(t) for t in texts], dtype=float)


def baseline_scores(
    pos_texts: Sequence[str], neg_texts: Sequence[str], bow: Scorer | None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{baseline: (positive scores, negative scores)}, rows in the texts' order."""
    out = {"length": (lengths(pos_texts), lengths(neg_texts))}
    if bow is not None:
        out["bag_of_words"] = (bow(pos_texts), bow(neg_texts))
    return out


def baseline_aucs(baselines: Mapping[str, tuple[np.ndarray, np.ndarray]], n_boot: int, seed: int) -> dict:
    return {name: auc_with_ci(p, n, n_boot=n_boot, seed=seed) for name, (p, n) in baselines.items()}


def against_baselines(
    pos: np.ndarray,
    neg: np.ndarray,
    baselines: Mapping[str, tuple[np.ndarray, np.ndarray]],
    n_boot: int,
    seed: int,
) -> dict:
    """A trait score's AUC with CI and, per baseline, the AUC difference with a paired CI.

    `beats_baselines` holds when every difference's CI lies above 0; otherwise the trait score
    is no better than the surface at this task, whatever its own AUC.
    """
    result = {"auc": auc_with_ci(pos, neg, n_boot=n_boot, seed=seed)}
    for name, (bp, bn) in baselines.items():
        result[f"vs_{name}"] = auc_difference_same_rows(pos, neg, bp, bn, n_boot=n_boot, seed=seed)
    result["beats_baselines"] = all(result[f"vs_{name}"]["ci_low"] > 0 for name in baselines)
    return result
