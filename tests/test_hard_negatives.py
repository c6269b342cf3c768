"""The project's hard-negative prompt pairs (resources/prompts/hard_negatives/pairs.yaml): the
structure issue #28 asks for, its loader, and no overlap with the public benchmarks it must not copy."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from traitscope.data.loaders import load_advbench, load_harmbench, load_instructions
from traitscope.data.pairs import load_pairs
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


def test_a_contrast_trait_adds_whole_extraction_pairs_to_both_sides(tmp_path, mirror, root):
    """safety/harmful_intent: harmful_request's rows exactly, plus the hard negatives' extraction
    pairs, each pair on both sides of one split; no held-out pair is ever read."""
    from traitscope.data.settings import TraitPromptSettings
    from traitscope.data.traits import trait_prompts
    from traitscope.settings import from_schema

    one = from_schema(TraitPromptSettings, pairs_per_question=1)
    cache = tmp_path / "cache"
    traits = root / "resources" / "traits" / "safety"
    intent = trait_prompts(traits / "harmful_intent.yaml", tmp_path / "i.parquet", one, None, mirror, cache)
    plain = trait_prompts(traits / "harmful_request.yaml", tmp_path / "r.parquet", one, None, mirror, cache)
    paired = intent["source_id"].str.startswith("hard_negatives-")
    rows = intent[~paired]
    assert sorted(zip(rows["split"], rows["label"], rows["prompt"])) == sorted(
        zip(plain["split"], plain["label"], plain["prompt"])
    )
    pairs = load_pairs(PAIRS).set_index("prompt_id")
    used = pairs.loc[intent.loc[paired, "source_id"]]
    assert set(used["meta"].map(lambda m: json.loads(m)["split"])) == {"extraction"}
    pair_split = {}
    for source, split in zip(intent.loc[paired, "source_id"], intent.loc[paired, "split"]):
        pair_split.setdefault(source.rsplit("-", 1)[0], set()).add(split)
    assert all(len(s) == 1 for s in pair_split.values())
    assert len(pair_split) == (load_pairs(PAIRS, split="extraction")["label"] == 1).sum()
    counts = intent[paired].groupby("split")["label"].agg(["sum", "size"])
    assert (counts["size"] == 2 * counts["sum"]).all()  # both sides of every pair
    assert counts.loc["extraction", "sum"] == round(133 * 80 / 120)


def test_a_bad_pairs_source_is_one_line_naming_the_file(tmp_path):
    from traitscope.data.traits import read_trait

    text = (PAIRS.parents[2] / "traits" / "safety" / "harmful_intent.yaml").read_text()
    bad = tmp_path / "t.yaml"
    bad.write_text(
        text.replace("pairs: {dataset: hard_negatives, file: pairs.yaml}", "pairs: {dataset: advbench}")
    )
    with pytest.raises(TraitscopeError, match=r"t\.yaml: 'pairs' must be a paired source"):
        read_trait(bad)
