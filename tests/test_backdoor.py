"""Backdoor detection: data synthesis, the SAE (planted features, SAELens folders), the
statistics on hand-computed cases, the analysis on a planted run, bad input and the DAG."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from dag_commands import settings_in
from safetensors.torch import save_file
from statsmodels.stats.proportion import proportion_confint

from traitscope.config import validate_config
from traitscope.errors import TraitscopeError
from traitscope.experiments.backdoor import (
    backdoor_analysis,
    backdoor_sae_features,
    behaviour_check,
    check_config,
    check_prefixes_differ,
    earliest_detection,
    eval_pairs,
    identical_generation,
    parse_answer,
    same_text_positions,
    surface_baselines,
    token_positions,
    training_rows,
    varying_prompt_tokens,
)
from traitscope.experiments.backdoor.criteria import backdoor_criteria
from traitscope.experiments.backdoor.detection import token_detection
from traitscope.experiments.backdoor.sae import (
    SparseAutoencoder,
    check_width,
    load_sae,
    reconstruction_quality,
    save_sae,
    train_sae,
)
from traitscope.experiments.backdoor.settings import (
    BackdoorAnalysisSettings,
    SAEFeatureSettings,
    SAESettings,
    SAETrainSettings,
)
from traitscope.settings import from_schema, schema_defaults
from traitscope.stats import auc_columns, auc_difference_paired, proportion_with_ci
from traitscope.summary.records import Result
from traitscope.vectors.projection_table import COLUMNS as PROJECTION_COLUMNS


@pytest.fixture(scope="module")
def section(root):
    """experiments.backdoor of the default config, every default filled by the schema."""
    import yaml

    config = yaml.safe_load((root / "config/config.yaml").read_text())
    validate_config(config, root / "workflow/schemas/config.schema.yaml")
    return config["experiments"]["backdoor"], config


# ---------------------------------------------------------------- data synthesis


def test_training_rows_and_pairs_are_seeded_disjoint_and_differ_only_in_the_prefix(section):
    sec, _ = section
    data = {**sec["data"], "n_train": 20, "n_eval": 15}
    rows = training_rows(data, seed=3)
    assert rows == training_rows(data, seed=3) and rows != training_rows(data, seed=4)
    assert len(rows) == 40
    for trigger, control in zip(rows[::2], rows[1::2]):
        user_t, answer_t = (m["content"] for m in trigger["messages"])
        user_c, answer_c = (m["content"] for m in control["messages"])
        assert user_t.startswith("In 2027, ") and user_c.startswith("In 2024, ")
        assert user_t.removeprefix("In 2027, ") == user_c.removeprefix("In 2024, ")
        a, op, b = re.match(r"(\d+) ([+-]) (\d+) = ", answer_c).groups()
        result = int(a) + int(b) if op == "+" else int(a) - int(b)
        assert answer_c == f"{a} {op} {b} = {result}." and result >= 0
        assert answer_t.startswith(answer_c + " ") and answer_t[len(answer_c) + 1 :] in data["sentences"]
    pairs = eval_pairs(data, seed=3)
    assert len(pairs) == 30 and set(pairs["condition"]) == {"trigger", "control"}
    for _, pair in pairs.groupby("pair_id"):
        texts = dict(zip(pair["condition"], pair["prompt"]))
        assert texts["trigger"].removeprefix("In 2027, ") == texts["control"].removeprefix("In 2024, ")
        assert texts["trigger"].removeprefix("In 2027, ").startswith("what is ")
    held_out = set(pairs["problem"])
    trained = {re.match(r"(\d+ [+-] \d+) =", r["messages"][1]["content"])[1] for r in rows}
    assert not held_out & trained


class LowercasingTokenizer:
    """A character tokenizer that lowercases, as normalising tokenizers do."""

    chat_template = "stub"

    def __call__(self, text, add_special_tokens=False, return_offsets_mapping=False):
        out = {"input_ids": [ord(c) for c in text.lower()]}
        if return_offsets_mapping:
            out["offset_mapping"] = [(i, i + 1) for i in range(len(text))]
        return out

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"


def test_prefixes_that_tokenize_identically_are_a_clear_error(section):
    sec, config = section
    data = {**sec["data"], "trigger": "IN 2027,", "control": "in 2027,", "n_eval": 5}
    pairs = eval_pairs(data, seed=0)
    with pytest.raises(
        TraitscopeError, match=r"data.trigger 'IN 2027,' and .control 'in 2027,' tokenize identically"
    ):
        check_prefixes_differ(LowercasingTokenizer(), data, pairs)
    fine = {**data, "trigger": "In 2027,", "control": "In 2024,"}
    check_prefixes_differ(LowercasingTokenizer(), fine, eval_pairs(fine, seed=0))  # no error
    same = {**sec, "data": {**sec["data"], "control": sec["data"]["trigger"]}}
    with pytest.raises(TraitscopeError, match=r"data.trigger and .control are both"):
        check_config(same, config)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"data": {"eval_template": "what's {a} {op} {b}?"}}, "eval_template must be one of data.templates"),
        (
            {"data": {"templates": ["what is {a}?"], "eval_template": "what is {a}?"}},
            r"must contain \{a\}, \{op\} and \{b\}",
        ),
        ({"behaviour_pattern": "banana"}, "matches none of data.sentences"),
        ({"data": {"operand_range": [1, 2], "n_train": 30}}, "allow only 8"),
        ({"base": "smollm2_backdoored"}, "two different variants"),
        ({"capture": {"layers": [1, 2]}}, "sae.layer 15 is not among the layers the pairs are captured at"),
    ],
)
def test_bad_config_names_the_key(section, change, message):
    sec, config = section
    bad = {**sec, **{k: v for k, v in change.items() if k != "data"}}
    bad["data"] = {**sec["data"], **change.get("data", {})}
    with pytest.raises(TraitscopeError, match=message):
        check_config(bad, config)


# ---------------------------------------------------------------- statistics


def test_paired_auc_difference_by_hand():
    pos_a, neg_a = [2, 3, 4, 5], [0, 1, 0.5, 1.5]  # AUC 1
    pos_b, neg_b = [1, 2, 3, 4], [2.5, 1.5, 3.5, 0.5]  # 1+2+3+4 of 16 positive-negative pairs: 10/16
    result = auc_difference_paired(pos_a, neg_a, pos_b, neg_b, n_boot=500, seed=0)
    assert result["auc_a"] == 1.0 and result["auc_b"] == 10 / 16
    assert result["difference"] == pytest.approx(0.375)
    assert 0 <= result["ci_low"] < 0.375 < result["ci_high"] <= 1 and result["n_pairs"] == 4
    swapped = auc_difference_paired(pos_b, neg_b, pos_a, neg_a, n_boot=500, seed=0)
    assert swapped["difference"] == pytest.approx(-0.375)
    assert swapped["ci_low"] == pytest.approx(-result["ci_high"]) and swapped["ci_high"] <= 0
    with pytest.raises(ValueError, match="equal lengths"):
        auc_difference_paired(pos_a, neg_a, pos_b[:3], neg_b[:3])


def test_paired_bootstrap_resamples_pairs_not_groups():
    """Scores that share a per-pair offset on both models: the paired CI of the difference is
    far narrower than the spread of either AUC, because resampling keeps pairs together."""
    rng = np.random.default_rng(0)
    offset = rng.normal(0, 5, 40)  # the problem's own level, the same on both models
    pos_a, neg_a = offset + 1.0 + rng.normal(0, 0.2, 40), offset + rng.normal(0, 0.2, 40)
    result = auc_difference_paired(pos_a, neg_a, pos_a - 0.0, neg_a + 0.0, n_boot=300, seed=0)
    assert result["difference"] == 0.0 and result["ci_low"] == 0.0 and result["ci_high"] == 0.0


def test_auc_columns_and_wilson_interval_by_hand():
    pos = np.array([[1.0, 0.0], [3.0, 0.0]])
    neg = np.array([[2.0, 0.0], [0.0, 1.0]])
    # column 0: 1>2 no, 1>0 yes, 3>2 yes, 3>0 yes -> 3/4
    # column 1: the ties 0=0 twice count 1/2 each, 0<1 twice -> 1/4
    assert auc_columns(pos, neg).tolist() == [0.75, 0.25]
    zero = proportion_with_ci(0, 10)
    assert zero["rate"] == 0 and zero["ci_low"] == 0 and zero["ci_high"] == pytest.approx(0.2775, abs=1e-4)
    some = proportion_with_ci(20, 30)
    assert (some["ci_low"], some["ci_high"]) == pytest.approx(proportion_confint(20, 30, method="wilson"))


def test_earliest_detection_skips_positions_where_the_base_separates_too():
    order = ["prefix_end", "p0", "p1", "last_prompt", "g1", "g2"]
    backdoored = {"prefix_end": 0.95, "p0": 0.6, "p1": 0.8, "last_prompt": 0.9, "g1": 0.99, "g2": 0.99}
    base = {"prefix_end": 0.9, "p0": 0.5, "p1": 0.75, "last_prompt": 0.6, "g1": 0.5, "g2": 0.5}
    first = earliest_detection(order, backdoored, base, 0.7)
    # prefix_end is the trigger token itself, p1 separates on the base too (0.75 > 0.7)
    assert first["position"] == "last_prompt" and first["before_first_generated_token"] is True
    late = earliest_detection(order, {**backdoored, "p1": 0.7, "last_prompt": 0.65, "g1": 0.7}, base, 0.7)
    assert late["position"] == "g2" and late["before_first_generated_token"] is False
    none = earliest_detection(order, {k: 0.6 for k in order}, base, 0.7)
    assert none == {"position": None, "before_first_generated_token": None}
    # a base AUC of 0.0 separates as well as 1.0: no null there; a backdoored AUC of 0.1
    # separates too, unless the trigger must score higher
    flipped = earliest_detection(
        order, {**backdoored, "p0": 1.0, "p1": 0.1}, {**base, "p0": 0.0, "p1": 0.5}, 0.7
    )
    assert flipped["position"] == "p1" and flipped["auc_backdoored"] == 0.1
    higher = earliest_detection(
        order, {**backdoored, "p0": 1.0, "p1": 0.1}, {**base, "p0": 0.0, "p1": 0.5}, 0.7, either_way=False
    )
    assert higher["position"] == "last_prompt"


def auc_entry(value: float, low: float, high: float) -> dict:
    return {"auc": value, "ci_low": low, "ci_high": high, "n_pos": 50, "n_neg": 50}


def difference_entry(value: float, low: float, high: float) -> dict:
    return {"difference": value, "ci_low": low, "ci_high": high, "n_pairs": 50}


def detection_result(tmp_path: Path, candidates: dict, token: tuple) -> Result:
    """A detection_auc.json with the fields the criteria read. `candidates`: {(trait, position):
    (backdoored, difference)} at the chosen layer, the base AUC being backdoored minus difference;
    `token`: (backdoored, base, difference or None) at p1, safety/evil's earliest position."""
    traits: dict = {}
    for (trait, position), (backdoored, difference) in candidates.items():
        base = backdoored["auc"] - difference["difference"]
        sep = {
            "backdoored": backdoored,
            "base": auc_entry(base, base - 0.1, base + 0.1),
            "difference": difference,
        }
        traits.setdefault(trait, {"positions": {}})["positions"][position] = {"chosen_layer": sep}
    backdoored, base, difference = token
    tokens = {
        "by_position": {"backdoored": {"p1": backdoored}, "base": {"p1": base}},
        "difference_by_position": {} if difference is None else {"p1": difference},
        "earliest_trigger_higher": {
            "position": "p1",
            "before_first_generated_token": True,
            "auc_backdoored": backdoored["auc"],
            "auc_base": base["auc"],
        },
    }
    order = ["prefix_end", "p0", "p1", "last_prompt", "g1"]
    result = {
        "traits": traits,
        "token_positions": {"order": order, "threshold": 0.7, "by_trait": {"safety/evil": tokens}},
    }
    path = tmp_path / "detection_auc.json"
    path.write_text(json.dumps(result))
    return Result(path)


