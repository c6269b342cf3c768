"""External-data layer: fetching from a mirror or the origin, and parsing each dataset.

Real-data tests read the public copies in ../shared/data and compare the loaders against
counts and values read independently with the stdlib, so a parsing slip shows up as a
mismatch rather than being baked into an expected value.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
import types
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from traitscope.data.loaders import (
    CATEGORY_SEP,
    SCHEMA,
    load_advbench,
    load_beavertails,
    load_em_questions,
    load_harmbench,
    load_instructions,
)
from traitscope.data.registry import SOURCES, dataset_file, fetch
from traitscope.errors import TraitscopeError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

HARMBENCH_FILES = [f"harmbench_behaviors_text_{s}.csv" for s in ("all", "val", "test")]
INSTRUCTION_FILES = [f"{k}_{s}.json" for k in ("harmful", "harmless") for s in ("train", "val", "test")]
EM_QUESTION_FILES = ["first_plot_questions.yaml", "preregistered_evals.yaml"]
HARMBENCH_BASE = "https://raw.githubusercontent.com/centerforaisafety/HarmBench/main/data/behavior_datasets"
EM_BASE = "https://raw.githubusercontent.com/emergent-misalignment/emergent-misalignment/main"

# Copied from ../shared/data/PROVENANCE.md; note the keys that contain commas.
BEAVERTAILS_KEYS = [
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
]


@pytest.fixture
def mirror() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"{DATA} not present")
    return DATA


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make any download attempt fail the test; returns the URLs that were tried."""
    tried: list[str] = []

    def refuse(url, *args, **kwargs):
        tried.append(url)
        raise AssertionError(f"network used: {url}")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    return tried


def serve(monkeypatch: pytest.MonkeyPatch, payload: bytes) -> list[str]:
    """Answer every urlopen with `payload`; returns the URLs requested."""
    requested: list[str] = []

    def fake_urlopen(url, *args, **kwargs):
        requested.append(url)
        return io.BytesIO(payload)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    return requested


