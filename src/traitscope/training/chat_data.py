"""Chat training data: JSONL conversations -> token ids with an assistant-token mask.

Rows are `{"messages": [{"role": ..., "content": ...}, ...]}` (the emergent-misalignment
format). Assistant tokens are found from the rendered chat template itself: the text up to
each assistant turn is rendered with the generation prompt, so the turn starts where that
prefix ends, whatever the model family's markup. Every row is checked before training
starts, so a bad line fails in seconds, not after an hour of training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traitscope.errors import TraitscopeError
from traitscope.model.chat import apply_template, render_prompt

FORMAT = '{"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}]}'


@dataclass(frozen=True)
class Example:
    """One tokenised conversation; `targets[i]` marks token i as assistant text (trained on)."""

    ids: list[int]
    targets: list[bool]
    line: int
    truncated: bool

    @property
    def n_targets(self) -> int:
        """Tokens the loss covers: assistant tokens with a token before them to predict from."""
        return sum(self.targets[1:])


def read_chat_jsonl(
    path: str | Path, fix: str = "fix finetune.data"
) -> list[tuple[int, list[dict[str, str]]]]:
    """(line number, messages) per non-blank line; a bad row names its line and the fix (`fix`
    for a file that is missing or unreadable as a whole)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TraitscopeError(f"{path}: training file not found; {fix}") from None
    except (UnicodeDecodeError, OSError):
        raise TraitscopeError(f"{path}: cannot read as UTF-8 text; {fix}") from None
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TraitscopeError(f"{where}: malformed JSON ({exc.msg}); one {FORMAT} per line") from None
        messages = row.get("messages") if isinstance(row, dict) else None
        if not isinstance(messages, list) or not messages:
            raise TraitscopeError(f"{where}: no `messages` list; each row must be {FORMAT}")
        for i, msg in enumerate(messages):
            if not (
                isinstance(msg, dict)
                and isinstance(msg.get("role"), str)
                and isinstance(msg.get("content"), str)
            ):
                raise TraitscopeError(f"{where}: message {i} needs string `role` and `content`; fix the row")
        if not any(msg["role"] == "assistant" for msg in messages):
            raise TraitscopeError(f"{where}: no assistant turn, nothing to train on; add one or drop the row")
        if messages[0]["role"] == "assistant":  # the template renders no conversation before it
            raise TraitscopeError(
                f"{where}: the first turn is the assistant's; start with a user (or system) turn"
            )
        rows.append((lineno, messages))
    if not rows:
        raise TraitscopeError(f"{path}: no training rows (empty file); write one {FORMAT} per line")
    return rows


def assistant_spans(tokenizer: Any, messages: list[dict[str, str]], where: str) -> tuple[str, list[range]]:
    """The rendered conversation and the character span of each assistant turn.

    A span covers the turn's content and the end-of-turn marker after it (trailing whitespace
    dropped), so the model also learns where to stop.
    """
    try:
        text = apply_template(tokenizer, messages, add_generation_prompt=False)
    except TraitscopeError as exc:
        raise TraitscopeError(f"{where}: {exc}") from None
    spans = []
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        after = _common_prefix(render_prompt(tokenizer, messages[:i]), text)
        # templates such as Llama 3's trim the content: look for the trimmed text too
        content = next(
            (c for c in (msg["content"], msg["content"].strip()) if text.find(c, after) >= 0), None
        )
        if content is None:
            raise TraitscopeError(
                f"{where}: the chat template rewrites assistant turn {i}, so its tokens cannot be "
                "found; set models.<variant>.chat_template to one that keeps message text"
            )
        start = text.find(content, after)
        end = start + len(content)
        turn = apply_template(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if text.startswith(turn) and turn[end:].strip():
            end = len(turn.rstrip())
        spans.append(range(start, end))
    return text, spans


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def tokenize_chat(
    tokenizer: Any, messages: list[dict[str, str]], max_length: int, where: str, line: int
) -> Example:
    """Token ids of the rendered conversation (cut to max_length) and its assistant mask."""
    text, spans = assistant_spans(tokenizer, messages, where)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    # a token is assistant text if any of its characters is (a merged boundary token included)
    targets = [any(a < s.stop and b > s.start for s in spans) for a, b in enc["offset_mapping"]]
    ids = list(enc["input_ids"])
    return Example(ids[:max_length], targets[:max_length], line, len(ids) > max_length)


def tokenize_rows(
    path: str | Path, rows: list[tuple[int, list[dict[str, str]]]], tokenizer: Any, max_length: int
) -> tuple[list[Example], int]:
    """Every row of `read_chat_jsonl(path)` tokenised, and how many were dropped: cut by
    max_length before any assistant token."""
    examples = [
        tokenize_chat(tokenizer, messages, max_length, f"{path} line {line}", line) for line, messages in rows
    ]
    kept = [ex for ex in examples if ex.n_targets]
    if not kept:
        raise TraitscopeError(
            f"{path}: max_length {max_length} cuts every row before its assistant turn; "
            "raise finetune.max_length"
        )
    return kept, len(examples) - len(kept)
