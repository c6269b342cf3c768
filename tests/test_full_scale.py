"""The full-scale configs (config/experiments/) dry-run to a complete DAG with the Slurm profile
on a fresh copy of the checkout (no results/, no .snakemake/): the job count of every rule (the
table in config/README.md), model jobs on the GPU partition, small CPU jobs in the profile's group
jobs, and the Slurm jobs that makes."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import yaml
from test_dag import dry_run, job_counts

GEMMA = "config/experiments/gemma-2-2b-it.yaml"
LLAMA = "config/experiments/llama-3.3-70b.yaml"
BT_30K = "config/experiments/beavertails-30k-test.yaml"

# every trait's set (7), HarmBench + harmless (2), the held-out hard negatives (2), BeaverTails'
# sample of the 14 categories and safe (1), the prefill 2x2 (1), the EM questions on 3 variants, the backdoor
# pairs on 2, the SAE's set (1), the transfer table's four harmful sets and their length-matched
# controls (8)
GEMMA_JOBS = {
    "dataset_file": 2,
    "prep_prompts": 18,
    "prepare_model": 4,
    "trait_prompts": 7,
    "backdoor_data": 1,
    "beavertails_sample": 1,
    "capture": 27,
    "em_prompts": 1,
    "finetune": 3,
    "prefill_conditions": 1,
    "sae_train": 1,
    "trait_judgements": 5,
    "trait_vectors": 7,
    "em_judge": 3,
    "trait_agreement": 5,
    "trait_truth_agreement": 5,
    "trait_evaluation": 7,
    "trait_draws": 4,
    "trait_filter": 5,
    "backdoor_sae_features": 1,
    "cmaes_optimise": 3,
    "em_behaviour": 1,
    "project": 19,
    "steering_check": 1,
    "trait_summary": 1,
    "backdoor_analysis": 1,
    "cmaes_heldout": 3,
    "em_analysis": 1,
    "external_analysis": 1,
    "prefill_analysis": 1,
    "transfer_table": 1,
    "cmaes_report": 1,
    "summarize": 1,
    "all": 1,
}
LLAMA_JOBS = {
    "dataset_file": 2,
    "prep_prompts": 16,
    "prepare_model": 3,
    "trait_prompts": 7,
    "capture": 23,
    "em_prompts": 1,
    "finetune": 2,
    "prefill_conditions": 1,
    "trait_vectors": 7,
    "em_judge": 3,
    "trait_evaluation": 7,
    "trait_draws": 4,
    "project": 16,
    "steering_check": 1,
    "trait_summary": 1,
    "em_behaviour": 1,
    "external_analysis": 1,
    "prefill_analysis": 1,
    "transfer_table": 1,
    "em_analysis": 1,
    "summarize": 1,
    "all": 1,
}
# (sae_train and backdoor_sae_features: the backdoor SAE's training and its features over the
# SAE's data, minutes on a GPU and hours / ~14 min on CPU cores at full scale)
MODEL_RULES = {
    "capture",
    "finetune",
    "steering_check",
    "cmaes_optimise",
    "cmaes_heldout",
    "sae_train",
    "backdoor_sae_features",
}
# the judge's rules: the profile gives them a GPU for the local judge; these configs judge
# through an API, where they need none (the profile's comment says to drop them then)
JUDGE_RULES = {"trait_judgements", "trait_truth_agreement", "em_judge"}
# the profile's groups: every prompt preparation in one Slurm job, the trait vectors with their
# evaluations, filter, agreement and summary in another, projections four to a job
GROUPED = {
    "prep": {
        "prep_prompts",
        "trait_prompts",
        "dataset_file",
        "beavertails_sample",
        "prefill_conditions",
        "em_prompts",
    },
    "vectors": {
        "trait_vectors",
        "trait_evaluation",
        "trait_draws",
        "trait_filter",
        "trait_agreement",
        "trait_summary",
    },
    "project": {"project"},
}
# Slurm jobs submitted (`all` runs nowhere): 143 jobs in 72 for Gemma (65 on their own, prep,
# vectors and 5 projection groups), 100 in 44 for Llama (38, prep, vectors, 4 projection groups)
SLURM_JOBS = {"gemma": 72, "llama": 44}


@pytest.fixture(scope="module")
def fresh(root, tmp_path_factory) -> Path:
    """The files a clone would hold (tracked, and new files git does not ignore), nothing else."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root, capture_output=True, check=True
    ).stdout.decode()
    out = tmp_path_factory.mktemp("clone")
    for name in filter(None, files.split("\0")):
        source = root / name
        if source.is_file():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, out / name)
    assert not (out / "results").exists() and not (out / ".snakemake").exists()
    return out


