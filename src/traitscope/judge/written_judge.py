"""The classifier backend: trait rubrics scored by classifiers fitted on the project's written answers.

Why: the local LLM judge (SmolLM2-135M, and Gemma 3 270M) cannot read the persona traits even
in plain answers (truth-set AUC 0.37-0.76). A classifier fitted on the written training set
(`resources/judge_train/`: per extraction question one answer that shows the trait and one
that does not) reads them: truth-set AUC 0.98-1.0 with Gemma 3 270M embeddings on evil, harm,
refusal and sycophancy (`benchmarks/results/judge_written_*.txt`). Deception it does not read
(0.74-0.85): a false fact reads like a true one. Where a trait has reference facts
(`<references>/<group>/<trait>.yaml`, traitscope.judge.references), its score is the mean of
the classifier's and a reference scorer's, both fitted on the training set: that reads
deception (truth-set AUC 0.95). The agreement gate shows each trait's agreement.

What: `judge.backend: classifier` with `judge.classifier: {features, training, traits_dir,
references, reader_manifest, fallback}`. A rubric is a trait's when it is the `judge_rubric` of a trait
that has a training file (`<training>/<group>/<trait>.yaml`, the trait read from
`<traits_dir>/<group>/<trait>.yaml`); its score is P(shows the trait | answer) x 100, on the
LLM judge's scale, so CMA-ES fitness, the judge filter and agreement read it unchanged.
`references`: the folder of reference facts, or null for none.
`features`: `tfidf` (traitscope.judge.classifier) or `embedding` (traitscope.judge.embedding
on the reader's pooled hidden states; layer and C by grouped CV within the training set).
Every other rubric (coherence, EM's aligned/coherent) goes to `fallback` (`local` or
`openai`, the LLM backends as they are); with `fallback: null` it is an error naming the rubric.

Fitted per trait on first use, on the training set only (`training_table` refuses an
evaluation question), so agreement on the evaluation split (the truth set, a run's held-out
answers) is never in-sample. Scoring an extraction-split answer (the judge filter, CMA-ES's
training questions) is allowed: that is a use of the judge, not a measure of it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from traitscope.data.traits import load_trait
from traitscope.errors import TraitscopeError
from traitscope.judge.classifier import AnswerClassifier
from traitscope.judge.embedding import EmbeddingClassifier, answer_states
from traitscope.judge.references import ReferenceScorer, load_references
from traitscope.judge.truth_set import training_table
from traitscope.model import loading

FEATURES = ("tfidf", "embedding")


@dataclass(frozen=True)
class TraitSet:
    """A trait the backend can read: its name, training file, trait file and reference facts."""

    name: str
    training: Path
    trait_file: Path
    references: Path | None


class WrittenJudge:
    """Per trait rubric, a classifier fitted on the written training set; 0-100 scores."""

    def __init__(self, settings: dict) -> None:
        self.features = settings.get("features", "embedding")
        if self.features not in FEATURES:
            raise TraitscopeError(
                f"judge.classifier.features must be one of {', '.join(FEATURES)}, got {self.features!r}"
            )
        self.reader_manifest = settings.get("reader_manifest")
        if self.features == "embedding" and not self.reader_manifest:
            raise TraitscopeError(
                "judge.classifier.features embedding needs a reader model: set judge.classifier.reader "
                "(a models: variant)"
            )
        training = Path(settings.get("training") or "resources/judge_train")
        traits_dir = Path(settings.get("traits_dir") or "resources/traits")
        references = settings.get("references")
        if references and not Path(references).is_dir():
            raise TraitscopeError(
                f"judge.classifier.references {references} is not a folder; fix the path (null: no facts)"
            )
        files = sorted(training.glob("*/*.yaml"))
        if not files:
            raise TraitscopeError(
                f"{training}: no training files (<group>/<trait>.yaml); fix judge.classifier.training"
            )
        self.traits: dict[str, TraitSet] = {}
        digest = hashlib.sha256()
        for path in files:
            name = path.relative_to(training).with_suffix("").as_posix()
            trait_file = traits_dir / f"{name}.yaml"
            if not trait_file.is_file():
                raise TraitscopeError(f"{path}: no trait file {trait_file}; fix judge.classifier.traits_dir")
            facts = Path(references) / f"{name}.yaml" if references else None
            facts = facts if facts is not None and facts.is_file() else None
            self.traits[load_trait(trait_file).judge_rubric] = TraitSet(name, path, trait_file, facts)
            digest.update(name.encode() + b"\0" + path.read_bytes() + trait_file.read_bytes())
            digest.update(b"\0" + (facts.read_bytes() if facts else b""))
        self.digest = digest.hexdigest()[:16]
        self._fitted: dict[str, Any] = {}
        self._reader: tuple[Any, Any] | None = None

    def reads(self, rubric: str) -> bool:
        """Whether a rubric is a trait rubric this backend has a training set for."""
        return rubric in self.traits

    def score(self, rubric: str, questions: Sequence[str], answers: Sequence[str]) -> np.ndarray:
        """P(shows the trait) x 100 per (question, answer), for a rubric `reads` accepts."""
        if not self.reads(rubric):
            raise TraitscopeError("classifier judge: not a trait rubric it has a training set for")
        if not answers:
            return np.zeros(0)
        clf, ref = self._fit(self.traits[rubric])
        if self.features == "tfidf":
            scores = clf.score(list(answers))
        else:
            x = answer_states(*self.reader(), list(questions), list(answers))
            scores = clf.model.predict_proba(x[:, clf.layer])[:, 1] * 100.0
        if ref is None:
            return scores
        return (scores + ref.score(list(questions), list(answers))) / 2

    def _fit(self, trait: TraitSet) -> tuple[Any, ReferenceScorer | None]:
        """The trait's classifier and, where it has reference facts, its reference scorer."""
        if trait.name not in self._fitted:
            train = training_table(trait.training, trait.trait_file)
            columns = (train["label"], train["split"], train["prompt_id"], train["question"])
            if self.features == "tfidf":
                clf: Any = AnswerClassifier.fit(train["response"], *columns)
            else:
                x = answer_states(*self.reader(), train["question"].tolist(), train["response"].tolist())
                clf = EmbeddingClassifier.fit(x, *columns)
            ref = None
            if trait.references is not None:
                facts = load_references(trait.references, trait.trait_file)
                ref = ReferenceScorer.fit(
                    facts,
                    trait.references,
                    train["question"].tolist(),
                    train["response"].tolist(),
                    train["label"],
                )
            self._fitted[trait.name] = (clf, ref)
        return self._fitted[trait.name]

    def reader(self) -> tuple[Any, Any]:
        """The reader model and tokenizer (embedding features), loaded once."""
        if self._reader is None:
            self._reader = loading.load(self.reader_manifest)
        return self._reader

    def describe(self) -> dict:
        """What results record: features, the training set's digest, the reader's manifest digest."""
        out = {
            "features": self.features,
            "training_sha256": self.digest,
            "traits": sorted(t.name for t in self.traits.values()),
            "references": sorted(t.name for t in self.traits.values() if t.references is not None),
        }
        if self.features == "embedding":
            text = Path(self.reader_manifest).read_bytes() if Path(self.reader_manifest).is_file() else b""
            out["reader"] = (
                f"{Path(self.reader_manifest).parent.name}:{hashlib.sha256(text).hexdigest()[:16]}"
            )
        return out
