"""The `local` backend: a prepared model variant run here, so the main job needs no network.

Batches the judge prompts by padded tokens and turns each forward pass's logits into
integer probabilities (the top-20 of one token, or the digit tree's).
"""

from __future__ import annotations

import hashlib
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from traitscope.errors import TraitscopeError
from traitscope.judge.judgements import JudgeStats, Raw
from traitscope.judge.number_tree import _digit_start_mask, number_tokens, tree_logits
from traitscope.judge.scoring_rule import TOP_LOGPROBS, number_probs_from_top
from traitscope.model import chat, loading


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
            self.digit_start = _digit_start_mask(tokenizer, model.config.vocab_size)
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
        width = 1 + len(self.numbers.nodes)  # logits kept per row: bounded to ~256 MB per pass
        max_rows = max(1, int(256e6 // (4 * width * model.config.vocab_size)))
        for batch in _token_batches(encoded, self.s["max_tokens"], len(self.numbers.nodes), max_rows):
            self.stats.requests += 1
            for i, probs in zip(batch, self._forward([encoded[i] for i in batch])):
                out[i] = Raw(probs, "logprobs" if self.numbers.single else "digits", len(encoded[i]), 1)
        return out  # type: ignore[return-value]

    def _forward(self, rows: list[list[int]]) -> list[dict[int, float]]:
        import torch

        model, _ = self._model
        logits = tree_logits(model, rows, self.numbers.nodes)  # [b, 1 + n_nodes, vocab]
        digit = self.digit_start.to(logits.device)
        results = []
        for b in range(len(rows)):
            logp = torch.log_softmax(logits[b].float(), dim=-1)  # one row at a time: [1 + n_nodes, vocab]
            if self.numbers.single:
                top = torch.topk(logp[0], TOP_LOGPROBS)
                results.append(
                    number_probs_from_top(
                        [(self.numbers.text[int(i)], float(v)) for v, i in zip(top.values, top.indices)]
                    )
                )
                continue
            ends = (1 - logp.exp()[:, digit].sum(-1)).clamp(min=0).tolist()  # P(no digit follows) per node
            probs = {}
            for n, path in self.numbers.paths.items():
                lp = sum(float(logp[parent + 1, token]) for parent, token, _ in path)
                probs[n] = math.exp(lp) * ends[path[-1][2] + 1]
            results.append(probs)
        return results

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
