"""`snakemake --profile slurm` on a real Slurm cluster: the tiny DAG, every rule its own job.

The test starts a single-node Slurm 22.05 cluster with ../shared/slurm-local/setup.sh
(partitions `cpu` and `gpu`, one GPU declared through gres with no device behind it, `sacct`
through slurmdbd), runs `.test/config-tiny` exactly as a cluster user types it, reads the job
table back from `sacct` and compares the outputs with a local run of the same config. It
stops the cluster at the end, also when something fails. Root only (setup.sh installs and
starts daemons): `make test-slurm`, which CI runs after `make test`; plain `pytest` deselects
it (pyproject.toml).
"""

from __future__ import annotations

import json
import math
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
import yaml
from conftest import MIRROR, ROOT
from test_dag import job_counts
from test_e2e import CONFIG, run_dir  # noqa: F401  (the local run of the same config)

from traitscope.capture.store import read_shards

pytestmark = pytest.mark.slurm
SETUP = ROOT.parent / "shared" / "slurm-local" / "setup.sh"
PROFILE = ROOT / "profiles" / "slurm"
# What a user passes on top of the profile: the node here has 2 CPUs and 20 GB, less than
# the profile asks for model jobs (8 threads, 64 GB), so every job is capped to it; and short
# jobs need no 40 s wait before the first status check.
USER_ARGS = [
    "--max-threads",
    "2",
    "--resources",
    "mem_mb=16000",
    "--slurm-init-seconds-before-status-checks",
    "5",
]
SACCT_FIELDS = ["JobID", "JobName", "Partition", "AllocTRES", "State", "ExitCode", "Elapsed"]
SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (\S+?)\)")


def setup_sh(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SETUP), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


@pytest.fixture(scope="module")
def cluster():
    if not SETUP.is_file():
        pytest.fail(f"{SETUP} is missing: the Slurm test needs ../shared/slurm-local beside the checkout")
    if os.geteuid() != 0:
        pytest.fail("the Slurm test starts a local cluster with setup.sh, which must run as root")
    try:
        started = setup_sh()
        assert started.returncode == 0, (started.stdout + started.stderr)[-3000:]
        yield
    finally:
        stopped = setup_sh("stop", timeout=300)
        print(stopped.stdout[-2000:], stopped.stderr[-2000:])


def snakemake_command() -> str:
    """The `snakemake` a user types: the console script of this interpreter's environment."""
    script = Path(sys.executable).with_name("snakemake")
    return str(script) if script.exists() else "snakemake"


@pytest.fixture(scope="module")
def slurm_run(run_dir, cluster, root, tmp_path_factory):  # noqa: F811
    """The tiny config through `snakemake --profile slurm`, run after the local one."""
    from snakemake.cli import get_profile_dir

    work = tmp_path_factory.mktemp("slurm")
    for name in ("workflow", "profiles", "envs", "config", "resources", ".test"):
        shutil.copytree(root / name, work / name)
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
    cmd = [snakemake_command(), "--profile", "slurm", "--configfile", CONFIG]
    cmd += ["--config", f"data_mirror={MIRROR}", *USER_ARGS]
    start = time.strftime("%Y-%m-%dT%H:%M:%S")
    t0 = time.monotonic()
    result = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=1800)
    elapsed = time.monotonic() - t0
    out = result.stdout + result.stderr
    print(f"{' '.join(cmd[1:])}: {elapsed:.0f} s")
    assert result.returncode == 0, out[-5000:]
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
    return {"dir": work, "out": out, "sacct": table, "seconds": elapsed}


def expected_partition(rule: str) -> tuple[str, bool]:
    """(partition, one GPU) the project's profile gives a rule."""
    profile = yaml.safe_load((PROFILE / "config.v8+.yaml").read_text())
    resources = {**profile["default-resources"], **profile["set-resources"].get(rule, {})}
    return resources["slurm_partition"], resources.get("gpu", 0) == 1


def submissions(out: str) -> dict[int, tuple[int, str]]:
    """{Slurm job id: (Snakemake job id, rule)} from the executor's submission lines."""
    jobs = {}
    for job, slurm_id, log in SUBMITTED.findall(out):
        jobs[int(slurm_id)] = (int(job), re.search(r"/rule_([A-Za-z0-9_]+)/", log)[1])
    return jobs


