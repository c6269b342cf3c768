"""Vector maths against hand-computed cases; trait prompt sets; vectors from a real tiny capture;
the trait-vector record."""

import hashlib
import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from traitscope.capture.store import read_shards
from traitscope.cli import main
from traitscope.data.prompts import read_prompt_set
from traitscope.data.settings import TraitPromptSettings
from traitscope.data.traits import trait_prompts
from traitscope.errors import TraitscopeError
from traitscope.settings import from_schema
from traitscope.vectors.extraction import trait_vectors
from traitscope.vectors.methods import METHODS, mean_diff, pca, probe, project, unit
from traitscope.vectors.settings import ExtractionSettings
from traitscope.vectors.trait_vector import TraitVector, read_vectors


def test_mean_diff_hand_computed():
    pos = torch.tensor([[[1.0, 2.0]], [[3.0, 4.0]]])  # [n=2, L=1, d=2]
    neg = torch.tensor([[[0.0, 0.0]], [[1.0, -2.0]]])
    assert mean_diff(pos, neg).tolist() == [[2.0 - 0.5, 3.0 - (-1.0)]]


def test_project_is_scalar_projection_on_unit_vector():
    acts = torch.tensor([[[3.0, 4.0], [1.0, 0.0]]])  # one prompt, two layers
    vecs = torch.tensor([[0.0, 2.0], [5.0, 0.0]])  # norms 2 and 5 must not matter
    assert project(acts, vecs).tolist() == [[4.0, 1.0]]


def test_unit_keeps_zero_rows_zero():
    out = unit(torch.tensor([[0.0, 0.0], [3.0, 4.0]]))
    assert out[0].tolist() == [0.0, 0.0]
    assert out[1].tolist() == pytest.approx([0.6, 0.8])


def test_probe_finds_the_separating_axis_and_orients_it():
    rng = np.random.default_rng(0)
    n, d = 60, 5
    noise = rng.normal(size=(2 * n, 1, d))
    noise[:, 0, 2] += np.r_[np.ones(n), -np.ones(n)] * 3  # only axis 2 separates
    acts = torch.tensor(noise, dtype=torch.float32)
    w = probe(acts[:n], acts[n:])
    assert w.shape == (1, d)
    assert float(w.norm()) == pytest.approx(1.0, abs=1e-5)
    assert int(w[0].abs().argmax()) == 2 and w[0, 2] > 0.9


def test_probe_direction_matches_sklearn_on_raw_scale():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 1, 4)) * np.array([1.0, 10.0, 0.1, 1.0])
    x[:20, 0, 0] += 1.5
    acts = torch.tensor(x, dtype=torch.float32)
    ours = probe(acts[:20], acts[20:])[0].numpy()
    feats = x[:, 0]
    scaler = StandardScaler().fit(feats)
    clf = LogisticRegression(max_iter=2000).fit(scaler.transform(feats), np.r_[np.ones(20), np.zeros(20)])
    raw = clf.coef_[0] / scaler.scale_
    np.testing.assert_allclose(ours, raw / np.linalg.norm(raw), atol=1e-3)


def test_pca_recovers_a_planted_direction_oriented_toward_positives():
    rng = np.random.default_rng(2)
    n, layers, d = 40, 3, 16
    direction = rng.normal(size=(layers, d))
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)  # one planted unit direction per layer
    neg = rng.normal(size=(n, layers, d)) * 3.0
    scale = rng.uniform(0.5, 3.0, size=(n, 1, 1))  # each pair moves by a different positive amount
    pos = neg + scale * direction + 0.05 * rng.normal(size=(n, layers, d))
    pos_t, neg_t = torch.tensor(pos, dtype=torch.float32), torch.tensor(neg, dtype=torch.float32)
    v = pca(pos_t, neg_t)
    assert v.shape == (layers, d)
    np.testing.assert_allclose(v.norm(dim=-1).numpy(), 1.0, atol=1e-5)
    cos = (v.double().numpy() * direction).sum(-1)
    assert (cos > 0.99).all(), cos  # the direction, and its sign: toward the positives
    flipped = pca(neg_t, pos_t)  # swapping the classes must flip the orientation
    assert ((flipped.double().numpy() * direction).sum(-1) < -0.99).all()


