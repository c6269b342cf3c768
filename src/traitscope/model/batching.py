"""Length-sorted, token-budget batches: minimal padding without a fixed batch size."""

from __future__ import annotations

from collections.abc import Iterator, Sequence


def token_budget_batches(
    lengths: Sequence[int], max_tokens: int, max_batch: int = 256
) -> Iterator[list[int]]:
    """Yield index lists sorted by length so each padded batch holds at most `max_tokens`.

    A sequence longer than the budget still gets a batch of its own rather than failing.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batch: list[int] = []
    for i in order:
        longest = lengths[i]  # sorted ascending: the newest item is the longest
        if batch and (longest * (len(batch) + 1) > max_tokens or len(batch) >= max_batch):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch
