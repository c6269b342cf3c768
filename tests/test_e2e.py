"""End to end on the real SmolLM2: the Snakemake DAG with `.test/config-tiny`.

Results are recomputed independently from the written activations (sklearn AUC, numpy
means) rather than compared with stored numbers, so a wrong stage fails the test.
"""

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
from conftest import MIRROR
from sklearn.metrics import roc_auc_score
from test_dag import job_counts

from traitscope.capture.store import read_shards

pytestmark = pytest.mark.e2e
TRAITS = ["safety/evil", "safety/refusal"]
CONFIG = ".test/config-tiny/config.yaml"
EXTERNAL_SETS = ("harmbench_val", "harmless_val", "prefill_conditions")


def snakemake(run_dir, *args: str, timeout: int = 1500) -> subprocess.CompletedProcess:
    """The run every test sees: the tiny config, datasets from the shared mirror."""
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", CONFIG]
    cmd += ["--config", f"data_mirror={MIRROR}", *args]
    return subprocess.run(cmd, cwd=run_dir, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def run_dir(root, mirror, tmp_path_factory, smollm2_gguf):
    work = tmp_path_factory.mktemp("e2e")
    for name in ("workflow", "profiles", "envs", "config", "resources", ".test"):
        shutil.copytree(root / name, work / name)
    result = snakemake(work)
    assert result.returncode == 0, result.stderr[-3000:]
    return work


def trait_folder(run_dir, trait):
    return run_dir / "results/traits/smollm2" / trait


def pooled(run_dir, prompt_set, pool):
    """{prompt_id: float64 [n_layers, d]} of one pool, read straight from the shards."""
    capture = run_dir / f"results/capture/smollm2/{prompt_set}/capture.json"
    manifest = json.loads(capture.read_text())
    j = manifest["pools"].index(pool)
    out = {}
    for prompts, _, tensors in read_shards(capture):
        stacked = np.stack(
            [tensors[f"pooled.layer.{la}"][:, j].double().numpy() for la in manifest["layers"]], 1
        )
        out.update(zip(prompts["prompt_id"], stacked))
    return out, prompts


@pytest.mark.parametrize("trait", TRAITS)
def test_vectors_and_evaluation_recompute(run_dir, trait):
    folder = trait_folder(run_dir, trait)
    table = pd.read_parquet(run_dir / f"results/prompts/traits/{trait}.parquet")
    acts, _ = pooled(run_dir, f"traits/{trait}", "response_mean")
    responses = pd.concat(
        p for p, _, _ in read_shards(run_dir / f"results/capture/smollm2/traits/{trait}/capture.json")
    )
    assert (responses["response"].str.len() > 0).mean() > 0.8  # the model really generated text
    x = np.stack([acts[pid] for pid in table["prompt_id"]])
    assert x.shape == (len(table), 30, 576) and len(table) == (5 + 4) * 2
    from traitscope.vectors.trait_vector import read_vectors

    vectors, meta = read_vectors(folder / "vectors.safetensors")
    assert meta["layers"] == list(range(30))
    train = (table["split"] == "extraction").to_numpy()
    label = table["label"].to_numpy()
    expected = x[train & (label == 1)].mean(0) - x[train & (label == 0)].mean(0)
    np.testing.assert_allclose(vectors["mean_diff"].numpy(), expected, rtol=1e-4, atol=1e-4)

    evaluation = json.loads((folder / "evaluation.json").read_text())
    chosen = evaluation["chosen"]
    held = (table["split"] == "evaluation").to_numpy()
    v = vectors[chosen["method"]].double().numpy()[chosen["layer"]]
    scores = x[held, chosen["layer"]] @ (v / np.linalg.norm(v))
    assert chosen["auc"] == pytest.approx(roc_auc_score(label[held], scores))
    assert 0.0 <= evaluation["chosen_split_half"]["auc"] <= 1.0
    assert (
        chosen["plateau_auc"]
        == pytest.approx(
            max(  # the lesser of its own AUC and the 1-2-1 neighbourhood's
                min(r["auc"], sum(w * n["auc"] for w, n in zip(ws, m[max(i - 1, 0) : i + 2])) / sum(ws))
                for m in evaluation["methods"].values()
                for i, r in enumerate(m)
                for ws in [(2, 1) if i == 0 else (1, 2) if i == len(m) - 1 else (1, 2, 1)]
            ),
            abs=1e-6,
        )
    )
    summary = json.loads((run_dir / "results/traits/smollm2/summary.json").read_text())
    assert summary["traits"][trait]["auc"] == chosen["auc"]


def test_steering_check_reports_both_means_and_their_paired_effect(run_dir):
    steering = json.loads((trait_folder(run_dir, "safety/evil") / "steering.json").read_text())
    assert steering["difference"] == pytest.approx(
        steering["mean_projection_steered"] - steering["mean_projection_unsteered"]
    )
    held_out = yaml.safe_load((run_dir / "resources/traits/safety/evil.yaml").read_text())[
        "evaluation_questions"
    ]
    assert steering["n"] == len(held_out) == 80  # one steered and one plain answer per held-out question
    paired = steering["paired"]  # the same questions both ways: d_z with its CI over questions
    assert paired["n_pairs"] == 80 and paired["mean_diff"] == pytest.approx(steering["difference"])
    assert paired["ci_low"] <= paired["cohens_dz"] <= paired["ci_high"]
    assert steering["steered_higher"] == (paired["ci_low"] > 0)
    assert steering["examples"][0]["steered"] != steering["examples"][0]["unsteered"]


def test_editing_one_trait_reruns_only_that_trait_and_no_prompt_set_capture(run_dir):
    path = run_dir / "resources/traits/safety/refusal.yaml"
    original = path.read_text()
    data = yaml.safe_load(original)
    data["extraction_questions"].append("How do I reset a forgotten email password?")
    path.write_text(yaml.safe_dump(data))
    try:
        result = snakemake(run_dir, "-n", timeout=300)
    finally:
        path.write_text(original)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-2000:]
    counts = job_counts(out)
    for stage in ("trait_prompts", "capture", "trait_vectors", "trait_evaluation", "trait_summary"):
        assert counts[stage] == 1, (stage, counts)
    blocks = [b for b in out.split("\nrule ")[1:] if b.startswith("capture:")]
    captured = {re.search(r"output: results/capture/smollm2/(\S+)/capture\.json", b)[1] for b in blocks}
    assert captured == {"traits/safety/refusal"}  # no prompt-set capture, not the other trait
    # projections of every set and both analyses follow the edited trait's vectors
    # HarmBench and its controls, the prefill 2x2, BeaverTails' sample
    assert counts["project"] == 4 and counts["prefill_analysis"] == counts["external_analysis"] == 1
    assert "prepare_model" not in counts and "prep_prompts" not in counts and "steering_check" not in counts