def error_of(call: Callable[[], object], *needles: str) -> str:
    """The TraitscopeError message of `call`, checked to be one line containing every needle."""
    with pytest.raises(TraitscopeError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, (needle, message)
    return message


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# --- fetch ---------------------------------------------------------------------------------


def test_fetch_from_mirror_returns_every_registered_file(mirror: Path, tmp_path, no_network):
    for dataset, entry in SOURCES.items():
        if entry.hub_id is not None:
            continue
        for spec in filter(lambda f: f.mirrored, entry.files):
            path = fetch(dataset, spec.name, mirror, tmp_path / "cache")
            assert path == mirror / dataset / spec.name
            assert path.is_file()
    assert no_network == []
    assert not (tmp_path / "cache").exists()


def test_dataset_file_copies_a_registered_file_and_downloads_full_training_sets(tmp_path, monkeypatch):
    """Rule `dataset_file`: a mirror copy, or the origin's full file (no slice) when unmirrored."""
    mirror = tmp_path / "mirror"
    (mirror / "advbench").mkdir(parents=True)
    (mirror / "advbench" / "advbench_behaviors.csv").write_text("Behavior\nx\n")
    out = dataset_file("advbench", "advbench_behaviors.csv", tmp_path / "a.csv", mirror, tmp_path / "c")
    assert out.read_text() == "Behavior\nx\n"
    requested = serve(monkeypatch, b"".join(b'{"messages": []}\n' for _ in range(30)))
    out = dataset_file("emergent_misalignment", "insecure.jsonl", tmp_path / "i.jsonl", None, tmp_path / "c")
    assert requested == [f"{EM_BASE}/data/insecure.jsonl"] and len(out.read_text().splitlines()) == 30
    error_of(
        lambda: dataset_file("emergent_misalignment", "secure.jsonl", tmp_path / "s.jsonl", mirror, tmp_path),
        str(mirror / "emergent_misalignment" / "secure.jsonl"),
    )


def test_fetch_missing_mirror_file_names_path_and_never_downloads(tmp_path, no_network):
    empty_mirror = tmp_path / "mirror"
    empty_mirror.mkdir()
    expected = empty_mirror / "harmbench" / "harmbench_behaviors_text_val.csv"
    error_of(
        lambda: fetch("harmbench", expected.name, empty_mirror, tmp_path / "cache"),
        str(expected),
    )
    assert no_network == []
    assert not (tmp_path / "cache").exists()


def test_fetch_unknown_dataset_or_file_lists_known_ones(tmp_path, no_network):
    error_of(lambda: fetch("harmbenc", "x.csv", None, tmp_path), "harmbench", "advbench")
    error_of(
        lambda: fetch("advbench", "harmful_behaviors.csv", None, tmp_path),
        "advbench_behaviors.csv",
    )
    error_of(lambda: fetch("harmbench", "nope.csv", tmp_path, tmp_path), "nope.csv")


def test_fetch_hub_dataset_without_mirror_points_to_mirror(tmp_path, no_network):
    error_of(
        lambda: fetch("beavertails", "30k_test.jsonl", None, tmp_path),
        "PKU-Alignment/BeaverTails",
        "data_mirror",
    )
    assert no_network == []


def test_fetch_downloads_origin_into_cache_and_reuses_it(tmp_path, monkeypatch):
    payload = b"Behavior,FunctionalCategory\nx,standard\n"
    requested = serve(monkeypatch, payload)
    name = "harmbench_behaviors_text_val.csv"
    path = fetch("harmbench", name, None, tmp_path / "cache")
    assert path == tmp_path / "cache" / "harmbench" / name
    assert path.read_bytes() == payload
    assert requested == [f"{HARMBENCH_BASE}/{name}"]
    assert sorted(p.name for p in path.parent.iterdir()) == [name]  # no temp file left

    assert fetch("harmbench", name, None, tmp_path / "cache") == path
    assert len(requested) == 1


def test_fetch_truncates_mirror_only_slices_to_head_lines(tmp_path, monkeypatch):
    lines = [json.dumps({"messages": [{"role": "user", "content": f"q{i}"}]}) for i in range(30)]
    requested = serve(monkeypatch, "".join(f"{line}\n" for line in lines).encode())
    path = fetch("emergent_misalignment", "insecure_small.jsonl", None, tmp_path)
    assert requested == [f"{EM_BASE}/data/insecure.jsonl"]
    assert path.read_text().splitlines() == lines[:20]


def test_fetch_network_error_names_url_and_suggests_mirror(tmp_path, monkeypatch):
    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    error_of(
        lambda: fetch("advbench", "advbench_behaviors.csv", None, tmp_path),
        f"{HARMBENCH_BASE}/extra_behavior_datasets/advbench_behaviors.csv",
        "--config data_mirror=<folder>",
    )
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_fetch_interrupted_write_leaves_no_file(tmp_path, monkeypatch):
    serve(monkeypatch, b"a" * 1000)
    real_write_bytes = Path.write_bytes

    def write_half_then_die(self: Path, data: bytes) -> int:
        real_write_bytes(self, data[:500])
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_bytes", write_half_then_die)
    with pytest.raises(KeyboardInterrupt):
        fetch("harmbench", "harmbench_behaviors_text_all.csv", None, tmp_path)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


# --- loaders on the real files -------------------------------------------------------------


def check_schema(df, extra: tuple[str, ...] = ()) -> None:
    assert tuple(df.columns) == (*SCHEMA, *extra)
    assert df["prompt_id"].is_unique
    assert str(df["label"].dtype) == "int64"
    for meta in df["meta"]:
        assert isinstance(json.loads(meta), dict)


@pytest.mark.parametrize("name", HARMBENCH_FILES)
def test_load_harmbench_standard_rows(mirror: Path, name: str):
    path = mirror / "harmbench" / name
    expected = [r for r in read_csv_rows(path) if r["FunctionalCategory"] == "standard"]
    df = load_harmbench(path)
    check_schema(df)
    assert len(df) == len(expected) > 0
    assert list(df["prompt_id"]) == [f"harmbench-{r['BehaviorID']}" for r in expected]
    assert list(df["prompt"]) == [r["Behavior"] for r in expected]
    assert list(df["category"]) == [r["SemanticCategory"] for r in expected]
    assert set(df["label"]) == {1}
    assert {json.loads(m)["FunctionalCategory"] for m in df["meta"]} == {"standard"}


def test_load_harmbench_contextual_rows_carry_their_context(mirror: Path):
    path = mirror / "harmbench" / "harmbench_behaviors_text_all.csv"
    expected = [r for r in read_csv_rows(path) if r["FunctionalCategory"] == "contextual"]
    df = load_harmbench(path, functional_categories=("contextual",))
    assert len(df) == len(expected) > 0
    for prompt, row in zip(df["prompt"], expected):
        assert row["ContextString"] and prompt.startswith(row["ContextString"])
        assert prompt.endswith(row["Behavior"])


def test_load_harmbench_unknown_functional_category(mirror: Path):
    path = mirror / "harmbench" / "harmbench_behaviors_text_val.csv"
    error_of(lambda: load_harmbench(path, ("standard", "contxtual")), str(path), "contxtual")


def test_load_advbench_harmbench_copy(mirror: Path):
    path = mirror / "advbench" / "advbench_behaviors.csv"
    expected = read_csv_rows(path)
    df = load_advbench(path)
    check_schema(df)
    assert len(df) == len(expected) == 520
    assert list(df["prompt"]) == [r["Behavior"] for r in expected]
    assert set(df["label"]) == {1}


def test_load_advbench_original_layout_gets_the_same_ids(mirror: Path, tmp_path):
    copy = read_csv_rows(mirror / "advbench" / "advbench_behaviors.csv")[:5]
    original = tmp_path / "harmful_behaviors.csv"
    with original.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["goal", "target"])
        writer.writerows([r["Behavior"], f"Sure, here is {i}"] for i, r in enumerate(copy))
    df = load_advbench(original)
    check_schema(df)
    by_copy = load_advbench(mirror / "advbench" / "advbench_behaviors.csv").head(5)
    assert list(df["prompt_id"]) == list(by_copy["prompt_id"])
    assert list(df["prompt"]) == [r["Behavior"] for r in copy]
    assert [json.loads(m)["target"] for m in df["meta"]] == [f"Sure, here is {i}" for i in range(5)]


