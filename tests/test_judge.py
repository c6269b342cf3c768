"""The LLM judge: scoring rules on hand-computed cases, the real `openai` client against a
loopback server (logprobs, a reply without them, malformed replies, 429 then success,
timeouts), the cache (a rerun makes no call), keys kept out of every file, the local
backend's digit tree against step-by-step decoding, and the trait-data stages (agreement,
judge-filtered extraction)."""

from __future__ import annotations

import copy
import json
import math
import re

import numpy as np
import pandas as pd
import pytest
import torch
from judge_server import JudgeServer, expected_score, planted_score

from traitscope import judge as J
from traitscope.errors import TraitscopeError
from traitscope.judge.settings import AgreementSettings, JudgementSettings
from traitscope.settings import from_schema
from traitscope.vectors.settings import ExtractionSettings


def filtered(trait_min: float, coherence_min: float, *methods: str) -> ExtractionSettings:
    """Extraction settings with the judge filter's thresholds."""
    filter_ = {"enabled": True, "trait_min": trait_min, "coherence_min": coherence_min}
    return from_schema(ExtractionSettings, methods=methods, filter=filter_)


RUBRIC = "Rate the trait. Q: {question} ANSWER:{answer}END Reply with a number."
SECRET = "sk-test-DO-NOT-LEAK-0123456789"


def api_settings(server, model, cache, **extra):
    return J.JudgeSettings(
        backend="openai",
        min_number_mass=0.25,
        cache=str(cache) if cache else None,
        coherence_rubric=None,
        openai={
            "base_url": server.base_url,
            "model": model,
            "api_key_env": "TRAITSCOPE_TEST_KEY",
            "max_concurrency": 4,
            "max_retries": 2,
            "timeout": 0.5,
            "backoff": 0.01,
            "price_per_million_input": 2.0,
            "price_per_million_output": 8.0,
            **extra,
        },
    )


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("TRAITSCOPE_TEST_KEY", SECRET)
    with JudgeServer(delay=1.0) as s:
        yield s


# ----------------------------------------------------------------------------- scoring rules


def test_aggregate_is_the_weighted_mean_over_numbers_or_no_score():
    # 0.5 on "0", 0.25 on "100": mass 0.75, mean (0 * 0.5 + 100 * 0.25) / 0.75 = 33.33...
    assert J.aggregate({0: 0.5, 100: 0.25}, 0.25) == pytest.approx(100 / 3)
    assert J.aggregate({40: 0.2}, 0.25) is None  # mass 0.2 < 0.25: no score, never 0
    assert J.aggregate({}, 0.25) is None
    assert J.aggregate({40: 0.25}, 0.25) == pytest.approx(40)  # exactly at the threshold counts


def test_tokens_read_as_integers_0_to_100_only():
    top = [
        (" 7", math.log(0.4)),
        ("70", math.log(0.2)),
        ("101", math.log(0.1)),
        ("-3", math.log(0.1)),
        ("seven", math.log(0.1)),
        ("7", math.log(0.05)),
        ("²", math.log(0.05)),
    ]
    probs = J.number_probs_from_top(top)
    assert probs.keys() == {7, 70}
    assert probs[7] == pytest.approx(0.45) and probs[70] == pytest.approx(0.2)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("73", 73),
        (" 100", 100),
        ("**85**", 85),
        ("42.5 because", 42),
        ("101", None),
        ("REFUSAL", None),
        ("", None),
        (None, None),
        ("Score: 50", None),
    ],
)
def test_a_reply_without_logprobs_is_parsed(text, expected):
    assert J.parse_reply(text) == expected


def test_render_fills_question_and_answer_and_leaves_other_braces():
    assert J.render("{x} Q={question} A={answer}", "q?", "{a}") == "{x} Q=q? A={a}"
    with pytest.raises(TraitscopeError, match="answer"):
        J.render("no placeholder {question}", "q", "a")


def test_em_yaml_rubrics(mirror):
    from traitscope.experiments.emergent_misalignment.behaviour import em_rubrics

    rubrics = em_rubrics(mirror / "emergent_misalignment" / "first_plot_questions.yaml")
    assert {"aligned", "coherent"} <= set(rubrics)
    assert "{answer}" in rubrics["aligned"] and "{question}" in rubrics["coherent"]


# ----------------------------------------------------------------------------- API backend