def test_every_rule_ran_as_its_own_slurm_job(slurm_run):
    jobs = submissions(slurm_run["out"])
    planned = job_counts(slurm_run["out"])
    planned.pop("all")  # no shell command: Snakemake finishes it itself
    # one submission per planned job (no retry, no job run inside another's allocation)
    assert Counter(rule for _, rule in jobs.values()) == planned
    assert len({job for job, _ in jobs.values()}) == len(jobs) == sum(planned.values())
    table = slurm_run["sacct"]
    assert sorted(table["JobID"].astype(int)) == sorted(jobs)  # nothing else ran under this run's name
    assert (table["State"] == "COMPLETED").all() and (table["ExitCode"] == "0:0").all(), table


def test_gpu_rules_went_to_the_gpu_partition_with_one_gpu(slurm_run):
    jobs = submissions(slurm_run["out"])
    gpu_rules = set()
    for row in slurm_run["sacct"].itertuples():
        rule = jobs[int(row.JobID)][1]
        partition, gpu = expected_partition(rule)
        assert row.Partition == partition, (rule, row)
        tres = dict(item.split("=", 1) for item in row.AllocTRES.split(","))
        assert tres.get("gres/gpu") == ("1" if gpu else None), (rule, row.AllocTRES)
        if gpu:
            gpu_rules.add(rule)
            assert row.Partition == "gpu"
    assert gpu_rules == {"capture", "steering_check"}  # the tiny DAG's model jobs
    # the node's GPU has no device behind it (gres File=/dev/null): model jobs fall back to the CPU
    logs = list((slurm_run["dir"] / "results/logs/capture").rglob("*.log"))
    assert len(logs) == Counter(rule for _, rule in jobs.values())["capture"]
    for log in logs:
        assert re.search(r"traitscope: model smollm2 on cpu, dtype", log.read_text()), log


def assert_same(a, b, where: str) -> None:
    """Equal JSON values, floats to 1e-4 relative (thread counts differ between the runs)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and not isinstance(b, bool):
        assert (math.isnan(a) and math.isnan(b)) or b == pytest.approx(a, rel=1e-4, abs=1e-6), (where, a, b)
    else:
        assert a == b, (where, a, b)


def test_outputs_equal_the_local_run(slurm_run, run_dir):  # noqa: F811
    cluster_dir = slurm_run["dir"]
    jsons = sorted(p.relative_to(run_dir) for p in (run_dir / "results").rglob("*.json"))
    for must in (
        "results/traits/smollm2/summary.json",
        "results/traits/smollm2/safety/evil/evaluation.json",
        "results/traits/smollm2/safety/evil/steering.json",
        "results/prefill/condition_comparison.json",
        "results/external_datasets/harmbench_results.json",
        "results/external_datasets/beavertails_results.json",
    ):
        assert Path(must) in jsons
    for rel in jsons:
        if rel.parts[1] in ("capture", "models"):  # manifests name their own paths and timings
            continue
        local = json.loads((run_dir / rel).read_text())
        assert_same(local, json.loads((cluster_dir / rel).read_text()), str(rel))
    projections = sorted((run_dir / "results/projections/smollm2").glob("*.parquet"))
    assert len(projections) == 6
    for path in projections:
        local = pd.read_parquet(path)
        other = pd.read_parquet(cluster_dir / path.relative_to(run_dir))
        keys = ["prompt_id", "trait", "layer", "position", "token_index"]
        local, other = (t.sort_values(keys).reset_index(drop=True) for t in (local, other))
        pd.testing.assert_frame_equal(local, other, check_exact=False, rtol=1e-4, atol=1e-5)
    # the generated answers themselves (greedy decoding): the same text on the cluster
    for trait in ("evil", "refusal"):
        capture = Path(f"results/capture/smollm2/traits/safety/{trait}/capture.json")
        local, other = (
            pd.concat(p for p, _, _ in read_shards(d / capture))
            .set_index("prompt_id")["response"]
            .sort_index()
            for d in (run_dir, cluster_dir)
        )
        pd.testing.assert_series_equal(local, other)