def test_methods_registry():
    assert METHODS == {"mean_diff": mean_diff, "probe": probe, "pca": pca}


# ---------------------------------------------------------------- trait prompt sets


def test_trait_prompts_rotate_pairs_and_cut_questions(tiny_trait_file, tmp_path):
    data = yaml.safe_load(tiny_trait_file.read_text())  # 3 pairs, 4 + 3 questions
    out = tmp_path / "prompts.parquet"
    table = trait_prompts(
        tiny_trait_file,
        out,
        from_schema(TraitPromptSettings, pairs_per_question=2, n_extraction=3, n_evaluation=2),
        "safety/tiny",
    )
    pd.testing.assert_frame_equal(pd.read_parquet(out), table)
    # question i of a split gets pairs i and i+1 (mod 3); only the first 3 / 2 questions are kept
    pairs = {"extraction": [{0, 1}, {1, 2}, {2, 0}], "evaluation": [{0, 1}, {1, 2}]}
    questions = {s: data[f"{s}_questions"] for s in pairs}
    expected = {
        (split, questions[split][qi], p, label)
        for split, per_question in pairs.items()
        for qi, ps in enumerate(per_question)
        for p in ps
        for label in (0, 1)
    }
    got = list(zip(table["split"], table["question"], table["pair_index"], table["label"]))
    assert len(got) == len(set(got)) == len(expected) == 20 and set(got) == expected
    assert table["prompt_id"].is_unique
    for row in table.itertuples():
        system = data["pairs"][row.pair_index]["positive" if row.label == 1 else "negative"]
        assert json.loads(row.messages) == [
            {"role": "system", "content": system},
            {"role": "user", "content": row.question},
        ]
    assert (table["trait"] == "safety/tiny").all()
    assert set(table["trait_sha256"]) == {hashlib.sha256(tiny_trait_file.read_bytes()).hexdigest()}
    assert read_prompt_set(out)["messages"].tolist() == [json.loads(m) for m in table["messages"]]


def test_trait_prompts_use_every_pair_and_every_question_by_default(tiny_trait_file, tmp_path):
    one = trait_prompts(
        tiny_trait_file,
        tmp_path / "one.parquet",
        from_schema(TraitPromptSettings, pairs_per_question=1),
        "safety/tiny",
    )
    ext = one[one["split"] == "extraction"]
    assert ext.groupby("question", sort=False)["pair_index"].first().tolist() == [0, 1, 2, 0]
    assert one["question"].nunique() == 4 + 3
    every = trait_prompts(
        tiny_trait_file,
        tmp_path / "all.parquet",
        from_schema(TraitPromptSettings, pairs_per_question=10),
        "safety/tiny",
    )
    assert len(every) == (4 + 3) * 3 * 2  # more pairs asked for than exist: each question gets all 3


def test_cli_trait_prompts_matches_the_function(tiny_trait_file, trait_run, tmp_path, capsys):
    out = tmp_path / "p.parquet"
    argv = [
        "trait-prompts",
        "--trait-file",
        str(tiny_trait_file),
        "--trait",
        "safety/tiny",
        "--out",
        str(out),
    ]
    settings = {"pairs_per_question": 2, "n_extraction": None, "n_evaluation": None}
    assert main([*argv, "--settings", json.dumps(settings)]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(out), pd.read_parquet(trait_run["prompts"]))
    # another trait's name on this file labelled every row as that trait's
    other = [*argv[:4], "safety/evil", *argv[5:-1], str(tmp_path / "other.parquet")]
    assert main([*other, "--settings", json.dumps(settings)]) == 2
    assert "--trait safety/evil is not the trait of" in capsys.readouterr().err
    assert not (tmp_path / "other.parquet").exists()


# ---------------------------------------------------------------- vectors from a real capture


