"""Several rehearsal calls (collect.py's <group>.json files) as one per-rule table of the plan, in
markdown: what was measured, what the plan's other jobs cost by their measured twins, the total
on one GPU against the seed's ~24 GPU-hours (its floor and ceiling, and the plan replayed on the
rehearsal's machine by replay.py), the projection to BeaverTails' whole 330k_test split,
and the judge's calls priced at the config's API prices.

    python benchmarks/plan_gpu/aggregate.py --plan dry.json CALL.json... > table.md

`--plan` is plan_gpu.sh's `dry` output: every job of the plan. A job measured in several calls
(the base model's preparation, a trait chain two groups share) counts once, from the first file
that finished it. A job no call finished is priced by its twins: the measured jobs that do the
same work on as much data (`family`), e.g. another persona trait's capture, or the base model's
answers for a finetuned variant's (LoRA is merged into the weights, so the cost is the same).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks/plan_gpu"))
from collect import parse_snakemake_log  # noqa: E402
from replay import makespan  # noqa: E402

SEED_ESTIMATE_S = 24 * 3600  # the seed's estimate of the plan: ~24 GPU-hours
BEAVERTAILS_330K_TEST = 33_432  # pairs of the split the plan without the 30k overlay captures
PLAN_SPLIT = "30k_test"  # the plan priced: gemma-2-2b-it.yaml with beavertails-30k-test.yaml
BEAVERTAILS_SET = "beavertails.sample"  # the one capture job's prompt set
BARE_SETS = ("harmbench", "harmless", "advbench", "rd_")  # HarmBench, AdvBench, refusal-direction sets
# the rules that ask for the GPU (gpu=MODEL_GPU): on one GPU their jobs run one at a time
GPU_RULES = {
    "capture",
    "finetune",
    "steering_check",
    "cmaes_optimise",
    "cmaes_heldout",
    "trait_judgements",
    "trait_truth_agreement",
    "em_judge",
    "sae_train",
    "backdoor_sae_features",
}


def family(rule: str, wildcards: str) -> str:
    """Jobs that do the same work on the same amount of data: a measured one stands for the others."""
    fields = dict(w.split("=", 1) for w in wildcards.split(", ") if "=" in w)
    if rule == "capture":
        prompt_set = fields.get("prompt_set", "")
        if prompt_set.startswith("traits/") and prompt_set != "traits/safety/harmful_request":
            return "capture: a persona trait's set"  # 720 prompts, 128 new tokens each
        if prompt_set.startswith(BARE_SETS) and prompt_set != "harmless_train_sae":
            return "capture: a bare prompt set"  # 40 to 200 prompts, no generation
        return f"capture: {prompt_set}"  # any variant: its LoRA is merged, its shape the base's
    if rule == "finetune":
        variant = fields.get("variant", "")
        return "finetune: insecure/secure.jsonl" if variant.endswith(("_insecure", "_secure")) else variant
    return rule  # per-trait and per-role rules, and small CPU jobs: every job of the rule alike


def split_of(call: dict) -> str | None:
    """The BeaverTails split a call's mirror held (30k_test for the plan, 330k_test for its
    projection), from prepare.py's record."""
    mirror = (call.get("prepare") or {}).get("mirror") or {}
    return next(
        (k.split("/")[1].removesuffix(".jsonl") for k in mirror if k.startswith("beavertails/")), None
    )


def load_calls(paths: list[Path]) -> tuple[list[dict], dict[tuple[str, str], dict]]:
    """The calls, and every job once: the first finished measurement, else the first record.
    Only calls on the plan's BeaverTails sample (30k_test) price the plan's jobs."""
    return load_calls_from([json.loads(p.read_text()) for p in paths])


def load_calls_from(calls: list[dict]) -> tuple[list[dict], dict[tuple[str, str], dict]]:
    jobs: dict[tuple[str, str], dict] = {}
    for call in calls:
        if split_of(call) not in (None, PLAN_SPLIT):
            continue
        for job in call["jobs"]:
            key = (job["rule"], job["wildcards"])
            if key not in jobs or (not full(jobs[key]) and full(job)):
                jobs[key] = {**job, "call": call["group"]}
    return calls, jobs