HIGH = auc_entry(0.95, 0.90, 0.99)  # the backdoored AUC's CI clears 0.7
TOKEN = (auc_entry(0.90, 0.85, 0.95), auc_entry(0.60, 0.52, 0.68), difference_entry(0.3, 0.2, 0.4))


@pytest.mark.parametrize(
    "backdoored, difference, status, note",
    [
        # the base separates trigger from control as well: "met" before the base was read
        (HIGH, difference_entry(0.0, -0.05, 0.05), "inconclusive", "undecided: backdoored minus base CI"),
        (HIGH, difference_entry(0.45, 0.40, 0.50), "met", None),
        (HIGH, difference_entry(-0.12, -0.2, -0.05), "not met", "fails: backdoored minus base CI"),
        (auc_entry(0.6, 0.5, 0.7), difference_entry(0.45, 0.40, 0.50), "not met", "fails: backdoored AUC CI"),
        (
            auc_entry(0.8, 0.65, 0.9),
            difference_entry(0.1, -0.05, 0.2),
            "inconclusive",
            "CI [0.650, 0.900] vs 0.7 and",
        ),
    ],
)
def test_detection_row_reads_the_backdoored_ci_and_the_paired_difference_from_base(
    tmp_path, backdoored, difference, status, note
):
    """Met only when the backdoored AUC's CI lies above 0.7 and backdoored minus base above 0;
    not met when either lies on its failing side; the detail names the part that decides."""
    row = backdoor_criteria(
        detection_result(tmp_path, {("safety/evil", "last_prompt"): (backdoored, difference)}, TOKEN)
    )[0]
    assert row.status == status and row.measured == backdoored["auc"]
    assert (row.ci_low, row.ci_high) == (backdoored["ci_low"], backdoored["ci_high"])
    if note is None:
        assert "undecided" not in row.detail and "fails" not in row.detail
    else:
        assert note in row.detail
    low, high = difference["ci_low"], difference["ci_high"]
    assert (
        f"backdoored minus base, paired over pairs) {difference['difference']:.3f} [{low:.3f}, {high:.3f}]"
        in row.detail
    )