def test_trait_capture_generates_at_every_layer(trait_run, trait_acts):
    manifest = json.loads(trait_run["capture"].read_text())
    assert manifest["layers"] == [0, 1, 2] and manifest["settings"]["layers"] == [0, 1, 2]  # "all"
    assert len(manifest["shards"]) == 4 and manifest["n_prompts"] == 28
    for prompts, _, _ in read_shards(trait_run["capture"]):
        assert (prompts["n_tokens"] > prompts["prompt_len"]).all()  # a response was generated
    assert set(trait_acts) == set(pd.read_parquet(trait_run["prompts"])["prompt_id"])
    assert all(a.shape == (3, 32) and a.isfinite().all() for a in trait_acts.values())


def test_trait_vectors_are_the_mean_difference_of_the_capture(trait_run, trait_acts, tiny_trait_file):
    table = pd.read_parquet(trait_run["prompts"])
    ext = table[table["split"] == "extraction"]
    pos = torch.stack([trait_acts[p] for p in ext.loc[ext["label"] == 1, "prompt_id"]])
    neg = torch.stack([trait_acts[p] for p in ext.loc[ext["label"] == 0, "prompt_id"]])
    vectors, meta = read_vectors(trait_run["vectors"])
    assert set(vectors) == {"mean_diff", "probe", "pca"}
    torch.testing.assert_close(vectors["mean_diff"].double(), pos.mean(0) - neg.mean(0), rtol=0, atol=1e-5)
    for method in ("probe", "pca"):
        assert vectors[method].shape == (3, 32)
        np.testing.assert_allclose(vectors[method].norm(dim=-1).numpy(), 1.0, atol=1e-5)
    assert meta == json.loads(trait_run["meta"].read_text())
    assert (meta["trait"], meta["model"], meta["position"], meta["layers"]) == (
        "safety/tiny",
        "tiny",
        "response_mean",
        [0, 1, 2],
    )
    assert meta["n_positive"] == meta["n_negative"] == len(pos) == 8
    assert meta["dataset_sha256"] == [hashlib.sha256(tiny_trait_file.read_bytes()).hexdigest()]


def test_trait_vectors_bad_settings_are_clear_errors(trait_run, tmp_path):
    def run(position="response_mean", methods=("mean_diff",), prompts=trait_run["prompts"]):
        out = tmp_path / "v.safetensors"
        trait_vectors(
            trait_run["capture"],
            prompts,
            out,
            tmp_path / "v.json",
            position,
            from_schema(ExtractionSettings, methods=methods),
            "m",
            "t",
        )

    with pytest.raises(TraitscopeError, match="unknown vector method.*svm; known: mean_diff, probe, pca"):
        run(methods=("mean_diff", "svm"))
    with pytest.raises(TraitscopeError, match="no pool 'prompt_mean'"):
        run(position="prompt_mean")
    extra = pd.read_parquet(trait_run["prompts"])
    extra = pd.concat([extra, extra.tail(1).assign(prompt_id="never-captured")])
    extra.to_parquet(tmp_path / "extra.parquet")
    with pytest.raises(TraitscopeError, match="prompt 'never-captured' was not captured"):
        run(prompts=tmp_path / "extra.parquet")
    # one extraction row dropped: pca's row-paired differences were a size-mismatch traceback
    table = pd.read_parquet(trait_run["prompts"])
    first = table.index[(table["split"] == "extraction") & (table["label"] == 0)][0]
    table.drop(index=first).to_parquet(tmp_path / "short.parquet")
    with pytest.raises(
        TraitscopeError, match=r"short\.parquet: 8 positive and 7 negative extraction rows, and pca"
    ):
        run(methods=("mean_diff", "pca"), prompts=tmp_path / "short.parquet")
    run(methods=("mean_diff", "probe"), prompts=tmp_path / "short.parquet")  # unpaired methods still fit
    assert (tmp_path / "v.safetensors").exists()


