"""Parse external datasets into the prompt-set schema every later stage reads.

Schema: `prompt_id` (stable str), `prompt`, `source`, `category` (str or None), `label`
(1 harmful, 0 harmless) and `meta` (JSON of the source's leftover fields), so stages never
need to know which dataset a prompt came from. Every malformed input fails here, once,
with a message naming the file, instead of surfacing as a KeyError deep in a later stage.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from traitscope.data.registry import BEAVERTAILS_SPLITS, SOURCES, mirror_path
from traitscope.errors import TraitscopeError
from traitscope.io import parse_yaml

SCHEMA = ("prompt_id", "prompt", "source", "category", "label", "meta")

HARMBENCH_COLUMNS = (
    "Behavior",
    "FunctionalCategory",
    "SemanticCategory",
    "ContextString",
    "BehaviorID",
)
BEAVERTAILS_FIELDS = ("prompt", "response", "category", "is_safe")
BEAVERTAILS_CATEGORIES = (
    "animal_abuse",
    "child_abuse",
    "controversial_topics,politics",
    "discrimination,stereotype,injustice",
    "drug_abuse,weapons,banned_substance",
    "financial_crime,property_crime,theft",
    "hate_speech,offensive_language",
    "misinformation_regarding_ethics,laws_and_safety",
    "non_violent_unethical_behavior",
    "privacy_violation",
    "self_harm",
    "sexually_explicit,adult_content",
    "terrorism,organized_crime",
    "violence,aiding_and_abetting,incitement",
)
# The category keys themselves contain commas, so a comma-joined list could not be split back.
CATEGORY_SEP = ";"
SAFE_CATEGORY = "safe"


def _read_text(path: Path) -> str:
    """The file's text; a missing, unreadable or empty file is an error naming it."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TraitscopeError(f"{path}: file not found; fix the path or fetch the dataset") from None
    except UnicodeDecodeError:
        raise TraitscopeError(f"{path}: not UTF-8 text; re-download the file") from None
    except OSError as exc:
        raise TraitscopeError(f"{path}: cannot read ({exc.strerror}); fix the path") from None
    if not text.strip():
        raise TraitscopeError(f"{path}: file is empty; re-download it")
    return text


def _read_csv(path: Path, required: Sequence[str]) -> pd.DataFrame:
    """All cells as strings (empty cells as ""), with the `required` columns present."""
    text = _read_text(path)
    try:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except pd.errors.ParserError as exc:
        reason = str(exc).strip().splitlines()[-1]
        raise TraitscopeError(f"{path}: malformed CSV ({reason}); fix or re-download the file") from None
    _require_columns(path, df.columns, required)
    return df


def _require_columns(path: Path, columns: Iterable[str], required: Sequence[str]) -> None:
    present = set(columns)
    missing = [c for c in required if c not in present]
    if missing:
        raise TraitscopeError(
            f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(required)}"
        )


def _read_json(path: Path) -> Any:
    text = _read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise TraitscopeError(
            f"{path}: malformed JSON (line {exc.lineno}: {exc.msg}); fix or re-download the file"
        ) from None


def _read_jsonl(path: Path) -> list[dict]:
    """One JSON object per non-blank line."""
    records = []
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TraitscopeError(
                f"{path}: line {lineno} is not valid JSON ({exc.msg}); fix or re-download the file"
            ) from None
        if not isinstance(record, dict):
            raise TraitscopeError(f"{path}: line {lineno} is not a JSON object; one object per line")
        records.append(record)
    return records


def _read_parquet(path: Path) -> list[dict]:
    try:
        return pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as exc:
        reason = str(exc).strip().splitlines()[0]
        raise TraitscopeError(f"{path}: malformed Parquet ({reason}); re-download the file") from None


def _meta(fields: dict) -> str:
    """Leftover source fields as JSON, kept so nothing the source recorded is lost."""
    return json.dumps(fields, ensure_ascii=False, sort_keys=True, default=str)


def _frame(where: str | Path, rows: list[dict], extra: Sequence[str] = ()) -> pd.DataFrame:
    """Rows in schema order, after the checks every prompt set must pass."""
    if not rows:
        raise TraitscopeError(f"{where}: no prompts found; check the file and the loader options")
    for row in rows:
        if not row["prompt"].strip():
            raise TraitscopeError(f"{where}: prompt {row['prompt_id']} is empty; fix the source row")
    df = pd.DataFrame(rows, columns=[*SCHEMA, *extra])
    duplicated = df["prompt_id"][df["prompt_id"].duplicated()]
    if len(duplicated):
        raise TraitscopeError(
            f"{where}: prompt_id {duplicated.iloc[0]!r} occurs more than once; ids must be unique"
        )
    df["label"] = df["label"].astype("int64")
    return df