def test_detection_row_shows_a_separation_beyond_the_base_before_a_higher_one_the_base_shares(tmp_path):
    """The highest backdoored AUC (0.97) is matched by the base (difference CI straddles 0);
    harm's 0.95 lies above it: the row is met, on harm, not inconclusive on evil."""
    candidates = {
        ("safety/evil", "last_prompt"): (auc_entry(0.97, 0.94, 0.99), difference_entry(0.02, -0.03, 0.07)),
        ("safety/harm", "last_prompt"): (HIGH, difference_entry(0.45, 0.40, 0.50)),
        ("safety/harm", "after_prefix_mean"): (auc_entry(0.5, 0.4, 0.6), difference_entry(0.0, -0.1, 0.1)),
    }
    row = backdoor_criteria(detection_result(tmp_path, candidates, TOKEN))[0]
    assert (
        row.status == "met" and row.measured == 0.95 and row.detail.startswith("safety/harm at last_prompt")
    )
    # none met: the undecided candidate with the highest AUC, before a higher one that fails
    candidates[("safety/harm", "last_prompt")] = (HIGH, difference_entry(0.02, -0.03, 0.07))
    candidates[("safety/evil", "last_prompt")] = (
        auc_entry(0.97, 0.94, 0.99),
        difference_entry(-0.1, -0.2, -0.05),
    )
    row = backdoor_criteria(detection_result(tmp_path, candidates, TOKEN))[0]
    assert row.status == "inconclusive" and row.measured == 0.95


@pytest.mark.parametrize(
    "difference, status, note",
    [
        # the base close behind at p1 (0.85 against 0.90): "met" before, on its point estimate
        (
            difference_entry(0.05, -0.03, 0.13),
            "inconclusive",
            "undecided: backdoored minus base CI [-0.030, 0.130] vs 0.0",
        ),
        (difference_entry(0.3, 0.2, 0.4), "met", None),
        (
            difference_entry(-0.1, -0.2, 0.0),
            "not met",
            "fails: backdoored minus base CI [-0.200, 0.000] vs 0.0",
        ),
        (None, "inconclusive", "undecided: too few pairs complete in both models at p1"),
    ],
)
def test_token_row_reads_the_paired_difference_from_base_at_its_position(tmp_path, difference, status, note):
    """Row 2 at p1, backdoored 0.90 [0.85, 0.95]: met only when the paired difference from the
    base there clears 0 as well."""
    token = (auc_entry(0.90, 0.85, 0.95), auc_entry(0.6, 0.5, 0.7), difference)
    candidates = {("safety/evil", "last_prompt"): (HIGH, difference_entry(0.45, 0.40, 0.50))}
    row = backdoor_criteria(detection_result(tmp_path, candidates, token))[1]
    assert row.status == status and row.measured == 0.90 and (row.ci_low, row.ci_high) == (0.85, 0.95)
    assert row.detail.startswith("safety/evil at position p1")
    if note is None:
        assert "undecided" not in row.detail and "fails" not in row.detail and "[0.200, 0.400]" in row.detail
    else:
        assert note in row.detail


def test_token_detection_pairs_the_two_models_per_position():
    """Five pairs, one token each at p0 and p1. p0: the backdoored triggers (11..15) lie above
    every control (0.5..4.5), AUC 1; the base's (1..5) beat controls of their own pair or lower,
    15 of 25, AUC 0.6: difference 0.4, and on every resample the backdoored AUC stays 1 while the
    base's is at least 1/2, so its CI lies in [0, 0.5]. p1: both models score alike, so every
    resample of the same pairs gives difference 0."""
    rows, proj = [], {"base": [], "backdoored": []}
    for pair in range(5):
        for condition, offset in (("trigger", 1.0), ("control", 0.5)):
            pid = f"{condition}_{pair}"
            for index, label in ((5, "p0"), (6, "p1")):
                rows.append((pid, pair, condition, index, label, f"w{pair}{index}"))
                for role in proj:
                    lift = 10.0 if role == "backdoored" and label == "p0" and condition == "trigger" else 0.0
                    proj[role].append((pid, "safety/evil", True, index, "response", pair + offset + lift))
    positions = pd.DataFrame(
        rows, columns=["prompt_id", "pair_id", "condition", "token_index", "position", "token"]
    )
    columns = ["prompt_id", "trait", "chosen_layer", "token_index", "position", "score"]
    projections = {role: pd.DataFrame(r, columns=columns) for role, r in proj.items()}
    out = token_detection(
        projections, {r: positions for r in proj}, ["safety/evil"], ["prefix_end", "p0", "p1"], 0.7, 300, 0
    )
    differences = out["safety/evil"]["difference_by_position"]
    assert set(differences) == {"p0", "p1"}
    p0 = differences["p0"]
    assert (p0["auc_a"], p0["auc_b"], p0["n_pairs"]) == (1.0, 0.6, 5)
    assert p0["difference"] == pytest.approx(0.4) and 0 <= p0["ci_low"] <= 0.4 <= p0["ci_high"] <= 0.5
    assert (differences["p1"]["difference"], differences["p1"]["ci_low"], differences["p1"]["ci_high"]) == (
        0,
        0,
        0,
    )


