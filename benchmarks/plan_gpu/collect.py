"""One rehearsal call's measurements, per job: from Snakemake's log (rule, wildcards, resources, and
the jobs it planned), the `traitscope` wrapper's records (start, end, exit code, pid), the GPU
samples (busy share, memory) and each job's own outputs and log (tokens, steps, judge calls).

A job still running when the call's time ran out is `unfinished`: its seconds are a lower bound,
and where its outputs or log tell how far it got (capture shards, finetune steps, CMA-ES
generations) `projected_seconds` prices the rest at the rate it was going (`projected`).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import subprocess
from collections import Counter
from datetime import datetime
from pathlib import Path

JUDGE_LINE = re.compile(r"^traitscope judge: (\{.*\})$", re.M)
FINETUNE_STEP = re.compile(r"^traitscope finetune: step (\d+)/(\d+) .* tokens (\d+)$", re.M)
CMAES_GENERATION = re.compile(r"^traitscope cmaes: generation (\d+):", re.M)
TSV_COLUMNS = (
    "rule", "wildcards", "status", "seconds", "projected_seconds", "gpu_busy", "peak_gpu_mib",
    "tokens", "generated_tokens", "tokens_per_s", "judge_calls", "judge_prompt_tokens",
)  # fmt: skip


def snakemake_time(text: str) -> float:
    return datetime.strptime(" ".join(text.split()), "%a %b %d %H:%M:%S %Y").timestamp()


def parse_snakemake_log(text: str) -> tuple[dict[str, int], dict[int, dict]]:
    """(jobs planned per rule, {jobid: job}) from Snakemake's output of one run (jobids restart
    with every run)."""
    planned: dict[str, int] = {}
    stats = re.search(r"Job stats:\n.*?\n-+ +-+\n(.*?)\ntotal", text, re.S)
    for line in stats[1].splitlines() if stats else []:
        rule, count = line.split()
        planned[rule] = int(count)
    jobs: dict[int, dict] = {}
    stamp = None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if m := re.match(r"^\[(\w{3} \w{3} +\d+ [\d:]{8} \d{4})\]$", line):
            stamp = snakemake_time(m[1])
        elif m := re.match(r"^(?:local)?rule (\w+):$", line):
            job = {"rule": m[1], "submitted": stamp, "status": "started"}
            for field in lines[i + 1 :]:
                if not field.startswith("    "):
                    if field.startswith("Shell command: "):
                        job["shell"] = field.removeprefix("Shell command: ")
                    break
                key, _, value = field.strip().partition(": ")
                job[key] = value
            jobs[int(job["jobid"])] = job
        elif m := re.match(r"^Finished jobid: (\d+)", line):
            jobs[int(m[1])].update(status="done", finished=stamp)
        elif re.match(r"^Error in rule \w+:$", line):
            jobid = next(int(f.split(": ")[1]) for f in lines[i + 1 : i + 4] if "jobid:" in f)
            jobs[jobid].update(status="failed", finished=stamp)
    return planned, jobs


def read_samples(path: Path, pid_column: bool) -> list[tuple]:
    """nvidia-smi CSV rows as (epoch, value, value); unreadable lines skipped."""
    rows = []
    if not path.is_file():
        return rows
    for fields in csv.reader(path.read_text().splitlines()):
        try:
            t = datetime.strptime(fields[0].strip(), "%Y/%m/%d %H:%M:%S.%f").timestamp()
            rows.append((t, int(fields[1]), int(fields[2])))
        except (ValueError, IndexError):
            continue
    return rows


def gpu_use(job: dict, gpu: list[tuple], apps: list[tuple]) -> dict:
    """Busy share and peak memory over the job's window; memory of its own process where the
    per-process samples name it, else of the whole device."""
    window = [s for s in gpu if job["start"] <= s[0] <= job["end"]]
    if not window:
        return {}
    own = [mem for t, pid, mem in apps if pid == job.get("pid") and job["start"] <= t <= job["end"]]
    return {
        "gpu_busy": round(sum(u for _, u, _ in window) / len(window) / 100, 3),
        "peak_gpu_mib": max(own) if own else max(m for _, _, m in window),
        "peak_gpu_of": "process" if own else "device",
        "gpu_samples": len(window),
    }


def _judge(job: dict, log: str) -> dict | None:
    """The judge's counters: the job log's `traitscope judge:` line, or its JSON output's."""
    lines = JUDGE_LINE.findall(log)
    if lines:
        return json.loads(lines[-1])
    for out in job.get("output", "").split(", "):
        if out.endswith(".json") and Path(out).is_file():
            calls = json.loads(Path(out).read_text()).get("judge_calls")
            if isinstance(calls, dict) and "computed" in calls:
                return calls
    return None


