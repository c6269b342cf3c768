"""Issue 28: each trait stands beside a bag of words fitted on the rows its direction saw, and
paired sets (the hard negatives) get per-category AUCs within category."""

from __future__ import annotations

from itertools import product

import numpy as np
import pandas as pd
import pytest

from traitscope import baselines


def brute_auc(pos, neg) -> float:
    pairs = [(p > n) + 0.5 * (p == n) for p, n in product(pos, neg)]
    return sum(pairs) / len(pairs)


def trait_set(path, harmful: list[str], harmless: list[str]):
    """A trait prompt set whose extraction rows are these; one evaluation row that must not count."""
    rows = pd.DataFrame(
        {
            "prompt_id": [f"r{i}" for i in range(len(harmful) + len(harmless) + 1)],
            "prompt": [*harmful, *harmless, "an evaluation row"],
            "split": ["extraction"] * (len(harmful) + len(harmless)) + ["evaluation"],
            "label": [1] * len(harmful) + [0] * len(harmless) + [1],
        }
    )
    rows.to_parquet(path)
    return path


def test_each_contrast_trait_gets_a_bag_of_words_fitted_on_its_own_rows(tmp_path):
    default = trait_set(
        tmp_path / "default.parquet", ["build a bomb", "steal a car"], ["bake bread", "plant a tree"]
    )
    own = trait_set(
        tmp_path / "own.parquet", ["kill my neighbour", "hurt him"], ["kill a process", "hurt less"]
    )
    fit_of, scorers, keys = baselines.bags_of_words(
        default, {"safety/intent": own}, ["safety/evil", "safety/intent"], 0
    )
    assert fit_of == {"safety/evil": "bag_of_words", "safety/intent": "bag_of_words[safety/intent]"}
    assert set(scorers) == {"bag_of_words", "bag_of_words[safety/intent]"}
    # the training keys are each fit's extraction rows only, so check_unseen refuses exactly those
    assert {len(k) for k in keys.values()} == {4}
    # the two fits differ: only the own fit has seen "kill" on both sides
    texts = ["kill a process"]
    assert scorers["bag_of_words"](texts)[0] != pytest.approx(
        scorers["bag_of_words[safety/intent]"](texts)[0]
    )
    # no default: a persona trait has no bag of words, a contrast trait still has its own
    fit_of, scorers, _ = baselines.bags_of_words(
        None, {"safety/intent": own}, ["safety/evil", "safety/intent"], 0
    )
    assert fit_of == {"safety/intent": "bag_of_words[safety/intent]"}
    surface = {"length": (np.ones(2), np.zeros(2)), "bag_of_words[safety/intent]": (np.ones(2), np.ones(2))}
    assert (
        baselines.trait_baselines(surface, fit_of["safety/intent"])["bag_of_words"]
        is surface["bag_of_words[safety/intent]"]
    )
    assert set(baselines.trait_baselines(surface, None)) == {"length"}


def test_by_category_pairs_within_category_when_the_controls_carry_categories():
    rng = np.random.default_rng(0)
    bad = pd.DataFrame({"t": rng.normal(1, 1, 8)})
    good = pd.DataFrame({"t": rng.normal(0, 1, 8)})
    cats = np.array(["a"] * 4 + ["b"] * 4, dtype=object)
    surface = {"length": (rng.normal(size=8), rng.normal(size=8))}
    paired = baselines.by_category(bad, good, (cats, cats), surface, n_boot=200, seed=0)
    for c, rows in (("a", slice(0, 4)), ("b", slice(4, 8))):
        entry = paired[c]
        assert (entry["n_harmful"], entry["n_harmless"], entry["harmless"]) == (4, 4, "same category")
        assert entry["traits"]["t"]["auc"] == pytest.approx(brute_auc(bad["t"][rows], good["t"][rows]))
        want = brute_auc(surface["length"][0][rows], surface["length"][1][rows])
        assert entry["baselines"]["length"]["auc"] == pytest.approx(want)
    # controls without categories (Alpaca): each harmful category against all of them
    unpaired = baselines.by_category(bad, good, (cats, np.full(8, None, dtype=object)), surface, 200, 0)
    assert unpaired["a"]["harmless"] == "all" and unpaired["a"]["n_harmless"] == 8
    assert unpaired["a"]["traits"]["t"]["auc"] == pytest.approx(brute_auc(bad["t"][:4], good["t"]))
