"""Steering-vector optimisation: CMA-ES resumes after a kill to the same best vector, the PCA
basis and the fitness gate on hand-checkable cases, and the whole experiment on the tiny model
against the loopback OpenAI-compatible judge (a rerun makes no judge call)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from dataclasses import asdict

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY_TRAIT
from judge_server import JudgeServer

from traitscope import judge as J
from traitscope.errors import TraitscopeError
from traitscope.experiments import steering_optimisation as so
from traitscope.judge.settings import AgreementSettings, JudgementSettings
from traitscope.settings import from_schema

TINY_EVAL = TINY_TRAIT["evaluation_questions"]
SETTINGS = from_schema(  # a large norm: the tiny random model's answers must move
    so.OptimisationSettings,
    components=3,
    popsize=3,
    generations=2,
    sigma0=0.5,
    coefficient=50.0,
    coherence_floor=20,
    n_train=2,
    n_heldout=3,
    max_new_tokens=4,
    max_tokens=2048,
    n_boot=200,
)


# ----------------------------------------------------------------------------- CMA-ES, resumable

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    from traitscope.experiments.steering_optimisation import run_cmaes

    state, kill_at = sys.argv[1], int(sys.argv[2])
    target = np.array([0.5, -1.0, 2.0, 0.0, 1.0])

    def evaluate(population, runs):
        done = len(np.load(state + ".gens.npy")) if os.path.exists(state + ".gens.npy") else 0
        if done == kill_at:  # generations saved so far: die in the middle of the next one
            os.kill(os.getpid(), signal.SIGKILL)
        return [{"fitness": -float(((x - target) ** 2).sum())} for x in population]

    def mark(entry):
        np.save(state + ".gens.npy", np.arange(entry["generation"] + 1))

    result = run_cmaes(evaluate, np.zeros(5), 0.5, 6, 5, 7, state, "digest", on_generation=mark)
    np.save(state + ".best.npy", result["best"]["x"])
    np.save(state + ".fitness.npy", np.array([e["fitness"] for e in result["history"]]))
    """
)