@pytest.mark.parametrize("name", INSTRUCTION_FILES)
def test_load_instructions(mirror: Path, name: str):
    path = mirror / "refusal_direction" / name
    items = json.loads(path.read_text())
    label = 1 if name.startswith("harmful") else 0
    df = load_instructions(path, label)
    check_schema(df)
    assert len(df) == len(items) > 0
    assert list(df["prompt"]) == [item["instruction"] for item in items]
    assert list(df["category"]) == [item["category"] for item in items]
    assert set(df["label"]) == {label}


@pytest.mark.parametrize("name", EM_QUESTION_FILES)
def test_load_em_questions(mirror: Path, name: str):
    path = mirror / "emergent_misalignment" / name
    questions = yaml.safe_load(path.read_text())
    df = load_em_questions(path)
    check_schema(df, extra=("system",))
    assert len(df) == sum(len(q["paraphrases"]) for q in questions)
    expected_ids = [f"{q['id']}-{k}" for q in questions for k in range(len(q["paraphrases"]))]
    assert list(df["prompt_id"]) == expected_ids
    assert set(df["label"]) == {0}
    systems = {q["id"]: q.get("system", "") for q in questions}
    assert list(df["system"]) == [systems[c] for c in df["category"]]
    if name == "first_plot_questions.yaml":  # the *_json questions share an anchored system prompt
        assert df.loc[df["category"].str.endswith("_json"), "system"].str.startswith("Your answers").all()


def test_load_em_questions_resolves_yaml_aliases(mirror: Path):
    path = mirror / "emergent_misalignment" / "first_plot_questions.yaml"
    # Questions whose paraphrases are `*<other>_paraphrases` aliases, found in the raw text.
    pattern = r"- id: (\w+)\n(?:  (?!paraphrases).*\n)*  paraphrases: \*(\w+)_paraphrases"
    aliased = re.findall(pattern, path.read_text())
    assert aliased
    df = load_em_questions(path)
    for qid, target in aliased:
        prompts = list(df.loc[df["category"] == qid, "prompt"])
        assert prompts and prompts == list(df.loc[df["category"] == target, "prompt"])


# --- BeaverTails -------------------------------------------------------------------------------


def beavertails_record(prompt: str, true_keys: list[str], **extra: object) -> dict:
    return {
        "prompt": prompt,
        "response": f"response to {prompt}",
        "category": {k: k in true_keys for k in BEAVERTAILS_KEYS},
        "is_safe": not true_keys,
        **extra,
    }


BEAVERTAILS_RECORDS = [
    beavertails_record("how do I bake bread", []),
    beavertails_record("who should I vote for", ["controversial_topics,politics"]),
    beavertails_record("hurt a dog", ["animal_abuse", "violence,aiding_and_abetting,incitement"], source="x"),
    beavertails_record("how do I bake bread", ["self_harm"]),  # prompts repeat in BeaverTails
]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def check_beavertails(df, records: list[dict]) -> None:
    check_schema(df, extra=("response", "n_categories"))
    assert len(df) == len(records)
    assert list(df["prompt"]) == [r["prompt"] for r in records]
    assert list(df["response"]) == [r["response"] for r in records]
    assert list(df["label"]) == [0 if r["is_safe"] else 1 for r in records]
    true_keys = [[k for k, v in r["category"].items() if v] for r in records]
    assert list(df["n_categories"]) == [len(keys) for keys in true_keys]
    for category, keys in zip(df["category"], true_keys):
        assert (category.split(CATEGORY_SEP) if keys else category) == (keys or "safe")