def _capture(job: dict) -> dict:
    import pandas as pd

    out = Path(job["output"])
    if out.is_file():
        shard_dir = out.parent / json.loads(out.read_text())["shard_dir"]
        total = None
    else:  # unfinished: the shards written so far (the newest folder), of the prompt set's rows
        dirs = sorted(out.parent.glob("shards-*"), key=lambda p: p.stat().st_mtime)
        shard_dir = dirs[-1] if dirs else None
        prompts = next(p for p in job.get("input", "").split(", ") if p.endswith(".parquet"))
        total = len(pd.read_parquet(prompts, columns=["prompt_id"]))
    shards = sorted(shard_dir.glob("*.prompts.parquet")) if shard_dir else []
    table = pd.concat([pd.read_parquet(s) for s in shards]) if shards else None
    new = re.search(r"--max-new-tokens (\d+)", job.get("shell", ""))
    work: dict = {"prompts": 0 if table is None else len(table)}
    if table is not None:
        work["tokens"] = int(table["n_tokens"].sum())
        if new and int(new[1]) > 0:  # tokens after the prompt: generated (none is prefilled)
            work["generated_tokens"] = int((table["n_tokens"] - table["prompt_len"]).sum())
    size = re.search(r"--shard-size (\d+)", job.get("shell", ""))
    if total and size and shards:  # shards are length-sorted: the later ones take longer
        times = sorted(p.stat().st_mtime for p in shards)
        work.update(units_done=len(shards), units_total=-(-total // int(size[1])))
        work["unit_times"] = [[times[0], 1], [times[-1], len(shards)]]
    return work


def _finetune(job: dict, log: str) -> dict:
    loss = Path(job["output"].split(", ")[0]).parent / "loss.json"
    if loss.is_file():
        record = json.loads(loss.read_text())
        return {
            "steps": record["n_steps"],
            "examples": record["n_examples"],
            "tokens": sum(s["padded"] for s in record["steps"]),
            "assistant_tokens": sum(s["tokens"] for s in record["steps"]),
        }
    steps = FINETUNE_STEP.findall(log)
    if not steps:
        return {}
    return {"units_done": int(steps[-1][0]), "units_total": int(steps[-1][1])}  # optimizer steps


def _cmaes(job: dict, log: str) -> dict:
    generations = CMAES_GENERATION.findall(log)
    planned = re.search(r'"generations": (\d+)', job.get("shell", ""))
    if not generations or not planned:
        return {}
    return {"units_done": int(generations[-1]), "units_total": int(planned[1])}


def projected(record: dict, start: float, end: float, times: list | None) -> float | None:
    """An unfinished job's seconds: to its latest progress, then the rest at the rate between its
    first and latest progress (the first unit also paid for loading and compiling); else the
    seconds so far over the share done."""
    done, total = record.get("units_done"), record.get("units_total")
    if not done or not total:
        return None
    if times and len(times) == 2 and times[1][1] > times[0][1]:
        (t0, n0), (t1, n1) = times
        return round(t1 - start + (total - n1) * (t1 - t0) / (n1 - n0), 1)
    return round((end - start) * total / done, 1)


def _sae(job: dict) -> dict:
    record = next((Path(p) for p in job.get("output", "").split(", ") if p.endswith(".json")), None)
    if record is None or not record.is_file():
        return {}
    data = json.loads(record.read_text())
    return {"tokens": data["settings"]["tokens"], "capture_tokens": data["n_tokens"]}


def work_of(job: dict) -> dict:
    """What the job did, read from its outputs and log (nothing where neither tells)."""
    log_path = Path(job.get("log", "").split(" (")[0])
    log = log_path.read_text(errors="replace") if log_path.is_file() else ""
    work: dict = {}
    if job["rule"] == "capture":
        work = _capture(job)
    elif job["rule"] == "finetune":
        work = _finetune(job, log)
    elif job["rule"] == "cmaes_optimise":
        work = _cmaes(job, log)
    elif job["rule"] == "sae_train":
        work = _sae(job)
    judge = _judge(job, log)
    if judge:
        work["judge"] = judge
    return work


def device_name() -> str:
    try:
        names = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True
        ).stdout.split("\n")
        return names[0].strip() or "no GPU"
    except OSError:
        return "no GPU"


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def collect(
    work: Path, logs: list[Path], group: str, status: int, call_started: float, started: float, ended: float
) -> dict:
    """The call's record; `logs`: Snakemake's output of each of the call's runs, in order."""
    planned: Counter = Counter()
    jobs = []
    for log in logs:
        counts, blocks = parse_snakemake_log(log.read_text(errors="replace"))
        planned.update(counts)
        jobs += [blocks[k] for k in sorted(blocks)]
    wrapper = {}
    if (work / "jobs.jsonl").is_file():
        for line in (work / "jobs.jsonl").read_text().splitlines():
            record = json.loads(line)
            wrapper[str(Path(record["log"]).resolve())] = record
    gpu = read_samples(work / "gpu.csv", False)
    apps = read_samples(work / "gpu_apps.csv", True)
    records = []
    for job in jobs:
        timed = wrapper.get(str(Path(job.get("log", "").split(" (")[0]).resolve()))
        if timed:
            job.update(start=timed["start"], end=timed["end"], pid=timed["pid"])
            job.update(max_rss_mib=timed["max_rss_mib"], progress_times=timed.get("progress"))
            stopped = timed["rc"] < 0 or timed.get("stopped_by_signal")  # by a signal: the deadline
            if job["status"] == "started" or stopped:
                job["status"] = "unfinished"
        else:
            job.update(start=job["submitted"], end=job.get("finished") or ended)
            if job["status"] == "started":
                job["status"] = "unfinished"
        seconds = job["end"] - job["start"]
        record = {
            "jobid": int(job["jobid"]),
            "rule": job["rule"],
            "wildcards": job.get("wildcards", ""),
            "status": job["status"],
            "seconds": round(seconds, 2),
            "timed_by": "wrapper" if timed else "snakemake log",
            "threads": int(job.get("threads", 1)),
            "gpu_job": bool(re.search(r"\bgpu=1\b", job.get("resources", ""))),
            "max_rss_mib": job.get("max_rss_mib"),
            **work_of(job),
        }
        if record["gpu_job"]:
            record.update(gpu_use(job, gpu, apps))
        tokens = record.get("generated_tokens") or record.get("tokens")
        if tokens and seconds > 0 and record["status"] != "failed":
            record["tokens_per_s"] = round(tokens / seconds, 1)
        if record["status"] == "unfinished":
            times = record.pop("unit_times", None) or job.get("progress_times")
            record["projected_seconds"] = projected(record, job["start"], job["end"], times)
        records.append(record)
    done = Counter(r["rule"] for r in records if r["status"] == "done")
    busy = [u for t, u, _ in gpu if started <= t <= ended]
    return {
        "group": group,
        "device": device_name(),
        "cpu": cpu_name(),
        "snakemake_exit": status,
        "setup_seconds": round(started - call_started, 1),
        "run_seconds": round(ended - started, 1),
        "gpu_busy": round(sum(busy) / len(busy) / 100, 3) if busy else None,
        "peak_gpu_mib": max((m for _, _, m in gpu), default=None),
        "prepare": json.loads((work / "prepare.json").read_text())
        if (work / "prepare.json").is_file()
        else None,
        "planned": planned,
        "not_done": {rule: n - done.get(rule, 0) for rule, n in planned.items() if n > done.get(rule, 0)},
        "jobs": records,
    }


def dry(work: Path, groups: list[str]) -> dict:
    """Every group's jobs per rule (from `snakemake -n` logs), and the whole plan's jobs."""
    counts, jobs = {}, []
    for group in groups:
        planned, blocks = parse_snakemake_log((work / f"dry-{group}.log").read_text(errors="replace"))
        counts[group] = {rule: n for rule, n in planned.items() if rule != "all"}
        if group == "all":
            jobs = dag([b for b in blocks.values() if b["rule"] != "all"])
    return {"planned": counts["all"], "groups": counts, "jobs": jobs}


def files(block: dict, key: str) -> list[str]:
    """A dry-run job's `input:` or `output:` paths."""
    return [f for f in block.get(key, "").split(", ") if f]


def dag(blocks: list[dict]) -> list[dict]:
    """The plan's jobs with what replay.py needs: the jobs each waits for (`after`: indices of
    the jobs whose outputs it reads) and its memory request."""
    producer = {f: i for i, b in enumerate(blocks) for f in files(b, "output")}
    jobs = []
    for b in blocks:
        mem = re.search(r"\bmem_mb=(\d+)", b.get("resources", ""))
        after = sorted({producer[f] for f in files(b, "input") if f in producer})
        job = {"rule": b["rule"], "wildcards": b.get("wildcards", ""), "after": after}
        jobs.append(job | {"mem_mb": int(mem[1]) if mem else 0})
    return jobs


def dry_table(result: dict) -> str:
    groups = list(result["groups"])
    lines = ["| rule | " + " | ".join(groups) + " |", "|---" * (len(groups) + 1) + "|"]
    for rule in result["planned"]:
        lines.append(
            f"| {rule} | " + " | ".join(str(result["groups"][g].get(rule, "")) for g in groups) + " |"
        )
    totals = " | ".join(str(sum(result["groups"][g].values())) for g in groups)
    return "\n".join([*lines, f"| total | {totals} |"])


def write_tsv(path: Path, records: list[dict]) -> None:
    with path.open("w") as f:
        f.write("\t".join(TSV_COLUMNS) + "\n")
        for r in records:
            judge = r.get("judge") or {}
            row = {
                **r,
                "judge_calls": judge.get("computed"),
                "judge_prompt_tokens": judge.get("prompt_tokens"),
            }
            f.write("\t".join("" if row.get(c) is None else str(row[c]) for c in TSV_COLUMNS) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dry", nargs="+", metavar="GROUP", help="read dry-<GROUP>.log files instead")
    parser.add_argument("--group")
    parser.add_argument("--status", type=int, help="Snakemake's exit status")
    parser.add_argument("--call-started", type=float)
    parser.add_argument("--started", type=float, help="Snakemake's start (epoch s)")
    parser.add_argument("--ended", type=float)
    parser.add_argument("--logs", nargs="+", type=Path, help="Snakemake's output of each run of the call")
    args = parser.parse_args()
    if args.dry:
        result = dry(args.work, args.dry)
        (args.out / "dry.json").write_text(json.dumps(result, indent=1) + "\n")
        print(dry_table(result))
        return
    result = collect(
        args.work, args.logs, args.group, args.status, args.call_started, args.started, args.ended
    )
    (args.out / f"{args.group}.json").write_text(json.dumps(result, indent=1) + "\n")
    write_tsv(args.out / f"{args.group}.tsv", result["jobs"])
    done = sum(r["status"] == "done" for r in result["jobs"])
    print(f"{args.group}: {done} jobs done, not done: {result['not_done']}")


if __name__ == "__main__":
    main()
