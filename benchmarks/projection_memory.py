"""Peak memory of `project` and of an analysis's read of its Parquet against the prompt count, in
one run (issue 29: BeaverTails' 30K-pair sample makes 18M projection rows at full scale).

Writes captures of pooled activations (3 pools, 26 layers like Gemma-2-2B, width 64: the row
count, not the width, sets the table's size; 512-prompt shards, the store's layout) at two prompt
counts, projects each onto 7 traits (`project`, the pipeline's function) in a fresh process, then
reads the larger table in two ways in fresh processes: whole (`pd.read_parquet`), and as the
analyses read it (`read_projections`, the chosen layers' pooled rows), and scores it
(`chosen_scores`). Prints each one's peak RSS and wall time, and the ratios.
Usage: python benchmarks/projection_memory.py [--prompts 8192 16384]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from judge_agreement import cpu_name  # noqa: E402

D, LAYERS, POOLS, SHARD, TRAITS = 64, 26, ["last_prompt", "prompt_mean", "response_mean"], 512, 7


def write_capture(folder: Path, n_prompts: int) -> Path:
    (folder / "shards").mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    names = []
    for i, start in enumerate(range(0, n_prompts, SHARD)):
        n = min(SHARD, n_prompts - start)
        tensors = {
            f"pooled.layer.{layer}": torch.randn(n, len(POOLS), D, generator=g).half()
            for layer in range(LAYERS)
        }
        save_file(tensors, str(folder / "shards" / f"s{i}.safetensors"))
        pd.DataFrame({"prompt_id": [f"p{start + j}" for j in range(n)]}).to_parquet(
            folder / "shards" / f"s{i}.prompts.parquet"
        )
        pd.DataFrame({"prompt_id": [], "segment": [], "token_index": []}).to_parquet(
            folder / "shards" / f"s{i}.tokens.parquet"
        )
        names.append(f"s{i}")
    manifest = {
        "layers": list(range(LAYERS)),
        "pools": POOLS,
        "d_model": D,
        "shard_dir": "shards",
        "shards": names,
    }
    (folder / "capture.json").write_text(json.dumps(manifest))
    return folder / "capture.json"


def child(task: str, capture: str, out: str) -> dict:
    """One measured step (in its own process): its peak RSS and wall time."""
    from traitscope.vectors.projection import project
    from traitscope.vectors.projection_table import chosen_scores, read_projections
    from traitscope.vectors.trait_vector import TraitVector

    names = [f"group/trait{k}" for k in range(TRAITS)]
    started = time.perf_counter()
    if task == "project":
        g = torch.Generator().manual_seed(1)
        traits = [
            TraitVector(
                name,
                "bench",
                {"mean_diff": torch.randn(LAYERS, D, generator=g)},
                list(range(LAYERS)),
                "mean_diff",
                3 + 2 * k,
                {},
                {},
            )
            for k, name in enumerate(names)
        ]
        project(capture, traits, "base", "bench", out)
        rows = None
    elif task == "read_whole":
        table = chosen_scores(pd.read_parquet(out), "last_prompt", names)
        rows = len(table)
    else:
        table = chosen_scores(read_projections(out, chosen=True, pooled=True), "last_prompt", names)
        rows = len(table)
    return {
        "wall_s": time.perf_counter() - started,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "prompts_scored": rows,
    }


def measure(task: str, capture: Path, out: Path) -> dict | None:
    """A step's record, or None (its error printed) where this checkout cannot run it (an older
    one, for the numbers before a change)."""
    done = subprocess.run(
        [sys.executable, __file__, "--child", task, str(capture), str(out)], capture_output=True, text=True
    )
    if done.returncode:
        print(f"{task} failed: {done.stderr.strip().splitlines()[-1]}")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, nargs=2, default=[8192, 16384])
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.child:
        print(json.dumps(child(*a.child)))
        return
    print(
        f"cpu: {cpu_name()[0]}; {LAYERS} layers x {len(POOLS)} pools x {TRAITS} traits = "
        f"{LAYERS * len(POOLS) * TRAITS} rows a prompt"
    )
    got = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in a.prompts:
            capture = write_capture(Path(tmp) / f"c{n}", n)
            out = Path(tmp) / f"p{n}.parquet"
            got[n, "project"] = measure("project", capture, out)
            tasks = ("read_whole", "read_filtered") if n == a.prompts[1] else ()
            for task in tasks:
                got[n, task] = measure(task, capture, out)
            for task in (t for t in ("project", *tasks) if got[n, t]):
                r = got[n, task]
                print(
                    f"{n:>6} prompts, {task:13}: peak RSS {r['peak_rss_mib']:6.0f} MiB, {r['wall_s']:5.1f} s "
                    f"(file {out.stat().st_size / 2**20:.0f} MiB)",
                    flush=True,
                )
    small, large = a.prompts
    grow = got[large, "project"]["peak_rss_mib"] / got[small, "project"]["peak_rss_mib"]
    print(f"project: peak RSS x{grow:.2f} from {small} to {large} prompts")
    whole, filtered = got[large, "read_whole"], got[large, "read_filtered"]
    if whole and filtered:
        rss, wall = (filtered[k] / whole[k] for k in ("peak_rss_mib", "wall_s"))
        print(f"at {large} prompts, filtered / whole read: peak RSS {rss:.2f}, time {wall:.2f}")


if __name__ == "__main__":
    main()
