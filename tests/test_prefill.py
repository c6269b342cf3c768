"""Prefill attack: the 2x2 conditions and the analysis on planted effects."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from traitscope.data.prompts import read_prompt_set
from traitscope.errors import TraitscopeError
from traitscope.experiments.prefill import check_config, conditions_2x2, prefill_analysis, prefill_conditions
from traitscope.experiments.prefill.settings import PrefillAnalysisSettings, PrefillConditionsSettings
from traitscope.settings import from_schema

PREFILL = "Sure, I'd be happy to help with that. Here's"


def prompt_table(kind: str, n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "prompt_id": [f"{kind}-{i}" for i in range(n)],
            "prompt": [f"{kind} request {i}" for i in range(n)],
            "source": kind,
            "category": None,
            "label": int(kind == "harmful"),
            "meta": "{}",
        }
    )


def test_conditions_are_matched_and_prefilled():
    table = conditions_2x2(prompt_table("harmful", 6), prompt_table("benign", 4), [PREFILL, "Okay."])
    counts = table["condition"].value_counts().to_dict()
    assert counts == {"C1": 4, "C3": 4, "C2": 8, "C4": 8}  # matched in count; C2/C4 once per prefill
    assert set(table.loc[table["condition"].isin(["C1", "C3"]), "prefill"]) == {""}
    assert set(table.loc[table["condition"] == "C2", "prefill"]) == {PREFILL, "Okay."}
    assert table["prompt_id"].is_unique
    assert (table.loc[table["condition"].isin(["C1", "C2"]), "label"] == 1).all()
    with pytest.raises(TraitscopeError, match="at least one prefill"):
        conditions_2x2(prompt_table("harmful", 3), prompt_table("benign", 3), [])


def test_prefill_conditions_writes_a_prompt_set_from_two_prepared_sets(tmp_path):
    harmful, harmless = tmp_path / "harmful.parquet", tmp_path / "harmless.parquet"
    prompt_table("harmful", 3).to_parquet(harmful)
    prompt_table("benign", 5).to_parquet(harmless)
    out = tmp_path / "conditions.parquet"
    table = prefill_conditions(
        harmful, harmless, from_schema(PrefillConditionsSettings, prefills=[PREFILL]), out
    )
    pd.testing.assert_frame_equal(pd.read_parquet(out), table)
    assert table["condition"].value_counts().to_dict() == {"C1": 3, "C2": 3, "C3": 3, "C4": 3}
    prompts = read_prompt_set(out).set_index("prompt_id")  # captured like any prompt set
    for row in table.itertuples():
        assert prompts.loc[row.prompt_id, "messages"] == [{"role": "user", "content": row.prompt}]
        assert prompts.loc[row.prompt_id, "prefill"] == (PREFILL if row.condition in ("C2", "C4") else "")
        kind = "harmful" if row.condition in ("C1", "C2") else "benign"
        assert row.prompt.startswith(kind) and row.label == int(kind == "harmful")
    by_condition = table.groupby("condition")["prompt"].apply(set)
    assert by_condition["C1"] == by_condition["C2"] and by_condition["C3"] == by_condition["C4"]

    messages_only = tmp_path / "messages.parquet"
    pd.DataFrame({"prompt_id": ["a"], "messages": ['[{"role": "user", "content": "hi"}]']}).to_parquet(
        messages_only
    )
    with pytest.raises(
        TraitscopeError, match=re.escape(f"{messages_only}: the prefill conditions need a 'prompt'")
    ):
        prefill_conditions(
            harmful, messages_only, from_schema(PrefillConditionsSettings), tmp_path / "never.parquet"
        )
    assert not (tmp_path / "never.parquet").exists()


def test_prefill_conditions_refuse_swapped_sides(tmp_path):
    """The benign set passed as harmful (and the reverse) made C1/C2 the benign prompts: every
    comparison's sign flipped, with no error."""
    harmful, harmless = tmp_path / "harmful.parquet", tmp_path / "harmless.parquet"
    prompt_table("harmful", 3).to_parquet(harmful)
    prompt_table("benign", 3).to_parquet(harmless)
    out = tmp_path / "conditions.parquet"
    message = f"{harmless}: 3 of 3 rows are labelled harmless, passed as the harmful side; swap the harmful"
    with pytest.raises(TraitscopeError, match=re.escape(message)):
        prefill_conditions(harmless, harmful, from_schema(PrefillConditionsSettings), out)
    assert not out.exists()


