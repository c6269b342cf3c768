"""sae_train's peak memory against the SAE capture's size: the whole capture held (the old way, and
still the way while it fits `buffer_tokens`) against streaming it a shard at a time, in one run.

Writes a capture of random bf16 activations (16,384-token shards at SmolLM2's width 576, the store's
layout) at two sizes, then runs `sae_train` (the pipeline stage: the record, the figure and the
quality passes included) in a fresh process per (size, mode) and prints each one's peak RSS,
wall time and held-out FVE, and the ratios: a resident run's memory grows with the capture, a
streamed one's should not.
Usage: python benchmarks/sae_memory.py [--shards 8 16] [--buffer 32768] [--passes 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from judge_agreement import cpu_name  # noqa: E402

D, SHARD = 576, 16_384


def write_capture(folder: Path, n_shards: int) -> Path:
    """A capture with per-token bf16 activations at layer 0 only (the SAE's set is captured at
    its one layer); the token tables are not read by sae_train."""
    (folder / "shards").mkdir(parents=True)
    g = torch.Generator().manual_seed(n_shards)
    for i in range(n_shards):
        x = torch.randn(SHARD, D, generator=g) + torch.linspace(-2, 2, D)
        save_file({"tokens.layer.0": x.bfloat16()}, str(folder / "shards" / f"s{i}.safetensors"))
    manifest = {
        "layers": [0],
        "d_model": D,
        "shard_dir": "shards",
        "shards": [f"s{i}" for i in range(n_shards)],
        "model": str(folder / "model" / "manifest.json"),
    }
    (folder / "capture.json").write_text(json.dumps(manifest))
    return folder / "capture.json"


CHILD = """
import json, resource, sys, time
from traitscope.experiments.backdoor.sae_stages import sae_train
from traitscope.experiments.backdoor.settings import SAETrainSettings
from traitscope.settings import from_schema
capture, out, settings = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
started = time.perf_counter()
record = sae_train(capture, from_schema(SAETrainSettings, **settings), out + "/sae", out + "/r.json",
                   out + "/r.png", model_name="bench")
print(json.dumps({"wall_s": time.perf_counter() - started,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "held_out_fve": record["held_out"]["fraction_variance_explained"]}))
"""


def run(capture: Path, out: Path, settings: dict) -> dict:
    out.mkdir(parents=True)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(capture), str(out), json.dumps(settings)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")},
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", type=int, nargs=2, default=[8, 16], help="the two capture sizes")
    parser.add_argument("--buffer", type=int, default=32_768, help="buffer_tokens of the streamed runs")
    parser.add_argument("--passes", type=float, default=1.0, help="training passes over the tokens")
    a = parser.parse_args()
    print(f"cpu: {cpu_name()[0]}; torch threads {torch.get_num_threads()}; width {D}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n_shards in a.shards:
            n = n_shards * SHARD
            capture = write_capture(Path(tmp) / f"c{n_shards}", n_shards)
            base = {"layer": 0, "width": 1024, "k": 32, "batch_size": 1024, "tokens": int(n * 0.9 * a.passes)}
            for mode, buffer in (("resident", n), ("streamed", a.buffer)):
                started = time.perf_counter()
                result = run(capture, Path(tmp) / f"{mode}{n_shards}", {**base, "buffer_tokens": buffer})
                rows.append({"tokens": n, "mode": mode, "buffer": buffer, **result})
                print(
                    f"{n:>7} tokens ({n * D * 4 / 2**20:.0f} MiB in float32), {mode:8} buffer {buffer:>7}: "
                    f"peak RSS {result['peak_rss_mib']:.0f} MiB, sae_train {result['wall_s']:.1f} s "
                    f"({time.perf_counter() - started:.1f} s with start-up), held-out FVE "
                    f"{result['held_out_fve']:.3f}",
                    flush=True,
                )
    get = {(r["tokens"], r["mode"]): r for r in rows}
    small, large = (n * SHARD for n in a.shards)
    for mode in ("resident", "streamed"):
        grow = get[large, mode]["peak_rss_mib"] / get[small, mode]["peak_rss_mib"]
        print(f"{mode}: peak RSS x{grow:.2f} from {small} to {large} tokens")
    r, s = get[large, "resident"], get[large, "streamed"]
    print(
        f"at {large} tokens, streamed / resident: peak RSS {s['peak_rss_mib'] / r['peak_rss_mib']:.2f}, "
        f"time {s['wall_s'] / r['wall_s']:.2f}"
    )


if __name__ == "__main__":
    main()
