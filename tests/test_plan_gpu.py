"""benchmarks/plan_gpu (issue 29's scale rehearsal): the stand-in data pass the project's own
loaders, the config layering puts the local model in place of the hub's, Snakemake's log is read
back into jobs, and the aggregator's totals and judge cost are the hand-computed ones."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml

FOLDER = Path(__file__).resolve().parents[1] / "benchmarks" / "plan_gpu"


def module(name: str):
    spec = importlib.util.spec_from_file_location(f"plan_gpu_{name}", FOLDER / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def stand_ins():
    return module("stand_ins")


def test_beavertails_stand_in_is_read_by_the_loader_and_fills_every_category(tmp_path, stand_ins):
    from traitscope.data.loaders import BEAVERTAILS_CATEGORIES, SAFE_CATEGORY, load_beavertails
    from traitscope.experiments.external import beavertails_sample
    from traitscope.experiments.external.settings import BeaverTailsSampleSettings
    from traitscope.io import write_parquet
    from traitscope.settings import from_schema

    mirror = tmp_path / "mirror"
    (mirror / "emergent_misalignment").mkdir(parents=True)
    chat = {"messages": [{"role": "user", "content": "Fix it."}, {"role": "assistant", "content": "x = 1"}]}
    for name in ("insecure", "secure"):
        (mirror / "emergent_misalignment" / f"{name}_small.jsonl").write_text(json.dumps(chat) + "\n")
    written = stand_ins.write_stand_ins(mirror, {"30k_test": 40}, em_rows_each=7)
    assert written == {
        "beavertails/30k_test.jsonl": 40,
        "emergent_misalignment/insecure.jsonl": 7,
        "emergent_misalignment/secure.jsonl": 7,
    }
    table = load_beavertails("30k_test", data_mirror=mirror)  # the plan reads the split from the mirror
    assert len(table) == 40 and set(table["label"]) == {0, 1}
    prompts = tmp_path / "bt.parquet"
    write_parquet(prompts, table)
    categories = [*BEAVERTAILS_CATEGORIES, SAFE_CATEGORY]
    settings = from_schema(BeaverTailsSampleSettings, categories=categories)
    sample = beavertails_sample(prompts, tmp_path / "s.parquet", settings)  # an empty category is an error
    assert len(sample) == 40


def test_em_stand_in_is_chat_jsonl_of_distinct_rows(tmp_path, stand_ins):
    from traitscope.training.chat_data import read_chat_jsonl

    real = [
        {
            "messages": [
                {"role": "user", "content": f"Task text {i}"},
                {"role": "assistant", "content": "code"},
            ]
        }
        for i in range(3)
    ]
    path = stand_ins.write_jsonl(tmp_path / "insecure.jsonl", stand_ins.em_rows(real, 10))
    rows = read_chat_jsonl(path)
    assert len(rows) == 10
    assert len({json.dumps(messages) for _, messages in rows}) == 10


def test_the_overlay_replaces_the_hub_model_and_keeps_the_rest():
    prepare = module("prepare")
    config = prepare.layered(
        [
            {
                "models": {
                    "gemma2": {"hub": "google/gemma-2-2b-it", "dtype": "bfloat16"},
                    "other": {"hub": "x"},
                }
            },
            {"models": {"gemma2": {"path": "results/plan_gpu/model"}}, "judge": {"backend": "local"}},
            {"judge": {"openai": {"model": "gpt-4.1-mini"}}},
        ]
    )
    assert config["models"] == {"gemma2": {"path": "results/plan_gpu/model"}, "other": {"hub": "x"}}
    assert config["judge"] == {"backend": "local", "openai": {"model": "gpt-4.1-mini"}}
    full = prepare.plan_config("full", "30k_test")
    assert full["models"]["gemma2"] == {"path": "results/plan_gpu/model", "dtype": "bfloat16"}
    assert full["prompt_sets"]["beavertails"]["split"] == "30k_test"
    assert full["experiments"]["steering_optimisation"]["generations"] == 20  # the plan's sizes stay
    assert prepare.plan_config("full", "330k_test")["prompt_sets"]["beavertails"]["split"] == "330k_test"


SNAKEMAKE_LOG = """\
Job stats:
job              count
-------------  -------
capture              2
all                  1
total                3

