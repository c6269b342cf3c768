"""Contrastive responses: each question answered under a trait-eliciting and a
trait-suppressing system prompt, so activation differences isolate the trait."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from traitscope import chat, models
from traitscope.generate import generate
from traitscope.io import write_parquet
from traitscope.traits import Trait, load_trait


@dataclass(frozen=True)
class ResponseSettings:
    """How many responses to make, and how to decode them."""

    max_new_tokens: int = 32
    pairs_per_question: int = 2
    n_extraction: int | None = None  # None: every extraction question
    n_evaluation: int | None = None
    temperature: float = 0.0
    seed: int = 0
    max_tokens: int = 8192


def contrastive_rows(trait: Trait, settings: ResponseSettings) -> pd.DataFrame:
    """One row per (split, question, pair, polarity); pairs rotate across questions so
    every instruction pair is used even when each question gets only a few."""
    rows = []
    n_pairs = len(trait.pairs)
    per_q = min(settings.pairs_per_question, n_pairs)
    for split, questions, limit in (
        ("extraction", trait.extraction_questions, settings.n_extraction),
        ("evaluation", trait.evaluation_questions, settings.n_evaluation),
    ):
        for qi, question in enumerate(questions[:limit]):
            for k in range(per_q):
                pi = (qi + k) % n_pairs
                for label, system in ((1, trait.pairs[pi].positive), (0, trait.pairs[pi].negative)):
                    rows.append(
                        {
                            "prompt_id": f"{trait.name}:{split}:q{qi}:p{pi}:{'pos' if label else 'neg'}",
                            "trait": trait.name,
                            "split": split,
                            "label": label,
                            "pair_index": pi,
                            "question": question,
                            "system": system,
                        }
                    )
    return pd.DataFrame(rows)


def run(
    model_manifest: str | Path,
    trait_file: str | Path,
    out: str | Path,
    settings: ResponseSettings,
    trait_name: str | None = None,
) -> pd.DataFrame:
    """Generate every contrastive response for one trait and write them as Parquet."""
    trait = load_trait(trait_file, trait_name)
    model, tokenizer = models.load(model_manifest)
    table = contrastive_rows(trait, settings)
    prompts = [
        chat.encode(tokenizer, chat.messages_for(r.question, r.system)).ids for r in table.itertuples()
    ]
    generated = generate(
        model,
        tokenizer,
        prompts,
        settings.max_new_tokens,
        settings.max_tokens,
        settings.temperature,
        settings.seed,
    )
    table["response"] = [tokenizer.decode(g, skip_special_tokens=True) for g in generated]
    table["n_response_tokens"] = [len(g) for g in generated]
    table["trait_sha256"] = trait.sha256
    write_parquet(out, table)
    return table