def test_check_config_names_the_bad_key(root):
    from traitscope.config import load_config

    config = load_config(root / "config/config.yaml")
    section = config["experiments"]["prefill"]
    check_config(section, config)  # the default config is consistent
    cases = [
        ({"prompt_set": "advbench"}, "experiments.prefill.prompt_set 'advbench' is also under prompt_sets"),
        ({"harmful": "nope"}, "experiments.prefill.harmful: prompt set 'nope' is not defined"),
        (
            {"traits": ["safety/harm", "safety/ghost"]},
            "experiments.prefill.traits: safety/ghost not in traits",
        ),
        ({"variant": "ghost"}, "experiments.prefill.variant: variant 'ghost' is not defined"),
        (
            {"harmless": section["harmful"]},
            "experiments.prefill: harmful and harmless name the same prompt set",
        ),
        (
            {"bag_of_words": "safety/evil"},
            "experiments.prefill.bag_of_words: safety/evil is a persona trait; name a prompt-contrast trait",
        ),
    ]
    for change, message in cases:
        with pytest.raises(TraitscopeError, match=message):
            check_config({**section, **change}, config)


def synthetic(tmp_path, n=12, shift=2.0, diverge_at=3, steps=8, seed=0, request_sd=0.0):
    """Projections with a planted C2-vs-C4 effect from step `diverge_at` on, for one trait; each
    request's rows (with and without the prefill) share a level drawn with sd `request_sd`."""
    rng = np.random.default_rng(seed)
    conditions = conditions_2x2(prompt_table("harmful", n), prompt_table("benign", n), [PREFILL])
    levels = {
        request: rng.normal(0, request_sd) for request in conditions["prompt_id"].str.split(":").str[-1]
    }
    rows = []
    for r in conditions.itertuples():
        effect = shift if r.condition == "C2" else 0.0
        level = levels[r.prompt_id.split(":")[-1]]
        base = {
            "prompt_id": r.prompt_id,
            "variant": "m",
            "trait": "safety/harm",
            "layer": 5,
            "cosine": 0.0,
            "chosen_layer": True,
        }
        for position, value in (
            ("last_prompt", rng.normal()),
            ("prefill_mean", rng.normal() + effect),
            ("response_mean", rng.normal() + effect + (r.condition in ("C1", "C2")) + level),
        ):
            if position == "prefill_mean" and not r.prefill:
                continue
            rows.append({**base, "position": position, "token_index": -1, "score": value})
        for step in range(steps):
            value = rng.normal() + (effect * 3 if step >= diverge_at else 0.0)
            rows.append({**base, "position": "prefill", "token_index": 40 + step, "score": value})
        rows.append(
            {
                **base,
                "layer": 9,
                "chosen_layer": False,
                "position": "last_prompt",
                "token_index": -1,
                "score": 100.0,
            }
        )  # other layers must be ignored
    projections = pd.DataFrame(rows)
    projections.to_parquet(tmp_path / "proj.parquet")
    conditions.to_parquet(tmp_path / "cond.parquet")
    return projections, conditions


def run_analysis(tmp_path, traits=("safety/harm",), n_boot=200, bow_prompts=None):
    """The analysis on the synthetic files `synthetic` (or a test) wrote into tmp_path."""
    return prefill_analysis(
        tmp_path / "proj.parquet",
        tmp_path / "cond.parquet",
        tmp_path / "o.json",
        tmp_path / "g.png",
        tmp_path / "t.png",
        from_schema(PrefillAnalysisSettings, traits=traits, n_boot=n_boot),
        bow_prompts,
    )


