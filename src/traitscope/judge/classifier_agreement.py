"""The answer classifier's agreement stage: fitted on a persona trait's extraction answers,
scored on its held-out ones, recorded as `trait_agreement` records the LLM judge's.

Apart from `classifier` (the model) so the judge backends can use the classifier without
importing the judging stages, which import the scorer that imports the backends.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from traitscope.errors import TraitscopeError
from traitscope.io import read_table, write_json, write_parquet
from traitscope.judge.classifier import CHAR_NGRAMS, FIT_SPLIT, WORD_NGRAMS, AnswerClassifier, C
from traitscope.judge.settings import AgreementSettings
from traitscope.judge.stages import JUDGEMENT_COLUMNS, agreement_record


def answer_table(prompts: str | Path, capture_json: str | Path) -> Any:
    """A persona trait's prompt rows with their captured answers (`response`), both splits.

    A prompt-contrast trait (captured without generation, so no answers) is an error.
    """
    from traitscope.capture.store import read_responses

    table = read_table(prompts, "trait-prompts", JUDGEMENT_COLUMNS)
    responses = read_responses(capture_json)
    absent = [pid for pid in table["prompt_id"] if pid not in responses]
    if absent:
        raise TraitscopeError(f"{capture_json}: prompt {absent[0]!r} was not captured; rerun capture")
    table = table[list(JUDGEMENT_COLUMNS)].copy()
    table["response"] = [responses[pid] for pid in table["prompt_id"]]
    if not table["response"].str.strip().any():
        raise TraitscopeError(
            f"{capture_json}: no generated answers (a prompt-contrast trait, or max_new_tokens 0); "
            "the answer classifier reads a persona trait's answers"
        )
    return table


def classifier_agreement(
    prompts: str | Path,
    capture_json: str | Path,
    out: str | Path | None,
    settings: AgreementSettings,
    judgements: str | Path | None = None,
) -> dict:
    """The answer classifier's agreement on a trait, as `trait_agreement` writes the LLM judge's.

    Fitted on the extraction split's answers, it scores the evaluation split's (held-out
    questions); the record is `trait_agreement`'s (AUC, stratified bootstrap CI, counts, means)
    with `judge: "classifier"`, how many answers it was fitted on, and its CPU cost:
    `cpu_seconds_per_judgement` is the process CPU time of scoring the held-out answers over
    their number, `fit_cpu_seconds` the one-off fit. `judgements`, when given, is a
    judgements.parquet of the held-out rows with the classifier's `trait_score`.
    """
    table = answer_table(prompts, capture_json)
    fit_rows = table[table["split"] == FIT_SPLIT]
    held = table[table["split"] == "evaluation"].reset_index(drop=True)
    t0 = time.process_time()
    clf = AnswerClassifier.fit(
        fit_rows["response"],
        fit_rows["label"],
        fit_rows["split"],
        fit_rows["prompt_id"],
        fit_rows["question"],
        seed=settings.seed,
    )
    t1 = time.process_time()
    scores = clf.score_rows(held["response"], held["prompt_id"], held["question"])
    t2 = time.process_time()
    held["trait_score"] = scores
    pos = held.loc[held["label"] == 1, "trait_score"].to_numpy(float)
    neg = held.loc[held["label"] == 0, "trait_score"].to_numpy(float)
    test = (
        "ROC-AUC of the answer classifier's score (TF-IDF word + character n-grams, logistic "
        f"regression fitted on the {FIT_SPLIT} split's answers), positive vs negative "
        "instructions; stratified percentile bootstrap CI"
    )
    result = agreement_record(pos, neg, None, test, settings.n_boot, settings.seed)
    result.update(
        {
            "judge": "classifier",
            "n_fit": len(fit_rows),
            "n_fit_questions": int(fit_rows["question"].nunique()),
            "n_evaluation_questions": int(held["question"].nunique()),
            "fit_cpu_seconds": t1 - t0,
            "cpu_seconds_per_judgement": (t2 - t1) / max(len(held), 1),
            "settings": {
                "word_ngrams": list(WORD_NGRAMS),
                "char_ngrams": list(CHAR_NGRAMS),
                "C": C,
                "seed": settings.seed,
            },
        }
    )
    if judgements is not None:
        write_parquet(judgements, held)
    if out is not None:
        write_json(out, result)
    return result
