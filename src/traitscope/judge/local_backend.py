"""The `local` backend: a prepared model variant run here, so the main job needs no network.

Batches the judge prompts by padded tokens and turns each forward pass's logits into
integer probabilities (the top-20 of one token, or the digit tree's).
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from traitscope.errors import TraitscopeError
from traitscope.judge.judgements import JudgeStats, Raw
from traitscope.judge.number_tree import _digit_start_mask, number_tokens, tree_logits, tree_number_probs
from traitscope.judge.scoring_rule import TOP_LOGPROBS, number_probs_from_top
from traitscope.model import chat, loading

LOGITS_BYTES = 1 << 30  # the logits of one judge pass: ~20 prompts with the digit tree on a 256K vocabulary


class LocalBackend:
    """A prepared model variant, run here: one forward pass per batch of judge prompts."""

    name = "local"

    def __init__(self, settings: dict, stats: JudgeStats) -> None:
        self.s = settings
        self.stats = stats
        manifest = Path(settings["manifest"])
        try:
            text = manifest.read_bytes()
        except OSError:
            raise TraitscopeError(f"{manifest}: judge model manifest not found; run prepare-model") from None
        self.model_id = (
            f"{settings.get('variant') or manifest.parent.name}:{hashlib.sha256(text).hexdigest()[:16]}"
        )
        self._model = None

    @property
    def model(self) -> str:
        return self.model_id

    def extra(self) -> dict:
        return {"prefill": self.s.get("prefill") or "", "rule": "top20-token-or-digit-tree"}

    def load(self) -> tuple[Any, Any]:
        if self._model is None:
            model, tokenizer = loading.load(self.s["manifest"], device=self.s.get("device"))
            self._model = (model, tokenizer)
            self.numbers = number_tokens(tokenizer, self.s.get("prefill") or "")
            self.digit_ids = _digit_start_mask(tokenizer, model.config.vocab_size).nonzero().squeeze(1)
            mode = "one token per number" if self.numbers.single else "digit tree"
            print(f"traitscope judge: local {self.model_id}, {mode}", file=sys.stderr)
        return self._model

    def score(self, prompts: Sequence[str]) -> list[Raw]:
        if not prompts:
            return []

        model, tokenizer = self.load()
        prefill = self.s.get("prefill") or ""
        encoded = [chat.encode(tokenizer, chat.messages_for(p), prefill=prefill).ids for p in prompts]
        out: list[Raw | None] = [None] * len(prompts)
        # logits kept per row, in the model's dtype: bounded to LOGITS_BYTES per pass. A 256K
        # vocabulary (Gemma) with the digit tree's 102 rows is 53 MB a prompt in bf16.
        row_bytes = (1 + len(self.numbers.nodes)) * model.config.vocab_size * model.dtype.itemsize
        max_rows = max(1, LOGITS_BYTES // row_bytes)
        for batch in _token_batches(encoded, self.s["max_tokens"], len(self.numbers.nodes), max_rows):
            self.stats.requests += 1
            for i, probs in zip(batch, self._forward([encoded[i] for i in batch])):
                out[i] = Raw(probs, "logprobs" if self.numbers.single else "digits", len(encoded[i]), 1)
        return out  # type: ignore[return-value]

    def _forward(self, rows: list[list[int]]) -> list[dict[int, float]]:
        import torch

        model, _ = self._model
        logits = tree_logits(model, rows, self.numbers.nodes)  # [b, 1 + n_nodes, vocab]
        if not self.numbers.single:
            return tree_number_probs(logits, self.numbers, self.digit_ids)
        top = torch.topk(torch.log_softmax(logits[:, 0].float(), dim=-1), TOP_LOGPROBS)
        return [
            number_probs_from_top([(self.numbers.text[i], v) for v, i in zip(values, indices)])
            for values, indices in zip(top.values.tolist(), top.indices.tolist())
        ]

    def close(self) -> None:
        self._model = None


def _token_batches(encoded: list[list[int]], max_tokens: int, extra: int, max_rows: int) -> list[list[int]]:
    """Prompts into batches of at most `max_tokens` padded tokens (tree included) and `max_rows`
    rows. Sorted by their tokens, prompts of one rubric and question end up together, so a batch
    shares a long prefix (run once) and pads little."""
    order = sorted(range(len(encoded)), key=lambda i: encoded[i])
    batches: list[list[int]] = []
    widest = 0
    for i in order:
        width = len(encoded[i]) + extra
        if (
            batches
            and len(batches[-1]) < max_rows
            and max(widest, width) * (len(batches[-1]) + 1) <= max_tokens
        ):
            batches[-1].append(i)
            widest = max(widest, width)
        else:
            batches.append([i])
            widest = width
    return batches
