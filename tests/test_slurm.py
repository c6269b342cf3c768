"""`snakemake --profile slurm` on a real Slurm cluster: a small DAG, model jobs one Slurm job each,
small CPU jobs in the profile's group jobs.

The test starts a single-node Slurm 22.05 cluster with ../shared/slurm-local/setup.sh
(partitions `cpu` and `gpu`, one GPU declared through gres with no device behind it, `sacct`
through slurmdbd), runs `.test/config-slurm` exactly as a cluster user types it, reads the job
table back from `sacct` and compares the outputs with a local run of the same command
(`--executor local`, where groups do not apply). A group job is one Slurm job (one sacct row)
that runs its rules inside its allocation; its Slurm log (kept with
`--slurm-keep-successful-logs`) lists them. It stops the cluster at the end, also when
something fails. Root only
(setup.sh installs and starts daemons): `make test-slurm`, which CI runs after `make test`;
plain `pytest` deselects it (pyproject.toml).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import ROOT
from safetensors.torch import load_file
from test_dag import job_counts

pytestmark = pytest.mark.slurm
SETUP = ROOT.parent / "shared" / "slurm-local" / "setup.sh"
PROFILE = ROOT / "profiles" / "slurm"
CONFIG = ".test/config-slurm/config.yaml"
# What a user passes on top of the profile: the node here has 2 CPUs and 20 GB, less than
# the profile asks for model jobs (8 threads, 64 GB), so every job is capped to it.
USER_ARGS = ["--configfile", CONFIG, "--max-threads", "2", "--resources", "mem_mb=16000"]
# Short jobs need no 40 s wait before the first status check; group jobs' Slurm logs are kept
# (they list the rules each ran).
CLUSTER_ARGS = ["--slurm-init-seconds-before-status-checks", "5", "--slurm-keep-successful-logs"]
# The reference: the same profile and caps on this machine, so every job has the thread count
# it has on the cluster. Thread counts must match for equal outputs: generating on 2 threads
# rounds differently from 1 thread (a capture's activations differ in the last bits), and a
# bootstrap CI of a near-constant group amplifies that.
LOCAL_ARGS = ["--executor", "local", "--cores", "2"]
SACCT_FIELDS = ["JobID", "JobName", "Partition", "AllocTRES", "State", "ExitCode", "Elapsed"]
# a rule's job id is a number, a group job's a UUID; the log sits under rule_<rule>/ or group_<group>/
SUBMITTED = re.compile(r"Job (\S+) has been submitted with SLURM jobid (\d+) \(log: (\S+?)\)")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Starts the cluster in the background (a fresh machine installs packages meanwhile the
    local run computes) and yields a function that waits until it is up."""
    if not SETUP.is_file():
        pytest.fail(f"{SETUP} is missing: the Slurm test needs ../shared/slurm-local beside the checkout")
    if os.geteuid() != 0:
        pytest.fail("the Slurm test starts a local cluster with setup.sh, which must run as root")
    log = tmp_path_factory.mktemp("cluster") / "setup.log"  # a file: apt's output could fill a pipe
    with log.open("w") as out:
        started = subprocess.Popen(["bash", str(SETUP)], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)

    def ready() -> None:
        started.wait(timeout=900)
        assert started.returncode == 0, log.read_text()[-3000:]

    try:
        yield ready
    finally:
        if started.poll() is None:
            started.kill()
            started.wait()
        stopped = subprocess.run(
            ["bash", str(SETUP), "stop"], capture_output=True, text=True, timeout=300, cwd=ROOT
        )
        print(stopped.stdout[-2000:], stopped.stderr[-2000:])


def snakemake_command() -> str:
    """The `snakemake` a user types: the console script of this interpreter's environment."""
    script = Path(sys.executable).with_name("snakemake")
    return str(script) if script.exists() else "snakemake"


def checkout_copy(root: Path, tmp_path_factory, name: str) -> Path:
    """A copy of the checkout's workflow files in which `--profile slurm` means the link."""
    from snakemake.cli import get_profile_dir

    work = tmp_path_factory.mktemp(name)
    for folder in ("workflow", "profiles", "envs", "config", "resources", ".test"):
        shutil.copytree(root / folder, work / folder)
    cwd = os.getcwd()
    os.chdir(work)  # a bare profile name is looked up in the working directory first
    try:
        found = get_profile_dir("slurm")
    finally:
        os.chdir(cwd)
    assert found and found[0].resolve() == PROFILE.resolve(), (
        f"`--profile slurm` finds {found}, not {PROFILE}: `make install` (or `make profile`) "
        "links the project's profile into ~/.config/snakemake"
    )
    return work


def snakemake(work: Path, *args: str) -> tuple[str, float]:
    """`snakemake --profile slurm` with the user's arguments; its output and seconds."""
    cmd = [snakemake_command(), "--profile", "slurm", *USER_ARGS, *args]
    t0 = time.monotonic()
    result = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=1500)
    elapsed = time.monotonic() - t0
    out = result.stdout + result.stderr
    print(f"{' '.join(cmd[1:])}: {elapsed:.0f} s")
    assert result.returncode == 0, out[-5000:]
    return out, elapsed


