"""The experiment plug-in boundary: a toy experiment written in tmp_path, registered through
TRAITSCOPE_EXPERIMENTS, is picked up by the config check, the DAG, the CLI and the criteria
table, with no core file touched; and the core's own modules name no experiment."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
from test_dag import EXPERIMENT_WORDS

TOY = '''
"""A toy experiment: one rule that writes a score, one criterion on it, and a capture."""
import json
from pathlib import Path

from traitscope.errors import TraitscopeError
from traitscope.experiments.contract import CaptureRequest, Section
from traitscope.summary.records import Criterion, above

NAME = "toy"
RULES = str(Path(__file__).parent / "rules.smk")
SCHEMA = str(Path(__file__).parent / "schema.yaml")
SECTION = Section("Toy experiment", ("toy score > 0.5",), order=99)


def check_config(section, config):
    if section["score"] < 0:
        raise TraitscopeError("experiments.toy.score: must be >= 0")


def add_commands(add):
    p = add("toy-score", _score_cli, "toy: write a score with a CI")
    p.add_argument("--score", type=float, required=True)
    p.add_argument("--out", required=True)


def _score_cli(a):
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"score": a.score, "ci_low": a.score - 0.1, "ci_high": a.score + 0.1}))


def targets(section):
    return ["results/toy/score.json"]


def capture_requests(section):
    return [CaptureRequest((("smollm2", "harmless_test"),), {"max_new_tokens": 2})]


def result_files(section):
    return {"score": "results/toy/score.json"}


def criteria(results):
    r = results["score"]
    low, high = r.get("ci_low"), r.get("ci_high")
    return [Criterion("toy score > 0.5", above(low, high, 0.5), r.get("score"), low, high, n="1")]
'''

RULES = """
from toy_plugin import targets

TOY = config["experiments"]["toy"]

if is_enabled("toy"):
    EXPERIMENT_TARGETS.append(lambda: targets(TOY))

    rule toy_score:
        output:
            "results/toy/score.json",
        params:
            score=TOY["score"],
        shell:
            "traitscope toy-score --score {params.score} --out {output}"
"""

SCHEMA = """
type: object
additionalProperties: false
default: {}
properties:
  enabled: {type: boolean, default: false}
  score: {type: number, default: 0.8}
