"""External datasets: BeaverTails split per category, harm-detection statistics, the DAG."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from traitscope.data.loaders import BEAVERTAILS_CATEGORIES, load_beavertails
from traitscope.data.prompts import text_key
from traitscope.errors import TraitscopeError
from traitscope.experiments.external import beavertails, beavertails_sample, harmbench
from traitscope.experiments.external.settings import BeaverTailsSampleSettings
from traitscope.settings import from_schema

TRAITS = ["safety/harm", "safety/evil"]


def rank_correlation(x, y) -> float:
    """Spearman's rho as Pearson's r of the average ranks."""
    rx, ry = pd.Series(x).rank().to_numpy(), pd.Series(y).rank().to_numpy()
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / np.sqrt((rx**2).sum() * (ry**2).sum()))


def brute_auc(pos, neg) -> float:
    """P(pos > neg) + P(tie) / 2, counted pair by pair."""
    pairs = [(p > n) + 0.5 * (p == n) for p in pos for n in neg]
    return sum(pairs) / len(pairs)


def beavertails_jsonl(path, per_category=3, n_safe=4, seed=0):
    """A small file of BeaverTails' exact schema: every category, some multi-category rows, safe rows."""
    rng = np.random.default_rng(seed)
    records = []
    for i, category in enumerate(BEAVERTAILS_CATEGORIES):
        for k in range(per_category):
            flags = dict.fromkeys(BEAVERTAILS_CATEGORIES, False)
            flags[category] = True
            if k == 0 and per_category > 1:  # a second category on some rows
                flags[BEAVERTAILS_CATEGORIES[(i + 1) % len(BEAVERTAILS_CATEGORIES)]] = True
            records.append(
                {
                    "prompt": f"q {i}-{k}",
                    "response": f"unsafe answer {i}-{k}",
                    "category": flags,
                    "is_safe": False,
                }
            )
    for k in range(n_safe):
        records.append(
            {
                "prompt": f"safe q {k}",
                "response": f"safe answer {k}",
                "category": dict.fromkeys(BEAVERTAILS_CATEGORIES, False),
                "is_safe": True,
            }
        )
    rng.shuffle(records)
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return records


@pytest.fixture
def bt_prompts(tmp_path):
    beavertails_jsonl(tmp_path / "bt.jsonl")
    load_beavertails(tmp_path / "bt.jsonl").to_parquet(tmp_path / "bt.parquet")
    return tmp_path / "bt.parquet"


CATEGORIES = [*BEAVERTAILS_CATEGORIES, "safe"]


def sample_settings(n: int | None = None, seed: int = 0) -> BeaverTailsSampleSettings:
    return from_schema(BeaverTailsSampleSettings, categories=CATEGORIES, n_per_category=n, seed=seed)


def first_category(keys: str) -> str:
    """The category a harmful row is sampled in: its first in the configured order."""
    return min(keys.split(";"), key=CATEGORIES.index)


def test_each_row_is_captured_once_and_keeps_its_categories(tmp_path, bt_prompts):
    sample = beavertails_sample(bt_prompts, tmp_path / "s.parquet", sample_settings())
    table = pd.read_parquet(bt_prompts)
    assert sorted(sample["prompt_id"]) == sorted(table["prompt_id"])  # every row, exactly once
    assert pd.read_parquet(tmp_path / "s.parquet")["prompt_id"].tolist() == sample["prompt_id"].tolist()
    assert (sample["prefill"] == sample["response"]).all()  # the response is what the labels judge
    assert (sample.set_index("prompt_id")["category"] == table.set_index("prompt_id")["category"]).all()


def test_sampling_per_category_is_seeded(tmp_path, bt_prompts):
    a = beavertails_sample(bt_prompts, tmp_path / "a.parquet", sample_settings(n=2, seed=1))
    b = beavertails_sample(bt_prompts, tmp_path / "b.parquet", sample_settings(n=2, seed=1))
    c = beavertails_sample(bt_prompts, tmp_path / "c.parquet", sample_settings(n=2, seed=5))
    assert a["prompt_id"].tolist() == b["prompt_id"].tolist()
    assert a["prompt_id"].tolist() != c["prompt_id"].tolist()
    harmful = a[a["label"] == 1]
    # the fixture flags the last category together with the first on one row: that row is
    # sampled in the first category's draw, so every category gives exactly 2 rows
    assert harmful["category"].map(first_category).value_counts().to_dict() == dict.fromkeys(
        BEAVERTAILS_CATEGORIES, 2
    )
    assert (a["label"] == 0).sum() == 2


