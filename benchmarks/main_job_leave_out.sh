#!/usr/bin/env bash
# What each experiment adds to one whole run: the main job with every experiment enabled, in one
# Snakemake invocation from an empty results/, then again without each experiment named on the
# command line. "X adds" = whole minus whole-without-X: X's jobs overlap the others' there, as
# in a user's run (the steps of benchmarks/main_job.sh are upper bounds). Run it in a fresh
# clone; arguments after `--` go to snakemake, e.g.
#   bash benchmarks/main_job_leave_out.sh backdoor emergent_misalignment -- --config data_mirror=../shared/data
set -euo pipefail
cores=${CORES:-2}
leave_out=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do leave_out+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
echo "cpu: $(lscpu | sed -n 's/^Model name: *//p'); torch capability: $(python3 -c 'import torch; print(torch.backends.cpu.get_cpu_capability())'); cores: $cores"
if [ -e results ]; then echo "results/ exists: run from an empty checkout" >&2; exit 2; fi
overlay=$(mktemp --suffix .yaml)
trap 'rm -f "$overlay"' EXIT
whole_run() {  # whole_run [EXPERIMENT-TO-DISABLE]: wall seconds from an empty results/
  python3 -c 'import sys, yaml; print(yaml.safe_dump({"experiments": {n: {"enabled": False} for n in sys.argv[1:]}}))' "$@" >"$overlay"
  rm -rf results .snakemake
  local t0=$(date +%s)
  python3 -m snakemake --cores "$cores" --quiet rules "${snakemake_args[@]}" --configfile "$overlay" >&2
  echo $(($(date +%s) - t0))
}
snakemake_args=("$@")
whole=$(whole_run)
echo "whole job, every experiment enabled: $whole s"
rm -rf results-whole && mv results results-whole  # kept: the whole run's results and job timings
for name in "${leave_out[@]}"; do
  without=$(whole_run "$name")
  echo "without $name: $without s; $name adds: $((whole - without)) s"
done
