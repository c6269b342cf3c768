"""An offline judge that reads the answers themselves: a text classifier, not a rubric.

Why: the default local LLM judge (SmolLM2-135M, a rubric and a "Score: " lead-in) cannot tell
positive- from negative-instruction answers apart (agreement AUC about 0.43 on safety/evil),
so every judge-based row is gated out. A persona trait's prompt set already holds labelled
answers: each question answered under the eliciting (label 1) and the suppressing (label 0)
system prompt. A classifier fitted on those answers reads whatever in the answers' words
differs between the two instructions, at a fraction of a CPU-millisecond per answer.

What: TF-IDF of word 1-2 grams and of character 2-5 grams (within words: spelling, stems,
punctuation), side by side, and an L2 logistic regression with a fixed seed; the score of an
answer is P(label 1) x 100, on the LLM judge's 0-100 scale. The answer alone is read, never
the question or the system prompt, so the classifier can only use what the model did.

No leak: it is fitted only on the extraction split (`fit` refuses any other row) and remembers
what it was fitted on (prompt ids and questions); `score_rows` refuses a row it was fitted on,
or one whose question it saw, so a held-out AUC is never an in-sample AUC.

Settings are fixed, not tuned on held-out answers: C=1 and the n-gram ranges are scikit-learn's
usual choices for short texts. The classifier is a detector of the instruction's surface in the
answers, not of the trait as a rubric defines it: where the model does not follow the
instruction, it has nothing to read and its AUC shows that.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from traitscope.errors import TraitscopeError
from traitscope.io import write_json, write_parquet
from traitscope.judge.settings import AgreementSettings

FIT_SPLIT = "extraction"
WORD_NGRAMS = (1, 2)
CHAR_NGRAMS = (2, 5)
C = 1.0


@dataclass
class AnswerClassifier:
    """A fitted TF-IDF + logistic-regression scorer of answers (0-100) and what it was fitted on."""

    words: Any  # TfidfVectorizer (word n-grams)
    chars: Any  # TfidfVectorizer (character n-grams)
    model: Any  # LogisticRegression
    fitted_ids: frozenset[str] = field(default_factory=frozenset)
    fitted_questions: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def fit(
        cls,
        answers: Sequence[str],
        labels: Sequence[int],
        splits: Sequence[str],
        prompt_ids: Sequence[str] | None = None,
        questions: Sequence[str] | None = None,
        seed: int = 0,
    ) -> AnswerClassifier:
        """Fit on extraction-split answers only (label 1: positive instruction, 0: negative).

        `splits` is required so a caller cannot hand over held-out rows by accident: any row
        not of the extraction split is an error, as are a single label or mismatched lengths.
        """
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        answers = list(answers)
        ids = list(prompt_ids) if prompt_ids is not None else []
        qs = list(questions) if questions is not None else []
        labels = check_fit_rows(len(answers), labels, splits, ids)
        words = TfidfVectorizer(ngram_range=WORD_NGRAMS, sublinear_tf=True)
        chars = TfidfVectorizer(analyzer="char_wb", ngram_range=CHAR_NGRAMS, sublinear_tf=True, min_df=2)
        x = _stack(words.fit_transform(answers), chars.fit_transform(answers))
        model = LogisticRegression(C=C, max_iter=5000, random_state=seed)
        model.fit(x, labels)
        return cls(words, chars, model, frozenset(ids), frozenset(qs))

    def score(self, answers: Sequence[str]) -> np.ndarray:
        """P(positive instruction | answer) x 100 per answer, in order (the judge's 0-100 scale)."""
        answers = list(answers)
        if not answers:
            return np.zeros(0)
        x = _stack(self.words.transform(answers), self.chars.transform(answers))
        return self.model.predict_proba(x)[:, 1] * 100.0

    def score_rows(
        self, answers: Sequence[str], prompt_ids: Sequence[str], questions: Sequence[str]
    ) -> np.ndarray:
        """`score`, after checking no row (prompt id) or question was among those it was fitted on."""
        check_held_out("answer classifier", self.fitted_ids, self.fitted_questions, prompt_ids, questions)
        return self.score(answers)


def check_fit_rows(n: int, labels: Sequence[int], splits: Sequence[str], ids: Sequence[str]) -> np.ndarray:
    """The labels as an array, once the rows are fit to fit on: all of the extraction split
    (held-out answers are what a judge is scored on), both labels, lengths that agree."""
    labels, splits, ids = np.asarray(labels, dtype=int), list(splits), list(ids)
    if not (n == len(labels) == len(splits)) or (ids and len(ids) != n):
        raise TraitscopeError("answer classifier: answers, labels, splits (and ids) differ in length")
    held = [s for s in splits if s != FIT_SPLIT]
    if held:
        raise TraitscopeError(
            f"answer classifier: {len(held)} row(s) of split {held[0]!r} given to fit; it is "
            f"fitted on the {FIT_SPLIT} split only (held-out answers are what it is scored on)"
        )
    if set(labels.tolist()) != {0, 1}:
        raise TraitscopeError(f"answer classifier: needs labels 0 and 1, got {sorted(set(labels.tolist()))}")
    return labels


def check_held_out(
    who: str,
    fitted_ids: frozenset[str],
    fitted_questions: frozenset[str],
    prompt_ids: Sequence[str],
    questions: Sequence[str],
) -> None:
    """Refuse scoring a row (prompt id) or a question the scorer was fitted on."""
    seen_ids = sorted(fitted_ids & set(prompt_ids))
    seen_qs = sorted(fitted_questions & set(questions))
    if seen_ids or seen_qs:
        what = f"prompt {seen_ids[0]!r}" if seen_ids else f"question {seen_qs[0][:60]!r}"
        raise TraitscopeError(
            f"{who}: {len(seen_ids) or len(seen_qs)} scored row(s) were fitted on "
            f"(e.g. {what}); score held-out answers only"
        )


def _stack(a: Any, b: Any) -> Any:
    from scipy.sparse import hstack

    return hstack([a, b]).tocsr()


def answer_table(prompts: str | Path, capture_json: str | Path) -> Any:
    """A persona trait's prompt rows with their captured answers (`response`), both splits.

    A prompt-contrast trait (captured without generation, so no answers) is an error.
    """
    import pandas as pd

    from traitscope.capture.store import read_responses
    from traitscope.judge.stages import JUDGEMENT_COLUMNS

    table = pd.read_parquet(prompts)
    missing = [c for c in JUDGEMENT_COLUMNS if c not in table.columns]
    if missing:
        raise TraitscopeError(f"{prompts}: missing column(s) {', '.join(missing)}; rerun trait-prompts")
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
    from traitscope.judge.stages import agreement_record

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