def run_script(tmp_path, name, kill_at):
    script = tmp_path / "cmaes_run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(
        [sys.executable, str(script), str(tmp_path / name), str(kill_at)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_killed_run_resumes_to_the_same_best_vector(tmp_path):
    whole = run_script(tmp_path, "whole.pkl", -1)
    assert whole.returncode == 0, whole.stderr
    killed = run_script(tmp_path, "killed.pkl", 2)  # SIGKILL inside generation 3, after 2 were saved
    assert killed.returncode == -signal.SIGKILL
    assert len(np.load(tmp_path / "killed.pkl.gens.npy")) == 2
    resumed = run_script(tmp_path, "killed.pkl", -1)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after generation 2" in resumed.stderr
    np.testing.assert_array_equal(
        np.load(tmp_path / "whole.pkl.best.npy"), np.load(tmp_path / "killed.pkl.best.npy")
    )
    np.testing.assert_array_equal(
        np.load(tmp_path / "whole.pkl.fitness.npy"), np.load(tmp_path / "killed.pkl.fitness.npy")
    )


def test_changed_settings_start_over_and_more_generations_continue(tmp_path):
    calls = []

    def evaluate(population, runs):
        calls.append(len(population))
        return [{"fitness": -float((x**2).sum())} for x in population]

    state = tmp_path / "s.pkl"
    so.run_cmaes(evaluate, np.ones(3), 0.5, 4, 2, 0, state, "a")
    assert len(calls) == 2
    more = so.run_cmaes(evaluate, np.ones(3), 0.5, 4, 3, 0, state, "a")  # one more generation
    assert len(calls) == 3 and len(more["history"]) == 3 and more["resumed_from"] == 2
    fresh = so.run_cmaes(evaluate, np.ones(3), 0.5, 4, 2, 0, state, "b")  # other settings
    assert len(calls) == 5 and fresh["resumed_from"] is None


def test_restarts_run_in_lockstep_and_resume_to_the_same_runs(tmp_path):
    """Three runs: one evaluation a generation holds every run's population; each run keeps its
    own best and the optimised vector is the best of all; 2 generations resumed to 3 equal 3
    straight (the runs and numpy's random state are saved together)."""
    sizes = []

    def evaluate(population, runs):
        sizes.append(len(population))
        assert runs == sorted(runs) and len(runs) == len(population)
        return [{"fitness": -float(((x - 1.0) ** 2).sum())} for x in population]

    straight = so.run_cmaes(evaluate, np.zeros(4), 0.5, 5, 3, 0, tmp_path / "a.pkl", "d", restarts=3)
    assert sizes == [15, 15, 15]
    bests = [b["fitness"] for b in straight["bests"]]
    assert len(set(bests)) == 3 and straight["best"]["fitness"] == max(bests)
    assert straight["history"][0]["restart"] == [0] * 5 + [1] * 5 + [2] * 5
    so.run_cmaes(evaluate, np.zeros(4), 0.5, 5, 2, 0, tmp_path / "b.pkl", "d", restarts=3)
    resumed = so.run_cmaes(evaluate, np.zeros(4), 0.5, 5, 3, 0, tmp_path / "b.pkl", "d", restarts=3)
    assert resumed["resumed_from"] == 2
    for a, b in zip(straight["bests"], resumed["bests"]):
        np.testing.assert_array_equal(a["x"], b["x"])
    assert [e["fitness"] for e in straight["history"]] == [e["fitness"] for e in resumed["history"]]


# ----------------------------------------------------------------------------- pieces by hand


def test_gated_scores_count_incoherent_or_unscored_answers_as_zero():
    assert so.gated_scores([80, 70, None, 90], [60, 40, 90, None], 50) == [80, 0.0, 0.0, 0.0]
    # no floor: the trait score alone, whatever the coherence (unscored where the gate is off)
    assert so.gated_scores([80, 70, None, 90], [60, 40, 90, None], None) == [80, 70, 0.0, 90]


def test_pca_basis_is_the_top_principal_directions(trait_run):
    from traitscope.vectors.labelled import labelled_activations

    basis, ratio, n = so.pca_basis(trait_run["capture"], trait_run["prompts"], "response_mean", 1, 3)
    table, x, layers = labelled_activations(trait_run["capture"], trait_run["prompts"], "response_mean")
    rows = torch.tensor((table["split"] == "extraction").to_numpy())
    acts = x[rows][:, layers.index(1)].double().numpy()
    assert n == len(acts) and basis.shape == (3, acts.shape[1])
    np.testing.assert_allclose(basis @ basis.T, np.eye(3), atol=1e-8)
    cov = np.cov(acts.T, bias=True)
    eig = np.sort(np.linalg.eigvalsh(cov))[::-1]
    np.testing.assert_allclose(ratio, eig[:3] / eig.sum(), rtol=1e-6)
    for k in range(3):  # each row is an eigenvector of the covariance with its eigenvalue
        np.testing.assert_allclose(cov @ basis[k], eig[k] * basis[k], atol=1e-6 * eig[0])


def test_check_config_names_the_problem(root):
    config = {
        "traits": ["safety/evil", "safety/harmful_request"],
        "traits_dir": str(root / "resources/traits"),
    }
    section = {"traits": ["safety/harm"], "popsize": 4}
    with pytest.raises(TraitscopeError, match="safety/harm"):
        so.check_config(section, config)
    with pytest.raises(TraitscopeError, match="popsize"):
        so.check_config({"traits": ["safety/evil"], "popsize": 1}, config)
    # a prompt-contrast trait has prompts, not answers a judge could score: refused before any job
    contrast = {"traits": ["safety/evil", "safety/harmful_request"], "popsize": 4}
    with pytest.raises(TraitscopeError, match=r"traits: safety/harmful_request is a prompt-contrast trait"):
        so.check_config(contrast, config)
    so.check_config({"traits": ["safety/evil"], "popsize": 4}, config)
    # a classifier fitness needs a held-out check by another scorer, or gaming it would not show
    embedding = {"backend": "classifier", "classifier": {"features": "embedding", "reader": None}}
    tfidf = {"backend": "classifier", "classifier": {"features": "tfidf"}}
    section = {"traits": ["safety/evil"], "popsize": 4}
    for heldout in (None, embedding, {**embedding, "cache": None}):
        with pytest.raises(
            TraitscopeError, match="heldout_judge: judge.backend classifier scores the fitness"
        ):
            so.check_config({**section, "heldout_judge": heldout}, {**config, "judge": embedding})
    other_reader = {"backend": "classifier", "classifier": {"features": "embedding", "reader": "gemma3"}}
    config["models"] = {"smollm2": {}, "gemma3": {}}
    for heldout in (tfidf, other_reader, {"backend": "openai"}):
        so.check_config({**section, "heldout_judge": heldout}, {**config, "judge": embedding})
    # a reader or local judge the held-out scorer names must be a models: variant
    unknown = {"backend": "classifier", "classifier": {"features": "embedding", "reader": "gemma9"}}
    with pytest.raises(TraitscopeError, match=r"heldout_judge.classifier.reader: variant 'gemma9'"):
        so.check_config({**section, "heldout_judge": unknown}, {**config, "judge": embedding})
    with pytest.raises(TraitscopeError, match=r"heldout_judge.local.variant: variant 'llm9'"):
        so.check_config(
            {**section, "heldout_judge": {"backend": "local", "local": {"variant": "llm9"}}}, config
        )


# ----------------------------------------------------------------------------- the experiment


def test_experiment_against_an_openai_compatible_server(
    trait_run, tiny_manifest, tiny_trait_file, tmp_path, monkeypatch
):
    """The experiment runs unchanged with an API judge at a base_url; a rerun makes no judge call
    and ends at the same vector."""
    monkeypatch.setenv("TRAITSCOPE_TEST_KEY", "sk-test")
    with JudgeServer() as server:
        settings = J.JudgeSettings(
            backend="openai",
            min_number_mass=0.25,
            cache=str(tmp_path / "cache.sqlite"),
            coherence_rubric="Coherence? ANSWER:{answer}END",
            openai={
                "base_url": server.base_url,
                "model": "logprobs",
                "api_key_env": "TRAITSCOPE_TEST_KEY",
                "max_concurrency": 4,
                "max_retries": 1,
                "timeout": 5,
                "backoff": 0.01,
                "price_per_million_input": None,
                "price_per_million_output": None,
            },
        )

        def optimise(name):
            judge = J.Judge(settings)
            result = so.cmaes_optimise(
                tiny_manifest,
                trait_run["vectors"],
                trait_run["evaluation"],
                trait_run["capture"],
                trait_run["prompts"],
                tiny_trait_file,
                judge,
                SETTINGS,
                tmp_path / name / "vectors",
                tmp_path / name / "optimisation.json",
                tmp_path / name / "state.pkl",
            )
            judge.close()
            return result

        first = optimise("a")
        calls = server.count()
        # start + restarts x popsize x generations candidates, n_train answers each, trait and coherence
        assert first["judge_calls"]["judgements"] == (1 + 3 * 3 * 2) * 2 * 2
        runs = first["cosines"]["restarts_vs_mean_diff"]
        assert runs["n"] == SETTINGS.restarts == 3 and runs["mean"] == pytest.approx(np.mean(runs["values"]))
        assert runs["ci_low"] < runs["mean"] < runs["ci_high"]
        assert first["cosines"]["optimised_vs_mean_diff"] in runs["values"]  # the best run's vector
        assert 0 < calls <= first["judge_calls"]["judgements"]
        assert len(first["history"]) == 2 and len(first["best"]["coordinates"]) == 3
        assert first["best"]["fitness"] >= max(e["best_fitness"] for e in first["history"])
        assert all(0 <= f <= 100 for e in first["history"] for f in e["fitness"])
        moved = first["components_moved"]
        assert sorted(abs(m["change"]) for m in moved)[::-1] == [abs(m["change"]) for m in moved]
        (vector_file,) = (tmp_path / "a" / "vectors").glob("layer*.safetensors")
        vector, meta = so.read_optimised(tmp_path / "a" / "vectors")
        assert np.linalg.norm(vector) == pytest.approx(meta["norm"], rel=1e-5)
        assert vector_file.name == f"layer{first['layer']}.safetensors"

        again = optimise("b")  # a fresh run (no state) with the judgements cached: no judge call
        assert server.count() == calls and again["judge_calls"]["requests"] == 0
        assert again["best"]["coordinates"] == first["best"]["coordinates"]

        def heldout(scorers, name):
            vectors = (trait_run["vectors"], trait_run["evaluation"], tmp_path / "a" / "vectors")
            return so.cmaes_heldout(
                tiny_manifest, *vectors, tiny_trait_file, scorers, SETTINGS, tmp_path / name
            )

        judge = J.Judge(settings)
        held = heldout(so.Scorers(judge), "heldout.json")
        # an independent scorer (a bare "73" for every answer, so blind) reads the same answers;
        # the fitness judge's scores stand beside its own, and its truth-set agreement is measured
        truth = tmp_path / "truth.yaml"
        items = [{"question": q, "shown": f"cruel {q}", "not_shown": f"kind {q}"} for q in TINY_EVAL]
        truth.write_text(yaml.safe_dump({"items": items}))
        blind = J.Judge(
            J.JudgeSettings(**{**asdict(settings), "openai": {**settings.openai, "model": "nologprobs"}})
        )
        fitness = J.Judge(settings)
        independent = heldout(so.Scorers(fitness, blind, truth), "heldout_independent.json")
        fitness.close()
        blind.close()
        judgements = tmp_path / "judgements.parquet"
        settings = from_schema(JudgementSettings)
        run = (trait_run["capture"], trait_run["prompts"], tiny_trait_file)
        J.trait_judgements(*run, judge, settings, judgements)
        judge.close()
        J.trait_agreement(judgements, tmp_path / "agreement.json", from_schema(AgreementSettings, n_boot=200))
    assert set(held["conditions"]) == set(so.CONDITIONS)
    assert set(held["steering_delta"]) == {"mean_diff", "probe", "optimised"}
    for stats in held["conditions"].values():
        assert stats["trait"]["n"] + stats["trait"]["n_no_score"] == SETTINGS.n_heldout
    gap = so.cmaes_report(
        ["safety/tiny"],
        [tmp_path / "a" / "optimisation.json"],
        [tmp_path / "heldout.json"],
        [tmp_path / "agreement.json"],
        tmp_path / "extraction_gap.json",
        tmp_path / "curves.png",
    )
    entry = gap["traits"]["safety/tiny"]
    assert {"judge_agreement", "training", "heldout", "cosines", "components_moved", "basis"} <= set(entry)
    # the criterion's gain over the questions all three arms were scored on, from heldout.json's scores
    gain = entry["heldout"]["gain_vs_mean_diff"]
    arms = (held["scores"][name]["trait"] for name in ("optimised", "mean_diff", "none"))
    both = [(o - n, m - n) for o, m, n in zip(*arms) if None not in (o, m, n)]
    assert gain["n"] == len(both)
    if len(both) >= 2 and gain["delta_b"] != 0:
        delta_opt, delta_md = np.mean([o for o, _ in both]), np.mean([m for _, m in both])
        assert gain["gain"] == pytest.approx((delta_opt - delta_md) / abs(delta_md))
    assert {"optimised_vs_mean_diff", "optimised_vs_probe", "optimised_vs_start"} <= set(entry["cosines"])
    assert held["scorer"] == "fitness judge" and "fitness_judge" not in held
    assert independent["scorer"] == "independent" and independent["questions"] == held["questions"]
    # the same seeded answers: the fitness judge's scores there are those of the plain run
    assert independent["fitness_judge"]["scores"] == held["scores"]
    n = SETTINGS.n_heldout
    assert all(independent["scores"][c]["trait"] == [73.0] * n for c in so.CONDITIONS)
    truth_agreement = independent["judge_truth_agreement"]
    assert truth_agreement["split"] == "truth set" and truth_agreement["auc"] == 0.5
    assert (truth_agreement["n_pos"], truth_agreement["n_neg"]) == (len(TINY_EVAL), len(TINY_EVAL))
    assert gap["judge"]["backend"] == "openai" and "sk-test" not in json.dumps(gap)
    assert (tmp_path / "curves.png").stat().st_size > 0


# --- the cosine's null: the same search on a noise fitness ----------------------------------------


def test_noise_null_of_one_candidate_is_a_gaussian_step_from_the_start():
    """One run, one generation of two candidates (pycma's least): the noise picks either, so the
    best is x0 + sigma0 z, z ~ N(0, I), and its cosine with mean_diff is
    in_basis x (1 + sigma0 z_1) / |x0 + sigma0 z|, sampled here with numpy alone."""
    from traitscope.experiments.steering_optimisation.null import noise_null

    d, sigma0, in_basis = 8, 0.5, 0.9
    z = np.random.default_rng(1).standard_normal((20000, d)) * sigma0
    z[:, 0] += 1.0
    direct = in_basis * z[:, 0] / np.linalg.norm(z, axis=1)
    null = noise_null(d, sigma0, 2, 1, 1, in_basis, observed=float(direct.mean()), n_sim=2000)
    assert abs(null["mean"] - direct.mean()) < 4 * direct.std() / np.sqrt(2000)
    assert abs(null["low"] - np.percentile(direct, 2.5)) < 0.05
    assert null["p_two_sided"] > 0.5  # the null's own mean is no evidence against it


def test_noise_null_without_steps_stays_at_the_start_and_rejects_a_far_cosine():
    from traitscope.experiments.steering_optimisation.null import noise_null

    still = noise_null(8, 1e-9, 6, 4, 3, 0.8, observed=0.8, n_sim=20)
    assert still["mean"] == pytest.approx(0.8) and still["high"] - still["low"] < 1e-6
    moving = noise_null(8, 0.3, 6, 4, 3, 0.914, observed=0.2, n_sim=200)
    assert 0.55 < moving["mean"] < 0.75  # the embedded default's settings: ~0.64 by chance
    assert moving["p_two_sided"] == pytest.approx(2 / 201)  # no simulated search ends that low


def test_the_cosine_row_shows_its_noise_null():
    from traitscope.experiments.steering_optimisation.criteria import _cosine_row

    runs = {"values": [0.72, 0.70, 0.77], "mean": 0.73, "n": 3, "ci_low": 0.64, "ci_high": 0.82}
    null = {"n_sim": 1000, "runs": 3, "mean": 0.644, "low": 0.434, "high": 0.792, "p_two_sided": 0.36}
    cosines = {"optimised_vs_mean_diff": 0.72, "restarts_vs_mean_diff": runs, "noise_null": null}
    row = _cosine_row("safety/evil", cosines, 16)
    assert row.status == "inconclusive" and row.measured == 0.73
    assert "noise fitness ends at 0.644 (95% of 1000 simulated searches in [0.434, 0.792])" in row.detail
    assert "two-sided p 0.360" in row.detail


def test_a_cosine_in_range_is_met_only_where_a_noise_search_ends_elsewhere():
    """Runs 0.60, 0.62, 0.64 (t interval [0.57, 0.67]) lie within [0.3, 0.7]; but where a search
    on a noise fitness ends there too (p 0.95) the range says nothing about the judge's pull."""
    from traitscope.experiments.steering_optimisation.criteria import _cosine_row

    runs = {"values": [0.60, 0.62, 0.64], "mean": 0.62, "n": 3, "ci_low": 0.57, "ci_high": 0.67}
    null = {"n_sim": 1000, "runs": 3, "mean": 0.62, "low": 0.43, "high": 0.79, "p_two_sided": 0.95}
    cosines = {"optimised_vs_mean_diff": 0.64, "restarts_vs_mean_diff": runs, "noise_null": null}
    row = _cosine_row("safety/evil", cosines, 16)
    assert row.status == "inconclusive" and "met needs the noise fitness's p under 0.05" in row.detail
    row = _cosine_row("safety/evil", {**cosines, "noise_null": {**null, "p_two_sided": 0.004}}, 16)
    assert row.status == "met"
    assert _cosine_row("safety/evil", {**cosines, "noise_null": None}, 16).status == "inconclusive"


def test_cmaes_report_refuses_files_that_do_not_line_up_with_the_traits(tmp_path):
    """Two traits with one file each dropped the second without a word (zip); evil's files
    passed for harm reported evil's numbers as harm's; an evaluation.json passed as an agreement
    gave a row of Nones; a truncated file was a JSONDecodeError."""
    files = {}
    for name, record in (
        ("opt", {"trait": "safety/evil", "layer": 3, "best": {}, "settings": {}, "judge": {}}),
        ("held", {"trait": "safety/evil", "conditions": {}}),
        ("agree", {"auc": 0.9}),
        ("evaluation", {"trait": "safety/evil", "chosen": {}}),
    ):
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps(record))
    out = (tmp_path / "gap.json", tmp_path / "gap.png")

    def report(traits, opt="opt", held="held", agree="agree", truth=None):
        return so.cmaes_report(traits, [files[opt]], [files[held]], [files[agree]], *out, truth)

    with pytest.raises(TraitscopeError, match=r"^--optimisations: 1 file\(s\) for 2 trait\(s\)"):
        report(["safety/evil", "safety/harm"])
    with pytest.raises(
        TraitscopeError,
        match=f"^{re.escape(str(files['opt']))}: holds trait safety/evil, not safety/harm; keep --traits",
    ):
        report(["safety/harm"])
    with pytest.raises(
        TraitscopeError, match=f"^{re.escape(str(files['evaluation']))}: no 'auc', not trait-agreement's"
    ):
        report(["safety/evil"], agree="evaluation")
    with pytest.raises(
        TraitscopeError, match=r"^--truth-agreements: safety/harm is not in --traits safety/evil"
    ):
        report(["safety/evil"], truth={"safety/harm": files["agree"]})
    files["cut"] = tmp_path / "cut.json"
    files["cut"].write_text('{"trait": "safety/evil", "lay')
    with pytest.raises(TraitscopeError, match=r"cut\.json: cannot read JSON \(.*\); rerun cmaes-optimise"):
        report(["safety/evil"], opt="cut")
    assert not out[0].exists() and not out[1].exists()


def test_cmaes_heldout_checks_the_truth_set_before_it_generates(tiny_trait_file, tmp_path):
    """A broken truth set stopped the held-out stage only after its answers were generated and
    judged (21 s at the embedded default); nothing else is read before the check here."""
    truth = tmp_path / "truth.yaml"
    truth.write_text("items: [\n")
    absent = tmp_path / "absent"
    with pytest.raises(TraitscopeError, match=r"truth\.yaml: malformed YAML"):
        so.cmaes_heldout(
            absent,
            absent,
            absent,
            absent,
            tiny_trait_file,
            so.Scorers(None, None, truth),
            SETTINGS,
            tmp_path / "h",
        )
