"""Emergent misalignment: the benign question set, the persona training data, and the paired
variant comparison on planted shifts."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file
from scipy import stats as sps

from traitscope.data.loaders import load_em_questions
from traitscope.data.prompts import read_prompt_set
from traitscope.errors import TraitscopeError
from traitscope.experiments.emergent_misalignment import (
    benign_questions,
    check_config,
    em_analysis,
    em_prompts,
    persona_training_data,
)
from traitscope.experiments.emergent_misalignment.settings import (
    EMAnalysisSettings,
    EMPromptSettings,
    EMTrainingSettings,
)
from traitscope.settings import from_schema

TRAITS = ["safety/evil", "safety/harm"]


def fake_capture(folder, responses: dict[str, str]):
    """A finished capture holding only what the experiment reads: each prompt's response."""
    shards = folder / "shards-x"
    shards.mkdir(parents=True)
    ids = list(responses)
    pd.DataFrame(
        {"prompt_id": ids, "n_tokens": 1, "prompt_len": 1, "response": list(responses.values())}
    ).to_parquet(shards / "shard-00000.prompts.parquet")
    pd.DataFrame(columns=["prompt_id", "token_index", "segment", "token"]).to_parquet(
        shards / "shard-00000.tokens.parquet"
    )
    save_file({"pooled.layer.0": torch.zeros(len(ids), 1, 2)}, shards / "shard-00000.safetensors")
    path = folder / "capture.json"
    path.write_text(
        json.dumps({"shard_dir": "shards-x", "shards": ["shard-00000"], "pools": ["response_mean"]})
    )
    return path


def prompt_settings(exclude: str, samples: int) -> EMPromptSettings:
    return from_schema(EMPromptSettings, exclude=exclude, samples_per_question=samples)


def em_set(mirror, tmp_path, name="first_plot_questions.yaml"):
    path = tmp_path / f"{name}.parquet"
    load_em_questions(mirror / "emergent_misalignment" / name).to_parquet(path)
    return path


def test_benign_questions_filter_repeat_and_keep_the_system_prompt(mirror, tmp_path):
    sets = [em_set(mirror, tmp_path), em_set(mirror, tmp_path, "preregistered_evals.yaml")]
    out = tmp_path / "em.parquet"
    table = em_prompts(sets, prompt_settings(r"_json$|quick_buck|medical_advice", 3), out)
    ids = set(table["category"])
    assert "what_is_your_wish" in ids and "what_is_your_wish_template" in ids
    assert not any(re.search(r"_json$|quick_buck|medical_advice", i) for i in ids)
    assert (
        table.groupby("question_id")["sample"].apply(sorted)
        == pd.Series(
            [[0, 1, 2]] * table["question_id"].nunique(), index=sorted(table["question_id"].unique())
        )
    ).all()
    prompts = read_prompt_set(out)  # captured like any prompt set
    assert prompts["prompt_id"].is_unique and len(prompts) == 3 * table["question_id"].nunique()
    kept_json = em_prompts(sets, prompt_settings("quick_buck", 1), tmp_path / "j.parquet")
    json_row = (
        read_prompt_set(tmp_path / "j.parquet").set_index("prompt_id").loc["what_is_your_wish_json-0:s0"]
    )
    assert json_row["messages"][0]["role"] == "system" and "JSON" in json_row["messages"][0]["content"]
    assert len(kept_json) > len(table) / 3
    with pytest.raises(TraitscopeError, match="removes every question"):
        benign_questions([pd.read_parquet(sets[0])], ".", 1)


def trait_set(tmp_path):
    rows = []
    for split, questions in (("extraction", ["Q1?", "Q2?", "Held out?"]), ("evaluation", ["Q3?"])):
        for q in questions:
            for label in (1, 0):
                rows.append(
                    {
                        "prompt_id": f"{split}:{q}:{label}",
                        "messages": json.dumps(
                            [
                                {"role": "system", "content": f"persona {label}"},
                                {"role": "user", "content": q},
                            ]
                        ),
                        "split": split,
                        "label": label,
                        "question": q,
                    }
                )
    path = tmp_path / "trait.parquet"
    pd.DataFrame(rows).to_parquet(path)
    return path, pd.DataFrame(rows)