def test_analysis_matches_scipy_on_planted_effects(tmp_path):
    projections, conditions = synthetic(tmp_path)
    result = prefill_analysis(
        tmp_path / "proj.parquet",
        tmp_path / "cond.parquet",
        tmp_path / "out.json",
        tmp_path / "grid.png",
        tmp_path / "traj.png",
        from_schema(PrefillAnalysisSettings, traits=["safety/harm"], n_boot=500),
    )
    assert json.loads((tmp_path / "out.json").read_text()) == json.loads(json.dumps(result))
    merged = projections.merge(conditions[["prompt_id", "condition"]], on="prompt_id")
    merged = merged[merged["chosen_layer"] & (merged["token_index"] == -1)]

    def scores(condition, position):
        sel = (merged["condition"] == condition) & (merged["position"] == position)
        return merged.loc[sel, "score"].to_numpy()

    key = result["comparisons"]["C2_vs_C4"]["safety/harm"]
    a, b = scores("C2", "prefill_mean"), scores("C4", "prefill_mean")
    pooled_sd = np.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2))
    assert key["cohens_d"] == pytest.approx((a.mean() - b.mean()) / pooled_sd)
    assert key["p_value"] == pytest.approx(sps.ttest_ind(a, b, equal_var=False).pvalue)
    assert key["n_a"] == key["n_b"] == 12 and key["ci_low"] < key["cohens_d"] < key["ci_high"]
    assert result["comparisons"]["C1_vs_C3"]["safety/harm"]["position"] == "last_prompt"
    ps = [result["comparisons"][k]["safety/harm"]["p_value"] for k in ("C2_vs_C4", "C1_vs_C2", "C1_vs_C3")]
    holm = [result["comparisons"][k]["safety/harm"]["p_holm"] for k in ("C2_vs_C4", "C1_vs_C2", "C1_vs_C3")]
    order = np.argsort(ps)
    expected = np.maximum.accumulate([min(1.0, (3 - i) * ps[j]) for i, j in enumerate(order)])
    assert np.allclose(np.array(holm)[order], expected)
    assert result["trajectory_divergence"]["safety/harm"]["first_step"] == 3
    assert result["interaction"]["safety/harm"]["n_a"] == result["interaction"]["safety/harm"]["n_b"] == 12
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_prefill_effect_on_the_response_is_paired_by_request(tmp_path):
    """C1 and C2 are the same requests without and with the prefill: requests that differ a lot
    (sd 5) but each move by ~2 under the prefill. Paired, d_z is mean / sd of the per-request
    differences (hand-computed below); as two independent groups the requests' spread would hide
    the shift. The interaction compares the per-request prefill effects, harmful (C2 - C1)
    against benign (C4 - C3), by Welch's t."""
    projections, conditions = synthetic(tmp_path, request_sd=5.0, seed=4)
    result = run_analysis(tmp_path)
    rows = projections[(projections["position"] == "response_mean") & projections["chosen_layer"]]
    score = rows.set_index("prompt_id")["score"]
    ids = [f"harmful-{i}" for i in range(12)]
    diff = np.array([score[f"C1:{i}"] - score[f"C2:p0:{i}"] for i in ids])
    paired = result["comparisons"]["C1_vs_C2"]["safety/harm"]
    assert paired["paired_by"] == "request" and paired["n_pairs"] == 12
    assert paired["cohens_dz"] == pytest.approx(diff.mean() / diff.std(ddof=1))
    assert paired["cohens_dz"] < -1 and paired["ci_high"] < 0 and paired["p_value"] < 1e-3
    assert result["design"]["C1_vs_C2"]["paired"] and not result["design"]["C2_vs_C4"]["paired"]
    benign = np.array([score[f"C4:p0:benign-{i}"] - score[f"C3:benign-{i}"] for i in range(12)])
    harmful = -diff
    se = np.sqrt(harmful.var(ddof=1) / 12 + benign.var(ddof=1) / 12)
    interaction = result["interaction"]["safety/harm"]
    assert interaction["difference"] == pytest.approx(harmful.mean() - benign.mean())
    assert interaction["t"] == pytest.approx((harmful.mean() - benign.mean()) / se)
    assert interaction["ci_low"] > 0 and interaction["p_value"] < 1e-3


