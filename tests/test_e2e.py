"""End to end on the real SmolLM2: the Snakemake DAG on a tiny trait set.

Results are recomputed independently from the written activations (sklearn AUC, numpy
means) rather than compared with stored numbers, so a wrong stage fails the test.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import roc_auc_score
from test_dag import job_counts

from traitscope.activations import Activations
from traitscope.extraction import load_vectors

pytestmark = pytest.mark.e2e
TRAITS = ["safety/evil", "safety/refusal"]


@pytest.fixture(scope="module")
def run_dir(root, mirror, tmp_path_factory, smollm2_gguf):
    work = tmp_path_factory.mktemp("e2e")
    for name in ("workflow", "profiles", "envs"):
        shutil.copytree(root / name, work / name)
    for trait in TRAITS:  # a tiny trait set: a few questions, one pair each
        data = yaml.safe_load((root / "resources/traits" / f"{trait}.yaml").read_text())
        data["extraction_questions"] = data["extraction_questions"][:5]
        data["evaluation_questions"] = data["evaluation_questions"][:4]
        data["pairs"] = data["pairs"][:2]
        dest = work / "traits" / f"{trait}.yaml"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(yaml.safe_dump(data))
    config = yaml.safe_load((root / "config/config.yaml").read_text())
    config.update(traits_dir="traits", traits=TRAITS, data_mirror=str(mirror))
    for spec in config["prompt_sets"].values():
        spec["n"] = 5
    config["experiments"]["prefill"]["traits"] = ["safety/evil", "safety/refusal"]
    config["experiments"]["external"]["traits"] = ["safety/evil", "safety/refusal"]
    # BeaverTails through the checkpoint: a small file of its exact schema, 3 rows per group
    from test_external import beavertails_jsonl

    beavertails_jsonl(work / "bt.jsonl", per_category=3, n_safe=4)
    config["prompt_sets"]["bt"] = {"dataset": "beavertails", "path": "bt.jsonl"}
    config["experiments"]["external"]["beavertails"] = {"prompt_set": "bt", "n_per_category": 3, "seed": 0}
    config["extraction"].update(max_new_tokens=12, pairs_per_question=1)
    config["steering_check"].update(max_new_tokens=12)
    (work / "config").mkdir()
    (work / "config/config.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return work


def trait_folder(run_dir, trait):
    return run_dir / "results/traits/smollm2" / trait


@pytest.mark.parametrize("trait", TRAITS)
def test_vectors_and_evaluation_recompute(run_dir, trait):
    folder = trait_folder(run_dir, trait)
    table = pd.read_parquet(folder / "responses.parquet")
    assert (table["response"].str.len() > 0).mean() > 0.8  # the model really generated text
    acts = Activations.load(folder / "activations.safetensors")
    x = acts.data["response_mean"].numpy()
    assert x.shape == (len(table), 30, 576)
    vectors = load_vectors(folder / "vectors.safetensors")
    train = (table["split"] == "extraction").to_numpy()
    label = table["label"].to_numpy()
    expected = x[train & (label == 1)].mean(0) - x[train & (label == 0)].mean(0)
    np.testing.assert_allclose(vectors["mean_diff"].numpy(), expected, rtol=1e-4, atol=1e-4)

    evaluation = json.loads((folder / "evaluation.json").read_text())
    chosen = evaluation["chosen"]
    assert set(chosen) >= {"method", "layer", "auc", "cohens_d"}
    held = table["split"] == "evaluation"
    v = vectors[chosen["method"]].numpy()[chosen["layer"]]
    scores = x[held.to_numpy(), chosen["layer"]] @ (v / np.linalg.norm(v))
    assert chosen["auc"] == pytest.approx(roc_auc_score(label[held.to_numpy()], scores))
    assert 0.0 <= evaluation["chosen_split_half"]["auc"] <= 1.0
    best = max(r["auc"] for m in evaluation["methods"].values() for r in m)
    assert chosen["auc"] == best
    summary = json.loads((run_dir / "results/traits/smollm2/summary.json").read_text())
    assert summary["traits"][trait]["auc"] == chosen["auc"]


def test_steering_check_reports_both_means(run_dir):
    steering = json.loads((trait_folder(run_dir, "safety/evil") / "steering.json").read_text())
    assert steering["difference"] == pytest.approx(
        steering["mean_projection_steered"] - steering["mean_projection_unsteered"]
    )
    assert steering["n"] == 4 and steering["examples"][0]["steered"] != steering["examples"][0]["unsteered"]


def test_editing_one_trait_reruns_only_that_trait(run_dir):
    path = run_dir / "traits/safety/refusal.yaml"
    data = yaml.safe_load(path.read_text())
    data["description"] += " Edited."
    path.write_text(yaml.safe_dump(data))
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "2"],
        cwd=run_dir,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0
    assert "results/traits/smollm2/safety/refusal/responses.parquet" in out
    assert "safety/evil/responses.parquet" not in out
    counts = job_counts(out)
    assert counts["trait_responses"] == 1 and "prepare_model" not in counts


def test_projections_cover_every_prompt_trait_and_chosen_layer(run_dir):
    import pandas as pd

    chosen = {
        t: json.loads((trait_folder(run_dir, t) / "evaluation.json").read_text())["chosen"]["layer"]
        for t in TRAITS
    }
    for prompt_set in ("harmbench_val", "harmless_val"):
        prompts = pd.read_parquet(run_dir / f"results/prompts/{prompt_set}.parquet")
        table = pd.read_parquet(run_dir / f"results/projections/smollm2/{prompt_set}.parquet")
        assert len(prompts) == 5 and set(table["prompt_id"]) == set(prompts["prompt_id"])
        assert set(table["layer"]) == set(chosen.values())  # only the chosen layers were captured
        picked = table[table["chosen_layer"]]
        assert {(t, layer) for t, layer in zip(picked["trait"], picked["layer"])} == set(chosen.items())
        last = table[table["position"] == "last_prompt"]
        assert len(last) == 5 * len(TRAITS) * len(set(chosen.values()))
        assert last["score"].notna().all() and (last["cosine"].abs() <= 1 + 1e-5).all()


def test_prefill_experiment_reports_every_comparison(run_dir):
    import pandas as pd

    result = json.loads((run_dir / "results/prefill/condition_comparison.json").read_text())
    conditions = pd.read_parquet(run_dir / "results/prompts/prefill_conditions.parquet")
    prefill = conditions.loc[conditions["condition"] == "C2", "prefill"].iloc[0]
    traits = [t for t in ("safety/harm", "safety/refusal", "safety/evil") if t in TRAITS]
    for key in ("C2_vs_C4", "C1_vs_C2", "C1_vs_C3"):
        for trait in traits:
            row = result["comparisons"][key][trait]
            assert row["n_a"] == row["n_b"] == 5
            assert row["ci_low"] <= row["cohens_d"] <= row["ci_high"] and row["p_holm"] >= row["p_value"]
    # the per-token rows of a C2 prompt: the prefill segment spells the prefill exactly
    table = pd.read_parquet(run_dir / "results/projections/smollm2/prefill_conditions.parquet")
    c2 = conditions.loc[conditions["condition"] == "C2", "prompt_id"].iloc[0]
    steps = table[(table["prompt_id"] == c2) & (table["token_index"] >= 0)]
    assert {"prefill", "response"} <= set(steps["position"])
    capture = json.loads((run_dir / "results/capture/smollm2/prefill_conditions/capture.json").read_text())
    tokens = pd.concat(
        pd.read_parquet(p)
        for p in (run_dir / "results/capture/smollm2/prefill_conditions").glob("shards-*/*.tokens.parquet")
    )
    assert capture["n_prompts"] == len(conditions)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(run_dir / "results/models/smollm2/weights")
    pre = tokens[(tokens["prompt_id"] == c2) & (tokens["segment"] == "prefill")].sort_values("token_index")
    assert tok.convert_tokens_to_string(list(pre["token"])) == prefill


def test_harmbench_auc_is_recomputed_from_projections(run_dir):
    import pandas as pd

    result = json.loads((run_dir / "results/external_datasets/harmbench_results.json").read_text())
    proj = run_dir / "results/projections/smollm2"
    for trait in ("safety/evil", "safety/refusal"):
        scores = []
        for name in ("harmbench_val", "harmless_val"):
            t = pd.read_parquet(proj / f"{name}.parquet")
            t = t[(t["trait"] == trait) & t["chosen_layer"] & (t["position"] == "last_prompt")]
            scores.append(t["score"].to_numpy())
        labels = np.r_[np.ones(len(scores[0])), np.zeros(len(scores[1]))]
        auc = result["traits"][trait]["auc"]
        assert auc["auc"] == pytest.approx(roc_auc_score(labels, np.r_[scores[0], scores[1]]))
        assert auc["n_pos"] == auc["n_neg"] == 5 and auc["ci_low"] <= auc["auc"] <= auc["ci_high"]
    failures = json.loads((run_dir / "results/external_datasets/failure_cases.json").read_text())
    assert set(failures["harmbench"]) == {"safety/evil", "safety/refusal"}


def test_beavertails_groups_run_through_capture_and_analysis(run_dir):
    import pandas as pd

    result = json.loads((run_dir / "results/external_datasets/beavertails_results.json").read_text())
    assert len(result["categories"]) == 14 and result["n_safe"] == 3
    groups = sorted((run_dir / "results/prompts/beavertails_groups").glob("*.parquet"))
    assert len(groups) == 15
    scores = {}
    for g in groups:
        t = pd.read_parquet(run_dir / f"results/projections/smollm2/bt-{g.stem}.parquet")
        t = t[(t["trait"] == "safety/evil") & t["chosen_layer"] & (t["position"] == "prefill_mean")]
        scores.update({(g.stem == "safe", pid): s for pid, s in zip(t["prompt_id"], t["score"])})
    labels = np.array([0 if safe else 1 for safe, _ in scores])
    expected = roc_auc_score(labels, np.array(list(scores.values())))
    assert result["overall"]["safety/evil"]["auc"] == pytest.approx(expected)
