"""A small OpenAI-compatible chat-completions server on 127.0.0.1 for the judge tests.

The tests drive the real `openai` client against it. The requested model name picks the
behaviour: `logprobs` (top-20 logprobs from a score derived from the answer), `nologprobs`
(a bare "73"), `lowmass` (mostly words), `malformed` (a body that is not JSON),
`nochoices` (JSON without choices), `ratelimit` (429 then success, per prompt), `slow`
(too slow once, per prompt) and `hang` (always too slow).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def planted_score(prompt: str) -> int:
    """The server's judgement: a number 0-100 derived from the answer in the prompt."""
    match = re.search(r"ANSWER:(.*?)END", prompt, re.S)
    answer = match[1] if match else prompt
    return int(hashlib.sha256(answer.encode()).hexdigest(), 16) % 101


def top_logprobs(score: int) -> list[dict]:
    """60% on the score, 30% on a neighbour, 10% on a word (hand-checkable mean)."""
    other = min(100, score + 10)
    entries = [(str(score), 0.6), (str(other), 0.3), ("The", 0.1)]
    return [{"token": t, "logprob": math.log(p), "bytes": None} for t, p in entries]


def expected_score(score: int) -> float:
    other = min(100, score + 10)
    return (0.6 * score + 0.3 * other) / 0.9


class JudgeServer:
    def __init__(self, delay: float = 1.0) -> None:
        self.requests: list[dict] = []  # {model, prompt, authorization}
        self.seen: dict[tuple[str, str], int] = {}
        self.delay = delay
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][-1]["content"]
                model = body["model"]
                with server.lock:
                    server.requests.append(
                        {"model": model, "prompt": prompt, "authorization": self.headers.get("Authorization")}
                    )
                    key = (model, prompt)
                    server.seen[key] = server.seen.get(key, 0) + 1
                    first = server.seen[key] == 1
                if model == "ratelimit" and first:
                    return self._send(429, {"error": {"message": "slow down"}}, {"Retry-After": "0"})
                if (model == "slow" and first) or model == "hang":
                    time.sleep(server.delay)
                if model == "malformed":
                    return self._raw(200, b'{"choices": [ not json')
                if model == "nochoices":
                    return self._send(
                        200, {"id": "x", "object": "chat.completion", "created": 0, "model": model}
                    )
                score = planted_score(prompt)
                message = {"role": "assistant", "content": str(score)}
                logprobs = {
                    "content": [
                        {
                            "token": str(score),
                            "logprob": math.log(0.6),
                            "bytes": None,
                            "top_logprobs": top_logprobs(score),
                        }
                    ]
                }
                if model == "lowmass":
                    logprobs["content"][0]["top_logprobs"] = [
                        {"token": "The", "logprob": math.log(0.8), "bytes": None},
                        {"token": "42", "logprob": math.log(0.1), "bytes": None},
                    ]
                choice = {
                    "index": 0,
                    "message": message,
                    "finish_reason": "length",
                    "logprobs": None if model == "nologprobs" else logprobs,
                }
                if model == "nologprobs":
                    message["content"] = "73"
                self._send(
                    200,
                    {
                        "id": "chatcmpl-test",
                        "object": "chat.completion",
                        "created": 0,
                        "model": model,
                        "choices": [choice],
                        "usage": {
                            "prompt_tokens": len(prompt.split()),
                            "completion_tokens": 1,
                            "total_tokens": len(prompt.split()) + 1,
                        },
                    },
                )

            def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
                self._raw(status, json.dumps(payload).encode(), headers)

            def _raw(self, status: int, data: bytes, headers: dict | None = None) -> None:
                try:
                    self.send_response(status)
                    for k, v in {"Content-Type": "application/json", **(headers or {})}.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def count(self, model: str | None = None) -> int:
        with self.lock:
            return sum(1 for r in self.requests if model is None or r["model"] == model)

    def __enter__(self) -> JudgeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
