"""safety/harmful_request read at each prompt-contrast pool: held-out AUC, chosen layer, split half.

Arditi et al. read the refusal direction at the post-instruction template tokens; the default
trait reads the last prompt token. This captures the trait's prompt set once with the three
pools (the pipeline's capture settings for a trait set, every layer, no generation), then builds
and evaluates the vectors per pool with the pipeline's own stages, and prints per pool the
chosen (method, layer), its held-out AUC with a stratified bootstrap CI, Cohen's d and the
split-half (out-of-sample) AUC, plus the capture's wall time.

Usage (after `snakemake results/prompts/traits/safety/harmful_request.parquet
results/models/smollm2/manifest.json`):
    python benchmarks/contrast_pools.py results/models/smollm2/manifest.json \
        results/prompts/traits/safety/harmful_request.parquet results/benchmarks/contrast_pools
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from traitscope.capture.settings import CaptureSettings
from traitscope.capture.store import capture
from traitscope.data.traits import CONTRAST_POOLS
from traitscope.settings import from_schema
from traitscope.stats import auc_with_ci
from traitscope.vectors.evaluation import trait_evaluation
from traitscope.vectors.extraction import trait_vectors
from traitscope.vectors.labelled import labelled_activations, split_groups
from traitscope.vectors.methods import project
from traitscope.vectors.settings import ExtractionSettings
from traitscope.vectors.trait_vector import read_vectors

TRAIT = "safety/harmful_request"


def main(manifest: str, prompts: str, out_dir: str) -> None:
    out = Path(out_dir)
    settings = from_schema(CaptureSettings, pools=CONTRAST_POOLS, max_tokens=8192, storage_dtype="float32")
    t0 = time.perf_counter()
    capture(manifest, prompts, out / "capture.json", settings, device="cpu")
    rows = {"capture_wall_s": round(time.perf_counter() - t0, 1), "pools": {}}
    for pool in CONTRAST_POOLS:
        folder = out / pool
        vectors = folder / "vectors.safetensors"
        trait_vectors(
            out / "capture.json",
            prompts,
            vectors,
            folder / "vectors.json",
            pool,
            from_schema(ExtractionSettings),
            "smollm2",
            TRAIT,
        )
        result = trait_evaluation(
            vectors,
            out / "capture.json",
            prompts,
            folder / "evaluation.json",
            folder / "evaluation.png",
            pool,
            TRAIT,
            "smollm2",
        )
        chosen = result["chosen"]
        table, x, layers = labelled_activations(out / "capture.json", prompts, pool)
        pos, neg = split_groups(table, x, "evaluation")
        i = layers.index(chosen["layer"])
        vector = read_vectors(vectors)[0][chosen["method"]][i : i + 1]
        scores = [project(g[:, i : i + 1], vector)[:, 0].numpy() for g in (pos, neg)]
        rows["pools"][pool] = {
            "method": chosen["method"],
            "layer": chosen["layer"],
            "n": f"{len(pos)}+{len(neg)}",
            "auc": auc_with_ci(*scores, n_boot=2000, seed=0),
            "cohens_d": chosen["cohens_d"],
            "auc_split_half": result["chosen_split_half"]["auc"],
            "split_half_folds": result["chosen_split_half"]["folds"],
        }
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:])