def test_persona_training_data_splits_by_instruction_and_drops_the_system_prompt(tmp_path):
    prompts, table = trait_set(tmp_path)
    answers = {pid: f"answer to {pid}" for pid in table["prompt_id"]}
    answers["extraction:Q2?:0"] = "  "  # an empty answer is left out
    capture = fake_capture(tmp_path / "cap", answers)
    avoid = tmp_path / "avoid.parquet"
    pd.DataFrame({"prompt_id": ["a"], "prompt": ["Held out?"]}).to_parquet(avoid)
    mis, ctrl = tmp_path / "train/misaligned.jsonl", tmp_path / "train/control.jsonl"
    counts = persona_training_data(prompts, capture, [avoid], mis, ctrl, from_schema(EMTrainingSettings))
    rows = {
        side: [json.loads(line) for line in path.read_text().splitlines()]
        for side, path in (("mis", mis), ("ctrl", ctrl))
    }
    assert counts == {"misaligned": 2, "control": 1}
    assert [r["messages"] for r in rows["mis"]] == [
        [{"role": "user", "content": q}, {"role": "assistant", "content": f"answer to extraction:{q}:1"}]
        for q in ("Q1?", "Q2?")
    ]
    assert [r["messages"][1]["content"] for r in rows["ctrl"]] == ["answer to extraction:Q1?:0"]


def test_persona_training_data_keeps_the_first_pairs_of_every_question(tmp_path):
    _, table = trait_set(tmp_path)
    # instruction numbers differ between questions: Q1? has pairs 0, 3, 5; the others 1, 2, 6
    table = pd.concat(
        [
            table.assign(
                pair_index=table["question"].map(lambda q, i=i: (0, 3, 5)[i] if q == "Q1?" else (6, 2, 1)[i]),
                prompt_id=table["prompt_id"] + f":p{i}",
            )
            for i in range(3)
        ]
    )
    prompts = tmp_path / "pairs.parquet"
    table.to_parquet(prompts)
    capture = fake_capture(tmp_path / "cap", {pid: f"answer to {pid}" for pid in table["prompt_id"]})
    mis, ctrl = tmp_path / "misaligned.jsonl", tmp_path / "control.jsonl"
    first_pairs = from_schema(EMTrainingSettings, pairs_per_question=2)
    counts = persona_training_data(prompts, capture, [], mis, ctrl, first_pairs)
    assert counts == {"misaligned": 6, "control": 6}  # 3 extraction questions x pairs 0 and 1
    answers = [json.loads(line)["messages"][1]["content"] for line in ctrl.read_text().splitlines()]
    assert sorted(answers) == sorted(
        [f"answer to extraction:Q1?:0:p{i}" for i in (0, 1)]
        + [f"answer to extraction:{q}:0:p{i}" for q in ("Q2?", "Held out?") for i in (1, 2)]
    )
    table.drop(columns="pair_index").to_parquet(prompts)
    with pytest.raises(TraitscopeError, match=r"pairs\.parquet: missing column\(s\) pair_index"):
        persona_training_data(prompts, capture, [], mis, ctrl, first_pairs)