def test_empty_category_is_a_clear_error(tmp_path, bt_prompts):
    table = pd.read_parquet(bt_prompts)
    table = table[~table["category"].str.contains("self_harm")]
    table.to_parquet(tmp_path / "less.parquet")
    out = tmp_path / "out" / "sample.parquet"
    with pytest.raises(TraitscopeError, match=r"less\.parquet: BeaverTails category 'self_harm' has no rows"):
        beavertails_sample(tmp_path / "less.parquet", out, sample_settings())
    assert not out.exists()
    nulls = pd.read_parquet(bt_prompts)
    nulls.loc[nulls.index[0], "category"] = None
    nulls.to_parquet(tmp_path / "nulls.parquet")
    with pytest.raises(TraitscopeError, match=r"nulls\.parquet: row .* has no category or label"):
        beavertails_sample(tmp_path / "nulls.parquet", out, sample_settings())
    table.drop(columns=["response"]).to_parquet(tmp_path / "nocol.parquet")
    with pytest.raises(TraitscopeError, match="missing column"):
        beavertails_sample(tmp_path / "nocol.parquet", out, sample_settings())


def projections(ids, scores_by_trait, position):
    rows = [
        {
            "prompt_id": pid,
            "variant": "m",
            "trait": t,
            "layer": 3,
            "position": position,
            "token_index": -1,
            "score": float(s),
            "cosine": 0.0,
            "chosen_layer": True,
        }
        for t, scores in scores_by_trait.items()
        for pid, s in zip(ids, scores)
    ]
    return pd.DataFrame(rows)


def test_harmbench_auc_matches_sklearn_per_category(tmp_path):
    rng = np.random.default_rng(0)
    bad_ids, good_ids = [f"h{i}" for i in range(20)], [f"c{i}" for i in range(15)]
    bad = {t: rng.normal(1.0, 1.0, 20) for t in TRAITS}
    good = {t: rng.normal(0.0, 1.0, 15) for t in TRAITS}
    projections(bad_ids, bad, "last_prompt").to_parquet(tmp_path / "bad.parquet")
    projections(good_ids, good, "last_prompt").to_parquet(tmp_path / "good.parquet")
    cats = ["a"] * 10 + ["b"] * 10
    bad_texts = [f"how to build weapon number {i}" + "!" * (i % 4) for i in range(20)]
    good_texts = [f"how to bake bread number {i}" + "?" * (i % 7) for i in range(15)]
    pd.DataFrame({"prompt_id": bad_ids, "prompt": bad_texts, "category": cats}).to_parquet(
        tmp_path / "p.parquet"
    )
    pd.DataFrame({"prompt_id": good_ids, "prompt": good_texts}).to_parquet(tmp_path / "c.parquet")
    bow = tmp_path / "bow.parquet"
    pd.DataFrame(
        {
            "prompt_id": [f"t{i}" for i in range(8)],
            "prompt": ["build a weapon", "make a bomb", "weapon plans", "steal a car"]
            + ["bake a cake", "bread recipe", "plant a tree", "sing a song"],
            "split": "extraction",
            "label": [1, 1, 1, 1, 0, 0, 0, 0],
        }
    ).to_parquet(bow)
    meta = {}
    for t in TRAITS:
        meta[t] = tmp_path / f"{t.replace('/', '_')}.json"
        meta[t].write_text(json.dumps({"training_prompts": [text_key("an unrelated training question")]}))
    result, failures, _ = harmbench(
        [tmp_path / "bad.parquet"],
        [tmp_path / "good.parquet"],
        tmp_path / "p.parquet",
        tmp_path / "c.parquet",
        TRAITS,
        "last_prompt",
        meta,
        bow,
        n_boot=300,
    )
    labels = np.r_[np.ones(20), np.zeros(15)]
    length_auc = brute_auc([len(x) for x in bad_texts], [len(x) for x in good_texts])
    assert result["baselines"]["length"]["auc"] == pytest.approx(length_auc)
    # the scored sets share only "build", "weapon" (harmful fitting rows) and "bake", "bread"
    # (harmless ones) with the fitting rows: every harmful prompt scores above every control
    assert result["baselines"]["bag_of_words"]["auc"] == 1.0
    for t in TRAITS:
        auc = result["traits"][t]["auc"]
        assert auc["auc"] == pytest.approx(roc_auc_score(labels, np.r_[bad[t], good[t]]))
        assert auc["ci_low"] <= auc["auc"] <= auc["ci_high"]
        for name in ("length", "bag_of_words"):
            diff = result["traits"][t][f"vs_{name}"]
            assert diff["difference"] == pytest.approx(auc["auc"] - result["baselines"][name]["auc"])
        assert result["traits"][t]["beats_baselines"] is False  # nothing beats a perfect bag of words
        sub = np.r_[bad[t][10:], good[t]]
        assert result["traits"][t]["by_category"]["b"]["auc"] == pytest.approx(
            roc_auc_score(np.r_[np.ones(10), np.zeros(15)], sub)
        )
        cut = failures[t]["threshold"]
        assert failures[t]["n_false_negatives"] == int((bad[t] < cut).sum())
        assert all(e["score"] < cut for e in failures[t]["examples"])


