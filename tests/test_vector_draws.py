"""CIs over the trait vector's refits: the bootstrap helper by hand, the resampled extraction
rows, and the draws of a real tiny trait run."""

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

from traitscope.errors import TraitscopeError
from traitscope.settings import from_schema
from traitscope.stats.draws import ci_over_draws
from traitscope.vectors.draws import read_draws, resampled_rows, vector_draws
from traitscope.vectors.labelled import labelled_activations
from traitscope.vectors.settings import DrawSettings


def test_each_replicate_scores_its_own_draw():
    """Draw 0 scores every row 1, draw 1 scores every row 3: whatever rows a replicate resamples,
    its mean is its draw's, so the 95% percentile CI of [1, 3] is [1 + .025 * 2, 1 + .975 * 2]."""
    scores = np.array([[1.0, 3.0]] * 4)
    assert ci_over_draws(np.mean, [scores], np.arange(4)) == pytest.approx((1.05, 2.95))


def test_a_units_rows_are_resampled_together():
    """Unit a has rows 0-1, unit b rows 2-3: every replicate holds 4 rows, and the share of
    unit a's is 0, 1/2 or 1; with 200 replicates all three occur."""
    rows = np.tile(np.array([[1.0], [1.0], [0.0], [0.0]]), (1, 200))
    shares = []
    ci_over_draws(lambda x: shares.append((len(x), x.mean())) or 0.0, [rows], np.array(list("aabb")))
    assert {n for n, _ in shares} == {4} and {s for _, s in shares} == {0.0, 0.5, 1.0}
    with pytest.raises(ValueError, match="at least 2 units"):
        ci_over_draws(np.mean, [rows], np.array(list("aaaa")))


def test_resampled_rows_keep_questions_and_pairs_together():
    table = pd.DataFrame(
        [
            {"split": split, "question": f"q{q}", "pair_index": k, "label": label}
            for split in ("extraction", "evaluation")
            for q in range(3)
            for k in range(2)
            for label in (1, 0)
        ]
    )
    for seed in range(5):
        pos, neg = resampled_rows(table, np.random.default_rng(seed))
        assert len(pos) == len(neg) == 6  # 3 questions drawn, 2 pairs each
        assert (table.loc[pos, "split"] == "extraction").all() and (table.loc[neg, "label"] == 0).all()
        for col in ("question", "pair_index"):  # positive i and negative i answer the same pair
            assert table.loc[pos, col].tolist() == table.loc[neg, col].tolist()


def test_draws_of_a_tiny_trait_refit_the_chosen_vector(trait_run, tmp_path):
    """mean_diff at layer 1, by hand: each draw is a difference of class means over some
    questions' extraction rows, so the draws spread, their mean lies near the full fit, and the
    same seed draws the same vectors."""
    evaluation = tmp_path / "evaluation.json"
    evaluation.write_text(json.dumps({"trait": "safety/tiny", "chosen": {"method": "mean_diff", "layer": 1}}))
    settings = from_schema(DrawSettings, vector_draws={"n_draws": 40, "seed": 3})
    out = tmp_path / "draws.safetensors"
    args = (trait_run["capture"], trait_run["prompts"], evaluation, out, "response_mean", settings)
    draws = vector_draws(*args)
    stored, meta = read_draws(out, "safety/tiny")
    assert torch.equal(stored, draws) and meta == {
        "method": "mean_diff",
        "layer": 1,
        "position": "response_mean",
        "n_draws": 40,
        "seed": 3,
        "trait": "safety/tiny",
    }
    # another trait's draws were read without a word (em-analysis given its --draws out of order)
    with pytest.raises(
        TraitscopeError, match=f"^{re.escape(str(out))}: holds trait safety/tiny, not safety/evil; pass"
    ):
        read_draws(out, "safety/evil")
    table, x, layers = labelled_activations(trait_run["capture"], trait_run["prompts"], "response_mean")
    rows = (table["split"] == "extraction").to_numpy()
    label = table["label"].to_numpy()
    full = x[rows & (label == 1), layers.index(1)].mean(0) - x[rows & (label == 0), layers.index(1)].mean(0)
    assert draws.shape == (40, x.shape[-1]) and draws.std(0).sum() > 0
    spread = (draws - full).norm(dim=1).mean()
    assert (draws.mean(0) - full).norm() < spread  # the bootstrap centres on the estimate
    assert torch.equal(vector_draws(*args), draws)
    pos, neg = resampled_rows(table, np.random.default_rng(3))  # the first draw, by hand
    first = x[pos, layers.index(1)].mean(0) - x[neg, layers.index(1)].mean(0)
    assert torch.allclose(draws[0], first, atol=1e-5)
    with pytest.raises(TraitscopeError, match="no such vector draws"):
        read_draws(tmp_path / "absent.safetensors", "safety/tiny")
    (tmp_path / "cut.safetensors").write_bytes(out.read_bytes()[:100])
    with pytest.raises(TraitscopeError, match="cut.safetensors: cannot read vector draws"):
        read_draws(tmp_path / "cut.safetensors", "safety/tiny")