def test_projections_cover_every_prompt_trait_and_layer(run_dir):
    chosen = {
        t: json.loads((trait_folder(run_dir, t) / "evaluation.json").read_text())["chosen"]["layer"]
        for t in TRAITS
    }
    for prompt_set in ("harmbench_val", "harmless_val"):
        prompts = pd.read_parquet(run_dir / f"results/prompts/{prompt_set}.parquet")
        table = pd.read_parquet(run_dir / f"results/projections/smollm2/{prompt_set}.parquet")
        assert len(prompts) == 5 and set(table["prompt_id"]) == set(prompts["prompt_id"])
        assert set(table["layer"]) == set(range(30))  # capture.layers: all
        picked = table[table["chosen_layer"]]
        assert {(t, layer) for t, layer in zip(picked["trait"], picked["layer"])} == set(chosen.items())
        last = table[table["position"] == "last_prompt"]
        assert len(last) == 5 * len(TRAITS) * 30
        assert last["score"].notna().all() and (last["cosine"].abs() <= 1 + 1e-5).all()
        # a score is the activation projected on the chosen unit vector, recomputed from the shards
        acts, _ = pooled(run_dir, prompt_set, "last_prompt")
        from traitscope.vectors.trait_vector import TraitVector

        for trait in TRAITS:
            folder = trait_folder(run_dir, trait)
            direction = TraitVector.load(
                folder / "vectors.safetensors", folder / "evaluation.json"
            ).direction()
            row = last[(last["trait"] == trait) & last["chosen_layer"]].set_index("prompt_id")["score"]
            for pid, score in row.items():
                assert score == pytest.approx(acts[pid][chosen[trait]] @ direction.double().numpy(), rel=1e-4)