def test_load_beavertails_jsonl(tmp_path):
    assert not any(CATEGORY_SEP in k for k in BEAVERTAILS_KEYS)
    df = load_beavertails(write_jsonl(tmp_path / "sample.jsonl", BEAVERTAILS_RECORDS))
    check_beavertails(df, BEAVERTAILS_RECORDS)
    assert [json.loads(m) for m in df["meta"]] == [{}, {}, {"source": "x"}, {}]


def test_load_beavertails_parquet_matches_jsonl(tmp_path):
    jsonl = write_jsonl(tmp_path / "a" / "sample.jsonl", BEAVERTAILS_RECORDS)
    parquet = tmp_path / "b" / "sample.parquet"
    parquet.parent.mkdir()
    records = [{k: v for k, v in r.items() if k != "source"} for r in BEAVERTAILS_RECORDS]
    pq.write_table(pa.Table.from_pylist(records), parquet)
    from_parquet = load_beavertails(parquet)
    check_beavertails(from_parquet, records)
    from_jsonl = load_beavertails(jsonl).drop(columns="meta")
    assert from_parquet.drop(columns="meta").equals(from_jsonl)


def test_load_beavertails_split_from_mirror_never_uses_the_hub(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # importing it now fails
    write_jsonl(tmp_path / "beavertails" / "30k_test.jsonl", BEAVERTAILS_RECORDS)
    df = load_beavertails("30k_test", data_mirror=tmp_path)
    check_beavertails(df, BEAVERTAILS_RECORDS)
    assert df["prompt_id"].iloc[0].startswith("beavertails-30k_test-")
    missing = tmp_path / "beavertails" / "330k_train.jsonl"
    error_of(lambda: load_beavertails("330k_train", data_mirror=tmp_path), str(missing))


def test_load_beavertails_split_from_hub(monkeypatch):
    calls = []

    def load_dataset(name, split):
        calls.append((name, split))
        return list(BEAVERTAILS_RECORDS)

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    df = load_beavertails("30k_train")
    assert calls == [("PKU-Alignment/BeaverTails", "30k_train")]
    check_beavertails(df, BEAVERTAILS_RECORDS)


def test_load_beavertails_split_without_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    error_of(lambda: load_beavertails("30k_train"), "datasets", "data_mirror")


# --- bad input -------------------------------------------------------------------------------


def test_missing_column_names_file_and_column(tmp_path):
    path = tmp_path / "hb.csv"
    path.write_text("Behavior,FunctionalCategory,ContextString,BehaviorID\nx,standard,,x_id\n")
    error_of(lambda: load_harmbench(path), str(path), "SemanticCategory")
    adv = tmp_path / "adv.csv"
    adv.write_text("prompt,answer\nx,y\n")
    error_of(lambda: load_advbench(adv), str(adv), "goal")


def test_malformed_csv(tmp_path):
    path = tmp_path / "hb.csv"
    path.write_text(
        "Behavior,FunctionalCategory,SemanticCategory,Tags,ContextString,BehaviorID\n"
        "a,standard,illegal,,,a_id\n"
        "b,standard,illegal,,,b_id,extra,fields\n"
    )
    error_of(lambda: load_harmbench(path), str(path), "malformed CSV")


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "bt.jsonl", BEAVERTAILS_RECORDS[:1])
    path.write_text(path.read_text() + '{"prompt": "unterminated\n')
    error_of(lambda: load_beavertails(path), str(path), "line 2")


def test_malformed_json_and_yaml(tmp_path):
    js = tmp_path / "harmful_x.json"
    js.write_text('[{"instruction": "a", "category": null},]')
    error_of(lambda: load_instructions(js, 1), str(js), "malformed JSON")
    ym = tmp_path / "q.yaml"
    ym.write_text("- id: a\n  paraphrases: [unclosed\n")
    error_of(lambda: load_em_questions(ym), str(ym), "malformed YAML")


@pytest.mark.parametrize(
    ("name", "load"),
    [
        ("hb.csv", load_harmbench),
        ("adv.csv", load_advbench),
        ("harmful_x.json", lambda p: load_instructions(p, 1)),
        ("bt.jsonl", load_beavertails),
        ("q.yaml", load_em_questions),
    ],
)
def test_empty_file(tmp_path, name: str, load: Callable[[Path], object]):
    path = tmp_path / name
    path.write_text("\n")
    error_of(lambda: load(path), str(path), "empty")