def test_harmbench_refuses_to_score_a_vector_training_row(tmp_path):
    projections(["h0", "h1"], {"safety/harm": [1.0, 2.0]}, "last_prompt").to_parquet(tmp_path / "a.parquet")
    projections(["c0", "c1"], {"safety/harm": [0.0, 1.5]}, "last_prompt").to_parquet(tmp_path / "b.parquet")
    pd.DataFrame({"prompt_id": ["h0", "h1"], "prompt": ["x", "y"], "category": ["c", "c"]}).to_parquet(
        tmp_path / "p.parquet"
    )
    controls = pd.DataFrame({"prompt_id": ["c0", "c1"], "prompt": ["Bake  bread", "z"]})
    controls.to_parquet(tmp_path / "c.parquet")
    meta = tmp_path / "vectors.json"
    meta.write_text(json.dumps({"training_prompts": [text_key("bake bread")]}))
    with pytest.raises(TraitscopeError, match="harmbench harmless: 1 prompt.* training rows of safety/harm"):
        harmbench(
            [tmp_path / "a.parquet"],
            [tmp_path / "b.parquet"],
            tmp_path / "p.parquet",
            tmp_path / "c.parquet",
            ["safety/harm"],
            "last_prompt",
            {"safety/harm": meta},
        )


def test_beavertails_overall_auc_per_category_and_severity(tmp_path, bt_prompts):
    sample = beavertails_sample(bt_prompts, tmp_path / "s.parquet", sample_settings())
    rng = np.random.default_rng(2)
    table = pd.read_parquet(bt_prompts).set_index("prompt_id")
    score = {pid: rng.normal() + 0.8 * table.loc[pid, "n_categories"] for pid in table.index}
    values = {t: [score[p] * (1 if t == TRAITS[0] else -1) for p in sample["prompt_id"]] for t in TRAITS}
    projections(sample["prompt_id"], values, "prefill_mean").to_parquet(tmp_path / "proj.parquet")
    inputs = [(tmp_path / "proj.parquet", tmp_path / "s.parquet")]
    result, _, _ = beavertails(inputs, TRAITS, "prefill_mean", n_boot=300, seed=0)
    ids = list(table.index)
    labels = table.loc[ids, "label"].to_numpy()
    harm = np.array([score[p] for p in ids])
    assert result["overall"][TRAITS[0]]["auc"] == pytest.approx(roc_auc_score(labels, harm))
    unsafe = labels == 1  # severity among the harmful pairs: the safe ones would restate the AUC
    rho = rank_correlation(harm[unsafe], table.loc[ids, "n_categories"].to_numpy()[unsafe])
    assert result["severity"][TRAITS[0]]["rho"] == pytest.approx(rho)
    assert result["severity"][TRAITS[0]]["n"] == int(unsafe.sum())
    assert result["n_unsafe"] == int(labels.sum()) and len(result["categories"]) == 14
    # a category counts every row that carries it, also rows sampled in another category's draw
    keys = table["category"].str.split(";")
    last = BEAVERTAILS_CATEGORIES[-1]
    members = keys.apply(lambda ks: last in ks)
    assert result["categories"][last]["n"] == int(members.sum()) == 4
    safe = np.array([score[p] for p in table.index[table["label"] == 0]])
    mine = np.array([score[p] for p in table.index[members]])
    assert result["categories"][last][TRAITS[0]]["auc"]["auc"] == pytest.approx(
        roc_auc_score(np.r_[np.ones(len(mine)), np.zeros(len(safe))], np.r_[mine, safe])
    )
    assert set(result["best_trait"].values()) == {TRAITS[0]}  # the other trait is its mirror image
    # the row reads the best trait out of sample: its mirror image never wins a half, so each
    # half's pick is TRAITS[0], and each half scores it on the other half's pairs
    crossed = result["cross_fitted_best"]
    assert [f["trait"] for f in crossed["folds"]] == [TRAITS[0], TRAITS[0]]
    ordered = sorted(ids)
    halves = [
        ordered_side[i::2]
        for ordered_side in (
            [p for p in ordered if table.loc[p, "label"] == 1],
            [p for p in ordered if table.loc[p, "label"] == 0],
        )
        for i in (0, 1)
    ]
    unsafe_halves, safe_halves = halves[:2], halves[2:]
    by_half = [
        roc_auc_score(np.r_[np.ones(len(u)), np.zeros(len(f))], [score[p] for p in u + f])
        for u, f in zip(unsafe_halves, safe_halves)
    ]
    assert crossed["auc"] == pytest.approx(np.mean(by_half))
    assert (crossed["n_harmful"], crossed["n_harmless"]) == (result["n_unsafe"], result["n_safe"])
    row = summary_rows(tmp_path, beavertails_result=result)[1]
    assert (
        row.measured == pytest.approx(crossed["auc"])
        and "the best trait on each half of the pairs" in row.detail
    )