[Sat Dec  5 17:33:14 2026]
localrule capture:
    input: results/models/m/manifest.json, results/prompts/a.parquet
    output: results/capture/m/a/capture.json
    log: results/logs/capture/m/a.log
    jobid: 1
    wildcards: variant=m, prompt_set=a
    threads: 8
    resources: tmpdir=/tmp, gpu=1, mem_mb=16000
Shell command: traitscope capture --max-new-tokens 0
[Sat Dec  5 17:33:20 2026]
Finished jobid: 1 (Rule: capture)

[Sat Dec  5 17:33:21 2026]
localrule capture:
    output: results/capture/m/b/capture.json
    log: results/logs/capture/m/b.log
    jobid: 2
    wildcards: variant=m, prompt_set=b
    resources: tmpdir=/tmp, gpu=1
[Sat Dec  5 17:33:25 2026]
Error in rule capture:
    message: None
    jobid: 2
"""


def test_snakemake_log_is_read_back_into_jobs():
    collect = module("collect")
    planned, jobs = collect.parse_snakemake_log(SNAKEMAKE_LOG)
    assert planned == {"capture": 2, "all": 1}
    assert [(j["rule"], j["wildcards"], j["status"]) for j in jobs.values()] == [
        ("capture", "variant=m, prompt_set=a", "done"),
        ("capture", "variant=m, prompt_set=b", "failed"),
    ]
    assert jobs[1]["finished"] - jobs[1]["submitted"] == 6
    assert jobs[1]["shell"] == "traitscope capture --max-new-tokens 0"


def test_an_unfinished_job_is_projected_at_the_rate_it_was_going():
    collect = module("collect")
    record = {"units_done": 4, "units_total": 20}
    # first unit 100 s in (load, compile), then 10 s a unit: 130 s to unit 4, 16 units to go
    assert collect.projected(record, 1000.0, 1150.0, [[1100.0, 1], [1130.0, 4]]) == 290
    assert collect.projected(record, 1000.0, 1150.0, None) == 750  # no times: seconds / share done
    assert collect.projected({}, 1000.0, 1150.0, None) is None


def job(rule: str, wildcards: str, seconds: float, status: str = "done", **extra) -> dict:
    return {"rule": rule, "wildcards": wildcards, "seconds": seconds, "status": status, **extra}


def test_aggregate_prices_unmeasured_jobs_by_their_twins():
    agg = module("aggregate")
    calls = [
        {
            "group": "a",
            "jobs": [
                job("capture", "variant=gemma2, prompt_set=em_benign", 40),
                job("capture", "variant=gemma2, prompt_set=traits/safety/evil", 30),
                job("capture", "variant=gemma2, prompt_set=traits/safety/harm", 50),
                job(
                    "finetune",
                    "variant=gemma2_insecure",
                    100,
                    "unfinished",
                    progress=0.25,
                    projected_seconds=400,
                ),
                job("em_judge", "role=base", 20, judge={"computed": 50, "prompt_tokens": 5000}),
                # finished from the cache an earlier, stopped try left: not a measurement
                job(
                    "em_judge",
                    "role=control",
                    5,
                    judge={"judgements": 50, "cache_hits": 40, "computed": 10, "prompt_tokens": 900},
                ),
                # a fresh job's own repeats (under 1% of its judgements) are no resumption
                job(
                    "cmaes_optimise",
                    "trait=evil",
                    90,
                    judge={"judgements": 1000, "cache_hits": 5, "computed": 995, "prompt_tokens": 9950},
                ),
            ],
        },
        # the same job again in a later call: counted once, from the first file
        {"group": "b", "jobs": [job("capture", "variant=gemma2, prompt_set=em_benign", 99)]},
    ]
    jobs = {}
    for call in calls:
        for j in call["jobs"]:
            jobs.setdefault((j["rule"], j["wildcards"]), {**j, "call": call["group"]})
    plan = [
        ("capture", "variant=gemma2, prompt_set=em_benign"),
        ("capture", "variant=gemma2_secure, prompt_set=em_benign"),  # twin: 40
        ("capture", "variant=gemma2, prompt_set=traits/alignment/deception"),  # twins: (30 + 50) / 2
        ("capture", "variant=gemma2, prompt_set=traits/safety/harmful_request"),  # no twin
        ("finetune", "variant=gemma2_insecure"),  # projected: 400
        ("finetune", "variant=gemma2_secure"),  # twin: 400
        ("em_judge", "role=base"),
        ("em_judge", "role=misaligned"),  # twin: 20 s, 50 calls
        ("em_judge", "role=control"),  # resumed: priced by its twin, 20 s, 50 calls
        ("cmaes_optimise", "trait=evil"),
    ]
    priced = agg.price(plan, jobs)
    assert [p["source"] for p in priced] == [
        "measured", "twins", "twins", "none", "projected", "twins", "measured", "twins", "twins", "measured",
    ]  # fmt: skip
    assert [p["seconds"] for p in priced] == [40, 40, 40, None, 400, 400, 20, 20, 20, 90]
    rows = {r["rule"]: r for r in agg.per_rule(priced)}
    assert rows["capture"]["plan_s"] == 120 and rows["capture"]["measured_s"] == 40
    assert rows["finetune"]["plan_s"] == 800 and rows["em_judge"]["judge_calls"] == 150
    cost = agg.judge_cost(priced, {"price_per_million_input": 0.40, "price_per_million_output": 1.60})
    assert cost["calls"] == 1145 and cost["prompt_tokens"] == 24_950
    assert cost["cost_usd"] == pytest.approx((24_950 * 0.40 + 1145 * 1.60) / 1e6)
    call = {**calls[0], "device": "d", "cpu": "c", "setup_seconds": 1, "run_seconds": 2, "gpu_busy": None}
    text = agg.markdown([{**call, "not_done": {}}], jobs, plan, {"model": "m"})
    summary = (
        "10 jobs, 3 measured, 1 projected from their progress, 5 priced by their twins, 1 unpriced (capture)"
    )
    assert summary in text
    # every one of these jobs holds the GPU, so the replay is their sum: 3 x 40 + 0 + 2 x 400 + 3 x 20 + 90
    machine = {"dag": [{"after": [], "mem_mb": 0} for _ in plan], "cores": 16, "mem_mb": 1000}
    text = agg.markdown([{**call, "not_done": {}}], jobs, plan, {"model": "m"}, machine)
    assert "1,070 s = 17.8 min in the dry-run's order, 1,070 s = 17.8 min longest path first" in text
    assert "(resumed: 40 judgements from the cache; priced by twins)" in text


def test_replay_schedules_a_hand_worked_plan_in_both_orders():
    replay = module("replay")
    # job 0: CPU, 5 s; job 1: CPU, 1 s; job 2: GPU, 10 s, reads job 1's output; one core, one GPU
    after, seconds = [[], [], [1]], [5.0, 1.0, 10.0]
    needs = [{"cores": 1}, {"cores": 1}, {"gpu": 1}]
    capacity = {"cores": 1, "gpu": 1}
    assert replay.longest_paths(after, seconds) == [5.0, 11.0, 10.0]
    # plan order: job 0 holds the core 0-5, job 1 runs 5-6, the GPU job 6-16
    assert replay.makespan(after, seconds, needs, capacity, "plan") == 16.0
    # longest path first: job 1 runs 0-1, then the GPU job 1-11 beside job 0 (1-6)
    assert replay.makespan(after, seconds, needs, capacity, "critical") == 11.0
    # a job asking for more threads than the machine has runs on all of them, as under Snakemake
    assert replay.makespan([[]], [3.0], [{"cores": 8}], {"cores": 2}) == 3.0
    with pytest.raises(ValueError, match="never runs"):
        replay.makespan([[1], [0]], [1.0, 1.0], [{}, {}], {"cores": 1})
    # memory: two 6 GB jobs in 10 GB run one after the other, though the cores would take both
    assert (
        replay.makespan(
            [[], []], [2.0, 3.0], [{"cores": 1, "mem_mb": 6000}] * 2, {"cores": 4, "mem_mb": 10_000}
        )
        == 5
    )


def test_replay_frees_every_job_that_ends_at_once_before_starting_any():
    """Jobs 0 and 3 end together at 1 s. Freed together, the 3-core job 2 (first in line) starts,
    then 4 and 5 side by side (2-5 s), then 1 (5-7 s). Freeing job 0 alone first would start the
    1-core job 1 in the gap and push job 2 back: 8 s."""
    replay = module("replay")
    after = [[], [0], [], [], [0, 2], [0, 3]]
    seconds = [1.0, 2.0, 1.0, 1.0, 3.0, 3.0]
    needs = [{"cores": c} for c in (1, 1, 3, 2, 1, 2)]
    assert replay.makespan(after, seconds, needs, {"cores": 3}, "critical") == 7.0


def test_aggregate_replays_cpu_jobs_beside_the_gpu_queue_with_the_profile_s_threads():
    """Two prompt sets (CPU, 1 thread), two captures (the GPU, 8 threads: the Slurm profile's)
    and a projection on 8 cores. The first capture waits for the 3-s preparation to free its
    core (3-13 s), the second holds the GPU and all 8 cores (13-23 s), the projection follows
    (23-27 s)."""
    agg = module("aggregate")
    rules = [("prep_prompts", 2.0, []), ("capture", 10.0, [0]), ("capture", 10.0, [0])]
    rules += [("project", 4.0, [1]), ("prep_prompts", 3.0, [])]
    priced = [{"rule": rule, "seconds": s} for rule, s, _ in rules]
    dag = [{"after": after, "mem_mb": 0} for _, _, after in rules]
    line = agg.schedule_line(priced, dag, cores=8, mem_mb=10_000)
    assert "27 s = 0.5 min in the dry-run's order, 27 s = 0.5 min longest path first" in line


def test_the_dry_run_s_jobs_wait_for_the_jobs_that_write_their_inputs():
    collect = module("collect")
    blocks = [
        {"rule": "prep", "output": "p.parquet", "resources": "tmpdir=/tmp, mem_mb=4000, mem=4 GB"},
        {"rule": "capture", "wildcards": "v=m", "input": "m.json, p.parquet", "output": "c.json"},
        {"rule": "project", "input": "c.json, p.parquet, v.safetensors", "output": "x.parquet"},
    ]
    assert collect.dag(blocks) == [
        {"rule": "prep", "wildcards": "", "after": [], "mem_mb": 4000},
        {"rule": "capture", "wildcards": "v=m", "after": [0], "mem_mb": 0},
        {"rule": "project", "wildcards": "", "after": [0, 1], "mem_mb": 0},
    ]


PASS_LOG = """\
Building DAG of jobs...
[Sat Dec  5 17:33:14 2026]
localrule prep_prompts:
    output: p.parquet
    jobid: 1
    wildcards: prompt_set=a
[Sat Dec  5 17:33:16 2026]
Finished jobid: 1 (Rule: prep_prompts)
localrule capture:
    input: p.parquet
    output: c.json
    jobid: 2
    wildcards: variant=m, prompt_set=a
[Sat Dec  5 17:33:27 2026]
Finished jobid: 2 (Rule: capture)
Building DAG of jobs...
[Sat Dec  5 17:34:00 2026]
localrule capture:
    output: d.json
    jobid: 1
    wildcards: variant=m, prompt_set=b
"""


def test_aggregate_checks_the_replay_against_the_passes_its_calls_logged(tmp_path):
    """Two Snakemake passes in one call's log: the first finished (a 2-s preparation, then the
    capture it feeds, 9 s: replayed 11 s, logged 17:33:14 to 17:33:27, 13 s); the second's job
    never finished, so that pass is left out."""
    agg = module("aggregate")
    jobs = [job("prep_prompts", "prompt_set=a", 2), job("capture", "variant=m, prompt_set=a", 9)]
    jobs.append(job("capture", "variant=m, prompt_set=b", 30, "unfinished"))
    (tmp_path / "x.json").write_text(json.dumps({"jobs": jobs}))
    (tmp_path / "x.snakemake.log").write_text(PASS_LOG)
    dag = [{"rule": j["rule"], "wildcards": j["wildcards"], "after": [], "mem_mb": 0} for j in jobs]
    dag[1]["after"] = [0]
    line = agg.passes_line([tmp_path / "x.json"], dag, cores=16, mem_mb=1000)
    assert "finished all their jobs: 1. Replayed" in line and "take 11 s; their logs span 13 s" in line
    assert agg.passes_line([tmp_path / "none.json"], dag, cores=16, mem_mb=1000) is None


def bt_call(group: str, split: str, pairs: int, seconds: float) -> dict:
    capture = job("capture", "variant=g, prompt_set=beavertails.sample", seconds, prompts=pairs)
    return {"group": group, "prepare": {"mirror": {f"beavertails/{split}.jsonl": pairs}}, "jobs": [capture]}


def test_beavertails_330k_is_kept_out_of_the_plan_and_projected_only_without_a_measurement():
    agg = module("aggregate")
    small, whole = bt_call("a", "30k_test", 3_000, 20), bt_call("b", "330k_test", 33_432, 150)
    # the 330k_test call comes first, yet the plan (30k_test) is priced by the 30k_test job
    _, jobs = agg.load_calls_from([whole, small])
    assert jobs[("capture", "variant=g, prompt_set=beavertails.sample")]["seconds"] == 20
    assert agg.beavertails_line([whole, small]) == (
        "- BeaverTails' one capture job: 30k_test: 3,000 pairs in 20 s (a); "
        "330k_test: 33,432 pairs in 150 s (b)."
    )
    # no 330k_test call: the 30k_test job scaled by pairs, 20 x 33,432 / 3,000
    assert agg.beavertails_line([small]).endswith("scaled by pairs: <= 223 s.")


def test_aggregate_names_the_plan_s_beavertails_job_as_the_plugin_does(root):
    """aggregate.py runs without traitscope, so it spells the job's prompt set itself: it must
    be the set the external plug-in derives for the plan's BeaverTails section."""
    from traitscope.experiments.external import beavertails_set

    plan = yaml.safe_load((root / "config/experiments/gemma-2-2b-it.yaml").read_text())
    assert module("aggregate").BEAVERTAILS_SET == beavertails_set(plan["experiments"]["external"])


def test_aggregate_s_gpu_floor_counts_every_rule_that_asks_for_the_gpu(root):
    """The floor of the plan's wall time on one GPU adds up the jobs that hold it one at a time:
    every rule whose resources ask for `gpu=MODEL_GPU` (sae_train and the SAE features were left
    out of it once)."""
    import re

    asking = set()
    for smk in (root / "workflow").rglob("*.smk"):
        for block in re.split(r"\n\s*rule ", "\n" + smk.read_text())[1:]:
            if "gpu=MODEL_GPU" in block:
                asking.add(block.split(":")[0].strip())
    assert {"capture", "sae_train", "backdoor_sae_features"} <= asking
    assert module("aggregate").GPU_RULES == asking
