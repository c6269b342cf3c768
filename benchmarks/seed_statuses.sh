#!/usr/bin/env bash
# How often each status holds over sampling seeds: the main job (every experiment config/config.yaml
# enables) from an empty results/ once per seed, each with the sampled answers' seeds set to it
# (extraction.seed: the trait answers the vectors are fitted and scored on; the emergent-misalignment
# capture's seed: its answers; steering_optimisation.seed: CMA-ES's answers and its own draws), then
# the criteria side by side (benchmarks/seed_statuses.py). Each run is a clone of HEAD beside this
# checkout, in this machine's number format. The seeds come as a --configfile overlay, so the
# snakemake args may not hold one of their own (Snakemake keeps only the last).
#
# Usage: benchmarks/seed_statuses.sh OUT.txt SEED [SEED ...] -- [snakemake args, e.g. --config data_mirror=$PWD/../shared/data]
# (an absolute mirror path: each run is a clone one folder deeper, where ../shared/data is not)
set -euo pipefail
out=$(realpath "$1")
shift
seeds=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do seeds+=("$1"); shift; done
[ $# -gt 0 ] && shift
[ ${#seeds[@]} -gt 0 ] || { echo "usage: $0 OUT.txt SEED [SEED ...] -- [snakemake args]" >&2; exit 2; }
for arg in "$@"; do
  [ "$arg" != --configfile ] || { echo "$0: the seeds are a --configfile overlay; pass other settings with --config" >&2; exit 2; }
done
repo=$(git rev-parse --show-toplevel)
commit=$(git -C "$repo" rev-parse HEAD)
work=$(mktemp -d "$(dirname "$repo")/seeds.XXXX")
cores=${CORES:-2}
echo "# benchmarks/seed_statuses.sh at ${commit:0:7}; cpu: $(lscpu | sed -n 's/^Model name: *//p'); cores: $cores" >"$out"
summaries=()
for seed in "${seeds[@]}"; do
  git clone -q "$repo" "$work/seed$seed"
  git -C "$work/seed$seed" checkout -q "$commit"
  (
    cd "$work/seed$seed"
    export PYTHONPATH="$work/seed$seed/src"
    printf 'extraction: {seed: %d}\nexperiments: {emergent_misalignment: {capture: {seed: %d}}, steering_optimisation: {seed: %d}}\n' \
      "$seed" "$seed" "$seed" >seed.yaml
    start=$(date +%s)
    python3 -m snakemake --cores "$cores" --resources gpu=1 --quiet rules --configfile seed.yaml "$@" \
      >"$work/seed$seed.log" 2>&1 || { tail -30 "$work/seed$seed.log"; exit 1; }
    echo "seed $seed main job: $(($(date +%s) - start)) s; $(grep -rh -o 'model smollm2 on .*' results/logs/capture | sort -u | head -1)" >>"$out"
  )
  summaries+=("seed$seed=$work/seed$seed/results/summary.json")
done
python3 "$repo/benchmarks/seed_statuses.py" "${summaries[@]}" | tee -a "$out"
echo "runs kept in $work"