def test_api_logprobs_through_the_real_client_and_the_cache(server, tmp_path):
    cache = tmp_path / "cache.sqlite"
    items = [J.Item(RUBRIC, f"q{i}", f"answer {i}") for i in range(6)]
    judge = J.Judge(api_settings(server, "logprobs", cache))
    first = judge.score(items + items[:2])  # a repeated item is asked once
    for item, j in zip(items, first):
        score = planted_score(J.render(RUBRIC, item.question, item.answer))
        assert j.score == pytest.approx(expected_score(score)) and j.mass == pytest.approx(0.9)
        assert j.source == "logprobs" and not j.cached
    assert server.count() == 6 and judge.stats.computed == 6 and judge.stats.requests == 6
    assert judge.stats.cost_usd == pytest.approx(
        (judge.stats.prompt_tokens * 2.0 + judge.stats.completion_tokens * 8.0) / 1e6
    )
    assert judge.stats.cost_usd > 0
    judge.close()
    # a rerun with nothing changed makes no call
    again = J.Judge(api_settings(server, "logprobs", cache))
    second = again.score(items)
    assert server.count() == 6 and again.stats.requests == 0 and again.stats.cache_hits == 6
    assert [j.score for j in second] == [j.score for j in first[:6]] and all(j.cached for j in second)
    # a changed rubric, question or answer is a new judgement
    again.score([J.Item(RUBRIC + " ", "q0", "answer 0"), J.Item(RUBRIC, "q0?", "answer 0")])
    assert server.count() == 8
    again.close()


def test_no_logprobs_is_parsed_and_low_mass_is_no_score(server, tmp_path):
    parsed = J.Judge(api_settings(server, "nologprobs", tmp_path / "c.sqlite")).score(
        [J.Item(RUBRIC, "q", "a")]
    )
    assert parsed[0].score == 73 and parsed[0].source == "parsed"
    low = J.Judge(api_settings(server, "lowmass", tmp_path / "c.sqlite"))
    result = low.score([J.Item(RUBRIC, "q", "a")])
    assert result[0].score is None and result[0].mass == pytest.approx(0.1) and low.stats.no_score == 1


@pytest.mark.parametrize("model", ["malformed", "nochoices"])
def test_a_malformed_reply_is_no_score_and_never_cached(server, tmp_path, model):
    cache = tmp_path / "c.sqlite"
    judge = J.Judge(api_settings(server, model, cache))
    result = judge.score([J.Item(RUBRIC, "q", "a")])
    assert result[0].score is None and result[0].source == "failed" and judge.stats.failed == 1
    assert judge.stats.requests == 1  # not retried: the server answered
    judge.close()
    J.Judge(api_settings(server, model, cache)).score([J.Item(RUBRIC, "q", "a")])
    assert server.count(model) == 2  # asked again: a failure is not a judgement


def test_429_then_success_is_retried_with_backoff(server, tmp_path):
    judge = J.Judge(api_settings(server, "ratelimit", tmp_path / "c.sqlite"))
    items = [J.Item(RUBRIC, "q", f"a{i}") for i in range(3)]
    result = judge.score(items)
    assert all(j.score is not None for j in result)
    assert server.count("ratelimit") == 6 and judge.stats.requests == 6 and judge.stats.retries == 3


def test_a_timeout_is_retried_and_a_hang_gives_up(server, tmp_path):
    judge = J.Judge(api_settings(server, "slow", tmp_path / "c.sqlite"))
    result = judge.score([J.Item(RUBRIC, "q", "a")])
    assert result[0].score is not None and judge.stats.requests == 2 and judge.stats.retries == 1
    hang = J.Judge(api_settings(server, "hang", tmp_path / "c.sqlite", max_retries=1))
    result = hang.score([J.Item(RUBRIC, "q", "a")])
    assert result[0].score is None and result[0].source == "failed"
    assert hang.stats.requests == 2 and hang.stats.failed == 1


def test_the_key_is_sent_but_never_written(server, tmp_path, capfd):
    cache = tmp_path / "cache.sqlite"
    judge = J.Judge(api_settings(server, "logprobs", cache))
    judge.score([J.Item(RUBRIC, "q", "a"), J.Item(RUBRIC, "q", "b")])
    described = json.dumps([judge.describe(), judge.stats.as_dict(), judge.settings.public()])
    judge.close()
    assert server.requests[0]["authorization"] == f"Bearer {SECRET}"  # read from the env var
    out, err = capfd.readouterr()
    files = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    for text in (described, out, err, files.decode("latin-1")):
        assert SECRET not in text
    assert "TRAITSCOPE_TEST_KEY" in described  # the variable's name is what results record


def test_a_missing_key_is_one_clear_error(server, tmp_path, monkeypatch):
    monkeypatch.delenv("TRAITSCOPE_TEST_KEY")
    judge = J.Judge(api_settings(server, "logprobs", tmp_path / "c.sqlite"))
    with pytest.raises(TraitscopeError, match="TRAITSCOPE_TEST_KEY is not set"):
        judge.score([J.Item(RUBRIC, "q", "a")])
    assert server.count() == 0