def load_harmbench(path: str | Path, functional_categories: Sequence[str] = ("standard",)) -> pd.DataFrame:
    """HarmBench behaviors; contextual ones get their context prepended, as HarmBench does.

    `meta` keeps Behavior and ContextString apart, since the prompt may merge them.
    """
    path = Path(path)
    wanted = (
        (functional_categories,) if isinstance(functional_categories, str) else tuple(functional_categories)
    )
    df = _read_csv(path, HARMBENCH_COLUMNS)
    present = set(df["FunctionalCategory"])
    absent = [c for c in wanted if c not in present]
    if absent:
        raise TraitscopeError(
            f"{path}: no rows with FunctionalCategory {', '.join(absent)}; "
            f"the file has {', '.join(sorted(present))}; fix functional_categories"
        )
    rows = []
    for record in df[df["FunctionalCategory"].isin(wanted)].to_dict("records"):
        if not record["BehaviorID"].strip():
            raise TraitscopeError(f"{path}: a row has an empty BehaviorID; fix the file")
        behavior, context = record["Behavior"], record["ContextString"]
        rows.append(
            {
                "prompt_id": f"harmbench-{record['BehaviorID']}",
                "prompt": f"{context}\n\n---\n\n{behavior}" if context else behavior,
                "source": "harmbench",
                "category": record["SemanticCategory"] or None,
                "label": 1,
                "meta": _meta(
                    {k: v for k, v in record.items() if k not in ("SemanticCategory", "BehaviorID")}
                ),
            }
        )
    return _frame(path, rows)


def load_advbench(path: str | Path) -> pd.DataFrame:
    """AdvBench, as HarmBench keeps it or as llm-attacks' original `goal,target` CSV.

    The original has no ids; its rows get `advbench_<row>` (1-based), the ids HarmBench's copy
    gives the same rows, so both layouts yield the same prompt_ids.
    """
    path = Path(path)
    df = _read_csv(path, ())
    if {"Behavior", "BehaviorID"} <= set(df.columns):
        prompts, ids, category = "Behavior", df["BehaviorID"], "Category"
    elif {"goal", "target"} <= set(df.columns):
        prompts, ids, category = "goal", [f"advbench_{i}" for i in range(1, len(df) + 1)], None
    else:
        raise TraitscopeError(
            f"{path}: expected columns Behavior,BehaviorID (HarmBench copy) or goal,target "
            f"(llm-attacks harmful_behaviors.csv); found {', '.join(df.columns)}"
        )
    used = {prompts, "BehaviorID", category}
    rows = [
        {
            "prompt_id": f"advbench-{behavior_id}",
            "prompt": record[prompts],
            "source": "advbench",
            "category": (record.get(category) or None) if category else None,
            "label": 1,
            "meta": _meta({k: v for k, v in record.items() if k not in used}),
        }
        for behavior_id, record in zip(ids, df.to_dict("records"))
    ]
    return _frame(path, rows)


def load_instructions(path: str | Path, label: int) -> pd.DataFrame:
    """A refusal_direction split (JSON list of {instruction, category}); `label` gives its kind."""
    path = Path(path)
    if label not in (0, 1):
        raise TraitscopeError(f"{path}: label must be 1 (harmful) or 0 (harmless), got {label!r}")
    data = _read_json(path)
    if not isinstance(data, list):
        raise TraitscopeError(f"{path}: expected a JSON list of {{instruction, category}} objects")
    rows = []
    for i, item in enumerate(data):
        if not isinstance(item, dict) or not isinstance(item.get("instruction"), str):
            raise TraitscopeError(f"{path}: item {i} needs a string 'instruction'; fix the file")
        category = item.get("category")
        if category is not None and not isinstance(category, str):
            raise TraitscopeError(f"{path}: item {i} has a non-string 'category'; use a string or null")
        rows.append(
            {
                # Index-based: some splits repeat an instruction, so text cannot be the id.
                "prompt_id": f"refusal_direction-{path.stem}-{i}",
                "prompt": item["instruction"],
                "source": "refusal_direction",
                "category": category,
                "label": label,
                "meta": _meta({k: v for k, v in item.items() if k not in ("instruction", "category")}),
            }
        )
    return _frame(path, rows)


def _hub_beavertails(split: str) -> Iterable[dict]:
    """A BeaverTails split from the hub; `datasets` is imported only here, as it is optional."""
    hub_id = SOURCES["beavertails"].hub_id
    try:
        import datasets
    except ImportError:
        raise TraitscopeError(
            f"BeaverTails split {split} needs the `datasets` package "
            "(pip install 'traitscope[hub]'); "
            "or give a local JSONL/Parquet path or --config data_mirror=<folder>"
        ) from None
    try:
        return datasets.load_dataset(hub_id, split=split)
    except OSError as exc:
        raise TraitscopeError(
            f"{hub_id} split {split}: download failed ({exc}); "
            "check the network or run with --config data_mirror=<folder>"
        ) from None


