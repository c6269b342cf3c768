"""The Judge: scores items with a backend through the cache, and counts what every call cost.

Where the backends, the cache and the scoring rule meet; the stages and experiments use
only this.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from traitscope.errors import TraitscopeError
from traitscope.judge.cache import JudgeCache, cache_key
from traitscope.judge.judgements import Judgement, JudgeSettings, JudgeStats, Raw
from traitscope.judge.local_backend import LocalBackend
from traitscope.judge.openai_backend import OpenAIBackend
from traitscope.judge.rubrics import render
from traitscope.judge.scoring_rule import TOP_LOGPROBS, aggregate
from traitscope.judge.written_judge import WrittenJudge

CHUNK = 64  # judgements sent to the backend, then written to the cache, at a time


@dataclass(frozen=True)
class Item:
    """One thing to judge: the rubric, and the question and answer it is filled with."""

    rubric: str
    question: str
    answer: str


class Judge:
    """Scores items with a backend, through the cache; counts what every call cost."""

    def __init__(self, settings: JudgeSettings) -> None:
        self.settings = settings
        self.stats = JudgeStats()
        self.written = WrittenJudge(settings.classifier) if settings.backend == "classifier" else None
        self.backend: OpenAIBackend | LocalBackend | None = None
        if settings.llm_backend == "openai":
            self.backend = OpenAIBackend(settings.openai, self.stats)
        elif settings.llm_backend == "local":
            self.backend = LocalBackend(settings.local, self.stats)
        self.cache = JudgeCache(settings.cache)

    def key(self, item: Item) -> str:
        b = self._llm()
        return cache_key(b.name, b.model, b.extra(), item.rubric, item.question, item.answer)

    def _llm(self) -> OpenAIBackend | LocalBackend:
        if self.backend is None:
            raise TraitscopeError(
                "judge.backend classifier reads only the trait rubrics of its training set "
                "(resources/judge_train); this rubric (coherence, EM aligned/coherent, ...) needs an "
                "LLM: set judge.classifier.fallback to local or openai"
            )
        return self.backend

    def score(self, items: Sequence[Item]) -> list[Judgement]:
        """A judgement per item, in order: trait rubrics the classifier backend reads from it
        (no cache: a classifier judgement costs less than a cache look-up), the rest from the
        LLM backend through the cache, where cached ones cost nothing."""
        items = list(items)
        if self.written is None:
            return self._score_llm(items)
        mine = [i for i, item in enumerate(items) if self.written.reads(item.rubric)]
        results: list[Judgement | None] = [None] * len(items)
        for rubric in dict.fromkeys(items[i].rubric for i in mine):
            rows = [i for i in mine if items[i].rubric == rubric]
            scores = self.written.score(
                rubric, [items[i].question for i in rows], [items[i].answer for i in rows]
            )
            for i, s in zip(rows, scores):
                results[i] = Judgement(float(s), 1.0, "classifier", False)
        self.stats.judgements += len(mine)
        self.stats.computed += len(mine)
        rest = [i for i in range(len(items)) if results[i] is None]
        if rest:
            for i, j in zip(rest, self._score_llm([items[i] for i in rest])):
                results[i] = j
        return [j for j in results if j is not None]

    def _score_llm(self, items: Sequence[Item]) -> list[Judgement]:
        """A judgement per item from the LLM backend, through the cache."""
        keys = [self.key(item) for item in items]
        self.stats.judgements += len(items)
        found = self.cache.get(keys)
        todo = list(dict.fromkeys(k for k in keys if k not in found))
        self.stats.cache_hits += len(items) - len(todo)
        fresh: dict[str, Raw] = {}
        first = {k: item for k, item in reversed(list(zip(keys, items)))}
        size = max(CHUNK, 4 * self.settings.openai.get("max_concurrency", 0))  # keep requests in flight
        for start in range(0, len(todo), size):  # cached chunk by chunk: a killed run keeps its work
            chunk = todo[start : start + size]
            prompts = [render(first[k].rubric, first[k].question, first[k].answer) for k in chunk]
            raws = dict(zip(chunk, self._llm().score(prompts)))
            self.stats.computed += len(chunk)
            self.cache.put(
                {
                    k: {"probs": {str(n): p for n, p in r.probs.items() if p > 0}, "source": r.source}
                    for k, r in raws.items()
                    if r.probs is not None
                }
            )
            self._tally(raws.values())
            fresh.update(raws)
        results = []
        for k in keys:
            if k in found:
                probs = {int(n): p for n, p in found[k]["probs"].items()}
                source, cached = found[k]["source"], True
            else:
                raw = fresh[k]
                probs, source, cached = raw.probs, raw.source, False
            if probs is None:
                results.append(Judgement(None, 0.0, "failed", cached))
                continue
            score = aggregate(probs, self.settings.min_number_mass)
            mass = float(sum(p for _, p in sorted(probs.items())))
            results.append(Judgement(score, mass, source if score is not None else "none", cached))
        self.stats.no_score += sum(1 for j in results if j.score is None)
        return results

    def _tally(self, raws: Any) -> None:
        raws = list(raws)
        self.stats.failed += sum(r.probs is None for r in raws)
        self.stats.prompt_tokens += sum(r.prompt_tokens for r in raws)
        self.stats.completion_tokens += sum(r.completion_tokens for r in raws)
        prices = self.settings.openai if self.settings.llm_backend == "openai" else {}
        pin, pout = prices.get("price_per_million_input"), prices.get("price_per_million_output")
        if pin is not None and pout is not None:
            self.stats.cost_usd = (self.stats.prompt_tokens * pin + self.stats.completion_tokens * pout) / 1e6

    def scores(self, rubric: str, pairs: Sequence[tuple[str, str]]) -> list[float | None]:
        """Scores of (question, answer) pairs under one rubric."""
        return [j.score for j in self.score([Item(rubric, q, a) for q, a in pairs])]

    def describe(self) -> dict:
        """What results record about the judge: backend, model and settings, never a key; with the
        classifier backend, its description and the LLM fallback's (None: none)."""
        b = self.backend
        llm = None if b is None else {"backend": b.name, "model": b.model, "settings": b.extra()}
        common = {"min_number_mass": self.settings.min_number_mass, "top_logprobs": TOP_LOGPROBS}
        if self.written is None:
            return {**(llm or {}), **common}
        return {"backend": "classifier", "classifier": self.written.describe(), "fallback": llm, **common}

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
        self.cache.close()
