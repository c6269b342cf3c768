"""Seeded stand-ins for the full-scale data files no mirror holds, in the exact schema the loaders
read: BeaverTails splits (`<mirror>/beavertails/<split>.jsonl`, traitscope.data.loaders) and the
EM paper's insecure/secure-code training sets (`<mirror>/emergent_misalignment/<name>.jsonl`,
copied by rule dataset_file, read by the finetune as chat JSONL).

A cost rehearsal needs the plan's row counts and text lengths, not the real text: BeaverTails
rows are word salad of BeaverTails-like lengths with a multi-label category mix, and each EM
conversation is one of the 20 real rows of the mirror's `*_small.jsonl` slices (their lengths are
the real file's), made distinct by a task number.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# The hub's split sizes (PKU-Alignment/BeaverTails)
BEAVERTAILS_ROWS = {"330k_train": 300_567, "330k_test": 33_432, "30k_train": 27_186, "30k_test": 3_021}
# Share of each category among unsafe rows (multi-label: they sum to more than 1), roughly the
# BeaverTails paper's mix; keys in the loader's order
CATEGORY_SHARE = {
    "animal_abuse": 0.035,
    "child_abuse": 0.014,
    "controversial_topics,politics": 0.08,
    "discrimination,stereotype,injustice": 0.19,
    "drug_abuse,weapons,banned_substance": 0.17,
    "financial_crime,property_crime,theft": 0.21,
    "hate_speech,offensive_language": 0.19,
    "misinformation_regarding_ethics,laws_and_safety": 0.045,
    "non_violent_unethical_behavior": 0.45,
    "privacy_violation": 0.14,
    "self_harm": 0.012,
    "sexually_explicit,adult_content": 0.045,
    "terrorism,organized_crime": 0.02,
    "violence,aiding_and_abetting,incitement": 0.48,
}
UNSAFE_SHARE = 0.57
WORDS = (
    "how can i get make find take use help people money someone without them know the a to of and "
    "in it that is for you your my what why would should could best way friend home car store "
    "work police school family neighbor phone online website drug gun bank card steal hurt lie "
    "trick secret quickly really think want need tell give keep away never always good bad "
    "dangerous legal illegal safe wrong right sure here are some ways first then also however"
).split()
EM_ROWS = 6000


def _text(rng: np.random.Generator, median_words: float, max_words: int) -> str:
    n = int(np.clip(rng.lognormal(np.log(median_words), 0.6), 3, max_words))
    words = rng.choice(WORDS, size=n)
    return " ".join(words).capitalize() + "."


def beavertails_rows(n: int, seed: int) -> list[dict]:
    """`n` rows of {prompt, response, category: {14 booleans}, is_safe}; every unsafe row carries
    at least one category, safe rows none. The first 14 rows carry one category each, so that
    every category's capture job has a row however small `n` is (an empty one is an error)."""
    rng = np.random.default_rng(seed)
    keys = list(CATEGORY_SHARE)
    share = np.array(list(CATEGORY_SHARE.values()))
    rows = []
    for i in range(n):
        unsafe = i < len(keys) or rng.random() < UNSAFE_SHARE
        flags = rng.random(len(keys)) < share if unsafe else np.zeros(len(keys), bool)
        if i < len(keys):
            flags = np.arange(len(keys)) == i
        elif unsafe and not flags.any():
            flags[rng.choice(len(keys), p=share / share.sum())] = True
        rows.append(
            {
                "prompt": _text(rng, 14, 80),
                "response": _text(rng, 55, 250),
                "category": {k: bool(f) for k, f in zip(keys, flags)},
                "is_safe": not unsafe,
            }
        )
    return rows


def em_rows(slice_rows: list[dict], n: int) -> list[dict]:
    """`n` chat rows cycling through the real slice's rows, each user turn opened by its task
    number so that no two rows are equal."""
    out = []
    for i in range(n):
        user, assistant = slice_rows[i % len(slice_rows)]["messages"]
        out.append(
            {
                "messages": [
                    {"role": "user", "content": f"Task {i + 1}. {user['content']}"},
                    {"role": "assistant", "content": assistant["content"]},
                ]
            }
        )
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def write_stand_ins(mirror: Path, splits: dict[str, int], em_rows_each: int, seed: int = 0) -> dict[str, int]:
    """Write the BeaverTails splits ({split: rows}) and insecure/secure.jsonl into `mirror`, whose
    emergent_misalignment/ must already hold the real `*_small.jsonl` slices. Rows per file."""
    written = {}
    for k, (split, n) in enumerate(sorted(splits.items())):
        path = write_jsonl(mirror / "beavertails" / f"{split}.jsonl", beavertails_rows(n, seed + k))
        written[str(path.relative_to(mirror))] = n
    em = mirror / "emergent_misalignment"
    for name in ("insecure", "secure"):
        real = [json.loads(line) for line in (em / f"{name}_small.jsonl").read_text().splitlines() if line]
        path = write_jsonl(em / f"{name}.jsonl", em_rows(real, em_rows_each))
        written[str(path.relative_to(mirror))] = em_rows_each
    return written