def summary_rows(tmp_path, harmbench_result=None, beavertails_result=None) -> list:
    """The summary's external rows, read from the results as written to disk."""
    from traitscope.experiments.external.criteria import external_criteria
    from traitscope.io import write_json
    from traitscope.summary.records import Result

    read = []
    for name, result in (("harmbench", harmbench_result), ("beavertails", beavertails_result)):
        if result is not None:
            write_json(tmp_path / f"{name}.json", result)
        read.append(None if result is None else Result(tmp_path / f"{name}.json"))
    return external_criteria(*read)


def test_severity_is_the_gradient_among_unsafe_pairs(tmp_path):
    """Unsafe scores 5, 6, 7, 8 at 1, 2, 2, 1 harm categories do not follow severity: ranks
    1..4 against 1.5, 3.5, 3.5, 1.5, centred -1.5, -0.5, .5, 1.5 against -1, 1, 1, -1, sum 0, so
    rho = 0. Safe pairs scored 1..4 at severity 0 used to join them: rho 0.823 (p 0.012), read
    as "met", though it only restated that unsafe pairs score higher (the AUC row's question)."""
    unsafe = {"u0": (5.0, "a"), "u1": (6.0, "a;b"), "u2": (7.0, "a;b"), "u3": (8.0, "a")}
    safe = {f"s{i}": (float(i + 1), "safe") for i in range(4)}
    rows = [
        {"prompt_id": pid, "prompt": pid, "response": "r", "category": cat, "label": int(pid in unsafe)}
        for pid, (_, cat) in (unsafe | safe).items()
    ]
    table = pd.DataFrame(rows).assign(n_categories=lambda t: t["category"].str.count(";") + t["label"])
    table.to_parquet(tmp_path / "rows.parquet")
    scores = {TRAITS[0]: [score for score, _ in (unsafe | safe).values()]}
    projections(list(table["prompt_id"]), scores, "prefill_mean").to_parquet(tmp_path / "proj.parquet")
    result, _, _ = beavertails(
        [(tmp_path / "proj.parquet", tmp_path / "rows.parquet")], TRAITS[:1], "prefill_mean", 200, 0
    )
    severity = result["severity"][TRAITS[0]]
    assert severity["rho"] == pytest.approx(0.0, abs=1e-12) and severity["n"] == 4
    assert "unsafe pairs only" in result["severity_rows"]
    row = summary_rows(tmp_path, beavertails_result=result)[2]
    assert row.measured == pytest.approx(0.0, abs=1e-12) and row.status != "met" and row.n == "4"
    assert "unsafe pairs only" in row.detail