def test_no_divergence_without_an_effect(tmp_path):
    synthetic(tmp_path, shift=0.0, n=10, seed=3)
    result = run_analysis(tmp_path)
    assert result["trajectory_divergence"]["safety/harm"]["first_step"] is None


def test_unknown_trait_is_a_clear_error(tmp_path):
    synthetic(tmp_path, n=4)
    with pytest.raises(TraitscopeError, match="no projections for trait"):
        prefill_analysis(
            tmp_path / "proj.parquet",
            tmp_path / "cond.parquet",
            tmp_path / "o.json",
            tmp_path / "g.png",
            tmp_path / "t.png",
            from_schema(PrefillAnalysisSettings, traits=["safety/evil"]),
        )
    assert not (tmp_path / "o.json").exists()


def test_advbench_from_the_hub_uses_the_original_layout(tmp_path, monkeypatch, mirror):
    """The hub path (walledai/AdvBench: prompt, target) gives the same rows as the CSV copy."""
    import sys
    import types

    from traitscope.data.loaders import load_advbench
    from traitscope.data.prep import load_source

    copy = load_advbench(mirror / "advbench" / "advbench_behaviors.csv")
    hub_rows = pd.DataFrame({"prompt": copy["prompt"], "target": "Sure, here is"})

    class Split:
        def to_pandas(self):
            return hub_rows

    fake = types.SimpleNamespace(load_dataset=lambda hub_id, split: Split())
    monkeypatch.setitem(sys.modules, "datasets", fake)
    table = load_source({"dataset": "advbench", "hub": "walledai/AdvBench"}, None, tmp_path)
    assert table["prompt"].tolist() == copy["prompt"].tolist()
    assert table["prompt_id"].tolist() == copy["prompt_id"].tolist()