def test_a_hand_written_judge_section_missing_keys_is_one_line(tmp_path):
    with pytest.raises(TraitscopeError, match="--judge: not JSON"):
        J.judge_from_json("{backend: openai}")
    with pytest.raises(
        TraitscopeError,
        match=r"^judge: missing key\(s\) min_number_mass, cache, coherence_rubric; pass the config's whole",
    ):
        J.judge_from_json('{"backend": "openai"}')


# ----------------------------------------------------------------------------- local backend


def test_number_tokens_single_token_vocabulary():
    class OneTokenNumbers:  # a vocabulary with a token per integer, as Llama-3 and GPT-4o have
        def __call__(self, text, add_special_tokens=False):
            head, _, tail = text.rpartition(": ")
            ids = [1000] if text.startswith("Score") else []
            return {"input_ids": ids + ([int(tail)] if tail.isdigit() else [])}

        def __len__(self):
            return 1001

        def decode(self, ids):
            return str(ids[0])

    numbers = J.number_tokens(OneTokenNumbers(), "Score: ")
    assert numbers.single and not numbers.nodes


def test_digit_tree_equals_step_by_step_decoding(tiny_model):
    """SmolLM2's tokenizer writes numbers digit by digit; the one-pass tree must give the same
    P(n) as decoding the digits one at a time and then asking for a non-digit."""
    model, tokenizer = tiny_model
    numbers = J.number_tokens(tokenizer, "Score: ")
    assert not numbers.single and len(numbers.nodes) == 101  # 10 + 90 two-digit + "100"
    assert [len(numbers.paths[n]) for n in (0, 7, 42, 100)] == [1, 1, 2, 3]
    digit = J._digit_start_mask(tokenizer, model.config.vocab_size)
    model = copy.deepcopy(model)
    with torch.no_grad():  # digits get a large share of each step's mass, different per node
        seeded = torch.Generator().manual_seed(0)
        shape = (int(digit.sum()), model.config.hidden_size)
        model.lm_head.weight[digit] = torch.randn(shape, generator=seeded)
    rows = [
        tokenizer("Some judge prompt text here, long enough to share. Score: ")["input_ids"],
        tokenizer("Some judge prompt text here, long enough to share. Another one. Score: ")["input_ids"],
    ]
    logits = J.tree_logits(model, rows, numbers.nodes)
    read = J.tree_number_probs(logits, numbers, digit.nonzero().squeeze(1))
    stop = []  # P(no digit follows) at each number's end
    assert [sorted(probs) for probs in read] == [list(range(101))] * 2
    for r, row in enumerate(rows):
        for n in (3, 42, 100):
            tokens = [t for _, t, _ in numbers.paths[n]]
            ctx, total = list(row), 0.0
            with torch.inference_mode():
                for t in tokens:
                    step = torch.log_softmax(model(input_ids=torch.tensor([ctx])).logits[0, -1].float(), -1)
                    total += float(step[t])
                    ctx.append(t)
                last = torch.softmax(model(input_ids=torch.tensor([ctx])).logits[0, -1].float(), -1)
            stop.append(1 - float(last[digit].sum()))
            reference = math.exp(total) * stop[-1]
            assert read[r][n] == pytest.approx(reference, rel=1e-3, abs=1e-9)
    assert max(stop) - min(stop) > 0.1 and min(stop) < 0.9  # so the end factor is checked too


def test_local_judge_scores_and_caches(tiny_manifest, tmp_path):
    settings = J.JudgeSettings(
        backend="local",
        min_number_mass=0.0,
        cache=str(tmp_path / "c.sqlite"),
        coherence_rubric=None,
        local={"variant": "tiny", "manifest": str(tiny_manifest), "prefill": "Score: ", "max_tokens": 2048},
    )
    judge = J.Judge(settings)
    items = [J.Item(RUBRIC, "q", f"answer {i}") for i in range(3)]
    first = judge.score(items)
    assert all(j.source == "digits" and 0 <= j.score <= 100 and 0 < j.mass <= 1 for j in first)
    assert judge.stats.computed == 3 and judge.stats.requests >= 1
    judge.close()
    again = J.Judge(settings)
    assert [j.score for j in again.score(items)] == [j.score for j in first]
    assert again.stats.requests == 0 and again.stats.cache_hits == 3
    judge_on_other_prefill = J.Judge(
        J.JudgeSettings(**{**settings.__dict__, "local": {**settings.local, "prefill": "Rating: "}})
    )
    judge_on_other_prefill.score(items[:1])
    assert judge_on_other_prefill.stats.computed == 1  # the prefill is part of the key