def test_harmbench_row_reads_the_best_trait_out_of_sample(tmp_path):
    """Each side's prompts alternate between two halves in id order. safety/harm separates half 1
    perfectly (harmful 11..15 vs harmless 1..5: AUC 1) and not half 2 (1..5 vs 1..5: 0.5);
    safety/evil scores 0.8 on both (harmful 0, 6, 7, 8, 9 vs 1..5: 20 of 25 pairs). Half 1 picks
    harm, which scores 0.5 on half 2; half 2 picks evil, 0.8 on half 1: out of sample 0.65,
    under the in-sample best, evil's 0.8 (6..9 beat all 10 controls: 80 of 100 pairs; harm's
    11..15 beat all 10, 50 pairs, and 1..5 against 1..5 twice give 25: 0.75)."""
    ones, evil = np.arange(1.0, 6.0), np.array([0.0, 6.0, 7.0, 8.0, 9.0])
    bad_ids, good_ids = [f"h{i:02d}" for i in range(10)], [f"c{i:02d}" for i in range(10)]
    bad = {TRAITS[0]: np.empty(10), TRAITS[1]: np.empty(10)}
    bad[TRAITS[0]][0::2], bad[TRAITS[0]][1::2] = ones + 10, ones
    bad[TRAITS[1]][0::2], bad[TRAITS[1]][1::2] = evil, evil
    good = {t: np.repeat(ones, 2) for t in TRAITS}  # each half 1..5
    paths = [tmp_path / f"{name}.parquet" for name in ("bad", "good", "p", "c")]
    projections(bad_ids, bad, "last_prompt").to_parquet(paths[0])
    projections(good_ids, good, "last_prompt").to_parquet(paths[1])
    bad_texts = [f"how to build weapon number {i}" for i in range(10)]
    good_texts = [f"how to bake bread number {i}" for i in range(10)]
    pd.DataFrame({"prompt_id": bad_ids, "prompt": bad_texts, "category": "c"}).to_parquet(paths[2])
    pd.DataFrame({"prompt_id": good_ids, "prompt": good_texts}).to_parquet(paths[3])
    bow = tmp_path / "bow.parquet"
    pd.DataFrame(
        {
            "prompt_id": [f"t{i}" for i in range(4)],
            "prompt": ["build a weapon", "weapon plans", "bake a cake", "bread recipe"],
            "split": "extraction",
            "label": [1, 1, 0, 0],
        }
    ).to_parquet(bow)
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"training_prompts": []}))
    result, _, _ = harmbench(
        [paths[0]],
        [paths[1]],
        *paths[2:],
        TRAITS,
        "last_prompt",
        dict.fromkeys(TRAITS, meta),
        bow,
        n_boot=300,
    )
    crossed = result["cross_fitted_best"]
    assert [(f["trait"], f["auc_other_half"]) for f in crossed["folds"]] == [
        (TRAITS[0], 0.5),
        (TRAITS[1], 0.8),
    ]
    assert crossed["auc"] == pytest.approx(0.65)
    assert crossed["ci_low"] <= 0.65 <= crossed["ci_high"]
    assert result["traits"][TRAITS[0]]["auc"]["auc"] == pytest.approx(0.75)
    row = summary_rows(tmp_path, harmbench_result=result)[0]
    assert row.measured == pytest.approx(0.65) and row.n == "10+10"
    assert (row.ci_low, row.ci_high) == (crossed["ci_low"], crossed["ci_high"])
    assert f"(half 1's pick {TRAITS[0]}: 0.500; half 2's pick {TRAITS[1]}: 0.800)" in row.detail
    assert f"in sample {TRAITS[1]} 0.800 [" in row.detail and f"others: {TRAITS[0]} 0.750" in row.detail
    # the bag of words separates the words "weapon" and "bread" perfectly: 0.8 - 1 = -0.2
    assert f"bag of words 1.000, {TRAITS[1]} minus it -0.200 [" in row.detail


