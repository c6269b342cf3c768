"""The project's hard-negative prompt pairs (resources/prompts/hard_negatives/pairs.yaml): the
structure issue #28 asks for, its loader, and no overlap with the public benchmarks it must not copy."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from traitscope.data.loaders import load_advbench, load_harmbench, load_instructions, load_pairs
from traitscope.data.prep import load_source
from traitscope.data.prompts import normalise
from traitscope.errors import TraitscopeError
from traitscope.io import parse_yaml
from traitscope.stats import auc

PAIRS = Path(__file__).resolve().parents[1] / "resources" / "prompts" / "hard_negatives" / "pairs.yaml"
MIN_PAIRS, MIN_CATEGORIES, MIN_PER_CATEGORY = 200, 6, 20
JACCARD_MAX = 0.8  # word-set overlap with a benchmark's harmful prompt: above it, a paraphrase


@pytest.fixture(scope="module")
def pairs() -> list[dict]:
    return parse_yaml(PAIRS.read_text(), PAIRS)["pairs"]


def test_pairs_share_their_key_word_and_cover_enough_categories(pairs):
    assert len(pairs) >= MIN_PAIRS
    assert len({p["id"] for p in pairs}) == len(pairs)
    for p in pairs:
        key = p["keyword"].lower()
        assert key in p["harmful"].lower() and key in p["harmless"].lower(), p["id"]
    per_category = Counter(p["category"] for p in pairs)
    assert len(per_category) >= MIN_CATEGORIES
    assert min(per_category.values()) >= MIN_PER_CATEGORY, per_category


def test_splits_are_fixed_per_pair_and_stratified_by_category(pairs):
    for category in {p["category"] for p in pairs}:
        splits = Counter(p["split"] for p in pairs if p["category"] == category)
        assert set(splits) == {"extraction", "heldout"}
        assert 0.55 <= splits["extraction"] / sum(splits.values()) <= 0.65, (category, splits)


def test_no_prompt_repeats_and_lengths_are_matched(pairs):
    texts = [normalise(p[side]) for p in pairs for side in ("harmful", "harmless")]
    assert len(set(texts)) == len(texts)
    harmful = [float(len(p["harmful"])) for p in pairs]
    harmless = [float(len(p["harmless"])) for p in pairs]
    assert 0.35 <= auc(harmful, harmless) <= 0.65  # prompt length alone cannot tell the sides apart


def test_no_prompt_is_taken_from_a_public_benchmark(pairs, mirror):
    harmful: list[str] = list(load_advbench(mirror / "advbench" / "advbench_behaviors.csv")["prompt"])
    every = ("standard", "contextual", "copyright")
    for split in ("all", "val", "test"):
        csv = mirror / "harmbench" / f"harmbench_behaviors_text_{split}.csv"
        harmful += list(load_harmbench(csv, every)["prompt"])
    harmless: list[str] = []
    for kind, label, out in (("harmful", 1, harmful), ("harmless", 0, harmless)):
        for split in ("train", "val", "test"):
            out += list(
                load_instructions(mirror / "refusal_direction" / f"{kind}_{split}.json", label)["prompt"]
            )
    ours = [p[side] for p in pairs for side in ("harmful", "harmless")]
    assert not {normalise(t) for t in ours} & {normalise(t) for t in harmful + harmless}

    def words(text: str) -> frozenset[str]:
        return frozenset(re.findall(r"[a-z']+", text.lower()))

    theirs = [words(t) for t in harmful]
    for text in ours:
        mine = words(text)
        closest = max(len(mine & w) / len(mine | w) for w in theirs)
        assert closest < JACCARD_MAX, text


def test_loader_reads_one_split_and_side_with_categories():
    held = load_pairs(PAIRS, split="heldout")
    assert set(held["label"]) == {0, 1} and held["label"].sum() * 2 == len(held)
    harmless = load_source(
        {"dataset": "hard_negatives", "file": "pairs.yaml", "split": "heldout", "label": 0}, None, "unused"
    )
    assert set(harmless["label"]) == {0}
    assert list(harmless["prompt_id"]) == list(held.loc[held["label"] == 0, "prompt_id"])
    assert harmless["category"].nunique() >= MIN_CATEGORIES
    assert not set(held["prompt"]) & set(load_pairs(PAIRS, split="extraction")["prompt"])


def test_loader_names_the_file_and_the_fix_for_a_bad_pair(tmp_path):
    bad = tmp_path / "pairs.yaml"
    bad.write_text("pairs:\n- {id: a, category: c, keyword: k, split: train, harmful: k, harmless: k}\n")
    with pytest.raises(
        TraitscopeError, match=r"pairs.yaml: pair a has split 'train'; use extraction or heldout"
    ):
        load_pairs(bad)
    with pytest.raises(TraitscopeError, match=r"split must be one of extraction, heldout"):
        load_pairs(PAIRS, split="test")