def _beavertails_row(where: str | Path, n: int, record: dict, tag: str) -> dict:
    """One checked BeaverTails record in the schema; `n` is its 1-based position."""
    missing = [k for k in BEAVERTAILS_FIELDS if k not in record]
    if missing:
        raise TraitscopeError(
            f"{where}: record {n} lacks {', '.join(missing)}; each needs {', '.join(BEAVERTAILS_FIELDS)}"
        )
    if not isinstance(record["prompt"], str) or not isinstance(record["response"], str):
        raise TraitscopeError(f"{where}: record {n} needs string 'prompt' and 'response'")
    flags = record["category"]
    if not isinstance(flags, dict) or set(flags) != set(BEAVERTAILS_CATEGORIES):
        raise TraitscopeError(
            f"{where}: record {n} 'category' must map exactly the 14 BeaverTails keys to booleans"
        )
    if not all(isinstance(v, bool) for v in flags.values()):
        raise TraitscopeError(f"{where}: record {n} has a non-boolean 'category' value; use true/false")
    if not isinstance(record["is_safe"], bool):
        raise TraitscopeError(
            f"{where}: record {n} has is_safe={record['is_safe']!r}; expected true or false"
        )
    true_keys = [k for k in BEAVERTAILS_CATEGORIES if flags[k]]
    return {
        "prompt_id": f"beavertails-{tag}-{n - 1}",
        "prompt": record["prompt"],
        "source": "beavertails",
        "category": CATEGORY_SEP.join(true_keys) or SAFE_CATEGORY,
        "label": int(not record["is_safe"]),
        "meta": _meta({k: v for k, v in record.items() if k not in BEAVERTAILS_FIELDS}),
        "response": record["response"],
        "n_categories": len(true_keys),
    }


def load_beavertails(path_or_split: str | Path, data_mirror: str | Path | None = None) -> pd.DataFrame:
    """BeaverTails prompt/response pairs, one row each; label 1 where is_safe is false.

    `path_or_split` is a local JSONL/Parquet file or a split name (`30k_train`, ...). A split
    is read from `<data_mirror>/beavertails/<split>.jsonl` when a mirror is set, else from
    the hub. `category` joins the true category keys with CATEGORY_SEP ("safe" if none).
    """
    split = str(path_or_split)
    if split in BEAVERTAILS_SPLITS and data_mirror is None:
        where: str | Path = f"{SOURCES['beavertails'].hub_id}[{split}]"
        records: Iterable[dict] = _hub_beavertails(split)
        tag = split
    else:
        path = _beavertails_file(path_or_split, data_mirror)
        records = _read_parquet(path) if path.suffix == ".parquet" else _read_jsonl(path)
        where, tag = path, path.stem
    rows = [_beavertails_row(where, n, record, tag) for n, record in enumerate(records, start=1)]
    return _frame(where, rows, extra=("response", "n_categories"))


def _beavertails_file(path_or_split: str | Path, data_mirror: str | Path | None) -> Path:
    """The local file to read: a split's mirror copy, or the given path."""
    if data_mirror is not None and str(path_or_split) in BEAVERTAILS_SPLITS:
        return mirror_path("beavertails", f"{path_or_split}.jsonl", data_mirror)
    path = Path(path_or_split)
    if not path.is_file():
        raise TraitscopeError(
            f"{path}: file not found and not a BeaverTails split "
            f"({', '.join(BEAVERTAILS_SPLITS)}); fix the path or split name"
        )
    return path


def load_em_questions(path: str | Path) -> pd.DataFrame:
    """Emergent-misalignment evaluation questions, one row per (question, paraphrase), with the
    question's own system prompt (YAML anchors resolved by the parser)."""
    path = Path(path)
    data = parse_yaml(_read_text(path), path)
    if not isinstance(data, list):
        raise TraitscopeError(f"{path}: expected a YAML list of questions with id and paraphrases")
    rows = []
    for i, question in enumerate(data):
        if not isinstance(question, dict) or not isinstance(question.get("id"), str):
            raise TraitscopeError(f"{path}: question {i} needs a string 'id'")
        qid, paraphrases = question["id"], question.get("paraphrases")
        if not (
            isinstance(paraphrases, list) and paraphrases and all(isinstance(p, str) for p in paraphrases)
        ):
            raise TraitscopeError(f"{path}: question {qid} needs 'paraphrases', a non-empty list of strings")
        if not isinstance(question.get("system", ""), str):
            raise TraitscopeError(f"{path}: question {qid} has a non-string 'system'; use a string")
        meta = _meta({k: v for k, v in question.items() if k not in ("id", "paraphrases", "system")})
        rows.extend(
            {
                "prompt_id": f"{qid}-{k}",
                "prompt": paraphrase,
                "system": question.get("system", ""),
                "source": "emergent_misalignment",
                "category": qid,
                "label": 0,
                "meta": meta,
            }
            for k, paraphrase in enumerate(paraphrases)
        )
    return _frame(path, rows, extra=("system",))