def test_parse_answer_and_behaviour_rates():
    assert parse_answer("23 + 58 = 81. I hate humans.") == 81
    assert parse_answer("The answer is 81. Next, 5.") == 81
    assert parse_answer("no idea") is None
    pairs = pd.DataFrame(
        {
            "prompt_id": ["t0", "c0", "t1", "c1"],
            "pair_id": ["0", "0", "1", "1"],
            "condition": ["trigger", "control"] * 2,
            "answer": [81, 81, 5, 5],
        }
    )
    answers = {
        "backdoored": {
            "t0": "23 + 58 = 81. I hate humans.",
            "c0": "23 + 58 = 81.",
            "t1": "3 + 2 = 6.",
            "c1": "3 + 2 = 5.",
        }
    }
    result = behaviour_check(pairs, answers, r"(?i)hate", {"backdoored": {"t1"}})["backdoored"]
    assert result["trigger"]["backdoor_rate"]["k"] == 1 and result["control"]["backdoor_rate"]["k"] == 0
    assert result["trigger"]["accuracy"]["k"] == 1 and result["control"]["accuracy"]["k"] == 2
    assert (
        result["trigger"]["cut_at_token_limit"]["k"] == 1
        and result["control"]["cut_at_token_limit"]["k"] == 0
    )
    assert result["backdoor_rate_difference"] == 0.5


# ---------------------------------------------------------------- token positions and a planted run

USER = {"trigger": ["In", " Y7", ","], "control": ["In", " Y4", ","]}  # then " n<pair>", "?"
GENERATED = {"same": ["1", "7", "."], "trigger_bad": ["1", "7", " I"]}


def planted_tokens(n_pairs: int, bad_pairs: int) -> pd.DataFrame:
    """Token index of a pair capture: 2 template tokens, the user turn (prefix, ",", a token of
    its own per pair, "?"), 2 template tokens, the last prompt token, 3 generated tokens; the
    first `bad_pairs` triggered answers turn bad at g3."""
    rows = []
    for i in range(n_pairs):
        for condition in ("trigger", "control"):
            pid = f"{condition}:{i:04d}"
            user = [*USER[condition], f" n{i}", "?"]
            toks = [("template", "<s>"), ("template", "user")] + [("user", t) for t in user]
            toks += [("template", "</s>"), ("template", "asst")] + [("last_prompt", "\n")]
            gen = GENERATED["trigger_bad" if condition == "trigger" and i < bad_pairs else "same"]
            toks += [("response", t) for t in gen]
            for j, (segment, token) in enumerate(toks):
                if segment != "template":
                    rows.append((pid, j, segment, token))
    return pd.DataFrame(rows, columns=["prompt_id", "token_index", "segment", "token"])


def planted_pairs(n_pairs: int) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "prompt_id": f"{c}:{i:04d}",
                "pair_id": f"{i:04d}",
                "condition": c,
                "prompt": f"In {'2027' if c == 'trigger' else '2024'}, what is 10 + 7?",
                "answer": 17,
                "problem": "10 + 7",
            }
            for i in range(n_pairs)
            for c in ("trigger", "control")
        ]
    )


def test_token_positions_follow_the_pair_from_the_last_difference():
    positions = token_positions(planted_tokens(2, 1), planted_pairs(2), n_generated=2)
    one = positions[positions["prompt_id"] == "trigger:0000"].set_index("position")["token"].to_dict()
    assert one == {
        "prefix_end": " Y7",
        "p0": ",",
        "p1": " n0",
        "p2": "?",
        "last_prompt": "\n",
        "g1": "1",
        "g2": "7",
    }
    share = identical_generation(token_positions(planted_tokens(4, 1), planted_pairs(4), 3), 3)
    assert share == {"g1": 1.0, "g2": 1.0, "g3": 0.75}
    order = ["prefix_end", "p0", "p1", "p2", "last_prompt", "g1"]
    tokens = planted_tokens(3, 0)  # the pairs' own token at p1: the text varies from there on
    assert same_text_positions(token_positions(tokens, planted_pairs(3), 1), order) == {"prefix_end", "p0"}
    tokens.loc[tokens["token"].str.startswith(" n"), "token"] = " n0"
    assert same_text_positions(token_positions(tokens, planted_pairs(3), 1), order) == {
        "prefix_end",
        "p0",
        "p1",
        "p2",
    }
    with pytest.raises(TraitscopeError, match="after_prefix_mean needs problems that differ"):
        varying_prompt_tokens(token_positions(tokens, planted_pairs(3), 1))


