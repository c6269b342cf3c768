"""The scoring rule: which tokens read as an integer 0-100, and how their probabilities make
one score (or none).

Shared by both backends and the cache's read-back, so an API judgement, a local one and a
cached one are scored the same way.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

TOP_LOGPROBS = 20
NUMBERS = range(0, 101)


def as_number(token: str) -> int | None:
    """The integer 0-100 a token reads as (surrounding spaces allowed), else None."""
    text = token.strip()
    if not text.isascii() or not text.isdigit():
        return None
    value = int(text)
    return value if value in NUMBERS else None


def number_probs_from_top(top: Sequence[tuple[str, float]]) -> dict[int, float]:
    """{integer: probability} from one token's top logprobs [(token, logprob)]."""
    probs: dict[int, float] = {}
    for token, logprob in top:
        n = as_number(token)
        if n is not None:
            probs[n] = probs.get(n, 0.0) + math.exp(logprob)
    return probs


def aggregate(probs: dict[int, float], min_mass: float) -> float | None:
    """Probability-weighted mean over the integers; None when their mass is below `min_mass`.
    Summed in integer order, so a judgement read back from the cache gives the same float."""
    items = sorted(probs.items())
    mass = sum(p for _, p in items)
    if mass < min_mass or mass <= 0:
        return None
    return sum(n * p for n, p in items) / mass


NUMBER_IN_REPLY = re.compile(r"^\s*\**\s*(\d{1,3})(?:\.\d+)?\b")


def parse_reply(text: str | None) -> int | None:
    """A reply's leading number 0-100 (no logprobs to weigh), else None."""
    match = NUMBER_IN_REPLY.match(text or "")
    if not match:
        return None
    value = int(match[1])
    return value if value in NUMBERS else None
