"""The plan's wall time on one GPU machine, from its jobs' measured seconds and the DAG.

The rehearsal runs the plan in slices (a call has 10 minutes), so no call measures the whole
plan's wall time. Its floor is the GPU jobs one after another and its ceiling every job one
after another; where it lands between them depends on how the CPU jobs overlap the GPU's queue.
`makespan` replays the plan as a list schedule under the rehearsal's resources (one GPU, the
machine's cores and the memory Snakemake is given, each rule's threads) in two orders: the
dry-run's, and the longest remaining path first. Neither is Snakemake's own scheduler (which
also weighs the rules' `priority:`), so the two are estimates, not bounds; the floor (the GPU
jobs alone) is the only bound.
"""

from __future__ import annotations

import heapq


def longest_paths(after: list[list[int]], seconds: list[float]) -> list[float]:
    """Each job's seconds plus the longest chain of jobs that wait on it (its critical path)."""
    waiting: list[list[int]] = [[] for _ in after]
    for job, deps in enumerate(after):
        for dep in deps:
            waiting[dep].append(job)
    memo: dict[int, float] = {}

    def path(job: int) -> float:
        if job not in memo:
            memo[job] = seconds[job] + max((path(w) for w in waiting[job]), default=0.0)
        return memo[job]

    return [path(job) for job in range(len(after))]


def makespan(
    after: list[list[int]],
    seconds: list[float],
    needs: list[dict[str, float]],
    capacity: dict[str, float],
    order: str = "plan",
) -> float:
    """Seconds until the last job ends when every ready job starts as soon as its needs fit.

    `needs[i]` asks for amounts of `capacity`'s resources (a need above the capacity is cut to it,
    as Snakemake cuts threads to --cores); `order` is "plan" (the jobs' order) or "critical"
    (longest remaining path first)."""
    if order not in ("plan", "critical"):
        raise ValueError(f"order must be 'plan' or 'critical', not {order!r}")
    needs = [{k: min(v, capacity[k]) for k, v in need.items() if k in capacity} for need in needs]
    rank = [-p for p in longest_paths(after, seconds)] if order == "critical" else list(range(len(after)))
    pending = sorted(range(len(after)), key=lambda j: rank[j])
    free, done, running, now = dict(capacity), set(), [], 0.0
    while pending or running:
        for job in list(pending):
            fits = all(free[k] >= v for k, v in needs[job].items())
            if fits and all(d in done for d in after[job]):
                pending.remove(job)
                free = {k: free[k] - needs[job].get(k, 0) for k in free}
                heapq.heappush(running, (now + seconds[job], job))
        if not running:
            raise ValueError(f"jobs {pending[:5]} wait on a job that never runs (a cycle in `after`)")
        now = running[0][0]
        while running and running[0][0] == now:  # every job that ends now, before any starts
            job = heapq.heappop(running)[1]
            done.add(job)
            free = {k: free[k] + needs[job].get(k, 0) for k in free}
    return now
