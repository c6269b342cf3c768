#!/usr/bin/env bash
# Precision robustness: the main job (every experiment config/config.yaml enables) from an empty
# results/, once in fp32 and once in bf16, on this machine, then the two criteria tables side by
# side (benchmarks/precision_compare.py). Each run is a clone of HEAD in a temporary folder beside
# this checkout, one folder deeper than it, and imports that clone's code.
#
#   fp32: the kernels capped at AVX2 (ATen, MKL, oneDNN), so `dtype: auto` picks fp32 as it does
#         on an AVX2-only CPU, and its wall time stands in for one;
#   bf16: TRAITSCOPE_CPU_BF16=1, auto decides as on an AVX512-BF16 CPU (native on such a CPU,
#         emulated and slower elsewhere).
#
# Usage: benchmarks/precision.sh OUT.txt [snakemake args, e.g. --config data_mirror=$PWD/../shared/data]
# (an absolute mirror path: each run is a clone one folder deeper, where ../shared/data is not)
set -euo pipefail
out=$(realpath "$1")
shift
repo=$(git rev-parse --show-toplevel)
commit=$(git -C "$repo" rev-parse HEAD)  # both runs: this commit, whatever lands meanwhile
work=$(mktemp -d "$(dirname "$repo")/precision.XXXX")
cores=${CORES:-2}
{
  echo "# benchmarks/precision.sh at ${commit:0:7}"
  echo "cpu: $(lscpu | sed -n 's/^Model name: *//p'); flags: $(grep -o -w -E 'avx2|avx512f|avx512_bf16|amx_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ')"
  echo "cores: $cores"
} >"$out"
for mode in fp32 bf16; do
  git clone -q "$repo" "$work/$mode"
  git -C "$work/$mode" checkout -q "$commit"
  (
    cd "$work/$mode"
    export PYTHONPATH="$work/$mode/src"
    if [ "$mode" = fp32 ]; then
      export ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2
    else
      export TRAITSCOPE_CPU_BF16=1
    fi
    start=$(date +%s)
    python3 -m snakemake --cores "$cores" --resources gpu=1 --quiet rules "$@" >"$work/$mode.log" 2>&1 ||
      { tail -30 "$work/$mode.log"; exit 1; }
    echo "$mode main job: $(($(date +%s) - start)) s; $(grep -rh -o 'model smollm2 on .*' results/logs/capture | sort -u | head -1)" >>"$out"
  )
done
python3 "$repo/benchmarks/precision_compare.py" "$work/fp32/results/summary.json" "$work/bf16/results/summary.json" | tee -a "$out" || true
echo "runs kept in $work"
