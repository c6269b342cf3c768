"""Per-job wall times of a finished Snakemake run, from its .snakemake/metadata (the start and end
Snakemake records for every output), so the small jobs that write no benchmark file are counted
too. Prints seconds per rule, the run's span, the time fewer jobs ran than cores, and with
--match, what the jobs whose outputs match any pattern cost: what a feature adds to the run
(issue #28's hard negatives: `--match harmful_intent hardneg`).

    python benchmarks/job_times.py RUN_DIR [--cores 2] [--match PATTERN ...]
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import signal
from collections import defaultdict
from pathlib import Path


def jobs(run: Path) -> list[dict]:
    """One record per job: rule, start, end and its outputs (metadata is kept per output)."""
    by_job: dict[tuple[str, int], dict] = {}
    for path in (run / ".snakemake" / "metadata").iterdir():
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if record.get("starttime") is None or record.get("endtime") is None:
            continue
        output = base64.urlsafe_b64decode(path.name.encode() + b"=" * (-len(path.name) % 4)).decode()
        job = by_job.setdefault(
            (record["rule"], record["job_hash"]),
            {"rule": record["rule"], "start": record["starttime"], "end": 0.0, "outputs": []},
        )
        job["start"] = min(job["start"], record["starttime"])
        job["end"] = max(job["end"], record["endtime"])
        job["outputs"].append(output)
    return sorted(by_job.values(), key=lambda j: j["start"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the run's working directory (holds .snakemake/)")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--match", nargs="*", default=[], help="regex on a job's outputs")
    args = parser.parse_args()
    found = jobs(args.run)
    start, end = found[0]["start"], max(j["end"] for j in found)
    per_rule: dict[str, list[float]] = defaultdict(list)
    for job in found:
        per_rule[job["rule"]].append(job["end"] - job["start"])
    print(f"{len(found)} jobs, span {end - start:.0f} s, {sum(map(sum, per_rule.values())):.0f} job-seconds")
    for rule, times in sorted(per_rule.items(), key=lambda kv: -sum(kv[1])):
        print(f"  {rule:24s} {len(times):3d} jobs {sum(times):7.1f} s")
    idle = sum(
        1 for t in range(int(start), int(end)) if sum(j["start"] <= t < j["end"] for j in found) < args.cores
    )
    print(f"seconds with fewer than {args.cores} jobs running: {idle}")
    if args.match:
        pattern = re.compile("|".join(args.match))
        matched = [j for j in found if any(pattern.search(o) for o in j["outputs"])]
        total = sum(j["end"] - j["start"] for j in matched)
        print(
            f"jobs matching {' | '.join(args.match)}: {len(matched)}, {total:.0f} job-seconds "
            f"(~{total / args.cores:.0f} s of a {args.cores}-core run's wall time)"
        )
        for job in matched:
            print(f"  {job['end'] - job['start']:6.1f} s {job['rule']}: {job['outputs'][0]}")


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `| head` ends the listing quietly, not with a traceback
    main()
