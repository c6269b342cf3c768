"""Layer choice on held-out data, its split-half (out-of-sample) counterpart, and the trait
evaluation stage on a real tiny capture."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from sklearn.metrics import roc_auc_score

from traitscope.cli import main
from traitscope.errors import TraitscopeError
from traitscope.vectors.evaluation import trait_evaluation
from traitscope.vectors.layer_choice import choose, layer_scores, split_half_auc
from traitscope.vectors.trait_vector import TraitVector, read_vectors


def planted(seed=0, n_questions=8, layers=3, d=4):
    """Held-out rows where only layer 1 carries the trait along axis 0."""
    rng = np.random.default_rng(seed)
    rows, acts = [], []
    for q in range(n_questions):
        for label in (1, 0):
            for _ in range(3):
                x = rng.normal(size=(layers, d))
                x[1, 0] += 2.0 * label
                acts.append(x)
                rows.append({"split": "evaluation", "question": f"q{q}", "label": label})
    return pd.DataFrame(rows), torch.tensor(np.array(acts), dtype=torch.float32)


def test_choose_prefers_auc_then_cohens_d():
    scores = {
        "a": [{"layer": 0, "auc": 1.0, "cohens_d": 2.0}, {"layer": 1, "auc": 0.9, "cohens_d": 9.0}],
        "b": [{"layer": 0, "auc": 1.0, "cohens_d": 3.0}],
    }
    assert choose(scores) == {"method": "b", "layer": 0, "auc": 1.0, "plateau_auc": 1.0, "cohens_d": 3.0}


def rows(aucs: list[float]) -> list[dict]:
    return [{"layer": i, "auc": a, "cohens_d": 1.0} for i, a in enumerate(aucs)]


def test_choose_prefers_a_plateau_to_a_lone_peak():
    """By hand, min(own AUC, weights 1-2-1 over the neighbours): a's peak min(.95, (.6 + 2 * .95
    + .6) / 4 = .775); b's layers min(.90, (2 * .90 + .93) / 3 = .91) = .90, min(.93, .92) = .92,
    min(.92, .8925), min(.80, .84). b's layer 1 wins though a's layer 1 has the highest AUC."""
    chosen = choose({"a": rows([0.6, 0.95, 0.6, 0.6]), "b": rows([0.90, 0.93, 0.92, 0.80])})
    assert (chosen["method"], chosen["layer"]) == ("b", 1)
    assert chosen["plateau_auc"] == pytest.approx(0.92) and chosen["auc"] == 0.93


def test_choose_does_not_pick_an_edge_layer_for_its_neighbour():
    """One layer carries the trait: an edge scores min(.5, (2 * .5 + .9) / 3 = .633) = .5, the
    middle min(.9, (.5 + 2 * .9 + .5) / 4 = .7) = .7; near-tied neighbours resolve to the same
    layer whichever of them peaks (.941 against .906 and .905)."""
    assert choose({"m": rows([0.5, 0.9, 0.5])})["layer"] == 1
    for peak in ([0.80, 0.942, 0.941, 0.940, 0.80], [0.80, 0.940, 0.941, 0.942, 0.80]):
        assert choose({"m": rows(peak)})["layer"] == 2


def test_split_half_picks_on_one_half_and_scores_the_other():
    table, x = planted()
    vectors = {"mean_diff": torch.eye(4)[[3, 0, 3]], "noise": torch.eye(4)[[2, 2, 2]]}
    result = split_half_auc(x, table, vectors, [0, 1, 2])
    questions = sorted(set(table["question"]))
    for fold, half in zip(result["folds"], (set(questions[1::2]), set(questions[0::2]))):
        assert (fold["method"], fold["layer"]) == ("mean_diff", 1)
        rows = table["question"].isin(half).to_numpy()
        expected = roc_auc_score(table["label"][rows], x[torch.tensor(rows), 1, 0].numpy())
        assert fold["auc_other_half"] == pytest.approx(expected)
    assert result["auc"] == pytest.approx(np.mean([f["auc_other_half"] for f in result["folds"]]))
    assert result["ci_low"] < result["auc"] < result["ci_high"] <= 1.0  # not separable: a real interval


def test_split_half_ci_chooses_the_layer_again_in_every_resample():
    """With one layer carrying the trait most strongly (its neighbours weakly, as residual layers
    do), nearly every resample picks it; with two equal neighbouring layers between two blank
    ones, which one a half picks is chance, and the bootstrap sees the choice change."""
    table, x = planted(n_questions=12, layers=4)
    label = torch.tensor(table["label"].to_numpy(), dtype=torch.float32)
    vectors = {"mean_diff": torch.eye(4)[[0, 0, 0, 0]]}
    peaked = x.clone()
    peaked[:, 1, 0] += 2.0 * label
    peaked[:, [0, 2], 0] += label[:, None]
    clear = split_half_auc(peaked, table, vectors, [0, 1, 2, 3], n_boot=300)
    assert clear["choice_stability"] >= 0.95 and clear["n_clusters"] == 12
    assert {f["layer"] for f in clear["folds"]} == {1}
    twin = x.clone()
    rng = np.random.default_rng(5)
    twin[:, 2, 0] = torch.tensor(rng.normal(size=len(table)), dtype=torch.float32) + 2.0 * label
    tied = split_half_auc(twin, table, vectors, [0, 1, 2, 3], n_boot=300)
    assert {f["layer"] for f in tied["folds"]} <= {1, 2}
    assert tied["choice_stability"] < min(0.9, clear["choice_stability"])
    assert tied["ci_low"] < tied["auc"] < tied["ci_high"]


def test_split_half_ci_resamples_questions_not_answers():
    """Four answers per question that agree with each other are one piece of evidence, not four:
    the split-half CI is wider than a bootstrap over answers of the same scores."""
    from traitscope.stats import auc_with_ci

    rng = np.random.default_rng(0)
    rows, acts = [], []
    for q in range(20):
        for label in (1, 0):
            x = rng.normal(size=(1, 2))
            x[0, 0] += 0.5 * label
            for _ in range(4):  # the question's answers: the same activation
                acts.append(x)
                rows.append({"split": "evaluation", "question": f"q{q:02d}", "label": label})
    table, x = pd.DataFrame(rows), torch.tensor(np.array(acts), dtype=torch.float32)
    result = split_half_auc(x, table, {"mean_diff": torch.eye(2)[[0]]}, [0], n_boot=1000)
    score, label = x[:, 0, 0].numpy(), table["label"].to_numpy()
    answers = auc_with_ci(score[label == 1], score[label == 0], n_boot=1000)
    assert result["ci_high"] - result["ci_low"] > 1.5 * (answers["ci_high"] - answers["ci_low"])


def test_split_half_ci_of_a_perfectly_separated_trait_reaches_the_exact_bound():
    """Every resample keeps both labels of both halves and scores AUC 1, so the bootstrap says
    [1, 1] however few the questions. The CI reaches 0.025^(1/m) instead: 8 questions, each
    answered both ways, make halves of 4 whose distinct questions give 2 independent
    (positive, negative) pairs each, m = 4."""
    table, x = planted()
    x[:, :, 0] += 100.0 * torch.tensor(table["label"].to_numpy(), dtype=torch.float32)[:, None]
    result = split_half_auc(x, table, {"mean_diff": torch.eye(4)[[0, 0, 0]]}, [0, 1, 2])
    assert (result["auc"], result["ci_high"]) == (1.0, 1.0)
    assert result["ci_low"] == pytest.approx(0.025**0.25)


def test_layer_scores_match_sklearn():
    table, x = planted(seed=1)
    label = table["label"].to_numpy()
    vec = torch.randn(3, 4)
    rows = layer_scores(x[label == 1], x[label == 0], vec, [0, 1, 2])
    unit = vec / vec.norm(dim=-1, keepdim=True)
    for layer, row in enumerate(rows):
        expected = roc_auc_score(label, (x[:, layer] @ unit[layer]).numpy())
        assert row["auc"] == pytest.approx(expected, abs=1e-6)


# ---------------------------------------------------------------- on a real tiny capture


def pair_count_auc(pos: list[float], neg: list[float]) -> float:
    """P(positive scores above negative), ties counted half, over every (positive, negative) pair."""
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_pair_count_auc_by_hand():
    assert pair_count_auc([3.0, 1.0], [2.0, 1.0]) == (1 + 1 + 0 + 0.5) / 4


def test_trait_evaluation_aucs_are_pair_counts_of_the_projections(trait_run, trait_acts):
    result = json.loads(trait_run["evaluation"].read_text())
    vectors, _ = read_vectors(trait_run["vectors"])
    table = pd.read_parquet(trait_run["prompts"])
    held = table[table["split"] == "evaluation"]
    pos_ids = held.loc[held["label"] == 1, "prompt_id"].tolist()
    neg_ids = held.loc[held["label"] == 0, "prompt_id"].tolist()
    assert (result["trait"], result["model"], result["position"]) == ("safety/tiny", "tiny", "response_mean")
    assert result["n_positive"] == len(pos_ids) == 6 and result["n_negative"] == len(neg_ids) == 6
    assert set(result["methods"]) == {"mean_diff", "probe", "pca"}
    aucs = []  # (plateau AUC, AUC, d, method, row) of every candidate
    for method, rows in result["methods"].items():
        assert [r["layer"] for r in rows] == [0, 1, 2]
        for i, row in enumerate(rows):
            v = vectors[method][i].double()
            u = v / v.norm()
            sp = [float(trait_acts[p][i] @ u) for p in pos_ids]
            sn = [float(trait_acts[p][i] @ u) for p in neg_ids]
            assert row["auc"] == pytest.approx(pair_count_auc(sp, sn), abs=1e-12), (method, i)
            assert row["mean_positive"] == pytest.approx(np.mean(sp), abs=1e-5)
            assert row["mean_negative"] == pytest.approx(np.mean(sn), abs=1e-5)
        a0, a1, a2 = (r["auc"] for r in rows)
        plateaus = [min(a0, (2 * a0 + a1) / 3), min(a1, (a0 + 2 * a1 + a2) / 4), min(a2, (a1 + 2 * a2) / 3)]
        aucs += [(round(p, 6), round(r["auc"], 6), r["cohens_d"], method, r) for p, r in zip(plateaus, rows)]
    # chosen: the highest plateau AUC, ties broken by the layer's own AUC, then Cohen's d
    plateau, _, _, method, row = max(aucs, key=lambda x: x[:3])
    layer = row["layer"]
    expected = {"method": method, "layer": layer, "auc": row["auc"], "cohens_d": row["cohens_d"]}
    assert result["chosen"] == {**expected, "plateau_auc": pytest.approx(plateau, abs=1e-6)}
    for m, chosen in result["chosen_by_method"].items():
        assert chosen["auc"] == max(r["auc"] for r in result["methods"][m])

    # the record built from these files points at that choice
    t = TraitVector.load(trait_run["vectors"], trait_run["evaluation"])
    assert (t.name, t.method, t.layer) == ("safety/tiny", method, layer)
    torch.testing.assert_close(t.direction(), vectors[method][layer] / vectors[method][layer].norm())


def test_trait_evaluation_refuses_vectors_that_do_not_fit_the_capture(trait_run, tmp_path):
    """Vectors of another width, or of other layers, than the capture's: one line, no output."""
    with safe_open(str(trait_run["vectors"]), framework="pt") as f:
        meta = json.loads(f.metadata()["meta"])
    vectors = load_file(trait_run["vectors"])
    cases = [
        (
            {k: torch.cat([v, v], dim=-1) for k, v in vectors.items()},
            meta,
            r"trait vectors are 64 wide, .* has 32-wide",
        ),
        (
            {k: v[:2] for k, v in vectors.items()},
            {**meta, "layers": [0, 1]},
            r"vectors of layers \[0, 1\], .* holds layers \[0, 1, 2\]",
        ),
    ]
    out = tmp_path / "evaluation.json"
    for tensors, metadata, message in cases:
        path = tmp_path / "vectors.safetensors"
        save_file(tensors, path, metadata={"meta": json.dumps(metadata)})
        with pytest.raises(TraitscopeError, match=message):
            trait_evaluation(
                path,
                trait_run["capture"],
                trait_run["prompts"],
                out,
                tmp_path / "e.png",
                "response_mean",
                "safety/tiny",
                "tiny",
            )
        assert not out.exists()


