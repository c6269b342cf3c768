"""Stage settings spelled once: built whole from a config section, defaults from the schema."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from traitscope.capture.settings import CaptureSettings
from traitscope.cli import main
from traitscope.errors import TraitscopeError
from traitscope.experiments.emergent_misalignment.settings import EMTrainingSettings
from traitscope.settings import build, fields_help, from_schema, parse, schema_defaults
from traitscope.training.settings import FinetuneSettings


def test_from_schema_takes_the_schemas_defaults_and_overrides():
    s = from_schema(CaptureSettings, max_new_tokens=7)
    # workflow/schemas/config.schema.yaml, definitions.capture
    assert s.max_tokens == 16384 and s.shard_size == 512 and s.storage_dtype == "float16"
    assert s.pools == ("last_prompt", "prompt_mean", "prefill_mean", "response_mean")
    assert s.layers == "all" and s.max_new_tokens == 7
    assert from_schema(FinetuneSettings).rank == 32  # the emergent-misalignment recipe


def test_a_config_range_of_layers_is_expanded_once():
    s = from_schema(CaptureSettings, layers={"start": 2, "stop": 9, "step": 3})
    assert s.layers == (2, 5, 8)
    assert from_schema(CaptureSettings, layers=[4, 1]).layers == (4, 1)


def test_a_section_may_be_a_oneof_branch():
    """A nullable section's settings point at its object branch (`persona/oneOf/1`)."""
    assert from_schema(EMTrainingSettings) == EMTrainingSettings(pairs_per_question=None)
    assert "pairs_per_question (config default null): the first n" in fields_help(EMTrainingSettings)


def test_build_names_the_missing_setting_and_leaves_dag_keys_out():
    section = {**schema_defaults(CaptureSettings.SECTION), "enabled": True}  # DAG-only key
    assert build(CaptureSettings, section, "x") == from_schema(CaptureSettings)
    del section["seed"]
    with pytest.raises(TraitscopeError, match=r"^x: missing setting\(s\) seed; pass the whole"):
        build(CaptureSettings, section, "x")
    with pytest.raises(TraitscopeError, match="not JSON"):
        parse(CaptureSettings, "{pools: 1")


def test_settings_round_trip_through_json():
    s = from_schema(CaptureSettings, layers=(0, 3), token_segments=("user",))
    assert parse(CaptureSettings, json.dumps(asdict(s))) == s


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"storage_dtype": "int8"}, "invalid value at storage_dtype: 'int8' is not one of"),
        ({"pools": ["last_token"]}, "invalid value at pools.0: 'last_token' is not one of"),
        ({"layers": "0-5"}, "invalid value at layers: '0-5' is not valid under any of the given schemas"),
    ],
)
def test_hand_written_settings_are_checked_against_the_schema(change, message):
    """A rule's --settings come validated with the config; a hand-written one is checked here,
    before a stage reads it (int8 was a KeyError after the model loaded)."""
    section = {**asdict(from_schema(CaptureSettings)), **change}
    with pytest.raises(TraitscopeError, match=f"^--settings: {message}"):
        parse(CaptureSettings, json.dumps(section))


def test_an_experiments_hand_written_settings_are_checked_too(tmp_path, capsys):
    """Experiment sections were skipped: '"prefills": "Sure"' made the prefills 'S', 'u', 'r',
    'e', and a threshold written as a string was a TypeError after the compute."""
    from traitscope.experiments.prefill.settings import PrefillConditionsSettings

    with pytest.raises(
        TraitscopeError, match="^--settings: invalid value at prefills: 'Sure' is not of type 'array'"
    ):
        parse(PrefillConditionsSettings, json.dumps({"prefills": "Sure"}))
    argv = [
        "prefill-conditions",
        "--harmful",
        "a.parquet",
        "--harmless",
        "b.parquet",
        "--out",
        str(tmp_path / "c"),
    ]
    with pytest.raises(SystemExit) as info:
        main([*argv, "--settings", json.dumps({"prefills": "Sure"})])
    assert info.value.code == 2 and not (tmp_path / "c").exists()
    assert "invalid value at prefills" in capsys.readouterr().err


def test_cli_bad_settings_is_one_line_and_help_documents_every_field(tmp_path, capsys):
    argv = ["capture", "--model", "m.json", "--prompts", "p.parquet", "--out", str(tmp_path / "c.json")]
    with pytest.raises(SystemExit) as info:
        main([*argv, "--settings", json.dumps({"pools": ["last_prompt"]})])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "argument --settings: missing setting(s) layers, token_segments" in err
    with pytest.raises(SystemExit):
        main(["capture", "--help"])
    out = capsys.readouterr().out
    for name, value in asdict(from_schema(CaptureSettings)).items():
        shown = json.dumps(list(value) if isinstance(value, tuple) else value)
        assert f"  {name} (config default {shown})" in out
    assert "max_tokens (config default 16384)" in out