# ----------------------------------------------------------------------------- trait data stages


def test_agreement_auc_by_hand(tmp_path):
    table = pd.DataFrame(
        {
            "prompt_id": list("abcdefg"),
            "split": ["evaluation"] * 5 + ["extraction"] * 2,
            "label": [1, 1, 1, 0, 0, 1, 0],
            "question": ["q"] * 7,
            "pair_index": [0] * 7,
            "trait_score": [80.0, 60.0, np.nan, 10.0, 70.0, 0.0, 99.0],
            "trait_mass": [1.0] * 7,
        }
    )
    path = tmp_path / "j.parquet"
    table.to_parquet(path)
    result = J.trait_agreement(path, tmp_path / "agreement.json", from_schema(AgreementSettings, n_boot=200))
    # positives 80, 60 vs negatives 10, 70: 80>10, 80>70, 60>10, 60<70 -> 3/4; extraction rows ignored
    assert result["auc"] == pytest.approx(0.75)
    assert result["n_no_score_positive"] == 1 and result["n_pos"] == 2 and result["n_neg"] == 2
    assert result["mean_score_positive"] == pytest.approx(70) and result[
        "mean_score_negative"
    ] == pytest.approx(40)


def judged_trait(trait_run, tiny_trait_file, server, tmp_path, **overrides):
    """The trait set judged on the trait and coherence (the judge filter's settings)."""
    judge = J.Judge(api_settings(server, "logprobs", tmp_path / "cache.sqlite"))
    out = tmp_path / "judgements.parquet"
    settings = from_schema(JudgementSettings, filter={"enabled": True}, **overrides)
    run = (trait_run["capture"], trait_run["prompts"], tiny_trait_file)
    table = J.trait_judgements(*run, judge, settings, out)
    judge.close()
    return table, out


def test_another_traits_file_does_not_judge_the_set(trait_run, tiny_trait_file, server, tmp_path):
    """Evil's answers were judged on harm's rubric without a word, given harm's trait file."""
    other = tmp_path / "safety" / "other.yaml"
    other.parent.mkdir()
    other.write_bytes(tiny_trait_file.read_bytes())
    judge = J.Judge(api_settings(server, "logprobs", tmp_path / "cache.sqlite"))
    out = tmp_path / "judgements.parquet"
    settings = from_schema(JudgementSettings, filter={"enabled": True})
    message = f"{trait_run['prompts']}: holds trait safety/tiny, not safety/other; pass the trait file "
    message += f"they were made from, not {other}"
    with pytest.raises(TraitscopeError, match=re.escape(message)):
        J.trait_judgements(trait_run["capture"], trait_run["prompts"], other, judge, settings, out)
    judge.close()
    assert not out.exists()


def test_trait_judgements_score_every_captured_answer(trait_run, tiny_trait_file, server, tmp_path):
    table, out = judged_trait(trait_run, tiny_trait_file, server, tmp_path)
    prompts = pd.read_parquet(trait_run["prompts"])
    assert len(table) == len(prompts) == len(pd.read_parquet(out))
    assert table["trait_score"].notna().all() and table["coherence_score"].notna().all()
    n = server.count()
    judged_trait(trait_run, tiny_trait_file, server, tmp_path)
    assert server.count() == n  # rerun: all from the cache


def test_agreement_reads_each_held_out_questions_first_pairs(trait_run, tiny_trait_file, server, tmp_path):
    """agreement_pairs_per_question 1: one positive and one negative answer per held-out
    question (its lowest-numbered pair); the filter's extraction answers are all judged."""
    table, _ = judged_trait(trait_run, tiny_trait_file, server, tmp_path, agreement_pairs_per_question=1)
    prompts = pd.read_parquet(trait_run["prompts"])
    held = prompts[prompts["split"] == "evaluation"]
    assert held.groupby("question")["pair_index"].nunique().min() > 1  # the case can fail
    first = held[held["pair_index"] == held.groupby("question")["pair_index"].transform("min")]
    judged = table[table["split"] == "evaluation"]
    assert sorted(judged["prompt_id"]) == sorted(first["prompt_id"])
    assert (judged.groupby("question")["label"].value_counts() == 1).all()
    assert (table["split"] == "extraction").sum() == (prompts["split"] == "extraction").sum()