def test_cli_trait_vectors_and_evaluation_match_the_functions(trait_run, tmp_path):
    common = ["--capture", str(trait_run["capture"]), "--prompts", str(trait_run["prompts"])]
    common += ["--position", "response_mean", "--variant", "tiny", "--trait", "safety/tiny"]
    vec, meta = tmp_path / "v.safetensors", tmp_path / "v.json"
    extraction = {"methods": ["mean_diff", "probe", "pca"], "probe_c": 1.0, "filter": {}}
    methods = ["--settings", json.dumps(extraction)]
    assert main(["trait-vectors", *common, "--out", str(vec), "--meta", str(meta), *methods]) == 0
    evaluation = tmp_path / "e.json"
    argv = ["trait-evaluation", *common, "--vectors", str(vec), "--out", str(evaluation)]
    assert main([*argv, "--png", str(tmp_path / "e.png")]) == 0
    via_cli, via_function = load_file(vec), load_file(trait_run["vectors"])
    assert set(via_cli) == set(via_function)
    for method in via_function:
        torch.testing.assert_close(via_cli[method], via_function[method], rtol=0, atol=0)
    assert json.loads(meta.read_text()) == json.loads(trait_run["meta"].read_text())
    assert json.loads(evaluation.read_text()) == json.loads(trait_run["evaluation"].read_text())
    summary = tmp_path / "summary.json"
    settings = json.dumps({"auc_threshold": 0.5})
    assert main(["trait-summary", str(evaluation), "--out", str(summary), "--settings", settings]) == 0
    written = json.loads(summary.read_text())
    chosen = json.loads(evaluation.read_text())["chosen"]["auc"]
    assert written["auc_threshold"] == 0.5 and written["n_traits_at_threshold"] == int(chosen >= 0.5)