def test_several_prefills_get_their_own_key_comparison(tmp_path):
    conditions = conditions_2x2(prompt_table("harmful", 6), prompt_table("benign", 6), [PREFILL, "Okay."])
    rng = np.random.default_rng(1)
    rows = []
    for r in conditions.itertuples():
        base = {
            "prompt_id": r.prompt_id,
            "variant": "m",
            "trait": "safety/harm",
            "layer": 5,
            "cosine": 0.0,
            "chosen_layer": True,
            "token_index": -1,
        }
        shift = 3.0 if (r.condition == "C2" and r.prefill_index == 1) else 0.0
        for position in ("last_prompt", "response_mean") + (("prefill_mean",) if r.prefill else ()):
            rows.append({**base, "position": position, "score": rng.normal() + shift})
        for step in range(3):
            rows.append({**base, "position": "prefill", "token_index": step, "score": rng.normal()})
    pd.DataFrame(rows).to_parquet(tmp_path / "proj.parquet")
    conditions.to_parquet(tmp_path / "cond.parquet")
    result = run_analysis(tmp_path)
    by = result["C2_vs_C4_by_prefill"]
    assert set(by) == {"0", "1"} and by["1"]["safety/harm"]["n_a"] == 6
    assert by["1"]["safety/harm"]["cohens_d"] > by["0"]["safety/harm"]["cohens_d"] + 1
    # pooled over the prefills, C2 vs C4 counts requests (6 + 6), each the mean of its two answers
    pooled = result["comparisons"]["C2_vs_C4"]["safety/harm"]
    table = pd.DataFrame(rows).merge(conditions[["prompt_id", "condition"]], on="prompt_id")
    c2 = table[(table["condition"] == "C2") & (table["position"] == "prefill_mean")]
    means = c2.groupby(c2["prompt_id"].str.split(":").str[-1])["score"].mean()
    assert (pooled["n_a"], pooled["n_b"]) == (6, 6) and pooled["mean_a"] == pytest.approx(means.mean())
    beside = result["baselines"]["C2_vs_C4"]  # and so do the surface baselines beside it
    assert (beside["n_harmful"], beside["n_benign"]) == (6, 6)
    # per-token steps are one prefill's tokens: each prefill tested on its own 6 + 6 requests
    divergence = result["trajectory_divergence"]["safety/harm"]
    assert set(divergence["by_prefill"]) == {"0", "1"} and divergence["prefill_index"] == 0
    assert divergence["first_step"] == divergence["by_prefill"]["0"]
    # C1 vs C2: each request's two prefilled answers pair with its one plain answer, resampled together
    paired = result["comparisons"]["C1_vs_C2"]["safety/harm"]
    assert (paired["n_pairs"], paired["n_clusters"]) == (12, 6) and paired[
        "test"
    ] == "paired_t on cluster means"
    # the grid figure's cells count requests too: C2's mean over 6 requests, each its answers' mean
    cell = result["condition_means"]["safety/harm"]["C2"]
    c2_response = table[(table["condition"] == "C2") & (table["position"] == "response_mean")]
    per_request = c2_response.groupby(c2_response["prompt_id"].str.split(":").str[-1])["score"].mean()
    assert cell["n"] == 6 and cell["mean"] == pytest.approx(per_request.mean())
    assert cell["ci_low"] >= per_request.min() and cell["ci_high"] <= per_request.max()
    assert result["condition_means"]["safety/harm"]["C1"]["n"] == 6


def test_length_baseline_beside_the_harmful_vs_benign_comparisons(tmp_path):
    """'harmful request i' is one character longer than 'benign request i': over 12 + 12 prompts,
    harmful wins 10x10 + 2x12 pairs and ties 10x2 (17 characters both), so length alone scores
    (100 + 24 + 20 / 2) / 144."""
    synthetic(tmp_path)
    result = run_analysis(tmp_path)
    assert result["baselines"]["bag_of_words_fitted_on"] is None
    for key in ("C1_vs_C3", "C2_vs_C4"):
        block = result["baselines"][key]
        assert set(block["baselines"]) == {"length"}  # no bag of words unless asked for
        assert block["baselines"]["length"]["auc"] == pytest.approx(134 / 144)
        assert (block["n_harmful"], block["n_benign"]) == (12, 12)
        harm = block["traits"]["safety/harm"]
        assert harm["vs_length"]["difference"] == pytest.approx(harm["auc"]["auc"] - 134 / 144)
        assert harm["beats_baselines"] is (harm["vs_length"]["ci_low"] > 0)
    # C2 vs C4 is scored over the prefill, where the planted shift is: C1 vs C3 has none
    assert result["baselines"]["C2_vs_C4"]["position"] == "prefill_mean"


def bow_trait_set(path, extraction_extra=(), evaluation_extra=()):
    """A trait prompt set whose extraction split teaches the bag of words 'harmful' (label 1)
    against 'benign' (label 0); `*_extra` adds positive rows to either split."""
    rows = [("extraction", 1, f"harmful {w}") for w in ("alpha", "beta", "gamma")]
    rows += [("extraction", 0, f"benign {w}") for w in ("delta", "epsilon", "zeta")]
    rows += [("extraction", 1, t) for t in extraction_extra]
    rows += [("evaluation", 1, t) for t in evaluation_extra]
    pd.DataFrame(
        {
            "prompt_id": [f"t{i}" for i in range(len(rows))],
            "split": [r[0] for r in rows],
            "label": [r[1] for r in rows],
            "prompt": [r[2] for r in rows],
        }
    ).to_parquet(path)
    return path