def test_pca_is_not_fitted_on_a_set_without_pairs(trait_run, tmp_path):
    """A prompt-contrast set's positives and negatives are different prompts: pca used to pair
    them by their sort order and fit a vector from meaningless differences."""
    table = pd.read_parquet(trait_run["prompts"])
    negative = table["label"] == 0
    table.loc[negative, "question"] = "a different prompt: " + table.loc[negative, "question"]
    table.to_parquet(tmp_path / "contrast.parquet")
    settings = from_schema(ExtractionSettings, methods=("mean_diff", "probe", "pca"))
    args = (
        trait_run["capture"],
        tmp_path / "contrast.parquet",
        tmp_path / "v.safetensors",
        tmp_path / "v.json",
    )
    vectors = trait_vectors(*args, "response_mean", settings, "m", "t")
    assert set(vectors) == {"mean_diff", "probe"}
    meta = json.loads((tmp_path / "v.json").read_text())
    assert meta["methods"] == ["mean_diff", "probe"] and list(meta["not_fitted"]) == ["pca"]
    # the persona set it came from, with its pairs, still fits pca
    paired = trait_vectors(
        trait_run["capture"], trait_run["prompts"], *args[2:], "response_mean", settings, "m", "t"
    )
    assert set(paired) == {"mean_diff", "probe", "pca"}


# ---------------------------------------------------------------- the trait-vector record

MEAN_DIFF = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])  # rows: layers 3, 5, 7
PROBE = torch.tensor([[0.0, 1.0], [3.0, 4.0], [-1.0, 0.0]])


def test_trait_vector_load_uses_the_chosen_method_and_layer(tmp_path, save_trait_vector):
    chosen = {"method": "probe", "layer": 5, "auc": 0.9, "cohens_d": 1.5}
    files = save_trait_vector(
        tmp_path, "safety/evil", {"mean_diff": MEAN_DIFF, "probe": PROBE}, [3, 5, 7], chosen
    )
    t = TraitVector.load(*files, "safety/evil")
    assert (t.name, t.model, t.method, t.layer, t.layers) == ("safety/evil", "tiny", "probe", 5, [3, 5, 7])
    assert t.direction().tolist() == pytest.approx([0.6, 0.8])  # the probe row of layer 5, unit length
    assert t.direction(7).tolist() == pytest.approx([-1.0, 0.0])
    assert t.steering_vector(4.0).tolist() == pytest.approx([0.0, 8.0])  # 4 x the mean_diff row of layer 5
    assert t.steering_vector(-1.0, layer=7).tolist() == pytest.approx([-3.0, -3.0])
    assert t.evaluation["chosen"] == chosen and t.provenance["position"] == "response_mean"
    with pytest.raises(TraitscopeError, match=r"no vector at layer 4; vectors cover \[3, 5, 7\]"):
        t.direction(4)
    assert TraitVector.load(*files).name == "safety/evil"  # default name: the vectors' metadata


@pytest.mark.parametrize(
    "content",
    [None, "{not json", '{"chosen": {"method": "probe"}}', '{"trait": "x"}', '{"chosen": null}', "[1]"],
    ids=["missing", "not_json", "no_layer", "no_chosen", "null_chosen", "list"],
)
def test_missing_or_malformed_evaluation_is_one_line_naming_it(tmp_path, save_trait_vector, content):
    chosen = {"method": "probe", "layer": 5}
    vectors, evaluation = save_trait_vector(
        tmp_path, "t/x", {"mean_diff": MEAN_DIFF, "probe": PROBE}, [3, 5, 7], chosen
    )
    if content is None:
        evaluation.unlink()
    else:
        evaluation.write_text(content)
    with pytest.raises(TraitscopeError) as info:
        TraitVector.load(vectors, evaluation)
    message = str(info.value)
    assert (
        "\n" not in message and message.startswith(f"{evaluation}: ") and "rerun trait-evaluation" in message
    )