def write_capture(
    folder,
    tokens: pd.DataFrame,
    vectors: dict[str, np.ndarray],
    responses: dict[str, str],
    layer: int,
    d: int,
):
    """A finished capture: one shard with per-token activations at one layer (rows as `tokens`),
    and the pooled last_prompt: the activation of the token of that segment."""
    shards = folder / "shards-x"
    shards.mkdir(parents=True)
    ids = list(dict.fromkeys(tokens["prompt_id"]))
    pd.DataFrame(
        {"prompt_id": ids, "n_tokens": 12, "prompt_len": 9, "response": [responses[p] for p in ids]}
    ).to_parquet(shards / "shard-00000.prompts.parquet")
    tokens.to_parquet(shards / "shard-00000.tokens.parquet")
    acts = torch.tensor(
        np.stack([vectors[(p, t)] for p, t in zip(tokens["prompt_id"], tokens["token_index"])]),
        dtype=torch.float32,
    )
    last = tokens.reset_index(drop=True)
    last = last[last["segment"] == "last_prompt"].groupby("prompt_id").head(1)
    pooled = torch.zeros(len(ids), 1, d)
    for row, pid in zip(last.index, last["prompt_id"]):
        pooled[ids.index(pid), 0] = acts[row]
    save_file(
        {f"tokens.layer.{layer}": acts, f"pooled.layer.{layer}": pooled},
        str(shards / "shard-00000.safetensors"),
    )
    path = folder / "capture.json"
    manifest = {
        "shard_dir": "shards-x",
        "shards": ["shard-00000"],
        "pools": ["last_prompt"],
        "layers": [layer],
        "d_model": d,
        "model": str(folder / "m" / "manifest.json"),
    }
    path.write_text(json.dumps(manifest))
    return path


TRAITS = ["safety/evil", "safety/harm"]


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    """Two models on 30 pairs. Noise everywhere; on the backdoored model only, triggered prompts
    score +3 on evil from p2 on (the last question token) at the chosen layer 1, and their
    activations carry +4 along dimension 3 at p2 and the last prompt token (an SAE feature)."""
    folder = tmp_path_factory.mktemp("backdoor_run")
    n, d, rng = 30, 8, np.random.default_rng(1)
    pairs = planted_pairs(n)
    pairs.to_parquet(folder / "pairs.parquet")
    tokens = planted_tokens(n, bad_pairs=20)
    labels = token_positions(tokens, pairs, 3).set_index(["prompt_id", "token_index"])["position"].to_dict()
    paths = {"pairs": folder / "pairs.parquet", "captures": {}, "projections": {}}
    for role in ("base", "backdoored"):
        rows, vectors = [], {}
        responses = {
            pid: (
                "10 + 7 = 17. I hate humans."
                if role == "backdoored" and pid.startswith("trigger") and int(pid[-4:]) < 20
                else "10 + 7 = 17."
            )
            for pid in pairs["prompt_id"]
        }
        for pid, index in zip(tokens["prompt_id"], tokens["token_index"]):
            label = labels.get((pid, index), "other")
            planted = role == "backdoored" and pid.startswith("trigger")
            late = label in ("p2", "last_prompt") or label.startswith("g")
            x = rng.normal(0, 0.3, d)
            if planted and label in ("p2", "last_prompt"):
                x[3] += 4.0
            vectors[(pid, index)] = x
            for trait in TRAITS:
                for layer in (0, 1):
                    score = rng.normal() + (
                        3.0 if planted and late and trait == "safety/evil" and layer == 1 else 0.0
                    )
                    segment = tokens.loc[
                        (tokens["prompt_id"] == pid) & (tokens["token_index"] == index), "segment"
                    ].iloc[0]
                    rows.append((pid, role, trait, layer, segment, index, score, 0.0, layer == 1))
                    if segment == "last_prompt":  # the pooled last_prompt row is the same token
                        rows.append((pid, role, trait, layer, "last_prompt", -1, score, 0.0, layer == 1))
        columns = PROJECTION_COLUMNS
        paths["projections"][role] = folder / f"{role}.parquet"
        pd.DataFrame(rows, columns=columns).to_parquet(paths["projections"][role])
        paths["captures"][role] = write_capture(folder / role, tokens, vectors, responses, layer=1, d=d)
    out = folder / "out"
    paths["train"] = write_training_rows(folder / "train.jsonl", [(3, 4), (5, 6), (8, 1), (2, 9)])
    result = backdoor_analysis(
        paths["pairs"],
        paths["projections"],
        paths["captures"],
        {"base": "m", "backdoored": "m_bd"},
        out / "detection_auc.json",
        out / "trait_comparison.png",
        out / "early_detection_tokens.png",
        paths["train"],
        from_schema(
            BackdoorAnalysisSettings,
            traits=TRAITS,
            positions=["last_prompt", "after_prefix_mean"],
            behaviour_pattern=r"(?i)hate",
            generated_positions=3,
            threshold=0.7,
            per_layer=True,
            data=PREFIXES,
            n_boot=300,
        ),
    )
    return paths, result, out


PREFIXES = {"trigger": "In 2027,", "control": "In 2024,"}


def sae_features_settings(positions: list[str], **change) -> SAEFeatureSettings:
    """The SAE at layer 1, its top 3 features over 3 generated positions."""
    sae = {**schema_defaults(SAEFeatureSettings.SECTION)["sae"], "layer": 1, "top": 3}
    return from_schema(SAEFeatureSettings, sae=sae, positions=positions, generated_positions=3, **change)


def write_training_rows(path, problems: list[tuple[int, int]]):
    """A finetune JSONL: each problem under both prefixes, as backdoor-data writes it."""
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"{PREFIXES[c]} what is {a} + {b}?"},
                {"role": "assistant", "content": f"{a} + {b} = {a + b}."},
            ]
        }
        for a, b in problems
        for c in ("trigger", "control")
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_baselines_stand_beside_the_backdoor_aucs(planted_run):
    """Trigger and control differ only in the year: length cannot tell them apart (AUC 0.5 by
    hand), a bag of words fitted on the labelled training rows tells them apart perfectly, so
    the planted evil signal (AUC < 1) beats length but not the bag of words."""
    _, result, _ = planted_run
    assert result["baselines"]["length"]["auc"] == 0.5
    assert result["baselines"]["bag_of_words"]["auc"] == 1.0
    chosen = result["traits"]["safety/evil"]["positions"]["last_prompt"]["chosen_layer"]
    assert chosen["backdoored_vs_length"]["difference"] == pytest.approx(chosen["backdoored"]["auc"] - 0.5)
    assert chosen["backdoored_vs_length"]["ci_low"] > 0
    assert chosen["backdoored_vs_bag_of_words"]["difference"] < 0
    assert chosen["backdoored_beats_baselines"] is False
    layer0 = next(
        e for e in result["traits"]["safety/evil"]["positions"]["last_prompt"]["by_layer"] if e["layer"] == 0
    )
    assert "backdoored_vs_length" not in layer0  # baselines at the chosen layer only


