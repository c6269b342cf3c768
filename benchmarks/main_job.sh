#!/usr/bin/env bash
# The main job's wall time from an empty results/, in steps: the core job (trait vectors,
# steering check, captures, prefill and external analyses, transfer table), then what each later experiment
# adds, enabled one at a time in config order (Snakemake reruns nothing already made). An
# experiment's step is an upper bound on what it adds to one whole run, where its jobs would
# also overlap the others'. Run it in a fresh clone; extra arguments go to snakemake, e.g.
# --config data_mirror=../shared/data.
set -euo pipefail
cores=${CORES:-2}
echo "cpu: $(lscpu | sed -n 's/^Model name: *//p'); torch capability: $(python3 -c 'import torch; print(torch.backends.cpu.get_cpu_capability())'); cores: $cores"
if [ -e results ]; then echo "results/ exists: run from an empty checkout" >&2; exit 2; fi
overlay=$(mktemp --suffix .yaml)
trap 'rm -f "$overlay"' EXIT
# the experiments beyond the core that config/config.yaml enables, in its order
added=$(python3 -c '
import yaml
exp = yaml.safe_load(open("config/config.yaml"))["experiments"]
print(" ".join(n for n, s in exp.items() if s.get("enabled") and n not in ("prefill", "external", "transfer")))')
step() {  # step LABEL EXPERIMENTS-STILL-OFF...
  python3 -c 'import sys, yaml; print(yaml.safe_dump({"experiments": {n: {"enabled": False} for n in sys.argv[1:]}}))' "${@:2}" >"$overlay"
  local t0=$(date +%s)
  python3 -m snakemake --cores "$cores" --quiet rules "${snakemake_args[@]}" --configfile "$overlay"
  echo "$1: $(($(date +%s) - t0)) s"
}
snakemake_args=("$@")
start=$(date +%s)
read -r -a off <<<"$added"
step "core job" "${off[@]}"
for name in $added; do
  off=("${off[@]:1}")
  step "$name adds" "${off[@]}"
done
echo "whole job: $(($(date +%s) - start)) s"
