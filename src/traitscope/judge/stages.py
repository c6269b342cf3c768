"""The judge's stages on trait data: trait-judgements (score a trait set's captured answers),
trait-agreement (does the judge tell positive from negative instructions?) and
trait-truth-agreement (does it tell the written truth set's answers that show the trait from
those that do not?).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from traitscope.data.traits import load_trait
from traitscope.errors import TraitscopeError, require_trait
from traitscope.io import read_table, write_json, write_parquet
from traitscope.judge.scorer import Item, Judge
from traitscope.judge.settings import AgreementSettings, JudgementSettings
from traitscope.judge.truth_set import truth_table

JUDGEMENT_COLUMNS = ("prompt_id", "split", "label", "question", "pair_index")


def trait_judgements(
    capture_json: str | Path,
    prompts: str | Path,
    trait_file: str | Path,
    judge: Judge,
    settings: JudgementSettings,
    out: str | Path,
) -> Any:
    """Judge a trait set's captured responses: the trait's rubric and/or coherence, per row.

    One row per prompt of the splits the settings ask for (of the held-out split, each
    question's first `agreement_pairs_per_question` instruction pairs): its label, question and
    pair, the response, and per rubric the score (NaN: no score) and the mass on numbers.
    """
    from traitscope.capture.store import read_responses

    trait = load_trait(trait_file)
    table = read_table(prompts, "trait-prompts", JUDGEMENT_COLUMNS)
    traits = table["trait"].unique() if "trait" in table.columns else []
    for found in sorted(traits):  # another trait's answers would be scored on this trait's rubric
        require_trait(
            prompts, found, trait.name, f"pass the trait file they were made from, not {trait_file}"
        )
    responses = read_responses(capture_json)
    table = table[table["split"].isin(settings.splits)]
    if settings.agreement_pairs_per_question is not None:
        held = table["split"] == "evaluation"
        rank = table["pair_index"].where(held).groupby(table["question"]).rank(method="dense")
        table = table[~held | (rank <= settings.agreement_pairs_per_question)]
    table = table.reset_index(drop=True)
    absent = [pid for pid in table["prompt_id"] if pid not in responses]
    if absent:
        raise TraitscopeError(f"{capture_json}: prompt {absent[0]!r} was not captured; rerun capture")
    out_table = table[list(JUDGEMENT_COLUMNS)].copy()
    out_table["response"] = [responses[pid] for pid in table["prompt_id"]]
    texts = {"trait": trait.judge_rubric, "coherence": judge.settings.coherence}
    for name in settings.rubrics:
        found = judge.score(
            [Item(texts[name], q, a) for q, a in zip(out_table["question"], out_table["response"])]
        )
        out_table[f"{name}_score"] = [float("nan") if j.score is None else j.score for j in found]
        out_table[f"{name}_mass"] = [j.mass for j in found]
    write_parquet(out, out_table)
    print(f"traitscope judge: {json.dumps(judge.stats.as_dict())}", file=sys.stderr)
    return out_table


def trait_agreement(judgements: str | Path, out: str | Path, settings: AgreementSettings) -> dict:
    """Does the judge tell positive from negative instructions on the held-out responses?

    ROC-AUC of the trait score, positive- vs negative-instruction answers, with a stratified
    bootstrap CI, over the answers the judge scored; how many it could not score, per label.
    """
    table = read_table(judgements, "trait-judgements", ("split", "label"))
    if "trait_score" not in table.columns:
        raise TraitscopeError(f"{judgements}: no trait scores; rerun trait-judgements with --rubrics trait")
    held = table[table["split"] == "evaluation"]
    pos = held.loc[held["label"] == 1, "trait_score"].to_numpy(float)
    neg = held.loc[held["label"] == 0, "trait_score"].to_numpy(float)
    mass = float(held["trait_mass"].mean()) if len(held) else None
    test = (
        "ROC-AUC of the judge's trait score, positive vs negative instructions; "
        "stratified percentile bootstrap CI"
    )
    result = agreement_record(pos, neg, mass, test, settings.n_boot, settings.seed)
    write_json(out, result)
    return result


def truth_agreement(
    truth_file: str | Path, trait_file: str | Path, judge: Judge, out: str | Path, settings: AgreementSettings
) -> dict:
    """Does the judge read the trait where the answer plainly shows it or plainly does not?

    The run's held-out agreement labels an answer by the instruction it was written under, and
    a small model follows those weakly, so a judge that reads the trait well can still score
    low there. The project's truth set (`judge.truth_set`: one answer that shows the trait and
    one that does not per held-out question) is labelled by construction: the judge gate reads
    agreement on it.
    """
    result = truth_agreement_record(truth_file, trait_file, judge, settings.n_boot, settings.seed)
    write_json(out, result)
    print(f"traitscope judge: {json.dumps(judge.stats.as_dict())}", file=sys.stderr)
    return result


def truth_agreement_record(
    truth_file: str | Path, trait_file: str | Path, judge: Judge, n_boot: int, seed: int
) -> dict:
    """The judge's agreement record on a trait's truth set (one pair per question, so the
    bootstrap resamples independent units)."""
    table = truth_table(truth_file, trait_file)
    rubric = load_trait(trait_file).judge_rubric
    found = judge.score([Item(rubric, q, a) for q, a in zip(table["question"], table["response"])])
    scores = [float("nan") if j.score is None else j.score for j in found]
    table = table.assign(score=scores, mass=[j.mass for j in found])
    test = (
        "ROC-AUC of the judge's trait score on the project-written truth set, answers that show "
        "the trait vs answers that do not; stratified percentile bootstrap CI"
    )
    pos, neg = (table.loc[table["label"] == label, "score"].to_numpy(float) for label in (1, 0))
    result = agreement_record(pos, neg, float(table["mass"].mean()), test, n_boot, seed)
    result.update({"split": "truth set", "truth_file": str(truth_file)})
    return result


def agreement_record(
    pos: Any, neg: Any, mass: float | None, test: str, n_boot: int, seed: int
) -> dict[str, Any]:
    """The agreement JSON both judges write: counts, unscored answers, means, AUC with CI.

    `pos` and `neg` are the held-out trait scores (NaN: no score) of the positive- and
    negative-instruction answers; `mass` the mean probability on numbers (None: no such thing).
    """
    from traitscope.stats import auc_with_ci

    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    pos_ok, neg_ok = pos[~np.isnan(pos)], neg[~np.isnan(neg)]
    result: dict[str, Any] = {
        "split": "evaluation",
        "n_positive": len(pos),
        "n_negative": len(neg),
        "n_no_score_positive": int(np.isnan(pos).sum()),
        "n_no_score_negative": int(np.isnan(neg).sum()),
        "mean_score_positive": float(pos_ok.mean()) if len(pos_ok) else None,
        "mean_score_negative": float(neg_ok.mean()) if len(neg_ok) else None,
        "mean_number_mass": mass,
        "test": test,
    }
    try:
        result.update(auc_with_ci(pos_ok, neg_ok, n_boot=n_boot, seed=seed))
    except ValueError as exc:
        result.update({"auc": None, "reason": str(exc)})
    return result