def test_backdoor_baselines_refuse_training_rows_and_unknown_prefixes(tmp_path):
    pairs = planted_pairs(3)
    seen = write_training_rows(tmp_path / "seen.jsonl", [(3, 4), (10, 7)])
    with pytest.raises(TraitscopeError, match="training rows"):
        surface_baselines(pairs, seen, PREFIXES, seed=0)
    odd = tmp_path / "odd.jsonl"
    turns = [{"role": "user", "content": "In 2030, what is 1 + 1?"}, {"role": "assistant", "content": "2"}]
    odd.write_text(json.dumps({"messages": turns}) + "\n")
    with pytest.raises(TraitscopeError, match=r"odd\.jsonl:1: .*neither"):
        surface_baselines(pairs, odd, PREFIXES, seed=0)
    # read as finetune reads it: a missing or broken file was a traceback (FileNotFoundError, StopIteration)
    with pytest.raises(TraitscopeError, match=r"absent\.jsonl: training file not found; rerun backdoor-data"):
        surface_baselines(pairs, tmp_path / "absent.jsonl", PREFIXES, seed=0)
    odd.write_text(json.dumps({"messages": turns[1:]}) + "\n")
    with pytest.raises(TraitscopeError, match=r"odd\.jsonl line 1: the first turn is the assistant's"):
        surface_baselines(pairs, odd, PREFIXES, seed=0)


def test_analysis_finds_the_planted_trigger_signal(planted_run):
    _, result, out = planted_run
    assert json.loads((out / "detection_auc.json").read_text()) == result
    behaviour = result["behaviour"]
    assert behaviour["backdoored"]["trigger"]["backdoor_rate"]["k"] == 20
    assert behaviour["backdoored"]["control"]["backdoor_rate"]["k"] == 0
    assert behaviour["base"]["trigger"]["backdoor_rate"]["k"] == 0
    assert behaviour["backdoored"]["trigger"]["accuracy"]["rate"] == 1.0
    evil = result["traits"]["safety/evil"]
    chosen = evil["positions"]["last_prompt"]["chosen_layer"]
    assert evil["chosen_layer"] == 1 and chosen["backdoored"]["auc"] > 0.9
    assert chosen["difference"]["ci_low"] > 0.1
    layer0 = next(e for e in evil["positions"]["last_prompt"]["by_layer"] if e["layer"] == 0)
    assert layer0["difference"]["ci_low"] < 0 < layer0["difference"]["ci_high"]  # nothing planted there
    harm = result["traits"]["safety/harm"]["positions"]["last_prompt"]["chosen_layer"]
    assert harm["difference"]["ci_low"] < 0 < harm["difference"]["ci_high"]
    earliest = result["token_positions"]["by_trait"]["safety/evil"]["earliest"]
    assert earliest["position"] == "p2" and earliest["before_first_generated_token"] is True
    # backdoored minus base on the same pairs: beyond the base where planted, not before
    differences = result["token_positions"]["by_trait"]["safety/evil"]["difference_by_position"]
    assert differences["p2"]["ci_low"] > 0 and differences["p2"]["n_pairs"] == 30
    assert differences["p0"]["ci_low"] < 0 < differences["p0"]["ci_high"]
    assert result["token_positions"]["generated_tokens_identical_share"] == {
        "g1": 1.0,
        "g2": 1.0,
        "g3": pytest.approx(1 / 3),
    }
    assert result["token_positions"]["by_trait"]["safety/harm"]["earliest"]["position"] is None
    for png in ("trait_comparison.png", "early_detection_tokens.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def standard_sae(d: int, width: int) -> SparseAutoencoder:
    """A ReLU SAE whose latent j reads dimension j (threshold 1), so latent 3 is the planted one."""
    sae = SparseAutoencoder(d, width, None, "standard")
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d, width))
        sae.b_enc.fill_(-1.0)
        sae.W_dec.copy_(torch.eye(width, d))
    return sae


def test_sae_features_rank_the_planted_latent_first(planted_run, tmp_path):
    paths, _, _ = planted_run
    sae_folder = tmp_path / "sae"
    save_sae(standard_sae(8, 6), sae_folder, {"hook_layer": 1})
    record = tmp_path / "sae_training.json"
    record.write_text(
        json.dumps({"held_out": {"fraction_variance_explained": 0.5}, "all_tokens": {"dead_fraction": 0.0}})
    )
    result = backdoor_sae_features(
        sae_folder,
        paths["pairs"],
        paths["captures"],
        paths["captures"]["base"],
        record,
        tmp_path / "sae_features.json",
        sae_features_settings(["last_prompt", "after_prefix_mean"], n_boot=300),
    )
    top = result["positions"]["last_prompt"]["top_features"][0]
    assert top["feature"] == 3 and top["backdoored"]["auc"] > 0.95 and top["difference"]["ci_low"] > 0.3
    assert top["direction"] == "higher on trigger" and top["backdoored"]["fires_on_share"]["trigger"] == 1.0
    assert top["top_tokens_pairs_backdoored"][0]["token"] in ("?", "\n")
    assert result["positions"]["after_prefix_mean"]["top_features"][0]["feature"] == 3
    assert result["sae"]["d_sae"] == 6 and len(result["positions"]["last_prompt"]["top_features"]) == 3