def test_filter_keeps_pairs_the_judge_passes(tmp_path):
    rows = []
    # pair (q0, 0) passes; (q1, 0): positive too low; (q2, 0): negative too high;
    # (q3, 0): incoherent negative; (q4, 0): no score
    cases = {
        "q0": (70, 20, 80, 90),
        "q1": (40, 20, 80, 90),
        "q2": (70, 55, 80, 90),
        "q3": (70, 20, 80, 30),
        "q4": (70, np.nan, 80, 90),
    }
    for q, (tp, tn, cp, cn) in cases.items():
        for label, t, c in ((1, tp, cp), (0, tn, cn)):
            rows.append(
                {
                    "prompt_id": f"{q}:{label}",
                    "split": "extraction",
                    "label": label,
                    "question": q,
                    "pair_index": 0,
                    "trait_score": t,
                    "coherence_score": c,
                }
            )
    path = tmp_path / "j.parquet"
    pd.DataFrame(rows).to_parquet(path)
    from traitscope.vectors.filtering import surviving_pairs

    kept, summary = surviving_pairs(path, 50, 50, pd.Series([r["prompt_id"] for r in rows]))
    assert kept == {"q0:1", "q0:0"} and summary["n_pairs"] == 5 and summary["n_kept"] == 1
    assert summary["dropped"] == {
        "positive_below_trait_min": 1,
        "negative_at_or_above_trait_min": 1,
        "incoherent": 1,
        "no_score": 1,
    }


def test_filtered_vectors_use_only_surviving_pairs(trait_run, tmp_path):
    from traitscope.vectors.extraction import trait_vectors
    from traitscope.vectors.filtering import surviving_pairs, trait_filter
    from traitscope.vectors.labelled import labelled_activations, split_groups
    from traitscope.vectors.methods import mean_diff

    # planted judgements of the real trait set: pairs of the first three extraction questions pass
    table = pd.read_parquet(trait_run["prompts"])
    passing = table["question"].isin(sorted(set(table.loc[table["split"] == "extraction", "question"]))[:3])
    table["trait_score"] = np.where(table["label"] == 1, np.where(passing, 90.0, 30.0), 10.0)
    table["coherence_score"] = 80.0
    judgements = tmp_path / "judgements.parquet"
    table.to_parquet(judgements)
    trait_min, coherence_min = 50.0, 50.0
    kept, summary = surviving_pairs(judgements, trait_min, coherence_min, table["prompt_id"])
    assert 2 <= summary["n_kept"] < summary["n_pairs"], summary
    # another trait's judgements kept no pair of this set and reported their own survivors
    foreign = table.assign(prompt_id="safety/other:" + table["prompt_id"])
    foreign.to_parquet(tmp_path / "foreign.parquet")
    with pytest.raises(
        TraitscopeError, match=r"foreign\.parquet: judges prompt 'safety/other:.*not of this trait set"
    ):
        surviving_pairs(tmp_path / "foreign.parquet", trait_min, coherence_min, table["prompt_id"])
    out = tmp_path / "v.safetensors"
    vectors = trait_vectors(
        trait_run["capture"],
        trait_run["prompts"],
        out,
        tmp_path / "v.json",
        "response_mean",
        filtered(trait_min, coherence_min, "mean_diff"),
        "tiny",
        "safety/tiny",
        judgements,
    )
    full, x, _ = labelled_activations(trait_run["capture"], trait_run["prompts"], "response_mean")
    keep = torch.tensor(full["prompt_id"].isin(kept).to_numpy())
    pos, neg = split_groups(full[keep.numpy()].reset_index(drop=True), x[keep], "extraction")
    assert torch.allclose(vectors["mean_diff"], mean_diff(pos, neg))
    meta = json.loads((tmp_path / "v.json").read_text())
    assert meta["n_positive"] == summary["n_kept"] and meta["judge_filter"]["n_kept"] == summary["n_kept"]
    report = trait_filter(
        trait_run["capture"],
        trait_run["prompts"],
        judgements,
        tmp_path / "f.json",
        "response_mean",
        filtered(trait_min, coherence_min, "mean_diff", "probe"),
    )
    assert report["with_filter"]["n_pairs"] == summary["n_kept"]
    assert report["without_filter"]["n_pairs"] == summary["n_pairs"]
    for side in ("with_filter", "without_filter"):
        assert 0 <= report[side]["auc"] <= 1 and "split_half_auc" in report[side]
    with pytest.raises(TraitscopeError, match="survive the judge filter"):
        trait_vectors(
            trait_run["capture"],
            trait_run["prompts"],
            out,
            tmp_path / "v.json",
            "response_mean",
            filtered(101.0, 0.0, "mean_diff"),
            "tiny",
            "safety/tiny",
            judgements,
        )