RESUMED_SHARE = 0.01  # above a fresh job's own repeated judgements: CMA-ES, 6 of 11,536 (0.05%)


def full(job: dict) -> bool:
    """A job measured from start to end: finished, and not resumed. A judging job that a call's
    budget stopped finishes in the next call from the judge's cache (session 25's control EM
    judge: 1,904 of 2,400 judgements cached, 20 s against its twins' 53 s), so its seconds are
    part of a run."""
    judge = job.get("judge") or {}
    resumed = judge.get("cache_hits", 0) > RESUMED_SHARE * judge.get("judgements", 0)
    return job["status"] == "done" and not resumed


def seconds_of(job: dict) -> float | None:
    """A fully measured job's seconds, or an unfinished one's seconds / progress."""
    return job["seconds"] if full(job) else job.get("projected_seconds")


def price(plan: list[tuple[str, str]], jobs: dict[tuple[str, str], dict]) -> list[dict]:
    """Every planned job with its seconds and judge calls: measured, projected from its progress,
    the mean of its measured twins, or none (no twin measured)."""
    twins: dict[str, list[dict]] = defaultdict(list)
    for (rule, wildcards), job in jobs.items():
        if seconds_of(job) is not None:
            twins[family(rule, wildcards)].append(job)
    priced = []
    for rule, wildcards in plan:
        job = jobs.get((rule, wildcards))
        if job is not None and full(job):
            source, seconds, judged = "measured", job["seconds"], [job]
        elif job is not None and job.get("projected_seconds"):
            source, seconds, judged = "projected", job["projected_seconds"], []
        elif like := twins.get(family(rule, wildcards)):
            source, seconds = "twins", statistics.mean(seconds_of(j) for j in like)
            judged = [j for j in like if full(j)]
        else:
            source, seconds, judged = "none", None, []
        calls = [j["judge"] for j in judged if j.get("judge")]
        priced.append(
            {
                "rule": rule,
                "wildcards": wildcards,
                "source": source,
                "seconds": seconds,
                "job": job if source == "measured" else None,
                "judge_calls": statistics.mean(c["computed"] for c in calls) if calls else 0,
                "judge_tokens": statistics.mean(c["prompt_tokens"] for c in calls) if calls else 0,
            }
        )
    return priced


EMPTY_ROW = {
    "jobs": 0,
    "measured": 0,
    "projected": 0,
    "twins": 0,
    "none": 0,
    "plan_s": 0.0,
    "measured_s": 0.0,
}
EMPTY_ROW |= {"max_s": None, "judge_calls": 0.0}
# per-rule lists of the measured jobs' values: row key -> job field
LISTS = {"busy": "gpu_busy", "peak_gpu": "peak_gpu_mib", "rss": "max_rss_mib", "rate": "tokens_per_s"}


def per_rule(priced: list[dict]) -> list[dict]:
    rows: dict[str, dict] = {}
    for p in priced:
        row = rows.setdefault(p["rule"], {"rule": p["rule"], **EMPTY_ROW, **{k: [] for k in LISTS}})
        row["jobs"] += 1
        row[p["source"]] += 1
        row["plan_s"] += p["seconds"] or 0
        row["judge_calls"] += p["judge_calls"]
        if (job := p["job"]) is not None:
            row["measured_s"] += job["seconds"]
            row["max_s"] = max(row["max_s"] or 0, job["seconds"])
            for key, field in LISTS.items():
                if job.get(field) is not None:
                    row[key].append(job[field])
    return sorted(rows.values(), key=lambda r: -r["plan_s"])


def beavertails_captures(calls: list[dict]) -> list[dict]:
    """Every finished capture of BeaverTails' one job, with its split and pairs, fewest first."""
    runs = [
        {"split": split_of(call), "pairs": j["prompts"], "seconds": j["seconds"], "call": call["group"]}
        for call in calls
        for j in call["jobs"]
        if j["rule"] == "capture"
        and j["wildcards"].endswith(f"prompt_set={BEAVERTAILS_SET}")
        and j["status"] == "done"
        and j.get("prompts")
    ]
    return sorted(runs, key=lambda r: r["pairs"])