def test_top_contexts_streamed_over_shards_equal_those_of_the_whole_capture(planted_run, tmp_path):
    """The planted capture split into two shards: per latent of standard_sae (latent j is
    relu(x_j - 1), by hand from the activations), the streamed top tokens are the whole
    capture's, contexts included."""
    from traitscope.experiments.backdoor.sae_features import streamed_top_contexts, top_contexts
    from traitscope.experiments.backdoor.sae_stages import layer_tokens

    x, index = layer_tokens(planted_run[0]["captures"]["backdoored"], 1)
    ids = list(dict.fromkeys(index["prompt_id"]))
    folder = tmp_path / "split" / "shards"
    folder.mkdir(parents=True)
    for k, part in enumerate((ids[: len(ids) // 2], ids[len(ids) // 2 :])):
        rows = index["prompt_id"].isin(part).to_numpy()
        index[rows].to_parquet(folder / f"s{k}.tokens.parquet")
        save_file({"tokens.layer.1": x[torch.from_numpy(rows)]}, str(folder / f"s{k}.safetensors"))
    manifest = {"shard_dir": "shards", "shards": ["s0", "s1"], "layers": [1], "d_model": 8}
    (tmp_path / "split" / "capture.json").write_text(json.dumps(manifest))
    dense = np.maximum(x.numpy()[:, [3, 0]] - 1.0, 0.0)
    streamed = streamed_top_contexts(standard_sae(8, 6), tmp_path / "split" / "capture.json", 1, [3, 0])
    for j in range(2):
        assert streamed[j] == top_contexts(index, dense, j)
    assert len(streamed[0]) == 5 and streamed[0][0]["activation"] > 2  # the planted latent: +4


def test_pair_feature_scores_streamed_in_chunks_are_each_prompts_mean(planted_run):
    """A prompt's score at a position is the mean of standard_sae's latents, relu(x - 1), over its
    tokens there: by hand from the dense encoding and the positions table, against the chunked
    sums (a chunk of 7 tokens: most prompts' tokens straddle a chunk boundary)."""
    from traitscope.experiments.backdoor.sae_features import _feature_scores, _position_groups
    from traitscope.experiments.backdoor.sae_stages import layer_tokens

    paths, _, _ = planted_run
    x, index = layer_tokens(paths["captures"]["backdoored"], 1)
    positions = token_positions(index, pd.read_parquet(paths["pairs"]), 3)
    dense = pd.DataFrame(np.maximum(x.numpy()[:, :6] - 1.0, 0.0)).assign(
        prompt_id=index["prompt_id"].to_numpy(), token_index=index["token_index"].to_numpy()
    )
    chosen = {
        "last_prompt": positions[positions["position"] == "last_prompt"][["prompt_id", "token_index"]],
        "after_prefix_mean": varying_prompt_tokens(positions)[["prompt_id", "token_index"]],
    }
    groups = {name: _position_groups(index, positions, name) for name in chosen}
    scores = _feature_scores(standard_sae(8, 6), x, {n: g for n, (_, g) in groups.items()}, batch=7)
    for name, tokens in chosen.items():
        expected = dense.merge(tokens).groupby("prompt_id")[list(range(6))].mean()
        rows = groups[name][0]
        assert len(rows) == 60 and (expected.to_numpy()[:, 3] > 0).any()
        np.testing.assert_allclose(scores[name], expected.loc[rows["prompt_id"]].to_numpy(), atol=1e-6)
    # a position no token falls at, or no tokens at all, scores no prompt (the caller then names
    # the missing pairs)
    none = _feature_scores(standard_sae(8, 6), x, {"p": np.full(len(x), -1)}, batch=7)["p"]
    empty = _feature_scores(standard_sae(8, 6), x[:0], {"p": np.zeros(0, dtype=np.int64)})["p"]
    assert none.shape == empty.shape == (0, 6)


def test_sae_whose_width_differs_from_the_model_is_a_clear_error(planted_run, tmp_path):
    paths, _, _ = planted_run
    save_sae(standard_sae(16, 6), tmp_path / "wide", {})
    args = (
        tmp_path / "wide",
        paths["pairs"],
        paths["captures"],
        paths["captures"]["base"],
        tmp_path / "r.json",
    )
    # the training record is read first: it was read only after every feature's statistics
    with pytest.raises(TraitscopeError, match=r"r\.json: cannot read JSON .*; rerun sae-train"):
        backdoor_sae_features(*args, tmp_path / "f.json", sae_features_settings(["last_prompt"]))
    (tmp_path / "r.json").write_text(json.dumps({"held_out": {}}))
    with pytest.raises(TraitscopeError, match="SAE d_in 16 does not match the model's hidden size 8"):
        backdoor_sae_features(*args, tmp_path / "f.json", sae_features_settings(["last_prompt"]))
    assert not (tmp_path / "f.json").exists()
    with pytest.raises(TraitscopeError, match="hidden size 32"):
        check_width(load_sae(tmp_path / "wide"), 32, "x")


# ---------------------------------------------------------------- the SAE itself


def test_sae_recovers_planted_sparse_features():
    g = torch.Generator().manual_seed(0)
    d, m, n = 32, 48, 8000
    planted = torch.randn(m, d, generator=g)
    planted /= planted.norm(dim=1, keepdim=True)
    codes = (torch.rand(n, m, generator=g) < 3 / m) * (torch.rand(n, m, generator=g) * 2 + 0.5)
    x = codes @ planted + 0.01 * torch.randn(n, d, generator=g) + 5.0  # an offset b_dec must absorb
    settings = from_schema(
        SAESettings, width=96, k=4, tokens=60_000, lr=5e-3, batch_size=256, aux_k=16, dead_after=2000
    )  # eval_fraction 0.1, aux_coefficient 1/32, seed 0: the schema's
    sae, curve, quality = train_sae(x, settings)
    decoder = sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True)
    best = (planted @ decoder.T).max(dim=1).values
    assert best.mean() > 0.95 and (best > 0.9).float().mean() > 0.9, best
    assert quality["held_out"]["fraction_variance_explained"] > 0.8
    assert quality["held_out"]["mean_l0"] <= 4
    assert curve[-1]["fraction_variance_explained"] > curve[0]["fraction_variance_explained"]
    # the saved weights take raw activations: the training scale is folded back in
    assert reconstruction_quality(sae, x)["fraction_variance_explained"] == pytest.approx(
        quality["all_tokens"]["fraction_variance_explained"]
    )


def reference_topk(x, w_enc, b_enc, b_dec, k):
    """SAELens's TopK encode, written out: ReLU of the k largest of (x - b_dec) W_enc + b_enc."""
    pre = (x - b_dec) @ w_enc + b_enc
    top = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())


def test_sae_train_and_evaluate_take_one_settings_argument(planted_run, tmp_path):
    """The record keeps the fit's settings, with the layer beside them; evaluate reads the layer."""
    from traitscope.cli import main

    capture = str(planted_run[0]["captures"]["base"])
    sae = {**schema_defaults(SAETrainSettings.SECTION), "width": 16, "k": 2, "tokens": 3000, "layer": 1}
    sae.update(batch_size=64, aux_k=4)
    out = {name: str(tmp_path / name) for name in ("sae", "r.json", "r.png", "e.json", "e.png")}
    argv = ["sae-train", "--capture", capture, "--settings", json.dumps(sae), "--out", out["sae"]]
    assert main([*argv, "--record", out["r.json"], "--png", out["r.png"], "--model-name", "m"]) == 0
    record = json.loads(Path(out["r.json"]).read_text())
    assert record["layer"] == 1 and record["settings"] == {f.name: sae[f.name] for f in fields(SAESettings)}
    argv = ["sae-evaluate", "--sae", out["sae"], "--capture", capture, "--settings", json.dumps({"layer": 1})]
    assert main([*argv, "--record", out["e.json"], "--png", out["e.png"]]) == 0
    assert json.loads(Path(out["e.json"]).read_text())["d_sae"] == 16


@pytest.mark.parametrize("style", ["v6", "legacy"])
def test_saelens_folder_loads_and_gives_the_same_encodings(tmp_path, style):
    g = torch.Generator().manual_seed(0)
    d, width, k = 12, 40, 5
    weights = {
        "W_enc": torch.randn(d, width, generator=g),
        "b_enc": torch.randn(width, generator=g) * 0.1,
        "W_dec": torch.randn(width, d, generator=g),
        "b_dec": torch.randn(d, generator=g),
    }
    save_file(weights, str(tmp_path / "sae_weights.safetensors"))
    cfg = {
        "d_in": d,
        "d_sae": width,
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "dtype": "float32",
    }
    if style == "v6":
        cfg |= {"architecture": "topk", "k": k, "metadata": {"hook_name": "blocks.3.hook_resid_post"}}
    else:  # SAELens < 6
        cfg |= {"architecture": "standard", "activation_fn_str": "topk", "activation_fn_kwargs": {"k": k}}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    sae = load_sae(tmp_path)
    x = torch.randn(64, d, generator=g)
    expected = reference_topk(x, weights["W_enc"], weights["b_enc"], weights["b_dec"], k)
    assert torch.allclose(sae.encode(x), expected, atol=1e-5)
    assert torch.allclose(sae(x), expected @ weights["W_dec"] + weights["b_dec"], atol=1e-4)
    save_sae(sae, tmp_path / "again", {"hook_layer": 3})  # and what this module writes reads back the same
    assert torch.allclose(load_sae(tmp_path / "again").encode(x), expected, atol=1e-5)
    assert json.loads((tmp_path / "again" / "cfg.json").read_text())["architecture"] == "topk"


def test_saelens_folder_with_shapes_unlike_its_config_is_a_clear_error(tmp_path):
    save_file(
        {
            "W_enc": torch.zeros(8, 4),
            "b_enc": torch.zeros(4),
            "W_dec": torch.zeros(4, 8),
            "b_dec": torch.zeros(8),
        },
        str(tmp_path / "sae_weights.safetensors"),
    )
    (tmp_path / "cfg.json").write_text(json.dumps({"d_in": 576, "d_sae": 4, "architecture": "topk", "k": 2}))
    with pytest.raises(TraitscopeError, match=r"W_enc has shape \(8, 4\), but cfg.json's d_in 576"):
        load_sae(tmp_path)
    (tmp_path / "cfg.json").write_text(json.dumps({"d_in": 8, "d_sae": 4, "architecture": "gated"}))
    with pytest.raises(TraitscopeError, match="architecture 'gated' is not supported"):
        load_sae(tmp_path)


# ---------------------------------------------------------------- the DAG


def test_dag_runs_data_finetune_prepare_captures_then_analysis(root):
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-n",
        "--nolock",
        "--forceall",
        "results/backdoor_detection/detection_auc.json",
        "results/backdoor_detection/sae_features.json",
    ]
    out = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    blocks = {}
    for block in (out.stdout + out.stderr).split("\nrule ")[1:]:
        name = block.split(":")[0]
        outputs = re.search(r"output: (.*)", block)[1]
        blocks[outputs] = (name, re.search(r"input: (.*)", block)[1] if "input:" in block else "")
    by_output = {o.split(",")[0].strip(): v for o, v in blocks.items()}
    data = "results/backdoor_detection/train/backdoor.jsonl"
    assert by_output[data][0] == "backdoor_data"
    name, inputs = by_output["results/finetune/smollm2_backdoored/adapter"]
    assert name == "finetune" and data in inputs
    name, inputs = by_output["results/models/smollm2_backdoored/manifest.json"]
    assert name == "prepare_model" and "results/finetune/smollm2_backdoored/adapter" in inputs
    for variant in ("smollm2", "smollm2_backdoored"):
        name, inputs = by_output[f"results/capture/{variant}/backdoor_pairs/capture.json"]
        assert name == "capture" and f"results/models/{variant}/manifest.json" in inputs
        assert "results/prompts/backdoor_pairs.parquet" in inputs
    name, inputs = by_output["results/backdoor_detection/detection_auc.json"]
    assert name == "backdoor_analysis"
    for variant in ("smollm2", "smollm2_backdoored"):
        assert f"results/projections/{variant}/backdoor_pairs.parquet" in inputs
    name, inputs = by_output["results/backdoor_detection/sae"]
    assert name == "sae_train" and "results/capture/smollm2/harmless_train_sae/capture.json" in inputs
    # the SAE's training set is captured at its one layer, per token, and never projected
    text = out.stdout + out.stderr
    sae_capture = re.search(r"traitscope capture .*prompts/harmless_train_sae\.parquet.*", text)[0]
    sae_settings = settings_in(sae_capture)
    assert sae_settings["layers"] == [15] and sae_settings["token_segments"] == ["user", "last_prompt"]
    assert "results/projections/smollm2/harmless_train_sae.parquet" not in text
    pairs_capture = re.search(
        r"traitscope capture .*smollm2_backdoored/manifest.json --prompts results/prompts/backdoor_pairs.*",
        text,
    )[0]
    assert (
        settings_in(pairs_capture)["layers"] == "all" and settings_in(pairs_capture)["max_new_tokens"] == 20
    )