"""


@pytest.fixture
def toy(tmp_path):
    """The toy plug-in's folder on PYTHONPATH and its name in TRAITSCOPE_EXPERIMENTS, for this
    process (the registry) and the subprocesses it starts (snakemake, the CLI)."""
    package = tmp_path / "plugins" / "toy_plugin"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(TOY))
    (package / "rules.smk").write_text(RULES)
    (package / "schema.yaml").write_text(SCHEMA)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path / "plugins"), os.environ.get("PYTHONPATH", "")]),
        "TRAITSCOPE_EXPERIMENTS": "toy_plugin",
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(tmp_path / "plugins"))
        patch.setenv("TRAITSCOPE_EXPERIMENTS", "toy_plugin")
        yield env
    sys.modules.pop("toy_plugin", None)


def test_a_toy_plugin_joins_the_config_check_the_dag_and_the_criteria_table(toy, root, tmp_path):
    from traitscope.config import load_config
    from traitscope.errors import TraitscopeError

    config_file = tmp_path / "config.yaml"
    config = root / "config/config.yaml"
    # config check: its schema fills its defaults, its check_config runs
    loaded = load_config(config, root / "workflow/schemas/config.schema.yaml")
    assert loaded["experiments"]["toy"] == {"enabled": False, "score": 0.8}
    text = config.read_text().replace(
        "\nexperiments:\n", "\nexperiments:\n  toy: {enabled: true, score: -1}\n", 1
    )
    config_file.write_text(text)
    with pytest.raises(TraitscopeError, match="experiments.toy.score: must be >= 0"):
        load_config(config_file, root / "workflow/schemas/config.schema.yaml")

    # the DAG: its rule runs, and the summary reads its result
    overlay = tmp_path / "on.yaml"
    overlay.write_text("experiments: {toy: {enabled: true, score: 0.9}}\n")
    cmd = [sys.executable, "-m", "snakemake", "-n", "--nolock", "--forceall", "--configfile", str(overlay)]
    run = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300, env=toy)
    assert run.returncode == 0, run.stderr[-2000:]
    out = run.stdout + run.stderr
    assert "traitscope toy-score --score 0.9 --out results/toy/score.json" in out
    # its capture request: captured at its settings and projected (no built-in asks for this set)
    assert "results/projections/smollm2/harmless_test.parquet" in out
    capture = re.search(r"traitscope capture .*prompts/harmless_test\.parquet.*", out)[0]
    assert '"max_new_tokens": 2' in capture
    summarize = re.search(r"traitscope summarize .*", out)[0]
    assert '"toy": {"score": "results/toy/score.json"}' in summarize

    # the CLI and the criteria table
    traits = tmp_path / "traits.json"
    row = {"method": "probe", "layer": 1, "auc": 0.95, "cohens_d": 2.0, "n_positive": 8, "n_negative": 8}
    traits.write_text(json.dumps({"traits": {"safety/evil": row}, "auc_threshold": 0.9}))
    cli = [sys.executable, "-m", "traitscope.cli"]
    score = tmp_path / "results/toy/score.json"
    subprocess.run(
        [*cli, "toy-score", "--score", "0.9", "--out", str(score)], check=True, env=toy, timeout=120
    )
    outs = [
        "--out-json",
        str(tmp_path / "s.json"),
        "--out-md",
        str(tmp_path / "s.md"),
        "--out-html",
        str(tmp_path / "s.html"),
    ]
    results = json.dumps({"toy": {"score": str(score)}})
    subprocess.run(
        [*cli, "summarize", "--traits", str(traits), "--results", results, *outs],
        check=True,
        env=toy,
        timeout=120,
    )
    summary = json.loads((tmp_path / "s.json").read_text())
    toy_section = next(s for s in summary["sections"] if s["name"] == "toy")
    assert toy_section["title"] == "Toy experiment" and toy_section["status"] == "met"
    assert toy_section["criteria"][0]["measured"] == 0.9
    # the built-ins that did not run are listed as such; the toy comes last (its order)
    assert [s["name"] for s in summary["sections"]][-1] == "toy"
    assert next(s for s in summary["sections"] if s["name"] == "prefill")["status"] == "not run"


def test_a_plugin_missing_part_of_the_contract_is_refused(tmp_path, monkeypatch):
    from traitscope.errors import TraitscopeError
    from traitscope.experiments.contract import registered

    (tmp_path / "half_plugin.py").write_text("def check_config(section, config):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("TRAITSCOPE_EXPERIMENTS", "half_plugin")
    with pytest.raises(
        TraitscopeError, match="half_plugin lacks SECTION, add_commands, targets, result_files"
    ):
        registered()
    monkeypatch.setenv("TRAITSCOPE_EXPERIMENTS", "no_such_plugin")
    with pytest.raises(TraitscopeError, match="TRAITSCOPE_EXPERIMENTS: cannot import 'no_such_plugin'"):
        registered()


CORE_PACKAGES = (
    "model",
    "generation",
    "training",
    "capture",
    "vectors",
    "summary",
    "plotting",
    "judge",
    "stats",
)


def test_core_names_no_experiment(root):
    """Workflow core rules, the core packages and the top-level modules: an experiment's name,
    dataset or condition appears in none of them."""
    src = root / "src/traitscope"
    core = list((root / "workflow/rules").glob("*.smk")) + [root / "workflow/Snakefile"]
    core += [p for pkg in CORE_PACKAGES for p in (src / pkg).rglob("*.py")]
    core += [src / n for n in ("cli.py", "command_args.py", "config.py", "io.py", "paths.py")]
    offenders = []
    for path in core:
        text = path.read_text()
        for word in EXPERIMENT_WORDS:
            pattern = rf"\b{word}\b" if word[0].isupper() else rf"(?i)\b{word}"
            # segment names ("prefill" tokens, `prefill_mean`) are core vocabulary, not the experiment
            if word == "prefill":
                pattern = r"(?i)prefill[_ -]?(attack|analysis|conditions|experiment)"
            if re.search(pattern, text):
                offenders.append(f"{path.relative_to(root)}: {word}")
    assert not offenders, offenders