def beavertails_line(calls: list[dict]) -> str | None:
    """aggregate.md's BeaverTails line: each measured job, and where no call ran the whole
    330k_test split, the largest job's seconds scaled by pairs (an upper bound: the job's
    start-up scales too)."""
    runs = beavertails_captures(calls)
    if not runs:
        return None
    text = "; ".join(
        f"{r['split']}: {r['pairs']:,} pairs in {fmt(r['seconds'])} s ({r['call']})" for r in runs
    )
    whole = [r for r in runs if r["pairs"] >= BEAVERTAILS_330K_TEST]
    if not whole:
        projected = runs[-1]["seconds"] * BEAVERTAILS_330K_TEST / runs[-1]["pairs"]
        whole_split = f"the whole 330k_test split ({BEAVERTAILS_330K_TEST:,} pairs)"
        text += f"; {whole_split}, scaled by pairs: <= {fmt(projected)} s"
    return f"- BeaverTails' one capture job: {text}."


def judge_cost(priced: list[dict], prices: dict) -> dict:
    """The plan's judge calls (an API gets one per local cache miss) and prompt tokens (the local
    tokenizer's count, chat template and "Score: " prefill included; one output token a call)."""
    calls = sum(p["judge_calls"] for p in priced)
    tokens = sum(p["judge_tokens"] for p in priced)
    pin, pout = prices.get("price_per_million_input"), prices.get("price_per_million_output")
    cost = None if pin is None or pout is None else (tokens * pin + calls * pout) / 1e6
    return {"calls": calls, "prompt_tokens": tokens, "cost_usd": cost}


def replay(
    rules: list[str], seconds: list[float], dag: list[dict], cores: int, mem_mb: int, order: str
) -> float:
    """Jobs (their rules, seconds and dry.json entries) replayed on one GPU, `cores` and `mem_mb`,
    each rule's threads as plan_gpu.sh sets them (the Slurm profile's)."""
    threads = yaml.safe_load((ROOT / "profiles/slurm/config.v8+.yaml").read_text())["set-threads"]
    needs = [
        {"gpu": int(rule in GPU_RULES), "cores": threads.get(rule, 1), "mem_mb": job["mem_mb"]}
        for rule, job in zip(rules, dag, strict=True)
    ]
    capacity = {"gpu": 1, "cores": cores, "mem_mb": mem_mb}
    return makespan([job["after"] for job in dag], seconds, needs, capacity, order)


def schedule_line(priced: list[dict], dag: list[dict], cores: int, mem_mb: int) -> str:
    """The plan replayed on the rehearsal's machine (replay.py), unpriced jobs at 0 s."""
    rules, seconds = [p["rule"] for p in priced], [p["seconds"] or 0.0 for p in priced]
    plan_order, critical = (replay(rules, seconds, dag, cores, mem_mb, o) for o in ("plan", "critical"))
    return (
        f"- Replayed on one GPU, {cores} cores and {mem_mb:,} MB (`replay.py`: the measured and "
        f"twin-priced seconds, the DAG, each rule's threads): {fmt(plan_order)} s = "
        f"{plan_order / 60:.1f} min in the dry-run's order, {fmt(critical)} s = {critical / 60:.1f} min "
        f"longest path first; the seed's 24 GPU-hours are {SEED_ESTIMATE_S / max(plan_order, 1):.1f}x "
        "the first."
    )