def with_texts(tmp_path):
    """The synthetic conditions with new user texts: even harmful prompts say 'harmful', odd ones
    'dangerous' (a word the bag of words never saw), benign ones 'plain' (never seen either)."""
    synthetic(tmp_path)
    conditions = pd.read_parquet(tmp_path / "cond.parquet")
    index = conditions["prompt_id"].str.rsplit("-", n=1).str[-1].astype(int)
    harmful = conditions["label"] == 1
    word = np.where(harmful, np.where(index % 2 == 0, "harmful", "dangerous"), "plain")
    conditions["prompt"] = [f"{w} request {i}" for w, i in zip(word, index)]
    conditions.to_parquet(tmp_path / "cond.parquet")


def test_bag_of_words_beside_the_harmful_vs_benign_comparisons(tmp_path):
    """Unseen words score the logistic regression's intercept, 'harmful' above it: the 6 'harmful'
    prompts beat all 12 benign ones, the 6 'dangerous' ones tie with them, so the bag of words
    scores (6 x 12 + 6 x 12 / 2) / 144 = 0.75, the same for C1 vs C3 and C2 vs C4 (it reads the
    user text only). A held-out (evaluation) row of the trait set may be scored."""
    with_texts(tmp_path)
    bow = bow_trait_set(tmp_path / "trait.parquet", evaluation_extra=["harmful request 4"])
    result = run_analysis(tmp_path, bow_prompts=bow)
    assert result["baselines"]["bag_of_words_fitted_on"] == str(bow)
    for key in ("C1_vs_C3", "C2_vs_C4"):
        block = result["baselines"][key]
        assert block["baselines"]["bag_of_words"]["auc"] == pytest.approx(0.75)
        harm = block["traits"]["safety/harm"]
        vs = harm["vs_bag_of_words"]
        assert vs["difference"] == pytest.approx(harm["auc"]["auc"] - 0.75)
        assert vs["ci_low"] <= vs["difference"] <= vs["ci_high"]
        assert harm["beats_baselines"] is (vs["ci_low"] > 0 and harm["vs_length"]["ci_low"] > 0)
    written = json.loads((tmp_path / "o.json").read_text())["baselines"]
    assert written["C1_vs_C3"]["baselines"]["bag_of_words"]["auc"] == pytest.approx(0.75)
    # the planted C2-vs-C4 shift on the prefill tokens beats a baseline that cannot see it
    c2c4 = result["baselines"]["C2_vs_C4"]["traits"]["safety/harm"]
    assert c2c4["auc"]["auc"] > 0.75 and c2c4["vs_bag_of_words"]["difference"] > 0


def test_scoring_a_row_the_bag_of_words_was_fitted_on_is_an_error(tmp_path):
    with_texts(tmp_path)
    bow = bow_trait_set(tmp_path / "trait.parquet", extraction_extra=["Harmful  request 4"])
    with pytest.raises(
        TraitscopeError, match=r"prompt set prefill conditions: 1 prompt\(s\) were training rows"
    ):
        run_analysis(tmp_path, bow_prompts=bow)
    assert not (tmp_path / "o.json").exists()


def test_three_requests_leave_the_paired_ci_undefined_without_a_crash(tmp_path):
    """With 3 requests a resample often repeats one request's difference, so the paired d_z's
    bootstrap CI is infinite: the entry says so and enters Holm's family with its t-test p."""
    synthetic(tmp_path, n=3, request_sd=5.0, seed=2)
    result = run_analysis(tmp_path)
    paired = result["comparisons"]["C1_vs_C2"]["safety/harm"]
    assert paired["ci_low"] is None and "not finite" in paired["undefined"] and paired["n_pairs"] == 3
    assert 0 < paired["p_value"] <= paired["p_holm"] <= 1
