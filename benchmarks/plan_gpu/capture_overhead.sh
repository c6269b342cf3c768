#!/usr/bin/env bash
# Where a small capture job's time goes on the GPU (issue 29: each of the plan's 41 captures costs
# about 21 s however few tokens it has). Run after a plan_gpu.sh call has prepared the model and
# the prompt sets named below (a `custom` call whose targets are those prompt files):
#   bash benchmarks/plan_gpu/capture_overhead.sh SET...
# Prints, per set, the wall seconds of the whole `traitscope capture` job with torch.compile on
# (the plan's "auto" on a GPU) and off, and the cProfile of the first, the import of the capture
# module alone before them; writes $OUT/capture_overhead.txt and the profiles.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-results/plan_gpu/out}
mkdir -p "$out"
export PYTHONPATH=$PWD/results/plan_gpu/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}
py=$(python3 -c 'import sys; print(sys.executable)')
settings() {  # the plan's capture settings: the schema's, 64K-token batches, compile as given
    "$py" -c 'import json, sys
from traitscope.capture.settings import CaptureSettings
from traitscope.settings import schema_defaults
print(json.dumps({**schema_defaults(CaptureSettings.SECTION), "max_tokens": 65536, "compile": sys.argv[1],
                  "compile_min_tokens": 0}))' "$1"
}
seconds() {  # the wall seconds of a command (no bc on the device)
    local t0 t1
    t0=$(date +%s.%N)
    "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; return 1; }
    t1=$(date +%s.%N)
    "$py" -c "print(round($t1 - $t0, 2))"
}
{
    echo "import torch + CUDA init: $(seconds "$py" -c 'import torch; torch.zeros(1, device="cuda")') s"
    echo "import the capture module: $(seconds "$py" -c 'import traitscope.capture.store') s"
    for set in "$@"; do
        prompts=results/prompts/$set.parquet
        n=$("$py" -c "import pandas; print(len(pandas.read_parquet('$prompts')))")
        for compile in yes no; do
            rm -rf "results/plan_gpu/overhead/$set"
            t=$(seconds "$py" -m cProfile -o "$out/capture_$set.$compile.prof" -m traitscope.cli capture \
                --model results/models/gemma2/manifest.json --prompts "$prompts" \
                --out "results/plan_gpu/overhead/$set/capture.json" --settings "$(settings $compile)")
            echo "capture $set ($n prompts), compile $compile: $t s"
        done
    done
} | tee "$out/capture_overhead.txt"