def test_chosen_method_missing_from_the_vectors_is_an_error(tmp_path, save_trait_vector):
    vectors, evaluation = save_trait_vector(
        tmp_path, "t/x", {"mean_diff": MEAN_DIFF}, [3, 5, 7], {"method": "pca", "layer": 5}
    )
    with pytest.raises(TraitscopeError) as info:
        TraitVector.load(vectors, evaluation)
    message = str(info.value)
    assert "\n" not in message and f"chosen method 'pca' is not in {vectors}" in message
    vectors.write_bytes(b"not safetensors")
    with pytest.raises(TraitscopeError, match="cannot read trait vectors"):
        TraitVector.load(vectors, evaluation)


def test_another_traits_evaluation_or_name_is_an_error(tmp_path, save_trait_vector):
    """Evil's vectors with harm's evaluation.json used to load, at harm's chosen layer, under
    whatever name was asked for: projection and CMA-ES then reported one trait as another."""
    chosen = {"method": "mean_diff", "layer": 5}
    evil = save_trait_vector(tmp_path / "evil", "safety/evil", {"mean_diff": MEAN_DIFF}, [3, 5, 7], chosen)
    harm = save_trait_vector(tmp_path / "harm", "safety/harm", {"mean_diff": MEAN_DIFF}, [3, 5, 7], chosen)
    with pytest.raises(TraitscopeError) as info:
        TraitVector.load(evil[0], harm[1])
    assert str(info.value) == (
        f"{harm[1]} is for trait safety/harm, {evil[0]} for safety/evil; "
        "pass the vectors and evaluation.json of one trait and model"
    )
    with pytest.raises(
        TraitscopeError, match=f"^{re.escape(str(evil[0]))}: holds trait safety/evil, not safety/harm; pass"
    ):
        TraitVector.load(*evil, "safety/harm")
    assert TraitVector.load(*evil, "safety/evil").layer == 5


def test_steering_comparison_is_paired_and_decided_by_its_ci():
    """Each prompt is answered steered and unsteered: the effect is d_z of the per-prompt
    differences (hand-computed), and "steered higher" needs the CI above 0, not a higher mean."""
    from traitscope.vectors.steering_check import projection_comparison

    unsteered = np.array([1.0, 1.0, 2.0, 2.0, 3.0, 3.0])
    # differences 0, 1, 2, 3, 4, 8: mean 3, sd sqrt(40 / 5) = 2.828
    result = projection_comparison(unsteered + [0, 1, 2, 3, 4, 8], unsteered)
    paired = result["paired"]
    assert result["difference"] == paired["mean_diff"] == pytest.approx(3.0)
    assert paired["cohens_dz"] == pytest.approx(3 / np.sqrt(8))  # unpaired Cohen's d: 1.13
    assert paired["paired_t"] == pytest.approx(3 / (np.sqrt(8) / np.sqrt(6)))
    assert paired["n_pairs"] == 6 and 0 < paired["ci_low"] < paired["cohens_dz"] < paired["ci_high"]
    assert result["steered_higher"]
    # differences -3, -2, 1, 2, 3, 5: a higher mean (+1) whose CI straddles 0
    straddling = projection_comparison(unsteered + [-3, -2, 1, 2, 3, 5], unsteered)
    assert straddling["difference"] == pytest.approx(1.0)
    assert straddling["paired"]["ci_low"] < 0 < straddling["paired"]["ci_high"]
    assert not straddling["steered_higher"]
    # a vector too weak to change any answer: d_z undefined, said so, not a crash; nor decided
    same = projection_comparison(unsteered.copy(), unsteered)
    assert "the same" in same["paired"]["undefined"] and same["steered_higher"] is None
    assert same["difference"] == 0
    assert projection_comparison(unsteered + 0.5, unsteered)["steered_higher"] is None
    # three prompts, differences 1, 1, 2: a resample of the two 1s has sd 0, so the CI is infinite
    few = projection_comparison(np.array([2.0, 2.0, 4.0]), np.array([1.0, 1.0, 2.0]))
    assert "not finite" in few["paired"]["undefined"] and few["steered_higher"] is None
    assert few["difference"] == pytest.approx(4 / 3)