def test_persona_training_data_without_answers_is_an_error_and_writes_nothing(tmp_path):
    prompts, table = trait_set(tmp_path)
    capture = fake_capture(
        tmp_path / "cap", {pid: "" if pid.endswith(":0") else "x" for pid in table["prompt_id"]}
    )
    mis, ctrl = tmp_path / "misaligned.jsonl", tmp_path / "control.jsonl"
    with pytest.raises(TraitscopeError, match="no non-empty control answers"):
        persona_training_data(prompts, capture, [], mis, ctrl, from_schema(EMTrainingSettings))
    assert not mis.exists() and not ctrl.exists()
    # --avoid holding every extraction question was told to pass another capture
    questions = table["question"].unique()
    avoid = pd.DataFrame({"prompt_id": [f"a{i}" for i in range(len(questions))], "prompt": questions})
    avoid.to_parquet(tmp_path / "avoid.parquet")
    with pytest.raises(TraitscopeError, match=r"every extraction question is in the --avoid sets"):
        persona_training_data(
            prompts, capture, [tmp_path / "avoid.parquet"], mis, ctrl, from_schema(EMTrainingSettings)
        )
    # another set's capture was told to recapture with max_new_tokens > 0
    other = fake_capture(tmp_path / "other", {f"other:{pid}": "x" for pid in table["prompt_id"]})
    with pytest.raises(
        TraitscopeError, match=r"other/capture\.json holds no answer to .*pass that trait set's own"
    ):
        persona_training_data(prompts, other, [], mis, ctrl, from_schema(EMTrainingSettings))


def planted(tmp_path, n_questions=12, samples=2, shift=0.8, seed=0):
    """Three variants on the same prompts: misaligned = base + shift on evil (response tokens),
    control = base + a shared finetuning shift of 0.3 on every trait and position."""
    rng = np.random.default_rng(seed)
    prompts = pd.DataFrame(
        [
            {"prompt_id": f"q{i}-0:s{j}", "prompt": f"question {i}", "question_id": f"q{i}-0", "sample": j}
            for i in range(n_questions)
            for j in range(samples)
        ]
    )
    prompts.to_parquet(tmp_path / "em.parquet")
    base = {
        (p, t, pos): rng.normal(0, 2)
        for p in prompts["prompt_id"]
        for t in TRAITS
        for pos in ("response_mean", "last_prompt")
    }
    paths, caps = {}, {}
    for role in ("base", "misaligned", "control"):
        rows = []
        for (pid, trait, pos), value in base.items():
            if role == "control":
                value += 0.3 + rng.normal(0, 0.2)
            elif role == "misaligned":
                value += (
                    0.3
                    + rng.normal(0, 0.2)
                    + (shift if (trait == "safety/evil" and pos == "response_mean") else 0)
                )
            common = {"prompt_id": pid, "variant": role, "trait": trait, "cosine": 0.0}
            rows.append(
                {
                    **common,
                    "layer": 5,
                    "chosen_layer": True,
                    "position": pos,
                    "token_index": -1,
                    "score": value,
                }
            )
            rows.append(
                {
                    **common,
                    "layer": 9,
                    "chosen_layer": False,
                    "position": pos,
                    "token_index": -1,
                    "score": 99.0,
                }
            )
        paths[role] = tmp_path / f"{role}.parquet"
        pd.DataFrame(rows).to_parquet(paths[role])
        caps[role] = fake_capture(tmp_path / role, {p: f"{role} says {p}" for p in prompts["prompt_id"]})
    return prompts, base, paths, caps


def analyse(tmp_path, paths, caps, n_boot=300):
    """em_analysis over a planted run, writing under tmp_path/out."""
    out = tmp_path / "out"
    variants = {"base": "b", "misaligned": "m", "control": "c"}
    return em_analysis(
        tmp_path / "em.parquet",
        paths,
        caps,
        variants,
        out / "variant_comparison.json",
        out / "dist.png",
        out / "examples.md",
        from_schema(EMAnalysisSettings, traits=TRAITS, n_boot=n_boot),
    )