def llama_resources(root: Path) -> list[str]:
    """The --set-resources the Llama config's header tells a user to pass (so the two agree)."""
    header = "\n".join(line for line in (root / LLAMA).read_text().splitlines() if line.startswith("#"))
    settings = re.findall(r"\b\w+:\w+=\w+\b", header)
    assert "capture:gpu=4" in settings, "the Llama config's header names no --set-resources"
    return ["--set-resources", *settings]


def jobs_of(out: str) -> list[dict]:
    """Every job of a dry-run's output: its rule, resources and group job (None: on its own)."""
    jobs: list[dict] = []
    group = None
    for line in out.splitlines():
        header = re.search(r"Group job (\w+)", line)
        rule = re.match(r"( *)rule (\w+):", line)
        if header:
            group = header[1]
        elif rule:  # a group job's rules are indented under its header
            jobs.append({"rule": rule[2], "group": group if rule[1] else None, "resources": ""})
        elif jobs and line.strip().startswith("resources:"):
            jobs[-1]["resources"] = line.split("resources:", 1)[1]
    return jobs


@pytest.mark.parametrize(
    ("configs", "extra", "expected"),
    [
        ([GEMMA], [], GEMMA_JOBS),
        ([GEMMA, BT_30K], [], GEMMA_JOBS),
        ([LLAMA], "llama", LLAMA_JOBS),
    ],
    ids=["gemma-2-2b-it", "gemma-2-2b-it+beavertails-30k-test", "llama-3.3-70b"],
)
def test_full_scale_config_dry_runs_to_a_complete_dag(root, fresh, configs, extra, expected):
    slurm_jobs = SLURM_JOBS["llama" if extra == "llama" else "gemma"]
    extra = llama_resources(root) if extra == "llama" else extra
    out = dry_run(fresh, "--profile", "profiles/slurm", "--configfile", *configs, *extra)
    assert job_counts(out) == {**expected, "total": sum(expected.values())}
    jobs = jobs_of(out)
    assert {job["rule"] for job in jobs} | {"all"} == set(expected)
    for job in jobs:
        rule, resources, group = job["rule"], job["resources"], job["group"]
        assert group == next((name for name, rules in GROUPED.items() if rule in rules), None), (rule, group)
        if rule in MODEL_RULES:
            assert "slurm_partition=gpu" in resources and re.search(r"gpu=[1-9]", resources), (
                rule,
                resources,
            )
        elif rule not in JUDGE_RULES:
            assert "gpu=" not in resources.replace("slurm_partition=gpu", ""), (rule, resources)
    # far fewer Slurm jobs than jobs: one prep and one vectors job, projections four to a job
    groups = re.findall(r"Group job (\w+)", out)
    per_job = yaml.safe_load((root / "profiles/slurm/config.v8+.yaml").read_text())["group-components"]
    assert Counter(groups) == {
        "prep": 1,
        "vectors": 1,
        "project": -(-expected["project"] // per_job["project"]),
    }
    alone = sum(job["group"] is None and job["rule"] != "all" for job in jobs)  # `all` runs nowhere
    assert alone + len(groups) == slurm_jobs
    if extra:
        capture = next(job["resources"] for job in jobs if job["rule"] == "capture")
        assert "mem_mb=256000" in capture
    if "beavertails_sample" in expected:
        bt = re.findall(r"traitscope prep-prompts --spec '(\{[^']*beavertails[^']*\})'", out)
        assert bt == [
            '{"dataset": "beavertails", "split": "30k_test"}'
            if BT_30K in configs
            else '{"dataset": "beavertails", "split": "330k_test"}'
        ]
