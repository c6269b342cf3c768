"""Surface baselines every detection AUC stands beside, and the split bookkeeping they need.

Harmful prompt sets differ from harmless ones on the surface: they are longer and use other
words. A trait projection that separates them is only evidence of a harm representation if
it beats what the surface alone achieves, so each detection AUC is reported next to

- `length`: the prompt's user text length in characters, no fitting;
- `bag_of_words`: TF-IDF + logistic regression fitted on a prompt-contrast trait's
  extraction rows (the rows its vector was built from), never on the rows it scores; a
  prompt-contrast trait is compared with the bag of words fitted on its own extraction rows
  (`bags_of_words`), so both saw the same training rows;

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
from traitscope.io import read_table
from traitscope.stats import auc_difference_same_rows, auc_with_ci

Scorer = Callable[[Sequence[str]], np.ndarray]
MIN_PER_CATEGORY = 2  # rows per side below which a category gets no AUC


def training_keys(vectors_meta: str | Path) -> set[str]:
    """Keys of the prompts a trait's vectors were built from (vectors.json `training_prompts`)."""
    try:
        keys = json.loads(Path(vectors_meta).read_text())["training_prompts"]
    except (OSError, KeyError, TypeError, json.JSONDecodeError):
        raise TraitscopeError(f"{vectors_meta}: no training_prompts record; rerun trait-vectors") from None
    return set(keys)


def vectors_position(vectors_meta: str | Path) -> str:
    """The pooled position a trait's vectors were built at (vectors.json `position`)."""
    try:
        return str(json.loads(Path(vectors_meta).read_text())["position"])
    except (OSError, KeyError, TypeError, json.JSONDecodeError):
        raise TraitscopeError(f"{vectors_meta}: no position record; rerun trait-vectors") from None


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
    table = read_table(trait_prompts, "trait-prompts", ("split", "label"))
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


def bags_of_words(
    default: str | Path | None, own: Mapping[str, str | Path], traits: Sequence[str], seed: int
) -> tuple[dict[str, str], dict[str, Scorer], dict[str, set[str]]]:
    """Each trait's bag of words, fitted on the rows its direction saw: a prompt-contrast trait's
    own extraction rows (`own`: trait -> its trait prompt set), else `default`'s (persona traits).

    Returns (trait -> baseline name, baseline name -> scorer, baseline name -> training keys).
    The default fit is `bag_of_words`; another is `bag_of_words[<trait>]`. A trait without a
    fit (no default, not in `own`) is absent from the first map.
    """
    fitted_on = {name: str(own.get(name, default)) for name in traits if own.get(name, default) is not None}
    names = {str(default): "bag_of_words"} if default is not None else {}
    for trait, path in fitted_on.items():
        names.setdefault(path, f"bag_of_words[{trait}]")
    scorers, keys = {}, {}
    for path, name in names.items():
        texts, labels = fitting_rows(path)
        scorers[name] = bag_of_words(texts, labels, seed)
        keys[f"the bag of words ({path})"] = {text_key(t) for t in texts}
    return {t: names[path] for t, path in fitted_on.items()}, scorers, keys


def lengths(texts: Sequence[str]) -> np.ndarray:
    return np.array([len(t) for t in texts], dtype=float)


def baseline_scores(
    pos_texts: Sequence[str], neg_texts: Sequence[str], bows: Mapping[str, Scorer]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{baseline: (positive scores, negative scores)}, rows in the texts' order: length, then
    each bag of words (`bows`, by baseline name)."""
    out = {"length": (lengths(pos_texts), lengths(neg_texts))}
    for name, bow in bows.items():
        out[name] = (bow(pos_texts), bow(neg_texts))
    return out


def trait_baselines(
    surface: Mapping[str, tuple[np.ndarray, np.ndarray]], bow_name: str | None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The baselines one trait stands beside: length and, as `bag_of_words`, its own fit."""
    out = {"length": surface["length"]}
    if bow_name is not None:
        out["bag_of_words"] = surface[bow_name]
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


def by_category(
    bad: pd.DataFrame,
    good: pd.DataFrame,
    categories: tuple[np.ndarray, np.ndarray],
    surface: Mapping[str, tuple[np.ndarray, np.ndarray]],
    n_boot: int,
    seed: int,
) -> dict:
    """Per category of the harmful side: every trait's and baseline's AUC against the harmless rows
    of the same category where the harmless side has them (paired sets), else against all.

    `categories` is (harmful categories, harmless categories), arrays in the rows' order.
    """
    bad_cats, good_cats = categories
    out = {}
    for category in sorted({c for c in bad_cats if isinstance(c, str)}):
        is_bad = bad_cats == category
        paired = (good_cats == category).sum() >= MIN_PER_CATEGORY
        is_good = good_cats == category if paired else np.ones(len(good), dtype=bool)
        if is_bad.sum() < MIN_PER_CATEGORY:
            continue
        out[str(category)] = {
            "n_harmful": int(is_bad.sum()),
            "n_harmless": int(is_good.sum()),
            "harmless": "same category" if paired else "all",
            "baselines": {
                name: auc_with_ci(p[is_bad], n[is_good], n_boot=n_boot, seed=seed)
                for name, (p, n) in surface.items()
            },
            "traits": {
                t: auc_with_ci(
                    bad[t].to_numpy()[is_bad], good[t].to_numpy()[is_good], n_boot=n_boot, seed=seed
                )
                for t in bad.columns
            },
        }
    return out
