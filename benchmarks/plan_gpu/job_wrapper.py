"""The rules' `traitscope` during a rehearsal (plan_gpu.sh puts it first on PATH): runs
`python -m traitscope.cli` from the checkout's src/ and appends one JSON line per job to
$PLAN_GPU_JOBS: start and end (epoch s), exit code, pid (to find its GPU memory among nvidia-smi's
processes), peak resident memory (MiB, for the Slurm profile's mem_mb) and the job's log, which is
its stderr (every rule ends in `2> {log}`).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time


def main() -> int:
    start = time.time()
    child = subprocess.Popen([sys.executable, "-m", "traitscope.cli", *sys.argv[1:]])
    for sig in (signal.SIGTERM, signal.SIGINT):  # Snakemake stopping the job stops the job
        signal.signal(sig, lambda s, _: child.send_signal(s))
    rc = child.wait()
    record = {
        "start": start,
        "end": time.time(),
        "rc": rc,
        "pid": child.pid,
        "max_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
        "command": sys.argv[1] if len(sys.argv) > 1 else "",
        "log": os.readlink("/proc/self/fd/2"),
    }
    with open(os.environ["PLAN_GPU_JOBS"], "a") as f:  # one short line: appends do not interleave
        f.write(json.dumps(record) + "\n")
    return rc


if __name__ == "__main__":
    sys.exit(main())
