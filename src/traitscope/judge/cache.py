"""The on-disk judgement cache (SQLite) and its key.

A rerun with nothing changed makes no judge call; the key covers the backend, the model, the
scoring settings and version, the rubric, the question and the answer.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path

SCORING_VERSION = 1  # bump when the scoring rule changes: the cache key includes it


class JudgeCache:
    """Judgements on disk, one SQLite row per key; safe for several jobs at once (WAL)."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = path
        if path is None:
            self.db = sqlite3.connect(":memory:")
        else:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(path), timeout=120)
            self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS judgements (key TEXT PRIMARY KEY, record TEXT NOT NULL)")
        self.db.commit()

    def get(self, keys: Sequence[str]) -> dict[str, dict]:
        out: dict[str, dict] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            rows = self.db.execute(
                f"SELECT key, record FROM judgements WHERE key IN ({','.join('?' * len(chunk))})", chunk
            )
            out.update({k: json.loads(r) for k, r in rows})
        return out

    def put(self, records: dict[str, dict]) -> None:
        if records:
            self.db.executemany(
                "INSERT OR REPLACE INTO judgements VALUES (?, ?)",
                [(k, json.dumps(v, sort_keys=True)) for k, v in records.items()],
            )
            self.db.commit()

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM judgements").fetchone()[0]

    def close(self) -> None:
        self.db.close()


def cache_key(backend: str, model: str, extra: dict, rubric: str, question: str, answer: str) -> str:
    """Hash of (backend, model, scoring settings, rubric, question, answer)."""
    content = json.dumps(
        [backend, model, {**extra, "scoring_version": SCORING_VERSION}, rubric, question, answer],
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(content.encode()).hexdigest()
