"""External datasets: BeaverTails split per category, harm-detection statistics, the DAG."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from traitscope.errors import TraitscopeError
from traitscope.external import beavertails, category_slug, harmbench, split_beavertails
from traitscope.loaders import BEAVERTAILS_CATEGORIES, load_beavertails

TRAITS = ["safety/harm", "safety/evil"]


def beavertails_jsonl(path, per_category=3, n_safe=4, seed=0):
    """A small file of BeaverTails' exact schema: every category, some multi-category rows, safe rows."""
    rng = np.random.default_rng(seed)
    records = []
    for i, category in enumerate(BEAVERTAILS_CATEGORIES):
        for k in range(per_category):
            flags = dict.fromkeys(BEAVERTAILS_CATEGORIES, False)
            flags[category] = True
            if k == 0:  # a second category on some rows
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


def test_split_has_every_category_and_safe(tmp_path, bt_prompts):
    slugs = split_beavertails(bt_prompts, tmp_path / "groups", n_per_category=None)
    assert len(slugs) == 15 and "safe" in slugs
    table = pd.read_parquet(bt_prompts)
    for category in BEAVERTAILS_CATEGORIES:
        group = pd.read_parquet(tmp_path / "groups" / f"{category_slug(category)}.parquet")
        member = table["category"].str.split(";").apply(lambda ks, c=category: c in ks)
        expected = table[(table["label"] == 1) & member]
        assert sorted(group["prompt_id"]) == sorted(expected["prompt_id"])
        assert (group["prefill"] == group["response"]).all()  # the response is what the labels judge
    safe = pd.read_parquet(tmp_path / "groups" / "safe.parquet")
    assert (safe["label"] == 0).all() and len(safe) == 4


def test_split_samples_per_category_with_a_seed(tmp_path, bt_prompts):
    split_beavertails(bt_prompts, tmp_path / "a", n_per_category=2, seed=1)
    split_beavertails(bt_prompts, tmp_path / "b", n_per_category=2, seed=1)
    for f in (tmp_path / "a").iterdir():
        a, b = pd.read_parquet(f), pd.read_parquet(tmp_path / "b" / f.name)
        assert len(a) == 2 and a["prompt_id"].tolist() == b["prompt_id"].tolist()


def test_empty_category_is_a_clear_error(tmp_path, bt_prompts):
    table = pd.read_parquet(bt_prompts)
    table = table[~table["category"].str.contains("self_harm")]
    table.to_parquet(tmp_path / "less.parquet")
    with pytest.raises(TraitscopeError, match=r"less\.parquet: empty BeaverTails group\(s\) self_harm"):
        split_beavertails(tmp_path / "less.parquet", tmp_path / "out", None)
    assert not (tmp_path / "out").exists()
    table.drop(columns=["response"]).to_parquet(tmp_path / "nocol.parquet")
    with pytest.raises(TraitscopeError, match="missing column"):
        split_beavertails(tmp_path / "nocol.parquet", tmp_path / "out", None)


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
    pd.DataFrame({"prompt_id": bad_ids, "prompt": bad_ids, "category": cats}).to_parquet(
        tmp_path / "p.parquet"
    )
    result, failures, _ = harmbench(
        [tmp_path / "bad.parquet"],
        [tmp_path / "good.parquet"],
        tmp_path / "p.parquet",
        TRAITS,
        "last_prompt",
        n_boot=300,
    )
    labels = np.r_[np.ones(20), np.zeros(15)]
    for t in TRAITS:
        auc = result["traits"][t]["auc"]
        assert auc["auc"] == pytest.approx(roc_auc_score(labels, np.r_[bad[t], good[t]]))
        assert auc["ci_low"] <= auc["auc"] <= auc["ci_high"]
        sub = np.r_[bad[t][10:], good[t]]
        assert result["traits"][t]["by_category"]["b"]["auc"] == pytest.approx(
            roc_auc_score(np.r_[np.ones(10), np.zeros(15)], sub)
        )
        cut = failures[t]["threshold"]
        assert failures[t]["n_false_negatives"] == int((bad[t] < cut).sum())
        assert all(e["score"] < cut for e in failures[t]["examples"])