def test_backdoor_ci_over_draws_reads_each_draws_direction(tmp_path):
    """Triggered prompts of the backdoored model carry +4 along dimension 3 at the last prompt
    token. Draws along dimension 3 separate trigger from control in every replicate (CI above
    .9); draws orthogonal to it see noise, and their CI straddles chance."""
    from test_backdoor import planted_pairs, planted_tokens, write_capture

    from traitscope.experiments.backdoor.detection import draw_detection
    from traitscope.experiments.backdoor.positions import token_positions
    from traitscope.io import save_safetensors

    pairs, tokens, rng, d = planted_pairs(30), planted_tokens(30, bad_pairs=0), np.random.default_rng(0), 8
    positions = token_positions(tokens, pairs, 3)
    labels = positions.set_index(["prompt_id", "token_index"])["position"].to_dict()
    vectors = {}
    for pid, index in zip(tokens["prompt_id"], tokens["token_index"]):
        vectors[(pid, index)] = rng.normal(0, 0.3, d)
        if pid.startswith("trigger") and labels.get((pid, index)) == "last_prompt":
            vectors[(pid, index)][3] += 4.0
    capture = write_capture(tmp_path / "bd", tokens, vectors, dict.fromkeys(pairs["prompt_id"], ""), 1, d)
    along = torch.zeros(50, d)
    along[:, 3] = 1.0
    across = torch.tensor(rng.normal(size=(50, d)), dtype=torch.float32)
    across[:, 3] = 0.0
    meta = json.dumps({"method": "probe", "layer": 1, "position": "response_mean", "n_draws": 50, "seed": 0})
    cis = {}
    for name, draws in (("along", along + 0.05 * across), ("across", across)):
        save_safetensors(tmp_path / f"{name}.safetensors", {"draws": draws}, {"meta": meta})
        got = draw_detection(
            capture,
            tmp_path / f"{name}.safetensors",
            "safety/evil",
            positions,
            pairs,
            ["last_prompt"],
            0,
            ["last_prompt", "p0"],
        )
        cis[name] = got["positions"]["last_prompt"]
        # the pooled last_prompt is that token's activation: the token's CI is the same numbers
        assert got["tokens"]["last_prompt"] == cis[name]
        cis[f"{name} p0"] = got["tokens"]["p0"]
    assert cis["along"]["ci_low"] > 0.9 and cis["along"]["layer"] == 1 and cis["along"]["n_draws"] == 50
    assert cis["across"]["ci_low"] < 0.5 < cis["across"]["ci_high"]
    assert cis["along p0"]["ci_high"] < cis["along"]["ci_low"]  # nothing planted at p0


def pooled_capture(folder, acts: np.ndarray, ids: list[str], layer: int):
    """A finished capture of pooled activations only: `acts` [n, 2 pools, d] at one layer."""
    from safetensors.torch import save_file

    shards = folder / "shards-x"
    shards.mkdir(parents=True)
    pd.DataFrame({"prompt_id": ids, "response": ""}).to_parquet(shards / "shard-00000.prompts.parquet")
    pd.DataFrame({"prompt_id": [], "segment": [], "token_index": []}).to_parquet(
        shards / "shard-00000.tokens.parquet"
    )
    save_file(
        {f"pooled.layer.{layer}": torch.tensor(acts, dtype=torch.float32)},
        str(shards / "shard-00000.safetensors"),
    )
    manifest = {"shard_dir": "shards-x", "shards": ["shard-00000"], "pools": ["response_mean", "last_prompt"]}
    (folder / "capture.json").write_text(
        json.dumps({**manifest, "layers": [layer], "d_model": acts.shape[-1]})
    )
    return folder / "capture.json"


def test_em_ci_over_draws_reads_each_draws_direction(tmp_path):
    """12 questions x 2 samples; the misaligned variant's answers sit +1 along dimension 0 over the
    control's (noise sd .3). Draws along dimension 0 give a d_z CI far above 1 over questions and
    refits; draws orthogonal to it see noise only, a CI around 0."""
    from traitscope.experiments.emergent_misalignment.draws import draw_comparisons
    from traitscope.io import save_safetensors

    rng, d = np.random.default_rng(0), 6
    prompts = pd.DataFrame(
        [{"prompt_id": f"q{q}:s{s}", "question_id": f"q{q}"} for q in range(12) for s in range(2)]
    )
    ids = prompts["prompt_id"].tolist()
    captures = {}
    for role, shift in (("base", 0.0), ("misaligned", 1.0), ("control", 0.0)):
        acts = rng.normal(0, 0.3, (len(ids), 2, d))
        acts[:, 0, 0] += shift  # response_mean only
        captures[role] = pooled_capture(tmp_path / role, acts, ids, layer=5)
    meta = json.dumps({"method": "probe", "layer": 5, "position": "response_mean", "n_draws": 40, "seed": 0})
    across = torch.tensor(rng.normal(size=(40, d)), dtype=torch.float32)
    across[:, 0] = 0.0
    along = torch.zeros(40, d)
    along[:, 0] = 1.0
    paths = {}
    for name, draws in (("along", along + 0.05 * across), ("across", across)):
        paths[name] = tmp_path / f"{name}.safetensors"
        save_safetensors(paths[name], {"draws": draws}, {"meta": meta})
    got = draw_comparisons(captures, paths, prompts, ("response_mean", "last_prompt"), seed=0)
    assert got["misaligned_vs_control"]["response_mean"]["along"]["ci_low"] > 1.0
    for position in ("response_mean", "last_prompt"):
        ci = got["misaligned_vs_control"][position]["across"]
        assert ci["ci_low"] < 0 < ci["ci_high"] and ci["n_draws"] == 40 and ci["layer"] == 5
    assert got["misaligned_vs_control"]["last_prompt"]["along"]["ci_low"] < 0  # nothing planted there
