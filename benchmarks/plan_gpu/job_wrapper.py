"""The rules' `traitscope` during a rehearsal (plan_gpu.sh puts it first on PATH): runs
`python -m traitscope.cli` from the checkout's src/ and appends one JSON line per job to
$PLAN_GPU_JOBS: start and end (epoch s), exit code, pid (to find its GPU memory among nvidia-smi's
processes), peak resident memory (MiB, for the Slurm profile's mem_mb), the job's log, which is
its stderr (every rule ends in `2> {log}`), and when its first and latest progress lines (a
finetune step, a CMA-ES generation) were written, so that a job stopped at the deadline can be
projected at the rate between them.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import time

PROGRESS = re.compile(rb"^traitscope (?:finetune: step|cmaes: generation) (\d+)")


def main() -> int:
    start = time.time()
    child = subprocess.Popen([sys.executable, "-m", "traitscope.cli", *sys.argv[1:]], stderr=subprocess.PIPE)
    stopped = []  # the signals forwarded: a Python child stopped by SIGINT exits 1, not -2

    def forward(sig: int, _frame: object) -> None:  # Snakemake stopping the job stops the job
        stopped.append(sig)
        child.send_signal(sig)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    progress = []
    for line in iter(child.stderr.readline, b""):  # the log, unchanged, with the progress lines' times
        sys.stderr.buffer.write(line)
        sys.stderr.buffer.flush()
        if m := PROGRESS.match(line):  # the first and the latest: the rate between them
            progress[1:] = [[time.time(), int(m[1])]]
    rc = child.wait()
    record = {
        "start": start,
        "end": time.time(),
        "rc": rc,
        "stopped_by_signal": bool(stopped),
        "pid": child.pid,
        "max_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
        "command": sys.argv[1] if len(sys.argv) > 1 else "",
        "log": os.readlink("/proc/self/fd/2"),
        "progress": progress,
    }
    with open(os.environ["PLAN_GPU_JOBS"], "a") as f:
        f.write(json.dumps(record) + "\n")
    return rc


if __name__ == "__main__":
    sys.exit(main())