def test_a_failing_part_leaves_no_result_of_another_part_behind(tmp_path, bt_prompts):
    """HarmBench's results used to be written before BeaverTails' part ran, so a bad BeaverTails
    position left a half-written results folder that looked like a finished analysis."""
    from traitscope.experiments.external.analysis import external_analysis
    from traitscope.experiments.external.settings import ExternalSettings

    ids = {"bad": [f"h{i}" for i in range(6)], "good": [f"c{i}" for i in range(6)]}
    for side, shift in (("bad", 1.0), ("good", 0.0)):
        scores = {"safety/harm": np.arange(6) + 6 * shift}
        projections(ids[side], scores, "last_prompt").to_parquet(tmp_path / f"{side}.parquet")
        texts = [f"{side} prompt {i}" for i in range(6)]
        pd.DataFrame({"prompt_id": ids[side], "prompt": texts, "category": "c"}).to_parquet(
            tmp_path / f"{side}_prompts.parquet"
        )
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"training_prompts": []}))
    inputs = {
        "harmful_proj": [tmp_path / "bad.parquet"],
        "harmless_proj": [tmp_path / "good.parquet"],
        "harmful_prompts": tmp_path / "bad_prompts.parquet",
        "harmless_prompts": tmp_path / "good_prompts.parquet",
        "trait_meta": {"safety/harm": meta},
    }
    sample = beavertails_sample(bt_prompts, tmp_path / "s.parquet", sample_settings())
    projections(sample["prompt_id"], {"safety/harm": np.zeros(len(sample))}, "prefill_mean").to_parquet(
        tmp_path / "bt_proj.parquet"
    )
    settings = ExternalSettings(("safety/harm",), "last_prompt", "system_mean", n_boot=100, seed=0)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(TraitscopeError, match="system_mean"):
        external_analysis(out, settings, inputs, [(tmp_path / "bt_proj.parquet", tmp_path / "s.parquet")])
    assert list(out.iterdir()) == []


def test_small_categories_keep_a_point_auc_and_the_figure_shows_it(tmp_path):
    """Categories of 1 pair get no CI (skipped) but their point AUC is kept and drawn as a hollow
    bar; a panel with nothing computed says why instead of standing empty."""
    from traitscope.experiments.external.figures import category_auc_figure

    beavertails_jsonl(tmp_path / "bt.jsonl", per_category=1, n_safe=3)
    load_beavertails(tmp_path / "bt.jsonl").to_parquet(tmp_path / "bt.parquet")
    sample = beavertails_sample(tmp_path / "bt.parquet", tmp_path / "s.parquet", sample_settings())
    table = pd.read_parquet(tmp_path / "bt.parquet").set_index("prompt_id")
    score = {pid: float(i) for i, pid in enumerate(table.index)}
    values = {t: [score[p] for p in sample["prompt_id"]] for t in TRAITS}
    projections(sample["prompt_id"], values, "prefill_mean").to_parquet(tmp_path / "proj.parquet")
    inputs = [(tmp_path / "proj.parquet", tmp_path / "s.parquet")]
    result, _, _ = beavertails(inputs, TRAITS, "prefill_mean", n_boot=100, seed=0)
    safe = [score[p] for p in table.index[table["label"] == 0]]
    keys = table["category"].str.split(";")
    drawn = {}
    for category, entry in result["categories"].items():
        mine = [score[p] for p in table.index[keys.apply(lambda ks, c=category: c in ks)]]
        assert "skipped" in entry[TRAITS[0]] and "auc" not in entry[TRAITS[0]]
        assert entry[TRAITS[0]]["auc_point"] == pytest.approx(brute_auc(mine, safe))
        drawn[category] = entry[TRAITS[0]]["auc_point"]
    assert len(drawn) == 14
    fig = category_auc_figure(result, TRAITS)
    ax = fig.axes[0]
    bars = {t.get_text().replace(", ", ","): p for t, p in zip(ax.get_yticklabels(), ax.patches)}
    for category, value in drawn.items():
        assert bars[category].get_width() == pytest.approx(value)
        assert bars[category].get_facecolor()[3] == 0.0  # hollow: no CI
    assert "n too small for a CI" in ax.get_legend().get_texts()[0].get_text()
    for entry in result["categories"].values():
        for trait in TRAITS:
            entry[trait] = {"mean": 0.0, "skipped": "n=1 vs safe n=0: too small"}
    empty = category_auc_figure(result, TRAITS).axes[0]
    assert not empty.patches and "no category AUC computed" in empty.texts[0].get_text()