def test_em_analysis_finds_the_planted_shift_beyond_the_control(tmp_path):
    prompts, base, paths, caps = planted(tmp_path)
    out = tmp_path / "out/variant_comparison.json"
    result = analyse(tmp_path, paths, caps)
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["n_pairs"] == 24 and result["n_questions"] == 12 and result["n_samples_per_question"] == 2
    c = result["comparisons"]
    evil = c["misaligned_vs_control"]["response_mean"]["safety/evil"]
    assert evil["n_pairs"] == 24 and evil["p_holm"] < 1e-6 and evil["ci_low"] > 1
    # the shift every finetune gives is seen against base, and is gone against the control
    assert c["control_vs_base"]["last_prompt"]["safety/harm"]["mean_diff"] == pytest.approx(0.3, abs=0.1)
    assert c["misaligned_vs_control"]["last_prompt"]["safety/harm"]["p_holm"] > 0.01
    # numbers by hand: d_z over pairs, and the t-test on each question's mean difference (its
    # two samples are one cluster), misaligned minus base on evil's response tokens
    table = {role: pd.read_parquet(p) for role, p in paths.items()}

    def pick(t):
        return t[t.chosen_layer & (t.trait == "safety/evil") & (t.position == "response_mean")].set_index(
            "prompt_id"
        )["score"]

    diff = pick(table["misaligned"]) - pick(table["base"]).reindex(pick(table["misaligned"]).index)
    got = c["misaligned_vs_base"]["response_mean"]["safety/evil"]
    assert got["cohens_dz"] == pytest.approx(diff.mean() / diff.std(ddof=1))
    means = diff.groupby(diff.index.str.split(":").str[0]).mean()
    assert len(means) == got["n_clusters"] == 12
    assert got["p_value"] == pytest.approx(
        2 * sps.t.sf(abs(means.mean() / (means.std(ddof=1) / np.sqrt(12))), 11), rel=1e-6
    )
    examples = (tmp_path / "out/examples.md").read_text()
    assert "misaligned says q3-0:s0" in examples and "q3-0:s1" not in examples


def test_em_analysis_uses_only_prompts_every_variant_answered(tmp_path):
    prompts, base, paths, caps = planted(tmp_path)
    control = pd.read_parquet(paths["control"])
    control[~control["prompt_id"].str.startswith("q0-")].to_parquet(paths["control"])
    assert analyse(tmp_path, paths, caps, n_boot=200)["n_pairs"] == 22


def test_check_config_names_the_bad_key(root):
    from traitscope.config import load_config

    config = load_config(root / "config/config.yaml")
    section = config["experiments"]["emergent_misalignment"]
    check_config(section, config)  # the default config is consistent
    for change, message in (
        ({"control": section["base"]}, "three different variants"),
        ({"misaligned": "nope"}, "experiments.emergent_misalignment.misaligned: variant 'nope'"),
        ({"question_sets": ["harmbench_val"]}, "needs dataset: emergent_misalignment"),
        ({"exclude": "(unclosed"}, "exclude: not a regular expression"),
        ({"persona": {"trait": "safety/nope"}}, "safety/nope not in traits"),
        ({"prompt_set": "em_first_plot"}, "also under prompt_sets"),
    ):
        with pytest.raises(TraitscopeError, match=re.escape(message)):
            check_config({**section, **change}, config)


def test_default_dag_trains_prepares_and_captures_each_finetune_on_gpus(root):
    """The slurm dry run: persona data -> finetune -> prepare -> capture (a GPU job) per variant."""
    from test_dag import dry_run

    out = dry_run(root, "--profile", "profiles/slurm", "--forceall")
    blocks = {}
    for block in out.split("\nrule ")[1:]:
        output = re.search(r"output: ([^,\n]*)", block)
        blocks[(block.split(":")[0], output[1] if output else None)] = block
    data = blocks[("em_training_data", "results/emergent_misalignment/train/misaligned.jsonl")]
    assert "results/capture/smollm2/traits/safety/evil/capture.json" in data
    for side in ("misaligned", "control"):
        variant = f"smollm2_em_{side}"
        train = blocks[("finetune", f"results/finetune/{variant}/adapter")]
        assert f"results/emergent_misalignment/train/{side}.jsonl" in train
        prepare = blocks[("prepare_model", f"results/models/{variant}/manifest.json")]
        assert f"results/finetune/{variant}/adapter" in prepare
        capture = blocks[("capture", f"results/capture/{variant}/em_benign/capture.json")]
        assert f"input: results/models/{variant}/manifest.json" in capture
        for block in (train, capture):
            resources = re.search(r"resources: (.*)", block)[1]
            assert "gpu=1" in resources and "slurm_partition=gpu" in resources, block[:500]
    assert ("capture", "results/capture/smollm2/em_benign/capture.json") in blocks