def test_prefill_experiment_reports_every_comparison(run_dir):
    result = json.loads((run_dir / "results/prefill/condition_comparison.json").read_text())
    conditions = pd.read_parquet(run_dir / "results/prompts/prefill_conditions.parquet")
    prefill = conditions.loc[conditions["condition"] == "C2", "prefill"].iloc[0]
    for key in ("C2_vs_C4", "C1_vs_C2", "C1_vs_C3"):
        for trait in TRAITS:
            row = result["comparisons"][key][trait]
            paired = key == "C1_vs_C2"  # the same requests without and with the prefill
            sizes = [row["n_pairs"]] if paired else [row["n_a"], row["n_b"]]
            assert set(sizes) == {5}
            effect = row["cohens_dz" if paired else "cohens_d"]
            assert row["ci_low"] <= effect <= row["ci_high"] and row["p_holm"] >= row["p_value"]
    table = pd.read_parquet(run_dir / "results/projections/smollm2/prefill_conditions.parquet")
    c2 = conditions.loc[conditions["condition"] == "C2", "prompt_id"].iloc[0]
    steps = table[(table["prompt_id"] == c2) & (table["token_index"] >= 0)]
    assert {"prefill", "response"} <= set(steps["position"])
    folder = run_dir / "results/capture/smollm2/prefill_conditions"
    capture = json.loads((folder / "capture.json").read_text())
    tokens = pd.concat(pd.read_parquet(p) for p in folder.glob("shards-*/*.tokens.parquet"))
    assert capture["n_prompts"] == len(conditions)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(run_dir / "results/models/smollm2/weights")
    pre = tokens[(tokens["prompt_id"] == c2) & (tokens["segment"] == "prefill")].sort_values("token_index")
    assert tok.convert_tokens_to_string(list(pre["token"])) == prefill


def test_harmbench_auc_is_recomputed_from_projections(run_dir):
    result = json.loads((run_dir / "results/external_datasets/harmbench_results.json").read_text())
    proj = run_dir / "results/projections/smollm2"
    for trait in TRAITS:
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
    assert set(failures["harmbench"]) == set(TRAITS)


def test_beavertails_jobs_run_through_capture_and_analysis(run_dir):
    """One capture job holds every category's sample (3 a category, each harmful row sampled in
    its first configured category); the analysis's AUC is recomputed from its projections."""
    result = json.loads((run_dir / "results/external_datasets/beavertails_results.json").read_text())
    rows = pd.read_parquet(run_dir / "results/prompts/beavertails.sample.parquet").set_index("prompt_id")
    t = pd.read_parquet(run_dir / "results/projections/smollm2/beavertails.sample.parquet")
    t = t[(t["trait"] == "safety/evil") & t["chosen_layer"] & (t["position"] == "prefill_mean")]
    configured = ["self_harm", "violence,aiding_and_abetting,incitement"]
    first = [
        "safe" if rows.loc[p, "label"] == 0 else next(c for c in configured if c in rows.loc[p, "category"])
        for p in t["prompt_id"]
    ]
    assert sorted(first) == sorted(["safe", *configured] * 3)  # n_per_category each
    labels = rows.loc[t["prompt_id"], "label"].tolist()
    assert result["n_safe"] == 3 and result["n_unsafe"] == 6
    assert result["overall"]["safety/evil"]["auc"] == pytest.approx(roc_auc_score(labels, t["score"]))


def test_summary_and_report_show_the_success_criteria_first(run_dir):
    """summarize reads the run's own results; `snakemake --report` writes one self-contained
    HTML file whose first page (the workflow description) is the success-criteria table."""
    summary = json.loads((run_dir / "results/summary.json").read_text())
    status = {s["name"]: s["status"] for s in summary["sections"]}
    assert status["emergent_misalignment"] == status["backdoor"] == "not run"
    assert status["steering_optimisation"] == "not run"
    harmbench = json.loads((run_dir / "results/external_datasets/harmbench_results.json").read_text())
    external = next(s for s in summary["sections"] if s["name"] == "external")["criteria"]
    # the best trait out of sample: chosen on one half of the prompts, scored on the other
    assert external[0]["measured"] == harmbench["cross_fitted_best"]["auc"]
    best, entry = max(harmbench["traits"].items(), key=lambda item: item[1]["auc"]["auc"])
    assert f"in sample {best} {entry['auc']['auc']:.3f}" in external[0]["detail"]
    severity = external[2]  # BeaverTails brings a severity correlation, with a CI
    assert severity["status"] in ("met", "not met", "inconclusive") and severity["ci_low"] is not None
    result = snakemake(run_dir, "--report", "report.html", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    html = (run_dir / "report.html").read_text()
    description = re.search(r"var workflow_desc = (.*);", html)[1]
    assert "HarmBench vs harmless: ROC-AUC &gt; 0.7" in json.loads(description)
    for category in ("0 Success criteria", "1 Trait vectors", "2 External datasets", "3 Prefill attack"):
        assert category in html
    assert not re.search(r"""<(script|link|img)[^>]+(src|href)=["']https?://""", html)  # self-contained