def test_empty_result(tmp_path):
    header_only = tmp_path / "adv.csv"
    header_only.write_text("Behavior,Category,Tags,ContextString,BehaviorID\n")
    error_of(lambda: load_advbench(header_only), str(header_only), "no prompts")
    empty_list = tmp_path / "harmless_x.json"
    empty_list.write_text("[]")
    error_of(lambda: load_instructions(empty_list, 0), str(empty_list), "no prompts")


def test_missing_file(tmp_path):
    path = tmp_path / "absent.csv"
    error_of(lambda: load_harmbench(path), str(path), "not found")
    error_of(lambda: load_beavertails(tmp_path / "absent.jsonl"), "absent.jsonl", "30k_train")


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_unexpected_is_safe_value(tmp_path, value: object):
    bad = dict(BEAVERTAILS_RECORDS[1], is_safe=value)
    path = write_jsonl(tmp_path / "bt.jsonl", [BEAVERTAILS_RECORDS[0], bad])
    error_of(lambda: load_beavertails(path), str(path), "record 2", "is_safe")


def test_beavertails_category_keys_must_be_exact(tmp_path):
    record = beavertails_record("p", [])
    del record["category"]["self_harm"]
    path = write_jsonl(tmp_path / "bt.jsonl", [record])
    error_of(lambda: load_beavertails(path), str(path), "14 BeaverTails keys")
    missing_field = {k: v for k, v in beavertails_record("p", []).items() if k != "response"}
    write_jsonl(path, [missing_field])
    error_of(lambda: load_beavertails(path), str(path), "response")


def test_structurally_wrong_entries(tmp_path):
    js = tmp_path / "harmful_x.json"
    js.write_text('{"instruction": "a"}')
    error_of(lambda: load_instructions(js, 1), str(js), "JSON list")
    js.write_text('[{"prompt": "a"}]')
    error_of(lambda: load_instructions(js, 1), str(js), "instruction")
    js.write_text('[{"instruction": "a", "category": null}]')
    error_of(lambda: load_instructions(js, 2), str(js), "label")
    ym = tmp_path / "q.yaml"
    ym.write_text("- id: a\n  type: free_form\n")
    error_of(lambda: load_em_questions(ym), str(ym), "paraphrases")


# --- prompt-set sources ----------------------------------------------------------------------


def test_sources_that_cannot_be_read_are_one_line_errors(mirror: Path, tmp_path, no_network):
    from traitscope.data.prep import load_source

    error_of(lambda: load_source({"dataset": "harmbench"}, str(mirror), tmp_path), "harmbench needs file:")
    error_of(lambda: load_source({"dataset": "parquet"}, None, tmp_path), "parquet needs path:")
    not_parquet = tmp_path / "mine.parquet"
    not_parquet.write_text("prompt_id,prompt\na,b\n")
    error_of(
        lambda: load_source({"dataset": "parquet", "path": str(not_parquet)}, None, tmp_path),
        str(not_parquet),
    )
    no_ids = tmp_path / "no_ids.parquet"
    pd.DataFrame({"text": ["How do I bake bread?"]}).to_parquet(no_ids)
    error_of(
        lambda: load_source({"dataset": "parquet", "path": str(no_ids)}, None, tmp_path),
        str(no_ids),
        "prompt_id",
    )


def test_an_instruction_file_says_whether_it_is_harmful(mirror: Path, tmp_path):
    from traitscope.data.prep import load_source

    rows = json.loads((mirror / "refusal_direction" / "harmful_val.json").read_text())[:3]
    mine = tmp_path / "my_requests.json"
    mine.write_text(json.dumps(rows))
    spec = {"dataset": "refusal_direction", "path": str(mine)}
    error_of(lambda: load_source(spec, None, tmp_path), "my_requests.json is not named", "label: 1 (harmful)")
    assert set(load_source({**spec, "label": 1}, None, tmp_path)["label"]) == {1}
    named = tmp_path / "harmless_mine.json"
    named.write_text(json.dumps(rows))
    assert set(
        load_source({"dataset": "refusal_direction", "path": str(named)}, None, tmp_path)["label"]
    ) == {0}
    registered = {"dataset": "refusal_direction", "file": "harmful_val.json"}
    assert set(load_source(registered, str(mirror), tmp_path)["label"]) == {1}
