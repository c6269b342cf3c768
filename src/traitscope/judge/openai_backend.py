"""The `openai` backend: any OpenAI-compatible chat API, one token with its top-20 logprobs.

Requests run concurrently, with retries and backoff on rate limits, server errors and
timeouts, every HTTP request counted; the API key is read from the environment only here.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from traitscope.errors import TraitscopeError
from traitscope.judge.judgements import JudgeStats, Raw
from traitscope.judge.scoring_rule import TOP_LOGPROBS, number_probs_from_top, parse_reply


class OpenAIBackend:
    """Chat completions on an OpenAI-compatible server: one token, top-20 logprobs."""

    name = "openai"

    def __init__(self, settings: dict, stats: JudgeStats) -> None:
        self.s = settings
        self.stats = stats
        self.lock = threading.Lock()
        self._client = None

    @property
    def model(self) -> str:
        return f"{self.s['model']}@{self.s.get('base_url') or 'https://api.openai.com/v1'}"

    def extra(self) -> dict:
        return {"top_logprobs": TOP_LOGPROBS, "temperature": 0}

    def client(self) -> Any:
        if self._client is None:
            try:
                from openai import OpenAI
            except ImportError:
                raise TraitscopeError(
                    "judge.backend openai needs the openai package: pip install openai"
                ) from None
            env = self.s.get("api_key_env")
            key = os.environ.get(env) if env else "not-needed"
            if not key:
                raise TraitscopeError(
                    f"judge.openai.api_key_env: environment variable {env} is not set; export the API key "
                    "there (or set api_key_env: null for a server that needs none)"
                )
            self._client = OpenAI(
                api_key=key, base_url=self.s.get("base_url"), timeout=self.s["timeout"], max_retries=0
            )
        return self._client

    def _count(self, **deltas: int) -> None:
        with self.lock:
            for k, v in deltas.items():
                setattr(self.stats, k, getattr(self.stats, k) + v)

    def _one(self, prompt: str) -> Raw:
        import openai

        client = self.client()
        retryable = (
            openai.RateLimitError,
            openai.InternalServerError,
            openai.APITimeoutError,
            openai.APIConnectionError,
        )
        for attempt in range(self.s["max_retries"] + 1):
            self._count(requests=1)
            try:
                reply = client.chat.completions.create(
                    model=self.s["model"],
                    messages=[{"role": "user", "content": prompt}],
                    max_tokens=1,
                    temperature=0,
                    logprobs=True,
                    top_logprobs=TOP_LOGPROBS,
                    seed=0,
                )
            except retryable as error:
                if attempt == self.s["max_retries"]:
                    print(
                        f"traitscope judge: giving up after {attempt + 1} tries ({type(error).__name__})",
                        file=sys.stderr,
                    )
                    return Raw(None, "failed")
                self._count(retries=1)
                time.sleep(self._delay(error, attempt))
                continue
            except (openai.APIResponseValidationError, ValueError, TypeError) as error:
                print(f"traitscope judge: malformed reply ({type(error).__name__})", file=sys.stderr)
                return Raw(None, "failed")
            return self._read(reply)
        return Raw(None, "failed")

    def _delay(self, error: Exception, attempt: int) -> float:
        """Retry-After when the server sends one (capped), else backoff x 2^attempt."""
        response = getattr(error, "response", None)
        header = response.headers.get("retry-after") if response is not None else None
        try:
            if header is not None:
                return min(float(header), 60.0)
        except ValueError:
            pass
        return self.s["backoff"] * 2**attempt

    def _read(self, reply: Any) -> Raw:
        usage = getattr(reply, "usage", None)
        tokens = {
            "prompt_tokens": int(getattr(usage, "prompt_tokens", 0) or 0),
            "completion_tokens": int(getattr(usage, "completion_tokens", 0) or 0),
        }
        try:
            choice = reply.choices[0]
        except (AttributeError, IndexError, TypeError):
            print("traitscope judge: malformed reply (no choices)", file=sys.stderr)
            return Raw(None, "failed", **tokens)
        content = getattr(getattr(choice, "logprobs", None), "content", None)
        if content:
            top = [(t.token, t.logprob) for t in (content[0].top_logprobs or [])]
            if not top and content[0].token is not None:
                top = [(content[0].token, content[0].logprob)]
            return Raw(number_probs_from_top(top), "logprobs", **tokens)
        text = getattr(getattr(choice, "message", None), "content", None)
        if not isinstance(text, str):
            print("traitscope judge: malformed reply (no logprobs, no text)", file=sys.stderr)
            return Raw(None, "failed", **tokens)
        number = parse_reply(text)
        return Raw({number: 1.0} if number is not None else {}, "parsed", **tokens)

    def score(self, prompts: Sequence[str]) -> list[Raw]:
        if not prompts:
            return []
        self.client()  # a missing key fails here, once, not in every thread
        with ThreadPoolExecutor(max_workers=self.s["max_concurrency"]) as pool:
            return list(pool.map(self._one, prompts))

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