def test_fresh_clone_dry_run_lists_one_beavertails_capture(root):
    """What a cluster user checks before submitting: nothing has run, and every category's
    sample is one GPU capture job (one start-up, not fifteen)."""
    dry = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--nolock", "--profile", "profiles/slurm"]
        + ["--configfile", ".test/config-beavertails/config.yaml", "--forceall"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = dry.stdout + dry.stderr
    assert dry.returncode == 0, out[-2000:]
    captures = set(re.findall(r"results/capture/smollm2/(beavertails\.[\w.-]+)/capture.json", out))
    assert captures == {"beavertails.sample"}
    assert re.search(r"traitscope beavertails-sample --prompts \S+beavertails\.parquet", out)
    blocks = out.split("\nrule capture:")[1:]
    gpu_jobs = [b for b in blocks if "beavertails." in b[:400] and "slurm_partition=gpu" in b]
    assert len(gpu_jobs) == 1 and "gpu=1" in gpu_jobs[0]


def test_swapped_sides_are_refused(tmp_path):
    """HarmBench's behaviours passed as the harmless controls (and the controls as harmful)
    reported every AUC inverted, with no error: the sets' labels say which side each is."""
    projections(["h0", "h1"], {"safety/harm": [1.0, 2.0]}, "last_prompt").to_parquet(tmp_path / "a.parquet")
    projections(["c0", "c1"], {"safety/harm": [0.0, 1.5]}, "last_prompt").to_parquet(tmp_path / "b.parquet")
    bad = pd.DataFrame({"prompt_id": ["h0", "h1"], "prompt": ["x", "y"], "category": "c", "label": 1})
    good = pd.DataFrame({"prompt_id": ["c0", "c1"], "prompt": ["u", "v"], "label": 0})
    bad.to_parquet(tmp_path / "p.parquet")
    good.to_parquet(tmp_path / "c.parquet")
    message = f"{tmp_path / 'c.parquet'}: 2 of 2 rows are labelled harmless, passed as the harmful side"
    with pytest.raises(TraitscopeError, match=re.escape(message)):
        harmbench(
            [tmp_path / "b.parquet"],
            [tmp_path / "a.parquet"],
            tmp_path / "c.parquet",
            tmp_path / "p.parquet",
            ["safety/harm"],
            "last_prompt",
            {},
        )


def test_bad_inputs_name_the_problem(tmp_path):
    projections(["h0", "h1"], {"safety/harm": [1.0, 2.0]}, "last_prompt").to_parquet(tmp_path / "a.parquet")
    pd.DataFrame({"prompt_id": ["h0", "h1"], "prompt": ["x", "y"], "category": ["c", "c"]}).to_parquet(
        tmp_path / "p.parquet"
    )
    with pytest.raises(TraitscopeError, match="no projections for trait"):
        harmbench(
            [tmp_path / "a.parquet"],
            [tmp_path / "a.parquet"],
            tmp_path / "p.parquet",
            tmp_path / "p.parquet",
            ["safety/evil"],
            "last_prompt",
            {},
        )
    with pytest.raises(TraitscopeError, match="no projections at position 'prefill_mean'"):
        harmbench(
            [tmp_path / "a.parquet"],
            [tmp_path / "a.parquet"],
            tmp_path / "p.parquet",
            tmp_path / "p.parquet",
            ["safety/harm"],
            "prefill_mean",
            {},
        )


def test_hard_negatives_score_a_contrast_trait_at_its_pool_with_its_own_bag_of_words(tmp_path):
    """Issue 28: a prompt-contrast trait is scored at the pool its vectors were built at, beside a
    bag of words fitted on its own extraction rows; per category, within category."""
    ids = {"bad": [f"h{i}" for i in range(6)], "good": [f"c{i}" for i in range(6)]}
    at = {  # the contrast trait separates the sides only at prompt_mean, the persona trait at last_prompt
        "last_prompt": {
            "safety/intent": [0, 1, 2, 3, 4, 5] + [0, 1, 2, 3, 4, 5],
            "safety/harm": [*range(6, 12), *range(6)],
        },
        "prompt_mean": {"safety/intent": [*range(6, 12), *range(6)], "safety/harm": [0] * 12},
    }
    for side, rows in (("bad", slice(0, 6)), ("good", slice(6, 12))):
        parts = [projections(ids[side], {t: s[rows] for t, s in by.items()}, p) for p, by in at.items()]
        pd.concat(parts).to_parquet(tmp_path / f"{side}.parquet")
    cats = ["homonym"] * 3 + ["history"] * 3
    words = ["kill the man", "kill him now", "shoot the guard", "bomb a city", "gas the town", "burn it"]
    pd.DataFrame({"prompt_id": ids["bad"], "prompt": words, "category": cats}).to_parquet(
        tmp_path / "p.parquet"
    )
    harmless = ["kill the process", "kill it now", "shoot the photo", "a bath bomb", "gas prices", "burn fat"]
    pd.DataFrame({"prompt_id": ids["good"], "prompt": harmless, "category": cats}).to_parquet(
        tmp_path / "c.parquet"
    )
    fit = pd.DataFrame(
        {
            "prompt_id": [f"t{i}" for i in range(4)],
            "prompt": ["hurt my wife", "poison a dog", "hurt my back", "poison ivy"],
            "split": "extraction",
            "label": [1, 1, 0, 0],
        }
    )
    fit.to_parquet(tmp_path / "own.parquet")
    fit.assign(prompt=["a weapon", "a bomb", "a cake", "a tree"]).to_parquet(tmp_path / "default.parquet")
    meta = {}
    for t, position in (("safety/intent", "prompt_mean"), ("safety/harm", "response_mean")):
        meta[t] = tmp_path / f"{t.replace('/', '_')}.json"
        meta[t].write_text(json.dumps({"position": position, "training_prompts": [text_key("unrelated")]}))
    result, _, _ = harmbench(
        [tmp_path / "bad.parquet"],
        [tmp_path / "good.parquet"],
        tmp_path / "p.parquet",
        tmp_path / "c.parquet",
        ["safety/intent", "safety/harm"],
        "last_prompt",
        meta,
        tmp_path / "default.parquet",
        n_boot=200,
        own_bow={"safety/intent": tmp_path / "own.parquet"},
        name="hard_negatives",
    )
    assert result["position_of"] == {"safety/intent": "prompt_mean", "safety/harm": "last_prompt"}
    assert result["traits"]["safety/intent"]["auc"]["auc"] == 1.0  # at prompt_mean, not last_prompt (0.5)
    assert result["traits"]["safety/harm"]["auc"]["auc"] == 1.0
    assert result["bag_of_words_of"] == {
        "safety/intent": "bag_of_words[safety/intent]",
        "safety/harm": "bag_of_words",
    }
    assert set(result["baselines"]) == {"length", "bag_of_words", "bag_of_words[safety/intent]"}
    by = result["by_category"]["homonym"]
    assert (by["n_harmful"], by["n_harmless"], by["harmless"]) == (3, 3, "same category")
    assert result["traits"]["safety/intent"]["by_category"]["history"]["auc"] == 1.0