def passes_line(paths: list[Path], dag: list[dict], cores: int, mem_mb: int) -> str | None:
    """The replay checked against Snakemake: every pass in the calls' logs (<call>.snakemake.log
    beside its JSON) that finished all its jobs, replayed from those jobs' own seconds, against
    the span its log stamps (to the second) from the first job's start to the last one's end."""
    if not paths:
        return None
    index = {(j["rule"], j["wildcards"]): i for i, j in enumerate(dag)}
    passes, replayed, spanned = 0, 0.0, 0.0
    for path in paths:
        log = path.with_name(path.name.removesuffix(".json") + ".snakemake.log")
        if not log.is_file():
            continue
        seconds = {(j["rule"], j["wildcards"]): j["seconds"] for j in json.loads(path.read_text())["jobs"]}
        for text in re.split(r"(?=^Building DAG of jobs)", log.read_text(errors="replace"), flags=re.M)[1:]:
            jobs = list(parse_snakemake_log(text)[1].values())
            keys = [(j["rule"], j.get("wildcards", "")) for j in jobs]
            if not jobs or any(
                j["status"] != "done" or k not in index or k not in seconds for j, k in zip(jobs, keys)
            ):
                continue
            local = {index[k]: n for n, k in enumerate(keys)}
            sub = [
                {
                    "after": [local[d] for d in dag[index[k]]["after"] if d in local],
                    "mem_mb": dag[index[k]]["mem_mb"],
                }
                for k in keys
            ]
            replayed += replay([k[0] for k in keys], [seconds[k] for k in keys], sub, cores, mem_mb, "plan")
            spanned += max(j["finished"] for j in jobs) - min(j["submitted"] for j in jobs)
            passes += 1
    if not passes:
        return None
    return (
        f"- The replay against Snakemake: Snakemake passes of these calls that finished all their jobs: "
        f"{passes}. Replayed from their own jobs' seconds in the dry-run's order, they take "
        f"{fmt(replayed)} s; their logs span {fmt(spanned)} s (first start to last end, to the second)."
    )


def table_header(columns: list[str]) -> str:
    return table_row(columns) + "\n" + table_row(["---"] * len(columns))