@pytest.fixture(scope="module")
def local_run(root, tmp_path_factory) -> Path:
    work = checkout_copy(root, tmp_path_factory, "local")
    snakemake(work, *LOCAL_ARGS)
    return work


@pytest.fixture(scope="module")
def slurm_run(cluster, local_run, root, tmp_path_factory):
    """The config through `snakemake --profile slurm` once the cluster is up."""
    work = checkout_copy(root, tmp_path_factory, "slurm")
    cluster()
    start = time.strftime("%Y-%m-%dT%H:%M:%S")
    out, elapsed = snakemake(work, *CLUSTER_ARGS)
    run_id = re.search(r"SLURM run ID: (\S+)", out)[1]
    sacct = subprocess.run(
        ["sacct", "-X", "-P", "-n", "-S", start, "--name", run_id, "-o", ",".join(SACCT_FIELDS)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert sacct.returncode == 0, sacct.stderr
    table = pd.DataFrame(
        [line.split("|") for line in sacct.stdout.splitlines() if line], columns=SACCT_FIELDS
    )
    wide = ",".join(f"{f}%{w}" for f, w in zip(SACCT_FIELDS, (6, 36, 9, 48, 10, 8, 10)))
    shown = subprocess.run(
        ["sacct", "-X", "-S", start, "--name", run_id, "-o", wide], capture_output=True, text=True
    )
    print(shown.stdout)
    for slurm_id, log in sorted((int(i), log) for _, i, log in SUBMITTED.findall(out)):
        where = log.split("/slurm_logs/")[-1].rsplit("/", 1)[0]  # rule_<rule>/<wildcards> or group_<group>
        inside = dict(rules_in_group_job(log)) if where.startswith("group_") else ""
        print(f"{slurm_id:>6} {where} {inside}")
    return {"dir": work, "out": out, "sacct": table, "seconds": elapsed}


def profile() -> dict:
    return yaml.safe_load((PROFILE / "config.v8+.yaml").read_text())


def expected_partition(rule: str) -> tuple[str, bool]:
    """(partition, one GPU) the project's profile gives a rule."""
    settings = profile()
    resources = {**settings["default-resources"], **settings["set-resources"].get(rule, {})}
    return resources["slurm_partition"], resources.get("gpu", 0) == 1


def submissions(out: str) -> dict[int, tuple[str, str, str, str]]:
    """{Slurm job id: (Snakemake job id, "rule" or "group", rule or group name, its Slurm log)}
    from the executor's submission lines. A group job's log folder is `group_<group>_<its rules,
    sorted>` (Snakemake's name of a group job); the name kept here is the profile's group."""
    jobs = {}
    for job, slurm_id, log in SUBMITTED.findall(out):
        kind, name = re.search(r"/(rule|group)_([A-Za-z0-9_.]+)/", log).groups()
        if kind == "group":
            name = next(g for g in set(profile()["groups"].values()) if name.startswith(f"{g}_"))
        jobs[int(slurm_id)] = (job, kind, name, log)
    return jobs


def rules_in_group_job(log: str) -> Counter:
    """The rules a group job ran inside its allocation, from its Slurm log: Snakemake on the node
    prints a `rule <name>:` block with the job's outputs for every job it runs (and the job's own
    Snakemake under srun may print it again), so jobs are counted once per (rule, outputs)."""
    jobs, rule = set(), None
    for line in Path(log).read_text().splitlines():
        start = re.match(r"\s*(?:local)?rule (\w+):$", line)
        if start:
            rule = start[1]
        elif rule and line.strip().startswith("output:"):
            jobs.add((rule, line.split("output:", 1)[1].strip()))
            rule = None
    return Counter(rule for rule, _ in jobs)


def test_every_rule_ran_alone_or_inside_its_group_job(slurm_run):
    jobs = submissions(slurm_run["out"])
    planned = job_counts(slurm_run["out"])
    planned.pop("total")
    planned.pop("all")  # no shell command: Snakemake finishes it itself
    groups = profile()["groups"]
    ran = Counter()
    group_jobs = Counter()
    for _, kind, name, log in jobs.values():
        if kind == "rule":
            assert name not in groups, f"{name} is grouped in the profile but ran as its own Slurm job"
            ran[name] += 1
        else:
            group_jobs[name] += 1
            inside = rules_in_group_job(log)
            assert inside and {groups.get(rule) for rule in inside} == {name}, (name, inside)
            # Snakemake names a group job after its group and rules: the log's folder agrees
            assert f"/group_{name}_{'_'.join(sorted(inside))}/" in log, (log, inside)
            ran += inside
    # every planned job ran exactly once (no retry), in its own Slurm job or in its group's
    assert ran == planned
    # the test config's small jobs: both trait prompt sets in one prep job; both traits' vectors,
    # evaluations and the trait summary in one vectors job (joined through the summary)
    assert group_jobs == {"prep": 1, "vectors": 1}
    # 12 jobs in 7 Slurm jobs: 5 on their own and 2 group jobs, each submitted once
    assert len({job for job, *_ in jobs.values()}) == len(jobs) == 7
    table = slurm_run["sacct"]
    assert sorted(table["JobID"].astype(int)) == sorted(jobs)  # nothing else ran under this run's name
    assert (table["State"] == "COMPLETED").all() and (table["ExitCode"] == "0:0").all(), table


def test_gpu_rules_went_to_the_gpu_partition_with_one_gpu(slurm_run):
    jobs = submissions(slurm_run["out"])
    groups = profile()["groups"]
    gpu_rules = set()
    for row in slurm_run["sacct"].itertuples():
        _, kind, name, log = jobs[int(row.JobID)]
        # a group job asks what its rules ask: here only CPU rules are grouped
        rules = [name] if kind == "rule" else [r for r in groups if groups[r] == name]
        (partition, gpu), *others = {expected_partition(rule) for rule in rules}
        assert not others, (name, rules)
        assert row.Partition == partition, (name, row)
        tres = dict(item.split("=", 1) for item in row.AllocTRES.split(","))
        assert tres.get("gres/gpu") == ("1" if gpu else None), (name, row.AllocTRES)
        if gpu:
            assert kind == "rule" and row.Partition == "gpu"
            gpu_rules.add(name)
    assert gpu_rules == {"capture", "steering_check"}  # the config's model jobs
    # the node's GPU has no device behind it (gres File=/dev/null): model jobs fall back to the CPU
    logs = list((slurm_run["dir"] / "results/logs/capture").rglob("*.log"))
    assert len(logs) == sum(name == "capture" for _, _, name, _ in jobs.values())
    for log in logs:
        assert re.search(r"traitscope: model smollm2 on cpu, dtype", log.read_text()), log


def test_each_job_got_its_threads_as_cpus(slurm_run):
    """--cpus-per-task follows the rule's threads (the profile's set-threads, capped by
    --max-threads 2): model jobs 2 CPUs, the others 1. A group job asks for the most CPUs its
    jobs use side by side: two traits' single-thread jobs, 2."""
    threads = {}
    for block in slurm_run["out"].split("\nrule ")[1:]:
        job = re.search(r"^\s+jobid: (\d+)$", block, re.M)
        given = re.search(r"^\s+threads: (\d+)$", block, re.M)
        if job:
            threads[job[1]] = int(given[1]) if given else 1
    jobs = submissions(slurm_run["out"])
    cpus = {}
    for row in slurm_run["sacct"].itertuples():
        job, kind, name, _ = jobs[int(row.JobID)]
        tres = dict(item.split("=", 1) for item in row.AllocTRES.split(","))
        given = threads[job] if kind == "rule" else None
        cpus[f"{kind}_{name}"] = {*cpus.get(f"{kind}_{name}", ()), (given, int(tres["cpu"]))}
    assert cpus == {
        "rule_prepare_model": {(2, 2)},
        "rule_capture": {(2, 2)},
        "rule_steering_check": {(2, 2)},
        "rule_summarize": {(1, 1)},
        "group_prep": {(None, 2)},  # trait_prompts x2
        "group_vectors": {(None, 2)},  # trait_vectors x2, trait_evaluation x2, trait_summary
    }


def test_outputs_equal_the_local_run(slurm_run, local_run):
    """Bit for bit: the same jobs with the same thread counts on the same machine."""
    cluster_dir = slurm_run["dir"]
    results = local_run / "results"
    files = sorted(
        p.relative_to(local_run)
        for p in results.rglob("*")
        if p.suffix in (".json", ".parquet", ".safetensors") and p.relative_to(results).parts[0] != "models"
    )
    for must in (
        "results/traits/smollm2/summary.json",
        "results/traits/smollm2/safety/evil/evaluation.json",
        "results/traits/smollm2/safety/evil/steering.json",
        "results/traits/smollm2/safety/refusal/vectors.safetensors",
    ):
        assert Path(must) in files
    produced = {p.relative_to(cluster_dir) for p in (cluster_dir / "results").rglob("*")}
    assert set(files) <= produced
    for rel in files:
        local, other = local_run / rel, cluster_dir / rel
        if rel.suffix == ".parquet":  # prompt tables, capture shards' prompts with the generated answers
            pd.testing.assert_frame_equal(pd.read_parquet(local), pd.read_parquet(other), check_exact=True)
        elif rel.suffix == ".safetensors":  # activations, trait vectors
            a, b = load_file(local), load_file(other)
            assert set(a) == set(b), rel
            for key in a:
                assert torch.equal(a[key].nan_to_num(), b[key].nan_to_num()), (rel, key)
        elif rel.parts[1] != "capture":  # a capture manifest records its own timings
            assert json.loads(local.read_text()) == json.loads(other.read_text()), rel