def test_beavertails_overall_auc_and_severity(tmp_path, bt_prompts):
    slugs = split_beavertails(bt_prompts, tmp_path / "groups", None)
    rng = np.random.default_rng(2)
    table = pd.read_parquet(bt_prompts).set_index("prompt_id")
    score = {pid: rng.normal() + 0.8 * table.loc[pid, "n_categories"] for pid in table.index}
    proj, prompts = {}, {}
    for slug in slugs:
        group = pd.read_parquet(tmp_path / "groups" / f"{slug}.parquet")
        values = {t: [score[p] * (1 if t == TRAITS[0] else -1) for p in group["prompt_id"]] for t in TRAITS}
        projections(group["prompt_id"], values, "prefill_mean").to_parquet(tmp_path / f"{slug}.proj.parquet")
        proj[slug], prompts[slug] = (
            [tmp_path / f"{slug}.proj.parquet"],
            tmp_path / "groups" / f"{slug}.parquet",
        )
    result, _, _ = beavertails(proj, prompts, TRAITS, "prefill_mean", n_boot=300)
    ids = list(table.index)
    labels = table.loc[ids, "label"].to_numpy()
    harm = np.array([score[p] for p in ids])
    assert result["overall"][TRAITS[0]]["auc"] == pytest.approx(roc_auc_score(labels, harm))
    rho = spearmanr(harm, table.loc[ids, "n_categories"]).statistic
    assert result["severity"][TRAITS[0]]["rho"] == pytest.approx(rho)
    assert result["n_unsafe"] == int(labels.sum()) and len(result["categories"]) == 14
    assert set(result["best_trait"].values()) == {TRAITS[0]}  # the other trait is its mirror image


def test_slurm_dry_run_has_one_capture_per_category(root, tmp_path):
    for name in ("workflow", "config", "profiles", "resources", "envs"):
        shutil.copytree(root / name, tmp_path / name)
    beavertails_jsonl(tmp_path / "bt.jsonl")
    overlay = {
        "prompt_sets": {"bt": {"dataset": "beavertails", "path": "bt.jsonl"}},
        "experiments": {
            "external": {
                "enabled": True,
                "variant": "smollm2",
                "harmbench": None,
                "beavertails": {"prompt_set": "bt", "n_per_category": 2},
            },
            "prefill": {"enabled": False},
        },
        "captures": [],
    }
    (tmp_path / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    base = [sys.executable, "-m", "snakemake", "--cores", "1", "--configfile", "overlay.yaml"]
    # the checkpoint (CPU only) must have run before the DAG knows the categories
    run = subprocess.run(
        [*base, "--", "results/prompts/beavertails_groups"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    dry = subprocess.run(
        [*base, "-n", "--profile", "profiles/slurm"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = dry.stdout + dry.stderr
    assert dry.returncode == 0, out[-2000:]
    captures = set(re.findall(r"results/capture/smollm2/(bt-[\w,.-]+)/capture.json", out))
    assert captures == {f"bt-{category_slug(c)}" for c in BEAVERTAILS_CATEGORIES} | {"bt-safe"}
    gpu_jobs = [b for b in out.split("\nrule capture:")[1:] if "slurm_partition=gpu" in b and "gpu=1" in b]
    assert len(gpu_jobs) == len(captures)


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
            ["safety/evil"],
            "last_prompt",
        )
    with pytest.raises(TraitscopeError, match="no projections at position 'prefill_mean'"):
        harmbench(
            [tmp_path / "a.parquet"],
            [tmp_path / "a.parquet"],
            tmp_path / "p.parquet",
            ["safety/harm"],
            "prefill_mean",
        )