def table_row(cells: list) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def fmt(value, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def mean_or_none(values: list) -> float | None:
    return statistics.mean(values) if values else None


def markdown(
    calls: list[dict], jobs: dict, plan: list[tuple[str, str]], prices: dict, machine: dict | None = None
) -> str:
    """The tables and summary lines; `machine` ({"dag", "cores", "mem_mb", "paths"}: dry.json's
    jobs, the rehearsal machine's size, the calls' files) adds the plan's replayed wall time and
    the replay's check against the calls' Snakemake logs."""
    priced = price(plan, jobs)
    rows = per_rule(priced)
    total = sum(p["seconds"] or 0 for p in priced)
    gpu_total = sum(p["seconds"] or 0 for p in priced if p["rule"] in GPU_RULES)
    unpriced = [p for p in priced if p["seconds"] is None]
    out = [
        table_header(["call", "device", "CPU", "setup s", "Snakemake s", "GPU busy", "jobs done", "not done"])
    ]
    for c in calls:
        done = sum(j["status"] == "done" for j in c["jobs"])
        not_done = ", ".join(f"{r} {n}" for r, n in c["not_done"].items()) or "-"
        cells = [c["group"], c["device"], c["cpu"], fmt(c["setup_seconds"]), fmt(c["run_seconds"])]
        out.append(table_row([*cells, fmt(c["gpu_busy"], 2), done, not_done]))
    columns = (
        "rule, jobs, measured, projected, by twins, unpriced, measured s, max s, plan s, share, GPU busy, "
        "peak GPU GiB, peak RSS GiB, tokens/s, judge calls"
    ).split(", ")
    out += ["", table_header(columns)]
    for r in rows:
        peak = max(r["peak_gpu"]) / 1024 if r["peak_gpu"] else None
        rss = max(r["rss"]) / 1024 if r["rss"] else None
        share = f"{fmt(100 * r['plan_s'] / max(total, 1))}%"
        rate = statistics.median(r["rate"]) if r["rate"] else None
        cells = [r["rule"], *(r[k] for k in ("jobs", "measured", "projected", "twins", "none"))]
        cells += [fmt(r["measured_s"]), fmt(r["max_s"]), fmt(r["plan_s"]), share]
        cells += [
            fmt(mean_or_none(r["busy"]), 2),
            fmt(peak, 1),
            fmt(rss, 1),
            fmt(rate),
            fmt(r["judge_calls"] or None),
        ]
        out.append(table_row(cells))
    out += [
        "",
        f"- The plan: {len(plan)} jobs, {sum(p['source'] == 'measured' for p in priced)} measured, "
        f"{sum(p['source'] == 'projected' for p in priced)} projected from their progress, "
        f"{sum(p['source'] == 'twins' for p in priced)} priced by their twins, {len(unpriced)} unpriced "
        f"({', '.join(sorted({p['rule'] for p in unpriced})) or 'none'}).",
        f"- Model and judge jobs, one at a time on the GPU (the floor of the plan's wall time on one GPU): "
        f"{fmt(gpu_total)} s = {gpu_total / 3600:.2f} h. Every job one after another (the ceiling): "
        f"{fmt(total)} s = {total / 3600:.2f} h; the seed's 24 GPU-hours are "
        f"{SEED_ESTIMATE_S / max(total, 1):.1f}x that.",
    ]
    if machine is not None:
        size = (machine["dag"], machine["cores"], machine["mem_mb"])
        out.append(schedule_line(priced, *size))
        if check := passes_line(machine.get("paths", []), *size):
            out.append(check)
    if bt := beavertails_line(calls):
        out.append(bt)
    judge = judge_cost(priced, prices)
    if judge["calls"]:
        out.append(
            f"- Judge: {fmt(judge['calls'])} calls, {fmt(judge['prompt_tokens'])} prompt tokens (SmolLM2's "
            f"tokenizer); at {prices.get('model')}'s ${prices.get('price_per_million_input')}/M input and "
            f"${prices.get('price_per_million_output')}/M output tokens: ${fmt(judge['cost_usd'], 2)}."
        )
    columns = "call, rule, wildcards, status, s, GPU busy, peak GPU GiB, tokens, tokens/s, judge calls"
    out += ["", table_header(columns.split(", "))]
    for (rule, wildcards), j in sorted(jobs.items()):
        if rule not in GPU_RULES:
            continue
        s = fmt(j["seconds"])
        if j["status"] != "done":
            s += f" ({j['status']}; projected {fmt(j.get('projected_seconds'))})"
        elif not full(j):
            s += f" (resumed: {fmt(j['judge']['cache_hits'])} judgements from the cache; priced by twins)"
        peak = j.get("peak_gpu_mib")
        cells = [
            j["call"],
            rule,
            wildcards,
            j["status"],
            s,
            fmt(j.get("gpu_busy"), 2),
            fmt(peak and peak / 1024, 1),
        ]
        tokens = j.get("generated_tokens") or j.get("tokens")
        out.append(
            table_row(
                [*cells, fmt(tokens), fmt(j.get("tokens_per_s")), fmt((j.get("judge") or {}).get("computed"))]
            )
        )
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("calls", nargs="+", type=Path, help="collect.py's <group>.json files")
    parser.add_argument("--plan", type=Path, required=True, help="plan_gpu.sh dry's dry.json")
    parser.add_argument("--config", type=Path, default=ROOT / "config/experiments/gemma-2-2b-it.yaml")
    parser.add_argument("--cores", type=int, default=16, help="the rehearsal machine's cores")
    parser.add_argument("--mem-mb", type=int, default=110_000, help="Snakemake's memory (plan_gpu.sh)")
    args = parser.parse_args()
    calls, jobs = load_calls(args.calls)
    dag = json.loads(args.plan.read_text())["jobs"]
    plan = [(j["rule"], j["wildcards"]) for j in dag]
    prices = yaml.safe_load(args.config.read_text())["judge"]["openai"]
    machine = {"dag": dag, "cores": args.cores, "mem_mb": args.mem_mb, "paths": args.calls}
    print(markdown(calls, jobs, plan, prices, machine if "after" in dag[0] else None), end="")


if __name__ == "__main__":
    main()
